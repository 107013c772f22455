"""bnfold.verification.feeds: the input sets verification runs (.npz files, labels, seeded random sets)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bnfold.errors import InputError
from bnfold.inputs import ShapeRequest, TensorSpec
from bnfold.verification import feeds


def test_load_npz_by_name_and_single_unnamed_array(tmp_path: Path) -> None:
    specs = [TensorSpec("x", np.dtype(np.float32), ("N", 2))]
    np.savez(tmp_path / "named.npz", x=np.ones((5, 2), np.float64))
    np.savez(tmp_path / "anon.npz", np.zeros((3, 2), np.float32))
    named = feeds.load_npz(tmp_path / "named.npz", specs)
    assert named["x"].dtype == np.float32 and named["x"].shape == (5, 2)
    assert feeds.load_npz(tmp_path / "anon.npz", specs)["x"].shape == (3, 2)


def test_load_npz_errors_are_input_errors(tmp_path: Path) -> None:
    specs = [TensorSpec("x", np.dtype(np.float32), ("N", 2)),
             TensorSpec("y", np.dtype(np.int64), ("N",))]
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        feeds.load_npz(tmp_path / "junk.npz", specs)
    with pytest.raises(InputError, match="cannot read"):
        feeds.load_npz(tmp_path / "missing.npz", specs)
    np.savez(tmp_path / "partial.npz", x=np.ones((1, 2)))
    with pytest.raises(InputError, match="lacks input"):
        feeds.load_npz(tmp_path / "partial.npz", specs)
    np.savez(tmp_path / "rank.npz", x=np.ones(2), y=np.ones(1, np.int64))
    with pytest.raises(InputError, match="expects"):
        feeds.load_npz(tmp_path / "rank.npz", specs)
    np.savez(tmp_path / "floatids.npz", x=np.ones((1, 2)), y=np.ones(1))
    with pytest.raises(InputError, match="int64"):
        feeds.load_npz(tmp_path / "floatids.npz", specs)


def test_load_labels(tmp_path: Path) -> None:
    np.save(tmp_path / "l.npy", np.array([[1], [2], [3]]))
    assert feeds.load_labels(tmp_path / "l.npy").tolist() == [1, 2, 3]
    np.save(tmp_path / "f.npy", np.array([0.5]))
    with pytest.raises(InputError, match="integer"):
        feeds.load_labels(tmp_path / "f.npy")


def test_split_batches_fixed_and_dynamic() -> None:
    feed = {"x": np.arange(10).reshape(10, 1)}
    fixed = feeds.split_batches(feed, [TensorSpec("x", np.dtype(np.int64), (5, 1))])
    assert [c["x"].shape[0] for c in fixed] == [5, 5]
    dyn = feeds.split_batches(feed, [TensorSpec("x", np.dtype(np.int64), ("N", 1))],
                               max_batch=4)
    assert [c["x"].shape[0] for c in dyn] == [4, 4, 2]
    assert np.array_equal(np.concatenate([c["x"] for c in dyn]), feed["x"])
    with pytest.raises(InputError, match="fixed batch"):
        feeds.split_batches(feed, [TensorSpec("x", np.dtype(np.int64), (3, 1))])


def test_random_sets_are_seeds_times_batches_at_the_chosen_size() -> None:
    spec = TensorSpec("x", np.dtype(np.float32), ("N", 3, "H", "W"))
    sets = feeds.input_sets([spec], seeds=[0, 1], request=ShapeRequest(), batch_sizes=[2, 3],
                            data=None, size=96)
    assert [label for label, _ in sets] == ["random seed=0 batch=2", "random seed=0 batch=3",
                                            "random seed=1 batch=2", "random seed=1 batch=3"]
    assert sets[0][1][0]["x"].shape == (2, 3, 96, 96)


def test_default_random_sets_give_every_seed_and_every_batch_size_one_feed() -> None:
    """Without --batch-size: seeds s, s+1, s+2 at batch 1, 2, 1 (not seeds x batches), each feed
    its own seed's draw; a fixed batch runs once per seed."""
    spec = TensorSpec("x", np.dtype(np.float32), ("N", 3))
    sets = feeds.input_sets([spec], seeds=[4, 5, 6], request=ShapeRequest(), batch_sizes=None,
                            data=None)
    assert [label for label, _ in sets] == ["random seed=4 batch=1", "random seed=5 batch=2",
                                            "random seed=6 batch=1"]
    assert [chunks[0]["x"].shape[0] for _, chunks in sets] == [1, 2, 1]
    assert not np.array_equal(sets[0][1][0]["x"], sets[2][1][0]["x"])
    assert {b for _, b in feeds.default_plan([0, 1, 2], feeds.DEFAULT_BATCH_SIZES)} == set(
        feeds.DEFAULT_BATCH_SIZES)
    fixed = TensorSpec("x", np.dtype(np.float32), (8, 3))
    sets = feeds.input_sets([fixed], seeds=[0, 1, 2], request=ShapeRequest(), batch_sizes=None,
                            data=None)
    assert [label for label, _ in sets] == ["random seed=0", "random seed=1", "random seed=2"]


def test_default_plan_covers_every_batch_size_even_with_one_seed() -> None:
    assert feeds.default_plan([7], [1, 2]) == [(7, 1), (7, 2)]
    assert feeds.default_plan([0, 1, 2, 3], [1, 2]) == [(0, 1), (1, 2), (2, 1), (3, 2)]
    assert feeds.default_plan([0, 1], [None]) == [(0, None), (1, None)]
    assert feeds.default_plan([], [1, 2]) == []


def test_random_sets_check_the_request_against_the_inputs() -> None:
    spec = TensorSpec("x", np.dtype(np.float32), ("N", 3))
    with pytest.raises(InputError, match="unknown input"):
        feeds.input_sets([spec], seeds=[0], request=ShapeRequest.of(["y:1x3"]), batch_sizes=None,
                         data=None)
