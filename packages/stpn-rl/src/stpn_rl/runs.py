"""Files of a run directory (docs/run-format.md): atomic JSON writes, the CSV log kept whole
across sessions, and loading a run back for evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from sb3_contrib import RecurrentPPO
from stpn_core.files import write_text_atomic

from stpn_rl.checkpoints import ALGORITHMS, list_checkpoints
from stpn_rl.config import read_yaml, settings_section

FINAL_MODEL = "final.zip"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically and durably."""
    write_text_atomic(path, json.dumps(data, indent=2))


def remove_temporaries(run_dir: Path) -> None:
    """Delete the temporary files of writes a killed session left half-done (only the holder of
    the run folder's lock may call this: another writer's would be live)."""
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "logs"):
        for path in folder.glob(".*.tmp"):
            path.unlink()


def _part_index(path: Path) -> int:
    return int(path.stem.split("part")[1])


def set_progress_aside(logs: Path) -> None:
    """Rename ``progress.csv`` to the next ``progress.part<k>.csv`` before a session resumes:
    SB3's logger starts a new file, and :func:`merge_progress` joins them at the end."""
    if (logs / "progress.csv").is_file():
        index = 1 + max((_part_index(p) for p in logs.glob("progress.part*.csv")), default=-1)
        (logs / "progress.csv").rename(logs / f"progress.part{index}.csv")


def merge_progress(logs: Path) -> None:
    """Join the CSV logs of interrupted and resumed sessions into ``progress.csv``; rows an
    earlier session logged past the checkpoint a later one resumed from are dropped."""
    parts = sorted(logs.glob("progress.part*.csv"), key=_part_index)
    if not parts:
        return
    paths = [*parts, logs / "progress.csv"]
    frames = [pd.read_csv(p) for p in paths if p.is_file() and p.stat().st_size > 0]
    merged = frames[0]
    for frame in frames[1:]:
        first = frame["time/total_timesteps"].min()
        merged = pd.concat([merged[merged["time/total_timesteps"] < first], frame])
    write_text_atomic(logs / "progress.csv", merged.to_csv(index=False))
    for p in parts:
        p.unlink()


def load_run(
    run_dir: str | Path, device: str | torch.device | None = None
) -> tuple[RecurrentPPO, dict[str, Any]]:
    """The final (or latest) model of a run directory, on ``device`` (default: the run's
    configured ``ppo.device``, else the best available), and its resolved configuration."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"run_dir: {run_dir} has no config.yaml")
    config = read_yaml(config_path)
    final = run_dir / "checkpoints" / FINAL_MODEL
    checkpoints = [final] if final.is_file() else list_checkpoints(run_dir / "checkpoints")
    if not checkpoints:
        raise ValueError(f"run_dir: {run_dir} has no checkpoint")
    algo = config.get("algo", "ppo")
    device = device or config.get(settings_section(algo), {}).get("device", "auto")
    return ALGORITHMS[algo].load(checkpoints[0], device=device), config
