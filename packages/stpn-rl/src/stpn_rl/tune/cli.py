"""The command line of ``python -m stpn_rl.tune``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import optuna
import yaml
from stpn_core.cli import ArgumentParser

from stpn_rl.config import load_config
from stpn_rl.search_spaces import check_fixed, search_space
from stpn_rl.tasks import TASKS
from stpn_rl.tune.objective import Objective, make_objective
from stpn_rl.tune.options import PRUNERS, SAMPLERS, TuneOptions
from stpn_rl.tune.study import open_study, state_counts, summary, write_results


def load_base(options: TuneOptions) -> dict[str, Any]:
    """The configuration trials start from; ``ValueError`` if a ``--fix`` is not searched or
    lies outside its search space."""
    base = load_config(options.task, options.core, options.config)
    check_fixed(search_space(options.task, options.core, base), options.fix or {})
    return base


def run(options: TuneOptions, objective: Objective | None = None) -> tuple[optuna.Study, bool]:
    """Run ``n_trials`` more trials (or until ``timeout``), write and print the results.

    ``objective`` defaults to :func:`make_objective`. Returns the study and whether Ctrl-C
    interrupted it (the results are written all the same).
    """
    base = load_base(options)
    study = open_study(options, base)
    interrupted = False
    try:
        study.optimize(
            objective or make_objective(options, base),
            n_trials=options.n_trials,
            timeout=options.timeout,
            n_jobs=options.n_jobs,
            catch=(Exception,),
            show_progress_bar=options.n_jobs == 1,
            gc_after_trial=True,
        )
    except KeyboardInterrupt:
        interrupted = True
    written = write_results(study, options, base)
    print(summary(study, written), flush=True)
    return study, interrupted


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append ``(default: ...)`` only where there is a default: a flag without one says in its
    own help what happens when it is left out."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def parser() -> ArgumentParser:
    """The CLI: one flag per :class:`TuneOptions` field."""
    defaults = {f.name: f.default for f in fields(TuneOptions)}
    p = ArgumentParser(
        prog="python -m stpn_rl.tune",
        description="Optuna sweep of a task's RecurrentPPO agent; resumable, multi-worker.",
        formatter_class=_HelpFormatter,
    )
    add = p.add_argument
    add("--task", required=True, help=f"one of {sorted(TASKS)}")
    add("--core", required=True, help="a stpn_core model name (stpn, lstm, ...)")
    add("--n-trials", type=int, default=defaults["n_trials"], help="trials to add to the study")
    add("--timeout", type=float, help="seconds after which no new trial starts")
    add("--n-timesteps", type=int, default=defaults["n_timesteps"], help="training steps/trial")
    add(
        "--n-evaluations",
        type=int,
        default=defaults["n_evaluations"],
        help="evaluations (pruning points) per trial",
    )
    add("--n-eval-episodes", type=int, help="episodes/evaluation (default: the config's)")
    add("--sampler", default=defaults["sampler"], help=f"one of {SAMPLERS}")
    add("--pruner", default=defaults["pruner"], help=f"one of {PRUNERS}")
    add(
        "--n-startup-trials",
        type=int,
        default=defaults["n_startup_trials"],
        help="random trials before TPE; complete trials before median pruning",
    )
    add("--n-jobs", type=int, default=defaults["n_jobs"], help="trials in parallel threads")
    add("--storage", help="SQLAlchemy URL (default: sqlite:///OUT/study.db)")
    add("--study-name", help="default: TASK-CORE")
    add("--seed", type=int, help="seeds the sampler; trial k trains with seed + k")
    add(
        "--heartbeat-interval",
        type=int,
        default=defaults["heartbeat_interval"],
        help="seconds; a trial silent for twice as long is failed and retried once",
    )
    add(
        "--fix",
        action="append",
        metavar="NAME=VALUE",
        help="do not search NAME, use VALUE (repeatable); see stpn_rl.search_spaces",
    )
    add("--config", type=Path, help="base config YAML (default: the task's and core's)")
    add("--out", type=Path, help="output directory (default: runs/tune/TASK/CORE)")
    return p


def parse_fix(item: str) -> tuple[str, Any]:
    """``"NAME=VALUE"`` -> ``(NAME, VALUE)``, the value read as YAML (``0.001``, ``null``)."""
    name, equals, value = item.partition("=")
    if not equals or not name:
        raise ValueError(f"fix: expected NAME=VALUE, got {item!r}")
    return name.strip(), yaml.safe_load(value)


def main(argv: Sequence[str] | None = None, objective: Objective | None = None) -> int:
    """Run the CLI. Exit status: 0, 1 when no trial of the study completed, 2 for bad
    arguments (one ``error: ...`` line), 130 after Ctrl-C. ``python -m stpn_rl.tune`` runs it
    through :func:`stpn_core.cli.run_command`, which turns any other error into one line."""
    cli = parser()
    args = cli.parse_args(argv)
    del args.debug  # read by run_command
    try:
        args.fix = dict(parse_fix(item) for item in args.fix) if args.fix else None
        options = TuneOptions(**vars(args))
        load_base(options)
    except (TypeError, ValueError) as error:
        cli.error(str(error))
    optuna.logging.set_verbosity(optuna.logging.INFO)
    study, interrupted = run(options, objective)
    return 130 if interrupted else 0 if state_counts(study)["COMPLETE"] else 1
