"""Run folders for Lightning training that survive ``kill -9`` and never have two writers.

A :class:`RunFolder` is what ``reproduce_ar`` (and any other experiment of this package) does with
``<out>/<model>/seed<k>/``:

    with RunFolder(run_dir) as run:              # one writer: a second process gets CommandError
        if run.is_finished(METRIC_KEYS, epochs):
            return run.read_metrics()
        run.write_config(config)
        trainer = run.fit(module, data, max_epochs=epochs)  # from the last valid checkpoint
        results = trainer.test(module, data, ckpt_path=run.best.best_model_path)
        run.finish(metrics)  # metrics.csv made whole, metrics.json written last

Resuming gives the run an uninterrupted one would have: every checkpoint holds the global random
states (:class:`RandomStates`), so the data order and any sampling after the resume are those of
the uninterrupted run; checkpoints are written atomically (:class:`AtomicCheckpointIO`); an
unreadable latest checkpoint is reported and the previous valid one is used.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, Timer
from lightning.pytorch.loggers import CSVLogger
from stpn_core.cli import CommandError
from stpn_core.files import RunLock, RunLockedError, atomic_path, write_text_atomic

__all__ = ["AtomicCheckpointIO", "EpochLine", "RandomStates", "RunFolder", "checkpoint_callbacks",
           "find_resume_checkpoint"]

LAST = "last.ckpt"
UNREADABLE = (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError,
              zipfile.BadZipFile, KeyError)
"""What ``torch.load`` raises on a truncated or garbled file."""


class RandomStates(Callback):
    """Keep the global random states of torch (CPU and CUDA), NumPy and Python in every
    checkpoint, and restore them when training resumes from it.

    Without them a resumed run draws the next epoch's shuffling seed from the state right after
    model construction (the one the uninterrupted run used for epoch 0), so it sees another data
    order and ends elsewhere. Lightning restores callback states before the first training
    iterator is made, which is where the next draw happens. NumPy's key array is stored as a
    tensor so that the checkpoint still loads with ``torch.load(weights_only=True)``."""

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states()
        kind, key, position, has_gauss, gauss = states["numpy"]
        states["numpy"] = (kind, torch.from_numpy(key.astype(np.int64)), position, has_gauss,
                           gauss)
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        kind, key, position, has_gauss, gauss = state_dict["numpy"]
        numpy_state = (kind, key.numpy().astype(np.uint32), position, has_gauss, gauss)
        _set_rng_states({**state_dict, "numpy": numpy_state})


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made durable: the checkpoint is written to a temporary file
    in the same folder, flushed to disk and renamed into place, so a kill or a power cut leaves
    the previous checkpoint intact rather than a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike[str],
                        storage_options: Any | None = None) -> None:
        with atomic_path(path) as temporary:
            super().save_checkpoint(checkpoint, temporary, storage_options)


def checkpoint_callbacks(dirpath: Path, monitor: str = "val/acc",
                         mode: str = "max") -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """The best checkpoint by ``monitor``, and ``last.ckpt`` rewritten every epoch.

    A separate callback for ``last.ckpt``: Lightning 2.6's ``save_last=True`` rewrites it only
    when the monitored checkpoint improves, so a resume would restart from the best epoch.
    """
    best = ModelCheckpoint(dirpath=dirpath, filename="best-epoch{epoch:03d}", monitor=monitor,
                           mode=mode, auto_insert_metric_name=False)
    latest = ModelCheckpoint(dirpath=dirpath, filename="last", enable_version_counter=False)
    return best, latest


class EpochLine(Callback):
    """One line per epoch on stdout (``<name> epoch 3/20: val/acc 0.5123``): readable when
    several runs train at once in parallel processes, where progress bars would interleave."""

    def __init__(self, name: str, monitor: str = "val/acc") -> None:
        self.name, self.monitor = name, monitor

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        shown = f"{self.monitor} {float(value):.4f}" if value is not None else "validated"
        print(f"{self.name} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {shown}",
              flush=True)


def find_resume_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from in ``folder`` and its epoch and step (loaded on the CPU, so
    that a run trained on a GPU resumes anywhere), or ``None`` when there is none.

    ``last.ckpt`` first, then the other checkpoints, newest first. An unreadable one is reported
    with a warning naming it, renamed to ``<name>.unreadable`` (so that neither a later resume
    nor the analysis trips on it again) and the next is tried. Call it only as the folder's
    writer."""
    if not folder.is_dir():
        return None
    others = sorted((p for p in folder.glob("*.ckpt") if p.name != LAST),
                    key=lambda p: p.stat().st_mtime_ns, reverse=True)
    candidates = ([folder / LAST] if (folder / LAST).is_file() else []) + others
    for path in candidates:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            return path, {"epoch": checkpoint["epoch"], "global_step": checkpoint["global_step"]}
        except UNREADABLE as error:
            aside = path.with_name(f"{path.name}.unreadable")
            path.replace(aside)
            warnings.warn(f"checkpoint {path} is unreadable ({type(error).__name__}: "
                          f"{' '.join(str(error).split())[:200]}); moved to {aside.name}, "
                          "trying the previous one", stacklevel=2)
    return None


def _read_log(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _write_log(path: Path, rows: list[dict[str, str]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as temporary, temporary.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


class RunFolder:
    """One run's folder: ``config.yaml``, ``logs/metrics.csv``, ``checkpoints/`` and
    ``metrics.json`` (docs/run-format.md), written by one process at a time.

    Use as a context manager: entering takes the folder's :class:`~stpn_core.files.RunLock`
    (a second writer gets a :class:`~stpn_core.cli.CommandError` naming the folder and the pid
    holding it), leaving releases it. ``lock=False`` is for a worker process whose parent holds
    the lock for it (a parent that locks every run before dispatching them to workers).
    """

    def __init__(self, path: str | os.PathLike[str], lock: bool = True) -> None:
        self.path = Path(path)
        self.locks = lock
        self.checkpoints = self.path / "checkpoints"
        self.log_path = self.path / "logs" / "metrics.csv"
        self._previous_log = self.log_path.with_name("previous_metrics.csv")
        self._lock = RunLock(self.path)
        self.best: ModelCheckpoint | None = None
        self.timer = Timer()

    def __enter__(self) -> RunFolder:
        if not self.locks:
            return self
        try:
            self._lock.acquire()
        except RunLockedError as error:
            raise CommandError(str(error)) from error
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._lock.release()

    def read_metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` as a dict, or ``None`` when it is missing or unreadable."""
        try:
            metrics = json.loads((self.path / "metrics.json").read_text())
        except (OSError, ValueError):
            return None
        return metrics if isinstance(metrics, dict) else None

    def is_finished(self, keys: Iterable[str], epochs: int) -> bool:
        """Whether ``metrics.json`` holds every key of ``keys`` and at least ``epochs`` epochs
        (a shorter run is continued from its last checkpoint, so it can be extended later)."""
        metrics = self.read_metrics()
        return (metrics is not None and all(key in metrics for key in keys)
                and metrics.get("epochs", -1) >= epochs)

    def write_config(self, config: dict[str, Any]) -> None:
        write_text_atomic(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def fit(self, module: L.LightningModule, data: L.LightningDataModule, max_epochs: int,
            monitor: str = "val/acc", mode: str = "max", callbacks: Sequence[Callback] = (),
            **trainer_options: Any) -> L.Trainer:
        """Train ``module`` to ``max_epochs``, from the last valid checkpoint when there is one,
        and return the trainer (for testing). Logs go to ``logs/metrics.csv``, checkpoints to
        ``checkpoints/``; :attr:`best` is the best-``monitor`` checkpoint callback and
        :attr:`timer` counts the training time over every attempt."""
        self._require_lock()
        for stale in self.checkpoints.glob(".*.tmp"):  # left by a kill during a write
            stale.unlink()
        self.best, latest = checkpoint_callbacks(self.checkpoints, monitor, mode)
        trainer = L.Trainer(
            max_epochs=max_epochs, default_root_dir=self.path,
            logger=CSVLogger(self.path, name="logs", version=""),
            callbacks=[self.best, latest, self.timer, RandomStates(), *callbacks],
            plugins=[AtomicCheckpointIO()], **{"devices": 1, **trainer_options},
        )
        resume = find_resume_checkpoint(self.checkpoints)
        self._set_aside_log(resume[1]["epoch"] if resume else -1)
        trainer.fit(module, data, ckpt_path=resume[0] if resume else None)
        return trainer

    def finish(self, metrics: dict[str, Any]) -> None:
        """Put the rows of earlier attempts back into ``metrics.csv``, then write
        ``metrics.json`` atomically (its presence marks the run finished)."""
        self._require_lock()
        if self._previous_log.is_file():
            _write_log(self.log_path, _read_log(self._previous_log) + _read_log(self.log_path))
            self._previous_log.unlink()
        write_text_atomic(self.path / "metrics.json", json.dumps(metrics, indent=2))

    def _set_aside_log(self, resumed_epoch: int) -> None:
        """CSVLogger deletes ``metrics.csv`` when training resumes. Before that, keep the rows
        up to the resumed checkpoint's epoch (the last it completed) in
        ``previous_metrics.csv``, so that they survive even if this attempt is killed too."""
        rows = _read_log(self._previous_log) + _read_log(self.log_path)
        kept = [row for row in rows if row.get("epoch") and int(row["epoch"]) <= resumed_epoch]
        if kept:
            _write_log(self._previous_log, kept)
        else:
            self._previous_log.unlink(missing_ok=True)

    def _require_lock(self) -> None:
        if self.locks and not self._lock.held:
            raise RuntimeError(f"RunFolder({self.path}): use it in a `with` block (it writes "
                               "only while it holds the folder's lock)")
