"""The associative retrieval data: task structure, determinism, the cache, and the loaders."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from stpn_supervised.data import (
    NUM_KEYS,
    QUERY,
    VOCAB_SIZE,
    AssociativeRetrievalDataModule,
    decode,
    generate,
)


@pytest.mark.parametrize("num_pairs", [1, 3, 7, 26])
def test_sequences_follow_the_task(num_pairs: int) -> None:
    tokens, targets = generate(5000, num_pairs, np.random.default_rng(1))
    assert tokens.shape == (5000, 2 * num_pairs + 3)
    keys, values = tokens[:, 0 : 2 * num_pairs : 2], tokens[:, 1 : 2 * num_pairs : 2]
    assert (keys < NUM_KEYS).all()
    assert ((values >= NUM_KEYS) & (values < QUERY)).all()
    assert all(len(set(row)) == num_pairs for row in keys)  # distinct keys
    assert (tokens[:, 2 * num_pairs : 2 * num_pairs + 2] == QUERY).all()
    query = tokens[:, -1]
    matches = keys == query[:, None]
    assert (matches.sum(axis=1) == 1).all()  # the query is exactly one of the keys
    assert np.array_equal(targets, values[matches])  # and the target is that key's value
    if num_pairs > 1:  # every position gets queried and every digit occurs
        assert set(np.argmax(matches, axis=1)) == set(range(num_pairs))
    assert set(np.unique(values)) == set(range(NUM_KEYS, QUERY))


def test_decode_reads_a_sequence() -> None:
    assert decode([2, 30, 20, 29, 14, 26, 36, 36, 14]) == "c4u3o0??o"


def test_loaders_yield_one_hot_batches_and_drop_nothing(tmp_path) -> None:
    data = AssociativeRetrievalDataModule(
        num_pairs=4, train_size=300, val_size=250, test_size=130, batch_size=64, data_dir=tmp_path
    )
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (64, 11, VOCAB_SIZE) and x.dtype == torch.float32
    assert torch.equal(x.sum(dim=-1), torch.ones(64, 11))
    assert y.shape == (64,) and y.dtype == torch.int64
    assert sum(len(b[1]) for b in data.val_dataloader()) == 250
    assert sum(len(b[1]) for b in data.test_dataloader()) == 130
    assert sum(len(b[1]) for b in data.train_dataloader()) == 300
    tokens, targets = data.datasets["test"].tensors
    x, y = next(iter(data.test_dataloader()))  # evaluation order is fixed
    assert torch.equal(x.argmax(-1), tokens[:64]) and torch.equal(y, targets[:64])


def test_training_order_changes_every_epoch(tmp_path) -> None:
    data = AssociativeRetrievalDataModule(train_size=512, batch_size=512, data_dir=tmp_path)
    first, second = (next(iter(data.train_dataloader()))[1] for _ in range(2))
    assert not torch.equal(first, second)
    assert torch.equal(first.sort().values, second.sort().values)


def _splits(data: AssociativeRetrievalDataModule) -> list[np.ndarray]:
    data.setup()
    return [t.numpy() for split in ("train", "val", "test") for t in data.datasets[split].tensors]


def test_same_seed_same_data_other_seed_other_data(tmp_path) -> None:
    sizes = {"train_size": 200, "val_size": 100, "test_size": 100}
    a = _splits(AssociativeRetrievalDataModule(seed=3, data_dir=tmp_path / "a", **sizes))
    b = _splits(AssociativeRetrievalDataModule(seed=3, data_dir=tmp_path / "b", **sizes))
    c = _splits(AssociativeRetrievalDataModule(seed=4, data_dir=tmp_path / "a", **sizes))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0][:100], a[2])  # the splits are different draws


def test_changed_parameters_get_new_cache_entries(tmp_path) -> None:
    base = {"train_size": 200, "val_size": 100, "test_size": 100, "data_dir": tmp_path}
    AssociativeRetrievalDataModule(**base).prepare_data()
    assert len(list(tmp_path.glob("*.npz"))) == 3
    for change in ({"num_pairs": 5}, {"seed": 1}, {"train_size": 300}):
        data = AssociativeRetrievalDataModule(**{**base, **change})
        before = set(tmp_path.glob("*.npz"))
        data.prepare_data()
        new = set(tmp_path.glob("*.npz")) - before
        expected = 1 if "train_size" in change else 3  # the other splits are reused
        assert len(new) == expected, change
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary file


def test_cache_is_read_back_not_regenerated(tmp_path, monkeypatch) -> None:
    first = AssociativeRetrievalDataModule(train_size=200, val_size=50, test_size=50,
                                           data_dir=tmp_path)
    expected = _splits(first)
    second = AssociativeRetrievalDataModule(train_size=200, val_size=50, test_size=50,
                                            data_dir=tmp_path)

    def fail(*args: object) -> None:
        raise AssertionError("generated although a valid cache exists")

    monkeypatch.setattr(second, "_generate", fail)
    assert all(np.array_equal(x, y) for x, y in zip(expected, _splits(second), strict=True))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_content"])
def test_corrupt_cache_is_regenerated_with_a_warning(tmp_path, damage: str) -> None:
    make = lambda: AssociativeRetrievalDataModule(  # noqa: E731
        train_size=200, val_size=50, test_size=50, data_dir=tmp_path)
    data = make()
    expected = _splits(data)
    path = data.cache_path("train")
    if damage == "garbage":
        path.write_bytes(b"not a numpy file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:  # a valid file holding another split's arrays
        other = data.cache_path("val")
        path.write_bytes(other.read_bytes())
    with pytest.warns(UserWarning, match="regenerating"):
        regenerated = _splits(make())
    assert all(np.array_equal(x, y) for x, y in zip(expected, regenerated, strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _splits(make())  # the repaired file is read back without a warning


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_pairs": 27}, "num_pairs"),
        ({"num_pairs": 0}, "num_pairs"),
        ({"train_size": -5}, "train_size"),
        ({"val_size": 0}, "val_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_parameters_are_rejected(tmp_path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AssociativeRetrievalDataModule(data_dir=tmp_path, **kwargs)


def test_non_int_size_is_a_type_error(tmp_path) -> None:
    with pytest.raises(TypeError, match="train_size"):
        AssociativeRetrievalDataModule(train_size=10.5, data_dir=tmp_path)  # type: ignore[arg-type]
