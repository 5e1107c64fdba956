"""The familiarity data: the repeat rule, labels, the familiar fraction, seeding, the iteration
stream across epochs, and the cache of the ``dat`` sequences."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from stpn_supervised.familiarity import FamiliarityDataModule, generate, repeat_mask


def _reference_mask(coins: np.ndarray, repeat_distance: int) -> np.ndarray:
    """The rule step by step: repeat when the draw succeeds, unless t − R was a repeat."""
    repeats = np.zeros_like(coins)
    for t in range(repeat_distance, coins.shape[1]):
        repeats[:, t] = coins[:, t] & ~repeats[:, t - repeat_distance]
    return repeats


@pytest.mark.parametrize("repeat_distance", [1, 2, 3, 6, 19, 700])
def test_vectorised_mask_is_the_step_by_step_rule(repeat_distance: int) -> None:
    coins = np.random.default_rng(repeat_distance).random((4, 1001)) < 0.5
    assert np.array_equal(repeat_mask(coins, repeat_distance),
                          _reference_mask(coins, repeat_distance))


@pytest.mark.parametrize("repeat_distance", [1, 3, 6])
def test_sequences_follow_the_task(repeat_distance: int) -> None:
    R = repeat_distance
    patterns, labels = generate(8, 2000, 100, R, 0.5, np.random.default_rng(0))
    assert patterns.shape == (8, 2000, 100) and labels.shape == (8, 2000)
    assert set(np.unique(patterns)) == {-1, 1} and set(np.unique(labels)) == {0, 1}
    assert not labels[:, :R].any()  # nothing to repeat yet
    same = (patterns[:, R:] == patterns[:, :-R]).all(axis=-1)
    assert np.array_equal(same, labels[:, R:].astype(bool))  # label 1 <=> the pattern R back
    assert not (labels[:, R:] & labels[:, :-R]).any()  # a repeat is never repeated again


def test_familiar_fraction_is_one_third() -> None:
    _, labels = generate(20, 5000, 10, 3, 0.5, np.random.default_rng(1))
    assert labels.mean() == pytest.approx(1 / 3, abs=0.01)  # chance accuracy 2/3


def test_same_seed_same_stream_other_seed_other_stream(tmp_path) -> None:
    make = lambda seed: FamiliarityDataModule(seq_len=50, seed=seed, data_dir=tmp_path)  # noqa: E731
    first, again, other = make(0).draw("train", 5, 2), make(0).draw("train", 5, 2), \
        make(1).draw("train", 5, 2)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["patterns"], other["patterns"])
    assert not np.array_equal(first["patterns"], make(0).draw("train", 6, 2)["patterns"])
    assert not np.array_equal(first["patterns"], make(0).draw("test", 5, 2)["patterns"])


def _epoch(data: FamiliarityDataModule, epoch: int) -> list[torch.Tensor]:
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)  # what Lightning does at the start of every epoch
    return [x for x, _ in loader]


def test_inf_mode_draws_fresh_sequences_that_a_resume_draws_again(tmp_path) -> None:
    data = FamiliarityDataModule(seq_len=40, iterations_per_epoch=3, data_dir=tmp_path)
    epoch0, epoch1 = _epoch(data, 0), _epoch(data, 1)
    assert len(epoch0) == 3 and epoch0[0].shape == (1, 40, 100)
    batches = epoch0 + epoch1
    assert all(not torch.equal(a, b) for i, a in enumerate(batches) for b in batches[i + 1:])
    resumed = FamiliarityDataModule(seq_len=40, iterations_per_epoch=3, data_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(_epoch(resumed, 1), epoch1, strict=True))
    assert not list(tmp_path.iterdir())  # nothing to cache in inf mode


def test_dat_mode_repeats_one_cached_sequence_and_reads_it_back(tmp_path, monkeypatch) -> None:
    make = lambda: FamiliarityDataModule(seq_len=40, mode="dat", data_dir=tmp_path)  # noqa: E731
    data = make()
    data.prepare_data()
    assert len(list(tmp_path.glob("familiarity_*.npz"))) == 2  # train and validation
    batches = _epoch(data, 0) + _epoch(data, 7)
    assert all(torch.equal(batches[0], b) for b in batches)
    val = next(iter(data.val_dataloader()))[0]
    assert not torch.equal(val, batches[0])
    cached = make()

    def fail(*args: object) -> None:
        raise AssertionError("generated although a valid cache exists")

    monkeypatch.setattr(cached, "draw", fail)
    assert torch.equal(_epoch(cached, 3)[0], batches[0])
    assert torch.equal(next(iter(cached.val_dataloader()))[0], val)


def test_corrupt_cache_is_regenerated_with_a_warning(tmp_path) -> None:
    make = lambda: FamiliarityDataModule(seq_len=40, mode="dat", data_dir=tmp_path)  # noqa: E731
    expected = _epoch(make(), 0)[0]
    for path in tmp_path.glob("*.npz"):
        path.write_bytes(b"not a numpy file")
    with pytest.warns(UserWarning, match="regenerating"):
        assert torch.equal(_epoch(make(), 0)[0], expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make().setup()  # the repaired files are read back without a warning


def test_test_set_is_fresh_and_sized(tmp_path) -> None:
    data = FamiliarityDataModule(seq_len=30, mode="dat", test_sequences=3, data_dir=tmp_path)
    x, y = next(iter(data.test_dataloader()))
    assert x.shape == (3, 30, 100) and y.shape == (3, 30) and x.dtype == torch.float32
    assert not any(torch.equal(x[:1], b) for b in _epoch(data, 0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "online"}, "mode"),
        ({"repeat_distance": 0}, "repeat_distance"),
        ({"p_repeat": 1.5}, "p_repeat"),
        ({"seq_len": 0}, "seq_len"),
        ({"seed": -1}, "seed"),
        ({"iterations_per_epoch": 0}, "iterations_per_epoch"),
    ],
)
def test_bad_parameters_are_rejected(tmp_path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FamiliarityDataModule(data_dir=tmp_path, **kwargs)


def test_a_resumed_fit_continues_the_stream(tmp_path) -> None:
    """Lightning makes the loader's iterator before ``set_epoch`` when it resumes; the epoch
    after the checkpoint must still get its own sequences, not epoch 0's again."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from stpn_supervised.familiarity_module import FamiliarityClassifier

    class Spy(L.Callback):
        def __init__(self) -> None:
            self.seen: list[torch.Tensor] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self.seen.append(batch[0].clone())

    def fit(epochs: int, folder: str, resume: bool) -> list[torch.Tensor]:
        spy = Spy()
        last = ModelCheckpoint(dirpath=tmp_path / folder, filename="last")
        trainer = L.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0,
                            callbacks=[spy, last])
        data = FamiliarityDataModule(seq_len=20, iterations_per_epoch=2, data_dir=tmp_path)
        trainer.fit(FamiliarityClassifier("stpn", 3), data,
                    ckpt_path=tmp_path / folder / "last.ckpt" if resume else None)
        return spy.seen

    whole = fit(4, "whole", resume=False)
    fit(2, "parts", resume=False)
    resumed = fit(4, "parts", resume=True)
    assert len(resumed) == 4 and all(torch.equal(a, b) for a, b in zip(resumed, whole[4:],
                                                                       strict=True))
