"""Per-BN outcome of a fold: where each BatchNormalization went, or why it stayed."""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx


class Reason(str, enum.Enum):
    """Why a BatchNormalization node was left in the graph."""

    TRAINING_MODE = "training_mode=1: BN uses batch statistics, not a fixed affine map"
    TRAINING_OUTPUTS = "BN computes extra training outputs (running/saved mean or variance)"
    SPATIAL_0 = "opset-7/8 spatial=0: per-element statistics, not per-channel"
    DYNAMIC_PARAMS = "a BN parameter (scale, bias, mean or variance) is not a constant"
    BAD_PARAM_SHAPE = "BN parameters are not 1-D vectors of the channel count"
    NON_FINITE_PARAMS = "a BN parameter or epsilon is NaN or infinite"
    NON_POSITIVE_VARIANCE = "variance + epsilon <= 0 for some channel"
    UNSUPPORTED_DTYPE = "dtype combination cannot be folded exactly"
    NO_FOLDABLE_NEIGHBOUR = ("neither the producer nor the consumer is a Conv, ConvTranspose, "
                             "Gemm or MatMul")
    PRODUCER_HAS_OTHER_CONSUMERS = "the producer's output is also read by other nodes"
    PRODUCER_OUTPUT_IS_GRAPH_OUTPUT = "the producer's output is also a graph output"
    WEIGHT_NOT_CONSTANT = "the neighbour's weight or bias is not a constant"
    CHANNEL_MISMATCH = "the BN channel axis does not map onto the neighbour's output/input channels"
    PADDED_CONSUMER = ("the following Conv pads its input: folding BN forward would change "
                       "border values")
    CONSUMER_NOT_EXCLUSIVE = "the BN output is read by other nodes or is a graph output"
    UNSUPPORTED_NEIGHBOUR = "the neighbour's attributes make an exact fold impossible"
    INVALID_NEIGHBOUR = ("the neighbour's attributes and weight shapes disagree (an invalid "
                         "node): folding it would be meaningless")
    TRAINING_BINDING = ("a training_info binding or graph names a tensor this fold would rewrite "
                        "or remove")
    OVERFLOW = "a folded weight or bias would overflow the weight dtype (e.g. float16 max 65504)"
    CHECK_FAILED = "the folded model failed onnx.checker or shape inference; BN kept"
    PROOF_FAILED = ("the fold's local proof on ONNX Runtime failed: the folded region differs "
                    "from the original")
    SHAPE_MISMATCH = "declared shape or dtype disagrees with shape inference"
    PRECISION_LOSS = ("in float16/bfloat16 the folded region is markedly less accurate than the "
                      "original against a float32 truth (folded terms cancel)")
    BRANCHES_DO_NOT_MERGE = ("the parallel branches summed with this identity BN are not one "
                             "convolution (stride, padding, group or channel mismatch)")
    NEGATIVE_SCALE_POOL = ("a max pool between the BN and the layer it would fold into: the max "
                           "commutes with the BN only when every BN scale is positive")
    COMMUTE_CONDITION = ("an op between the BN and the layer it would fold into does not commute "
                         "with the BN's per-channel affine map (its condition is in the detail)")

    @property
    def code(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class FoldRecord:
    """Outcome for one BN node: folded into ``target`` or kept for ``reason``."""

    bn: str                       # BN node name (or a synthetic label for unnamed nodes)
    graph: str                    # graph path: "main" or "main/If_0.then_branch"
    target: str | None = None     # node the BN was folded into
    direction: str | None = None  # "backward" (into producer) | "forward" (into consumer)
    #                               | "reparam" (its Add tree of branches became ``target``)
    reason: Reason | None = None  # why it stayed, when target is None
    detail: str = ""              # human detail: the numbers or names behind the reason
    bn_output: str = ""           # the BN output tensor name (kept in the folded graph)
    proof_max_abs: float | None = None  # local proof: worst |folded - original| of the region
    proof_peak: float | None = None     # local proof: peak |original| of the region's output
    proof_tol: float | None = None      # local proof: the tolerance it was held to
    proof_engine: str = ""              # "onnxruntime" or "onnx.reference" (no ORT kernel)
    merged: tuple[str, ...] = ()        # reparam: the branch Convs merged into ``target``
    op: str = "BatchNormalization"      # the folded node: a BN, or a decomposed BN's Mul / Add
    via: tuple[str, ...] = ()           # nodes the affine map was carried through, in order
    targets: tuple[str, ...] = ()       # every node that absorbed it (Concat: one per slice)
    region_nodes: tuple[str, ...] = ()  # original outputs of the nodes the fold replaced (proof)
    region_inputs: tuple[str, ...] = ()  # the activations those nodes read (proof frontier)

    @property
    def folded(self) -> bool:
        return self.target is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("region_nodes")
        d.pop("region_inputs")
        d["via"], d["targets"] = list(self.via), list(self.targets)
        d["reason"] = self.reason.code if self.reason else None
        d["reason_text"] = self.reason.value if self.reason else None
        d["folded"] = self.folded
        return d


@dataclass
class FoldResult:
    """The folded model and one record per BN found in the input."""

    model: onnx.ModelProto
    records: list[FoldRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    external_base: str | None = None  # folder tensors still external are read from (lazy fold)

    @property
    def bn_before(self) -> int:
        return sum(1 for r in self.records if r.op == "BatchNormalization")

    @property
    def bn_after(self) -> int:
        return sum(1 for r in self.records if not r.folded and r.op == "BatchNormalization")

    @property
    def folded(self) -> list[FoldRecord]:
        return [r for r in self.records if r.folded]

    @property
    def kept(self) -> list[FoldRecord]:
        return [r for r in self.records if not r.folded]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bn_before": self.bn_before,
            "bn_after": self.bn_after,
            "folded": len(self.folded),
            "records": [r.to_dict() for r in self.records],
            "warnings": list(self.warnings),
        }
