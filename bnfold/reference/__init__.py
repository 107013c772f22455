"""Reference implementations (numpy only): BatchNorm in training and inference, LayerNorm.

The ground truth the folding math rests on: ``fold_params`` (the single implementation, in
``bnfold.folding.math``) turns ``batch_norm_eval``'s per-channel map into (scale, shift).
"""
from __future__ import annotations

from bnfold.folding.math import fold_params
from bnfold.reference.batchnorm import (
    BatchNormCache,
    BatchNormTrainOutput,
    batch_norm_backward,
    batch_norm_eval,
    batch_norm_train,
    running_stats_onnx,
    running_stats_pytorch,
)
from bnfold.reference.layernorm import layer_norm

__all__ = ["BatchNormCache", "BatchNormTrainOutput", "batch_norm_backward", "batch_norm_eval",
           "batch_norm_train", "fold_params", "layer_norm", "running_stats_onnx",
           "running_stats_pytorch"]
