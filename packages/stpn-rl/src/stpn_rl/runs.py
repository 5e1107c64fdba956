"""Files of a run directory (docs/run-format.md): atomic JSON/YAML writes, checkpoints, and
loading a run back for evaluation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from sb3_contrib import RecurrentPPO
from stpn_core.files import write_text_atomic

CHECKPOINT_PREFIX = "rl_model"
_CHECKPOINT = re.compile(rf"{CHECKPOINT_PREFIX}_(\d+)_steps\.zip")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temporary file, then rename)."""
    write_text_atomic(path, json.dumps(data, indent=2))


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint with the most timesteps in ``directory``, if any."""
    found = [
        (int(m.group(1)), p)
        for p in directory.glob("*.zip")
        if (m := _CHECKPOINT.fullmatch(p.name))
    ]
    return max(found)[1] if found else None


def load_run(run_dir: str | Path) -> tuple[RecurrentPPO, dict[str, Any]]:
    """The final (or latest) model of a run directory and its resolved configuration."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"run_dir: {run_dir} has no config.yaml")
    config = yaml.safe_load(config_path.read_text())
    checkpoint = run_dir / "checkpoints" / "final.zip"
    if not checkpoint.is_file():
        checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise ValueError(f"run_dir: {run_dir} has no checkpoint")
    return RecurrentPPO.load(checkpoint, device="cpu"), config
