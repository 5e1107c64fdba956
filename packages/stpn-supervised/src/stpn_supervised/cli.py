"""``python -m stpn_supervised fit|validate|test --config …``: Lightning's CLI over the model and
data module of each task (:class:`SequenceClassifier` with :class:`AssociativeRetrievalDataModule`,
:class:`FamiliarityClassifier` with :class:`FamiliarityDataModule`).

Every option of the model, the data and the ``Trainer`` is a flag or a YAML key, so DDP needs no
code: ``--trainer.strategy ddp --trainer.devices 2`` (gloo on CPU, NCCL on GPU).
``--config`` also accepts the name of a packaged config, e.g. ``--config ar/stpn`` or
``--config familiarity/stpnr``; the task is the one whose data module takes the config's
``data`` keys.

Every error (a missing or invalid config file, an unknown option, a bad value) is one
``error: ...`` line on stderr with exit status 2; ``--debug`` or ``STPN_DEBUG=1`` shows the
traceback.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import NoReturn

import lightning as L
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from stpn_core.cli import EXIT_ERROR, ArgumentParser, CommandError, run_command

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


def reproduce_parser(command: str, doc: str, profiles: Sequence[str], models: Sequence[str],
                     task: str, data_help: str) -> ArgumentParser:
    """The options every ``reproduce_*`` command takes, so the two commands read alike:
    ``--profile``, ``--models``, ``--seeds``, ``--out`` (``runs/<task>``), ``--data-dir``
    (``data/<task>``) and ``--threads``; each command adds its own after these."""
    parser = ArgumentParser(prog=f"python -m stpn_supervised.{command}",
                            description=doc.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=sorted(profiles))
    parser.add_argument("--models", nargs="+", choices=models, default=None,
                        help="default: the profile's models")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="default: the profile's seeds")
    parser.add_argument("--out", default=f"runs/{task}", help=f"runs root (default: runs/{task})")
    parser.add_argument("--data-dir", default=f"data/{task}",
                        help=f"{data_help} (default: data/{task})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: steadiest for these small models)")
    return parser


def config_path(name: str) -> Path:
    """Path of a packaged config: ``"stpn"`` or ``"ar/stpn"`` -> ``…/configs/ar/stpn.yaml``,
    ``"familiarity/stpnr"`` -> ``…/configs/familiarity/stpnr.yaml``."""
    task, _, stem = name.removesuffix(".yaml").rpartition("/")
    task = task or "ar"
    if task not in TASK_MODELS or stem not in TASK_MODELS[task]:
        choices = ", ".join(f"{t}/{m}" for t, models in TASK_MODELS.items() for m in models)
        raise ValueError(f"config: expected one of {choices}; got {name!r}")
    return Path(str(resources.files("stpn_supervised") / "configs" / task / f"{stem}.yaml"))


def _config_file(value: str) -> str:
    """A ``--config`` value as a readable YAML file: the file itself when it exists (checked to
    parse, so that a syntax error names the file), else the packaged config of that name."""
    path = Path(value)
    if path.is_file():
        try:
            content = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise CommandError(f"--config: cannot read {path} as YAML: "
                               f"{' '.join(str(error).split())}") from error
        if not isinstance(content, dict | None):
            raise CommandError(f"--config: {path} holds a {type(content).__name__}; expected a "
                               "mapping of sections (model, data, trainer, ...)")
        return value
    try:
        return str(config_path(value))
    except ValueError as error:
        raise CommandError(f"--config: no file {value}, and not a packaged {error}") from error


def _resolve_configs(args: Sequence[str]) -> list[str]:
    """Check every ``--config`` file, and replace a packaged config's name by its path."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        key, _, value = arg.partition("=")
        if key == "--config" and value:
            resolved[i] = f"--config={_config_file(value)}"
        elif arg == "--config" and i + 1 < len(resolved):
            resolved[i + 1] = _config_file(resolved[i + 1])
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


class OneLineErrorParser(LightningArgumentParser):
    """Lightning's parser, with a usage error reported as one ``error: ...`` line (exit 2)
    instead of the full usage text, like every other stpn command."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse is trying alternatives: let it catch this
            super().error(message, ex)
        sys.stderr.write(f"error: {' '.join(message.split())} "
                         f"(see python -m stpn_supervised --help)\n")
        sys.exit(EXIT_ERROR)


def main(args: Sequence[str] | None = None) -> LightningCLI:
    """Run the CLI on ``args`` (default: the command line); a bad ``--config`` raises
    :class:`~stpn_core.cli.CommandError`, a bad value the model's or data's ``ValueError``."""
    if args is not None:
        return _cli(_resolve_configs(args))
    # From the command line, LightningCLI reads sys.argv itself (it warns when given both).
    sys.argv[1:] = _resolve_configs([arg for arg in sys.argv[1:] if arg != "--debug"])
    return _cli(None)


def _cli(args: list[str] | None) -> LightningCLI:
    model, data = TASK_CLASSES[task_of(sys.argv[1:] if args is None else args)]
    return LightningCLI(model, data, args=args, save_config_kwargs={"overwrite": True},
                        parser_class=OneLineErrorParser)


def run() -> NoReturn:
    """``python -m stpn_supervised``: :func:`main` on the command line, every error one
    ``error: ...`` line (exit 2)."""
    run_command(lambda _arguments: main())

