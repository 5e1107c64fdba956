"""Finding and reading run directories (docs/run-format.md), tolerant of unfinished runs.

A runs tree is written by several long jobs, some of which may still be running or may have
died; one bad run must not hide all the others. So a run whose ``metrics.json`` is missing or
unreadable is skipped with a warning that names the file, while a directory that holds no run
at all is an error, because then there is nothing to report.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

REQUIRED_KEYS = ("task", "model", "seed", "params", "proficiency", "energy_per_step")
CURVE_FILES = ("metrics.csv", "progress.csv")  # Lightning CSVLogger, SB3 CSV logger
PLASTICITY_SUFFIXES = ("weight_lambda", "weight_gamma")
SEED_DIR = re.compile(r"seed\d+")


@dataclass(frozen=True)
class Run:
    """One finished run: its identity, its final figures and its logged curves (if any)."""

    task: str
    model: str
    seed: int
    path: Path
    metrics: dict[str, Any]
    curves: pd.DataFrame | None

    @property
    def is_rl(self) -> bool:
        """RL runs report a mean episode reward, supervised runs an accuracy."""
        name = self.metrics.get("proficiency_name")
        return name == "mean_reward" or (name is None and "mean_reward" in self.metrics)


def _run_dirs(root: Path) -> list[Path]:
    """``seed<k>`` directories and any directory holding a ``metrics.json``, sorted."""
    found = {p for p in root.rglob("*") if p.is_dir() and SEED_DIR.fullmatch(p.name)}
    found |= {p.parent for p in root.rglob("metrics.json")}
    if SEED_DIR.fullmatch(root.name) or (root / "metrics.json").is_file():
        found.add(root)
    return sorted(found)


def _read_metrics(path: Path) -> dict[str, Any] | None:
    """The parsed ``metrics.json``, or ``None`` after a warning naming the file and the fault."""
    if not path.is_file():
        warnings.warn(f"skipping run {path.parent}: {path} is missing", stacklevel=3)
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.warn(f"skipping run: {path} is not valid JSON ({exc})", stacklevel=3)
        return None
    if not isinstance(metrics, dict):
        warnings.warn(f"skipping run: {path} does not hold a JSON object", stacklevel=3)
        return None
    missing = [key for key in REQUIRED_KEYS if key not in metrics]
    if missing:
        warnings.warn(f"skipping run: {path} lacks {', '.join(missing)}", stacklevel=3)
        return None
    return metrics


def _read_curves(run_dir: Path) -> pd.DataFrame | None:
    """The run's CSV log (``logs/metrics.csv`` or ``logs/progress.csv``, else the newest one in
    a ``logs/`` subfolder such as Lightning's ``version_k``), or ``None`` if there is none."""
    logs = run_dir / "logs"
    candidates = [logs / name for name in CURVE_FILES if (logs / name).is_file()]
    if not candidates and logs.is_dir():
        nested = [p for name in CURVE_FILES for p in logs.rglob(name)]
        candidates = sorted(nested, key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            return pd.read_csv(path)
        except (OSError, ValueError) as exc:  # pandas' parser errors are ValueErrors
            warnings.warn(f"ignoring curves of {run_dir}: {path} unreadable ({exc})", stacklevel=3)
    return None


def load_runs(runs_dir: str | Path) -> list[Run]:
    """Every readable run under ``runs_dir`` (any depth), sorted by task, model and seed.

    Raises ``FileNotFoundError`` if ``runs_dir`` does not exist and ``ValueError`` if it is not a
    directory or holds no readable run; unreadable runs are skipped with a ``UserWarning``.
    """
    root = Path(runs_dir)
    if not root.exists():
        raise FileNotFoundError(f"runs_dir: {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"runs_dir: expected a directory, got the file {root}")
    runs = []
    for run_dir in _run_dirs(root):
        metrics = _read_metrics(run_dir / "metrics.json")
        if metrics is not None:
            runs.append(
                Run(
                    task=str(metrics["task"]),
                    model=str(metrics["model"]),
                    seed=int(metrics["seed"]),
                    path=run_dir,
                    metrics=metrics,
                    curves=_read_curves(run_dir),
                )
            )
    if not runs:
        raise ValueError(
            f"runs_dir: no readable run under {root} "
            "(expected <task>/<model>/seed<k>/metrics.json, see docs/run-format.md)"
        )
    return sorted(runs, key=lambda r: (r.task, r.model, r.seed))


def _checkpoint_files(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, the final one first: ``last*`` or ``final*`` by name, then newest."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    files = [p for p in folder.rglob("*") if p.suffix in (".ckpt", ".zip") and p.is_file()]
    return sorted(
        files,
        key=lambda p: (not p.stem.startswith(("last", "final")), -p.stat().st_mtime, p.name),
    )


def _state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a Lightning ``*.ckpt`` (its ``state_dict``) or of ``policy.pth`` in an SB3
    zip, on the CPU whatever device saved them. ``weights_only=True``: a runs folder may come
    from elsewhere, so nothing is unpickled."""
    source: Path | io.BytesIO = path
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            source = io.BytesIO(archive.read("policy.pth"))
    data = torch.load(source, map_location="cpu", weights_only=True)
    return data.get("state_dict", data) if isinstance(data, dict) else {}


def load_plasticity(run: Run) -> dict[str, np.ndarray] | None:
    """Learned Λ and Γ of a run's final checkpoint: ``{"lambda": values, "gamma": values}``,
    each the flattened values of every state-dict entry ending in ``weight_lambda`` /
    ``weight_gamma``; ``None`` if no checkpoint holds them (e.g. an LSTM run)."""
    for path in _checkpoint_files(run.path):
        try:
            state = _state_dict(path)
        except (OSError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError,
                zipfile.BadZipFile) as exc:
            warnings.warn(f"ignoring checkpoint {path}: unreadable ({exc})", stacklevel=2)
            continue
        values = {
            suffix.removeprefix("weight_"): [
                v.detach().float().cpu().numpy().ravel()
                for k, v in state.items()
                if k.endswith(suffix) and isinstance(v, torch.Tensor)
            ]
            for suffix in PLASTICITY_SUFFIXES
        }
        if values["lambda"] and values["gamma"]:
            return {name: np.concatenate(arrays) for name, arrays in values.items()}
    return None
