"""``python -m stpn_supervised fit|validate|test --config …``: Lightning's CLI over the model and
data module of each task (:class:`SequenceClassifier` with :class:`AssociativeRetrievalDataModule`,
:class:`FamiliarityClassifier` with :class:`FamiliarityDataModule`).

Every option of the model, the data and the ``Trainer`` is a flag or a YAML key, so DDP needs no
code: ``--trainer.strategy ddp --trainer.devices 2`` (gloo on CPU, NCCL on GPU).
``--config`` also accepts the name of a packaged config, e.g. ``--config ar/stpn`` or
``--config familiarity/stpnr``; the task is the one whose data module takes the config's
``data`` keys.
"""

from __future__ import annotations

import inspect
import sys
from importlib import resources
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI

from stpn_supervised.data import AssociativeRetrievalDataModule
from stpn_supervised.familiarity import FamiliarityDataModule
from stpn_supervised.familiarity_module import FamiliarityClassifier
from stpn_supervised.module import SequenceClassifier

CONFIG_MODELS = ("stpn", "rnn", "lstm", "fast_weights", "modplast",
                 "hebbff", "stpn_scalar", "stpnf", "stpnf_scalar")
"""One packaged config per model of the paper's associative retrieval comparison: the five main
models, then the four ablations."""
FAMILIARITY_MODELS = ("hebbff", "ustpnf", "stpnf", "ustpnr", "stpnr", "lstm")
"""One packaged config per model of the continual familiarity comparison (Tyulmankov et al.'s
HebbFF, the four STPN variants — u: scalar Λ and Γ, f: feed-forward, r: recurrent — and the
LSTM)."""
TASK_MODELS = {"ar": CONFIG_MODELS, "familiarity": FAMILIARITY_MODELS}
TASK_CLASSES: dict[str, tuple[type[L.LightningModule], type[L.LightningDataModule]]] = {
    "ar": (SequenceClassifier, AssociativeRetrievalDataModule),
    "familiarity": (FamiliarityClassifier, FamiliarityDataModule),
}


def config_path(name: str) -> Path:
    """Path of a packaged config: ``"stpn"`` or ``"ar/stpn"`` -> ``…/configs/ar/stpn.yaml``,
    ``"familiarity/stpnr"`` -> ``…/configs/familiarity/stpnr.yaml``."""
    task, _, stem = name.removesuffix(".yaml").rpartition("/")
    task = task or "ar"
    if task not in TASK_MODELS or stem not in TASK_MODELS[task]:
        choices = ", ".join(f"{t}/{m}" for t, models in TASK_MODELS.items() for m in models)
        raise ValueError(f"config: expected one of {choices}; got {name!r}")
    return Path(str(resources.files("stpn_supervised") / "configs" / task / f"{stem}.yaml"))


def _resolve_configs(args: list[str]) -> list[str]:
    """Replace ``--config NAME`` by the packaged file when NAME is not a file on disk."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        key, _, value = arg.partition("=")
        if key == "--config" and value and not Path(value).exists():
            resolved[i] = f"--config={config_path(value)}"
        elif arg == "--config" and i + 1 < len(resolved) and not Path(resolved[i + 1]).exists():
            resolved[i + 1] = str(config_path(resolved[i + 1]))
    return resolved


def task_of(args: list[str]) -> str:
    """The task of the (resolved) arguments: the first whose data module accepts every ``data``
    key of the ``--config`` files; associative retrieval when no config says otherwise."""
    keys: set[str] = set()
    for i, arg in enumerate(args):
        key, _, value = arg.partition("=")
        path = value if key == "--config" and value else (
            args[i + 1] if arg == "--config" and i + 1 < len(args) else None)
        if path is not None and Path(path).is_file():
            data = (yaml.safe_load(Path(path).read_text()) or {}).get("data") or {}
            keys |= set(data)
    for task, (_, datamodule) in TASK_CLASSES.items():
        if keys <= set(inspect.signature(datamodule.__init__).parameters):
            return task
    return "ar"


def main(args: list[str] | None = None) -> LightningCLI:
    """Run the CLI on ``args`` (default: ``sys.argv[1:]``)."""
    resolved = _resolve_configs(sys.argv[1:] if args is None else args)
    model, data = TASK_CLASSES[task_of(resolved)]
    return LightningCLI(model, data, args=resolved, save_config_kwargs={"overwrite": True})
