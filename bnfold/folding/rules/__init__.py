"""Fold rules: ``backward`` (BN into the layer before it), ``forward`` (into the layer after)."""
