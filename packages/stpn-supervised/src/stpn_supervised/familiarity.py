"""Continual familiarity detection (Tyulmankov et al. 2022) as a ``LightningDataModule``.

A stream of random ±1 patterns in which, at every step ``t >= R``, the pattern of ``R`` steps
back comes again with probability ``p_repeat``, unless that one was itself a repeat (so no
pattern is shown three times). The label of a step is 1 when its pattern is such a repeat. A
network must flag "seen ``R`` steps ago" against "new" at every step of one long sequence, so it
needs a memory that is written by every pattern and forgets at the right rate. With
``p_repeat = 1/2`` the stationary familiar fraction is ``p/(1+p) = 1/3``: always answering "new"
scores 2/3, the chance level.

Modes: ``"inf"`` trains on a fresh sequence at every iteration; ``"dat"`` on one fixed training
sequence, with a fixed validation sequence, both cached on disk like the associative-retrieval
data. Every sequence is drawn from a seeded stream indexed by its iteration, so a resumed run
sees the sequences it would have seen, and changing one split never changes another.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from stpn_supervised.datacache import ArrayCache, Arrays, check_int

MODES = ("inf", "dat")
STREAMS = ("train", "val", "test")
FORMAT_VERSION = 1
"""Bump when the generator changes, so that old cache files are not reused."""


def repeat_mask(coins: np.ndarray, repeat_distance: int) -> np.ndarray:
    """Which steps repeat, from the Bernoulli draws ``coins`` ``(B, T)`` bool.

    Step ``t`` repeats when ``coins[t]`` and ``t >= R`` and step ``t - R`` did not repeat. Along
    each chain ``r, r+R, r+2R, …`` that rule turns a run of successful draws into repeats at its
    1st, 3rd, 5th… element, so the whole mask is computed at once from each step's position in
    its run (no Python loop over time).
    """
    batch, length = coins.shape
    chains = -(-length // repeat_distance)
    padded = np.zeros((batch, chains * repeat_distance), dtype=bool)
    padded[:, :length] = coins
    padded[:, :repeat_distance] = False  # the first R steps have nothing to repeat
    chain = padded.reshape(batch, chains, repeat_distance)
    position = np.arange(chains)[None, :, None]
    last_failure = np.maximum.accumulate(np.where(chain, -1, position), axis=1)
    in_run = position - last_failure - 1  # 0 for the first success after a failure
    repeats = chain & (in_run % 2 == 0)
    return repeats.reshape(batch, -1)[:, :length]


def generate(num_sequences: int, seq_len: int, d: int, repeat_distance: int, p_repeat: float,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``num_sequences`` sequences: patterns ``(N, T, d)`` int8 in {−1, +1} and labels
    ``(N, T)`` uint8 (1: the pattern of ``R`` steps back, shown again)."""
    check_int("num_sequences", num_sequences, 1)
    check_int("seq_len", seq_len, 1)
    check_int("d", d, 1)
    check_int("repeat_distance", repeat_distance, 1)
    check_probability(p_repeat)
    patterns = (2 * rng.integers(0, 2, size=(num_sequences, seq_len, d), dtype=np.int8) - 1)
    repeats = repeat_mask(rng.random((num_sequences, seq_len)) < p_repeat, repeat_distance)
    sequence, step = np.nonzero(repeats)
    # The source of a repeat is never a repeat itself, so it still holds its fresh pattern.
    patterns[sequence, step] = patterns[sequence, step - repeat_distance]
    return patterns, repeats.astype(np.uint8)


def check_probability(p_repeat: Any) -> None:
    if isinstance(p_repeat, bool) or not isinstance(p_repeat, int | float) or not (
            0 <= p_repeat <= 1):
        raise ValueError(f"p_repeat: expected a probability in [0, 1], got {p_repeat!r}")


class _IterationSampler(Sampler[int]):
    """Yields the global iteration numbers of the current epoch: ``epoch·n … epoch·n + n − 1``.

    Lightning calls :meth:`set_epoch` at the start of every training epoch (also after a
    resume), so the ``inf`` stream continues where the checkpoint left it.
    """

    def __init__(self, iterations_per_epoch: int) -> None:
        self.iterations_per_epoch, self.epoch = iterations_per_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        # A generator: the epoch is read at the first draw, not when the iterator is made
        # (after a resume Lightning makes the loader's iterator before it calls set_epoch).
        start = self.epoch * self.iterations_per_epoch
        yield from range(start, start + self.iterations_per_epoch)

    def __len__(self) -> int:
        return self.iterations_per_epoch


class _Batches(Dataset[tuple[Tensor, Tensor]]):
    """Item ``i``: the batch of iteration ``i``, fixed (``dat``) or drawn from the stream."""

    def __init__(self, data: FamiliarityDataModule, split: str,
                 fixed: tuple[Tensor, Tensor] | None) -> None:
        self.data, self.split, self.fixed = data, split, fixed

    def __getitem__(self, iteration: int) -> tuple[Tensor, Tensor]:
        if self.fixed is not None:
            return self.fixed
        return _as_tensors(self.data.draw(self.split, iteration, self.data.batch_size))


def _as_tensors(arrays: Arrays) -> tuple[Tensor, Tensor]:
    """Model inputs ``(B, T, d)`` float32 and per-step labels ``(B, T)`` float32."""
    return (torch.from_numpy(arrays["patterns"]).float(),
            torch.from_numpy(arrays["labels"]).float())


class FamiliarityDataModule(L.LightningDataModule):
    """Batches ``(x, y)``: patterns ``(B, T, d)`` float32 in {−1, +1}, labels ``(B, T)``.

    Args:
        d: pattern dimension (paper: 100).
        seq_len: steps per sequence ``T`` (paper: 5000).
        repeat_distance: ``R``, how many steps back a repeat looks (paper: 3 or 6).
        p_repeat: probability that an eligible step repeats (paper: 0.5).
        mode: ``"inf"`` (a fresh training sequence per iteration) or ``"dat"`` (one fixed,
            cached training sequence, plus a fixed validation sequence).
        seed: seeds every stream.
        batch_size: sequences per iteration (paper: 1).
        iterations_per_epoch: training iterations between two validations (paper: 10).
        val_sequences, test_sequences: sequences in the validation and test sets.
        data_dir: cache folder of the ``dat`` sequences.
    """

    def __init__(self, d: int = 100, seq_len: int = 5000, repeat_distance: int = 3,
                 p_repeat: float = 0.5, mode: str = "inf", seed: int = 0, batch_size: int = 1,
                 iterations_per_epoch: int = 10, val_sequences: int = 1, test_sequences: int = 1,
                 data_dir: str | os.PathLike[str] = "data/familiarity") -> None:
        super().__init__()
        for name, value in (("d", d), ("seq_len", seq_len), ("repeat_distance", repeat_distance),
                            ("batch_size", batch_size),
                            ("iterations_per_epoch", iterations_per_epoch),
                            ("val_sequences", val_sequences), ("test_sequences", test_sequences)):
            check_int(name, value, 1)
        check_int("seed", seed, 0)
        check_probability(p_repeat)
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}; got {mode!r}")
        # A str, not a Path, in the hyper-parameters: checkpoints then load with
        # torch.load(weights_only=True) (stpn_analysis reads them that way).
        data_dir = os.fspath(data_dir)
        self.save_hyperparameters()
        self.d, self.seq_len, self.repeat_distance, self.p_repeat = d, seq_len, repeat_distance, \
            float(p_repeat)
        self.mode, self.seed, self.batch_size = mode, seed, batch_size
        self.iterations_per_epoch = iterations_per_epoch
        self.sizes = {"train": batch_size, "val": val_sequences, "test": test_sequences}
        self.cache = ArrayCache(data_dir, "familiarity")
        self.fixed: dict[str, tuple[Tensor, Tensor]] = {}

    def draw(self, stream: str, index: int, num_sequences: int) -> Arrays:
        """Batch ``index`` of ``stream``: the same arrays for the same parameters and seed."""
        rng = np.random.default_rng(np.random.SeedSequence(
            [self.seed, STREAMS.index(stream), index]))
        patterns, labels = generate(num_sequences, self.seq_len, self.d, self.repeat_distance,
                                    self.p_repeat, rng)
        return {"patterns": patterns, "labels": labels}

    def cache_key(self, split: str) -> dict[str, Any]:
        """Every parameter the content of a cached ``split`` depends on."""
        return {"task": "familiarity", "format": FORMAT_VERSION, "split": split,
                "size": self.sizes[split], "d": self.d, "seq_len": self.seq_len,
                "repeat_distance": self.repeat_distance, "p_repeat": self.p_repeat,
                "seed": self.seed}

    def _cached(self, split: str) -> Arrays:
        shape = (self.sizes[split], self.seq_len)

        def valid(arrays: Arrays) -> bool:
            patterns, labels = arrays["patterns"], arrays["labels"]
            return (patterns.shape == (*shape, self.d) and labels.shape == shape
                    and bool(np.all(np.abs(patterns) == 1)) and labels.max(initial=0) <= 1)

        return self.cache.load_or_generate(self.cache_key(split), ("patterns", "labels"),
                                           lambda: self.draw(split, 0, self.sizes[split]), valid)

    def prepare_data(self) -> None:
        """Generate and cache the fixed sequences of the ``dat`` mode once (one process per
        node); the ranks read the same files in :meth:`setup`."""
        if self.mode == "dat":
            for split in ("train", "val"):
                self._cached(split)

    def setup(self, stage: str | None = None) -> None:
        """Hold the fixed sets ``stage`` needs in memory: the ``dat`` training sequence, the
        validation set (cached in ``dat`` mode, drawn in ``inf`` mode) and the test set (always
        fresh: drawn from its own stream, never seen in training)."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("test",)}.get(stage or "", STREAMS)
        for split in needed:
            if split in self.fixed or (split == "train" and self.mode == "inf"):
                continue
            cached = self.mode == "dat" and split != "test"
            arrays = self._cached(split) if cached else self.draw(split, 0, self.sizes[split])
            self.fixed[split] = _as_tensors(arrays)

    def _loader(self, split: str) -> DataLoader:
        if split not in self.fixed:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        if split == "train":
            dataset = _Batches(self, "train", self.fixed.get("train"))
            return DataLoader(dataset, batch_size=None,
                              sampler=_IterationSampler(self.iterations_per_epoch))
        return DataLoader(_Batches(self, split, self.fixed[split]), batch_size=None,
                          sampler=[0])

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
