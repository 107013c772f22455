"""Model cards: measure an exported zoo model (before and after folding) and write its Markdown.

Facts come from the run that built the model, never typed by hand: models/cards.json keeps
them for every model, models/<name>.md is each card, models/README.md the index.
"""
from __future__ import annotations

import inspect
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from models import digits_data
from models.zoo import SPECS, ModelSpec

CARDS_JSON = digits_data.MODELS_DIR / "cards.json"
INDEX_MD = digits_data.MODELS_DIR / "README.md"
REGENERATE = "python -m models.train_digits {name}"
_METRIC = {"classify": "test accuracy", "reconstruct": "test reconstruction MSE"}


@dataclass
class CardFacts:
    """Everything a card states, measured."""

    name: str
    summary: str
    architecture: str
    task: str
    layout: str
    input_shape: list[Any]
    test_file: str
    opset: int
    params: int
    file_bytes: int
    bn_count: int
    bn_sites: dict[str, int]
    export_max_abs_error: float
    train_seconds: float
    train_config: dict[str, Any]
    metric_torch: float
    metric_onnx: float
    metric_folded: float
    bn_after_fold: int
    fold_kept_reasons: dict[str, int] = field(default_factory=dict)
    same_predictions: bool | None = None
    folded_max_abs_diff: float = 0.0


def bn_sites(model: onnx.ModelProto) -> dict[str, int]:
    """Count BNs by neighbourhood, e.g. {"Conv -> BN -> Relu": 4}."""
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    outputs = {o.name for o in model.graph.output}
    sites: Counter[str] = Counter()
    for n in model.graph.node:
        if n.op_type != "BatchNormalization":
            continue
        prod = producers.get(n.input[0])
        before = prod.op_type if prod is not None else "input"
        after = sorted(consumers.get(n.output[0], []))
        after += ["output"] if n.output[0] in outputs else []
        sites[f"{before} -> BN -> {' + '.join(after) or 'nothing'}"] += 1
    return dict(sorted(sites.items()))


def measure(name: str, spec: ModelSpec, result: Any, metric_torch: float, seconds: float,
            config: dict[str, Any]) -> CardFacts:
    """Score the exported model and its fold on the committed test split."""
    import bnfold
    from bnfold.exporting.exporter import run_onnx

    x, labels = digits_data.load_test(spec.layout)
    model = result.model
    out = run_onnx(model, {"input": x})[0]
    fold = bnfold.fold(model)
    out_folded = run_onnx(fold.model, {"input": x})[0]
    same = (bool(np.array_equal(out.argmax(1), out_folded.argmax(1)))
            if spec.task == "classify" else None)
    cls = type(spec.factory())
    return CardFacts(
        name=name, summary=(cls.__doc__ or "").strip().splitlines()[0],
        architecture=inspect.getsource(cls), task=spec.task, layout=spec.layout,
        input_shape=["batch", *x.shape[1:]], test_file=digits_data.TEST_FILES[spec.layout].name,
        opset=result.opset, params=_param_count(model),
        file_bytes=os.path.getsize(digits_data.MODELS_DIR / f"{name}.onnx"),
        bn_count=result.bn_nodes, bn_sites=bn_sites(model),
        export_max_abs_error=result.max_abs_error, train_seconds=round(seconds, 2),
        train_config=config, metric_torch=metric_torch,
        metric_onnx=digits_data.score(out, x, labels, spec.task),
        metric_folded=digits_data.score(out_folded, x, labels, spec.task),
        bn_after_fold=fold.bn_after,
        fold_kept_reasons=dict(Counter(r.reason.code for r in fold.records if not r.folded)),
        same_predictions=same,
        folded_max_abs_diff=float(np.max(np.abs(out.astype(np.float64) - out_folded))))


def _param_count(model: onnx.ModelProto) -> int:
    return int(sum(np.prod(t.dims, dtype=np.int64) for t in model.graph.initializer))


def _metric(value: float, task: str) -> str:
    return f"{value:.2%}" if task == "classify" else f"{value:.5f}"


def render(f: CardFacts) -> str:
    """The Markdown card for one model."""
    sites = "\n".join(f"| `{k}` | {v} |" for k, v in f.bn_sites.items())
    kept = ", ".join(f"{v} x {k}" for k, v in f.fold_kept_reasons.items()) or "none"
    cfg = ", ".join(f"{k}={v}" for k, v in f.train_config.items())
    same = "" if f.same_predictions is None else (
        "- Same predictions on all test images after folding: "
        f"**{'yes' if f.same_predictions else 'NO'}**\n")
    loss = "cross-entropy" if f.task == "classify" else "mean squared error"
    train_pct, test_pct = 1 - digits_data.TEST_FRACTION, digits_data.TEST_FRACTION
    return f"""# {f.name}

{f.summary}

| | |
|---|---|
| File | `models/{f.name}.onnx` ({f.file_bytes / 1024:.1f} KiB, {f.params} parameters) |
| PyTorch weights | `models/{f.name}.pt` (state_dict for `models.zoo:{f.name}`) |
| Input | `input`, float32 {' x '.join(map(str, f.input_shape))} (layout `{f.layout}`) |
| Output | `output` ({'10 class logits' if f.task == 'classify' else 'reconstructed image, 0..1'}) |
| Opset | {f.opset} |
| BatchNormalization nodes | {f.bn_count} |
| {_METRIC[f.task]} (PyTorch) | {_metric(f.metric_torch, f.task)} |
| {_METRIC[f.task]} (ONNX, with BN) | {_metric(f.metric_onnx, f.task)} |
| {_METRIC[f.task]} (after `bnfold fold`) | {_metric(f.metric_folded, f.task)} |
| BN after `bnfold fold` | {f.bn_after_fold} (kept: {kept}) |
| Export max abs error vs PyTorch | {f.export_max_abs_error:.3g} |
| Training time | {f.train_seconds} s |

## Where the BNs sit

| producer -> BN -> consumers | count |
|---|---|
{sites}

## Results after folding

- Max abs difference of outputs, folded vs original, over the test split:
  {f.folded_max_abs_diff:.3g}
{same}
## Data

scikit-learn's digits (1797 real 8x8 handwritten digits, pixels 0..16 scaled to 0..1), stratified
split with seed {digits_data.SEED}: {train_pct:.0%} train, {test_pct:.0%} test.
Test inputs: `models/{f.test_file}` (key `input`), labels `models/digits_test_labels.npy`.

## Training

Adam with cosine learning-rate decay, {loss} loss, {cfg}; exported by
`bnfold.export` (dynamo exporter, BN kept, dynamic batch).

Regenerate: `{REGENERATE.format(name=f.name)}`

## Architecture

```python
{f.architecture.rstrip()}
```
"""


def write_card(facts: CardFacts) -> None:
    """Write models/<name>.md and update models/cards.json."""
    (digits_data.MODELS_DIR / f"{facts.name}.md").write_text(render(facts))
    data = json.loads(CARDS_JSON.read_text()) if CARDS_JSON.exists() else {}
    data[facts.name] = {k: v for k, v in asdict(facts).items() if k != "architecture"}
    CARDS_JSON.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def summary_line(f: CardFacts) -> str:
    """One line per model for the training script's stdout."""
    return (f"{f.name}: {f.bn_count} BN -> {f.bn_after_fold} after fold, {_METRIC[f.task]} "
            f"{_metric(f.metric_onnx, f.task)} -> {_metric(f.metric_folded, f.task)}, "
            f"{f.file_bytes / 1024:.1f} KiB, export err {f.export_max_abs_error:.2g}, "
            f"trained in {f.train_seconds} s")


def write_index() -> None:
    """Write models/README.md: one table row per model in cards.json."""
    data = json.loads(CARDS_JSON.read_text())
    rows = []
    for name in SPECS:
        if name not in data:
            continue
        d = data[name]
        rows.append(f"| [{name}]({name}.md) | {d['summary']} | `{d['test_file']}` | "
                    f"{d['bn_count']} | {d['bn_after_fold']} | {_METRIC[d['task']]} | "
                    f"{_metric(d['metric_onnx'], d['task'])} | "
                    f"{_metric(d['metric_folded'], d['task'])} | "
                    f"{d['file_bytes'] / 1024:.1f} KiB | {d['opset']} |")
    n_test = len(np.load(digits_data.LABELS_FILE))
    INDEX_MD.write_text(f"""# Model zoo: small BatchNorm models trained on scikit-learn's digits

Each model is a small PyTorch network with BatchNorm in a different place, trained on the
digits data set that ships inside scikit-learn (no download), exported with `bnfold.export`
(every BN kept, dynamic batch axis, input `input`, output `output`), and measured before and
after `bnfold fold` on the held-out test split. All figures below come from the run that
wrote the files (`models/cards.json`); each card has the details.

| model | what | test data | BN | BN after fold | metric | before fold | after fold | size | opset |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Test split ({n_test} images, stratified, seed {digits_data.SEED}), one file per input layout,
key `input`:
`digits_test.npz` (N x 1 x 8 x 8 images), `digits_test_flat.npz` (N x 64),
`digits_test_seq.npz` (N x 8 x 8: 8 pixel columns as channels, 8 rows as time steps);
labels in `digits_test_labels.npy`. For example:

    bnfold fold models/resnet_digits.onnx -o /tmp/resnet.folded.onnx
    bnfold verify models/resnet_digits.onnx /tmp/resnet.folded.onnx \\
        --data models/digits_test.npz --labels models/digits_test_labels.npy

Regenerate everything (about a minute on 2 CPU cores): `python -m models.train_digits`
(one model: `python -m models.train_digits mlp_digits`). Architectures: `models/zoo.py`;
the trained PyTorch weights are `models/<name>.pt`, so any of them can be exported again:
`bnfold export models.zoo:resnet_digits --weights models/resnet_digits.pt -o /tmp/r.onnx
--shape 1x1x8x8 --fold`.
""")
