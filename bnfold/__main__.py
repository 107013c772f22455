"""``python -m bnfold``: the same command line as ``bnfold``."""
from bnfold.cli import main

main(prog_name="bnfold")
