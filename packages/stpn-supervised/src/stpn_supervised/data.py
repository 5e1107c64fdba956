"""The associative retrieval task (docs/model.md §5.1) as a ``LightningDataModule``.

A sequence ``k1 v1 … kn vn ? ? q`` shows ``n`` key–value pairs (distinct letters, digits drawn
with replacement), then asks for the value of one of the keys. Answering needs a memory that
binds each key to its value within the sequence, which is what short-term plasticity provides.

Fixes against the original code (docs/model.md §10, items 13–15): each split is generated from its
own seeded stream and cached under a key of every generation parameter and the seed (the original
keyed the cache by size only, so every seed reused the first data set), generation is vectorised and
NumPy 2 compatible, the training set is reshuffled every epoch and no evaluation sample is dropped.
Splits are drawn independently, like the original, so a handful of sequences can occur in two splits
(about 40 of 20 000 test sequences at the paper's sizes, out of 46.8 million).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from stpn_supervised.datacache import ArrayCache, Arrays, check_int

NUM_KEYS = 26
"""Letters a–z (indices 0–25), the keys."""
NUM_VALUES = 10
"""Digits 0–9 (indices 26–35), the values."""
QUERY = NUM_KEYS + NUM_VALUES
"""Index of the '?' symbol (36)."""
VOCAB_SIZE = QUERY + 1
"""37 symbols: the one-hot input width and the number of output classes."""
SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
"""Bump when the generator changes, so that old cache files are not reused."""


def sequence_length(num_pairs: int) -> int:
    """``2 * num_pairs + 3``: the pairs, two '?' symbols and the query key."""
    return 2 * num_pairs + 3


def generate(num_sequences: int, num_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                       np.ndarray]:
    """Draw ``num_sequences`` sequences at once.

    Returns ``tokens`` ``(N, 2n+3)`` uint8 symbol indices and ``targets`` ``(N,)`` int64 class
    indices (always a digit, 26–35).
    """
    check_int("num_sequences", num_sequences, 0)
    check_int("num_pairs", num_pairs, 1, NUM_KEYS)
    rows = np.arange(num_sequences)
    # Distinct keys: the first num_pairs letters of a random permutation of the 26 per sequence.
    keys = np.argsort(rng.random((num_sequences, NUM_KEYS)), axis=1)[:, :num_pairs]
    values = NUM_KEYS + rng.integers(0, NUM_VALUES, size=(num_sequences, num_pairs))
    asked = rng.integers(0, num_pairs, size=num_sequences)
    tokens = np.empty((num_sequences, sequence_length(num_pairs)), dtype=np.uint8)
    tokens[:, 0 : 2 * num_pairs : 2] = keys
    tokens[:, 1 : 2 * num_pairs : 2] = values
    tokens[:, 2 * num_pairs : 2 * num_pairs + 2] = QUERY
    tokens[:, -1] = keys[rows, asked]
    return tokens, values[rows, asked].astype(np.int64)


def decode(tokens: np.ndarray | Tensor) -> str:
    """Readable form of one sequence of symbol indices, e.g. ``'c4u3o0??o'``."""
    symbols = "abcdefghijklmnopqrstuvwxyz0123456789?"
    return "".join(symbols[int(t)] for t in tokens)


def _split_seed(seed: int, split: str) -> np.random.SeedSequence:
    """Independent stream per split, so that a split's content depends only on its own
    parameters (a smaller training set leaves the validation and test sets unchanged)."""
    return np.random.SeedSequence([seed, SPLITS.index(split)])


class AssociativeRetrievalDataModule(L.LightningDataModule):
    """Train/val/test loaders of one-hot sequences ``x`` ``(B, 2n+3, 37)`` float32 and class
    indices ``y`` ``(B,)``.

    Args:
        num_pairs: key–value pairs per sequence (1–26; the paper uses 3).
        train_size, val_size, test_size: sequences per split (paper: 100k, 10k, 20k).
        batch_size: sequences per batch (paper: 128).
        seed: seeds the generation of every split.
        data_dir: cache folder; one ``.npz`` per split, named by a hash of its parameters.
        num_workers: loader worker processes (0 is fastest: the data are already in memory).
    """

    def __init__(self, num_pairs: int = 3, train_size: int = 100_000, val_size: int = 10_000,
                 test_size: int = 20_000, batch_size: int = 128, seed: int = 0,
                 data_dir: str | os.PathLike[str] = "data/ar", num_workers: int = 0) -> None:
        super().__init__()
        check_int("num_pairs", num_pairs, 1, NUM_KEYS)
        for name, size in (("train_size", train_size), ("val_size", val_size),
                           ("test_size", test_size), ("batch_size", batch_size)):
            check_int(name, size, 1)
        check_int("seed", seed, 0)
        check_int("num_workers", num_workers, 0)
        self.save_hyperparameters()
        self.num_pairs, self.batch_size, self.seed = num_pairs, batch_size, seed
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.data_dir = Path(data_dir)
        self.num_workers = num_workers
        self.datasets: dict[str, TensorDataset] = {}

    @property
    def sequence_length(self) -> int:
        return sequence_length(self.num_pairs)

    def cache_key(self, split: str) -> dict[str, Any]:
        """Every parameter the content of ``split`` depends on."""
        return {"task": "associative_retrieval", "format": FORMAT_VERSION, "split": split,
                "size": self.sizes[split], "num_pairs": self.num_pairs, "seed": self.seed}

    def cache_path(self, split: str) -> Path:
        return self._cache(split).path(self.cache_key(split))

    def _cache(self, split: str) -> ArrayCache:
        return ArrayCache(self.data_dir, f"ar_{split}")

    def _generate(self, split: str) -> Arrays:
        rng = np.random.default_rng(_split_seed(self.seed, split))
        tokens, targets = generate(self.sizes[split], self.num_pairs, rng)
        return {"tokens": tokens, "targets": targets}

    def _load_or_generate(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        expected = (self.sizes[split], self.sequence_length)

        def valid(arrays: Arrays) -> bool:
            tokens, targets = arrays["tokens"], arrays["targets"]
            return (tokens.shape == expected and targets.shape == expected[:1]
                    and tokens.max(initial=0) < VOCAB_SIZE)

        arrays = self._cache(split).load_or_generate(
            self.cache_key(split), ("tokens", "targets"), lambda: self._generate(split), valid)
        return arrays["tokens"], arrays["targets"]

    def prepare_data(self) -> None:
        """Generate and cache every split once (Lightning calls this on one process per node);
        the ranks then read the same files in :meth:`setup`."""
        for split in SPLITS:
            self._load_or_generate(split)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs (generating any that is missing, e.g. outside a
        Trainer; generation is deterministic, so every rank gets the same data)."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("test",)}.get(stage or "", SPLITS)
        for split in needed:
            if split not in self.datasets:
                tokens, targets = self._load_or_generate(split)
                self.datasets[split] = TensorDataset(torch.from_numpy(tokens.astype(np.int64)),
                                                     torch.from_numpy(targets))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return DataLoader(
            self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
            drop_last=False, num_workers=self.num_workers, collate_fn=one_hot_collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def one_hot_collate(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack a batch of ``(tokens, target)`` and one-hot encode the tokens in one call: the
    cache and the datasets hold compact indices, the model sees ``(B, T, 37)`` float32."""
    tokens = torch.stack([item[0] for item in batch])
    targets = torch.stack([item[1] for item in batch])
    return torch.nn.functional.one_hot(tokens, VOCAB_SIZE).float(), targets
