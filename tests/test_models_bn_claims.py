"""The BN-claims experiment: its summary arithmetic, and one quick end-to-end run."""
from __future__ import annotations

import math

import pytest

from models import bn_claims

pytest.importorskip("sklearn")


def _run(bn: bool, lr: float, scale: float, seed: int, accs: list[float],
         loss: float = 1.0) -> dict:
    return {"batch_norm": bn, "lr": lr, "init_scale": scale, "seed": seed,
            "steps": [10 * (i + 1) for i in range(len(accs))],
            "train_loss": [2.0] + [loss] * (len(accs) - 1),
            "test_acc": accs, "diverged": False, "fold_dev": 1e-15 if bn else 0.0}


def test_summary_takes_mean_accuracy_and_median_steps_to_target() -> None:
    results = [_run(False, 0.1, 1.0, 0, [0.5, 0.95]), _run(False, 0.1, 1.0, 1, [0.2, 0.4]),
               _run(False, 0.1, 1.0, 2, [0.91, 0.93]),
               _run(True, 0.1, 1.0, 0, [0.9, 0.97]), _run(True, 0.1, 1.0, 1, [0.95, 0.96]),
               _run(True, 0.1, 1.0, 2, [0.5, 0.92])]
    (row,) = bn_claims.summarize(results, 0.9)
    assert row["acc_plain"] == pytest.approx((0.95 + 0.4 + 0.93) / 3)
    assert row["steps_plain"] == 20 and row["reached_plain"] == 2     # median of 20, inf, 10
    assert row["steps_bn"] == 10 and row["reached_bn"] == 3           # median of 10, 10, 20
    assert row["loss_plain"] == row["loss_bn"] == 1.0
    lines = bn_claims.findings([row], results)
    assert "fewer median steps in 1 of 1" in lines[0]
    assert "lower with BN in 0 of 1 cells and higher in 0." in lines[1]
    assert "0.000 without BN, 0.000 with BN" in lines[-2]


def test_findings_name_the_cells_where_bn_did_worse() -> None:
    results = [_run(False, 3.0, 0.1, 0, [0.9, 0.97], 0.5), _run(True, 3.0, 0.1, 0, [0.2, 0.5], 1.5),
               _run(False, 3.0, 1.0, 0, [0.1, 0.2], 1.2), _run(True, 3.0, 1.0, 0, [0.9, 0.95], 0.1)]
    rows = bn_claims.summarize(results, 0.9)
    assert math.isinf(rows[0]["steps_bn"])
    lines = bn_claims.findings(rows, results)
    assert "in more steps in 1" in lines[0] and "1 point lower in 1" in lines[0]
    assert "BN did worse at lr=3, init scale=0.1: 0.500 vs 0.970" in lines[1]
    assert "lower with BN in 1 of 2 cells and higher in 1:" in lines[2]
    assert "lr=3, init scale=0.1: 1.500 with BN vs 0.500 without" in lines[3]
    assert "Runs whose loss overflowed: 0 without BN, 0 with BN." in lines[4]
    assert "lr=3: 0.770 without BN, 0.450 with BN" in lines[5]


def test_quick_run_writes_the_table_and_the_figure(tmp_path, capsys) -> None:
    assert bn_claims.main(["--quick", "--jobs", "1", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "bn_claims.md").read_text()
    assert table == capsys.readouterr().out.rstrip("\n") + "\n"
    assert sum(line.startswith(("| 0.3 |", "| 1 |")) for line in table.splitlines()) == 4
    assert "Folding every trained BN net" in table
    assert (tmp_path / "bn_claims.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
