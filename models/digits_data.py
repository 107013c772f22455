"""scikit-learn's digits (1797 real 8x8 handwritten digits, shipped with sklearn), split.

The split is stratified and seeded, so the training script and the committed test files
always agree. Pixels are scaled from 0..16 to 0..1. Three layouts feed the zoo:
``image`` (N,1,8,8), ``flat`` (N,64) and ``seq`` (N,8,8: 8 features x 8 rows, channels first).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SEED = 0
TEST_FRACTION = 0.2
MODELS_DIR = Path(__file__).resolve().parent
LABELS_FILE = MODELS_DIR / "digits_test_labels.npy"
TEST_FILES = {
    "image": MODELS_DIR / "digits_test.npz",
    "flat": MODELS_DIR / "digits_test_flat.npz",
    "seq": MODELS_DIR / "digits_test_seq.npz",
}


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test); x is (N,1,8,8) float32 in [0,1], y int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION,
                                              random_state=SEED, stratify=y)
    return x_tr, y_tr, x_te, y_te


def to_layout(images: np.ndarray, layout: str) -> np.ndarray:
    """Reshape (N,1,8,8) images to a model's input layout."""
    if layout == "image":
        return np.ascontiguousarray(images)
    if layout == "flat":
        return np.ascontiguousarray(images.reshape(len(images), 64))
    if layout == "seq":
        return np.ascontiguousarray(images[:, 0].transpose(0, 2, 1))
    raise ValueError(f"unknown layout {layout!r}; expected image, flat or seq")


def load_test(layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the committed test inputs for ``layout`` (key "input") and the labels."""
    with np.load(TEST_FILES[layout]) as data:
        x = data["input"]
    return x, np.load(LABELS_FILE)


def write_test_files() -> None:
    """Write the held-out split as one .npz per layout (key "input") plus the labels .npy."""
    _, _, x_te, y_te = split()
    for layout, path in TEST_FILES.items():
        np.savez_compressed(path, input=to_layout(x_te, layout))
    np.save(LABELS_FILE, y_te)


def score(outputs: np.ndarray, x: np.ndarray, labels: np.ndarray, task: str) -> float:
    """Test metric: accuracy (fraction) for classifiers, mean squared error for reconstruction."""
    if task == "classify":
        return float(np.mean(np.argmax(outputs, axis=1) == labels))
    if task == "reconstruct":
        return float(np.mean((outputs.astype(np.float64) - x.reshape(outputs.shape)) ** 2))
    raise ValueError(f"unknown task {task!r}; expected classify or reconstruct")
