"""``python -m stpn_supervised fit|validate|test --config …``: Lightning's CLI over
:class:`SequenceClassifier` and :class:`AssociativeRetrievalDataModule`.

Every option of the model, the data and the ``Trainer`` is a flag or a YAML key, so DDP needs no
code: ``--trainer.strategy ddp --trainer.devices 2`` (gloo on CPU, NCCL on GPU).
``--config`` also accepts the name of a packaged config, e.g. ``--config ar/stpn``.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from stpn_supervised.data import AssociativeRetrievalDataModule
from stpn_supervised.module import SequenceClassifier

CONFIG_MODELS = ("stpn", "rnn", "lstm", "fast_weights", "modplast",
                 "hebbff", "stpn_scalar", "stpnf", "stpnf_scalar")
"""One packaged config per model of the paper's comparison (spec §5.4): the five main models,
then the four ablations."""


def config_path(name: str) -> Path:
    """Path of a packaged config: ``"stpn"`` or ``"ar/stpn"`` -> ``…/configs/ar/stpn.yaml``."""
    stem = name.removeprefix("ar/").removesuffix(".yaml")
    if stem not in CONFIG_MODELS:
        raise ValueError(f"config: expected one of {', '.join(CONFIG_MODELS)}; got {name!r}")
    return Path(str(resources.files("stpn_supervised") / "configs" / "ar" / f"{stem}.yaml"))


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


def main(args: list[str] | None = None) -> LightningCLI:
    """Run the CLI on ``args`` (default: ``sys.argv[1:]``)."""
    return LightningCLI(
        SequenceClassifier,
        AssociativeRetrievalDataModule,
        args=_resolve_configs(sys.argv[1:] if args is None else args),
        save_config_kwargs={"overwrite": True},
    )
