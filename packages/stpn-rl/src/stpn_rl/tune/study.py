"""The Optuna study of a sweep: sampler, pruner, the shared RDB storage, and what is written
and printed from it (``trials.csv``, ``best.yaml``, the summary)."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
import yaml
from optuna.trial import TrialState
from stpn_core.files import write_text_atomic

from stpn_rl.search_spaces import default_params, sample_config
from stpn_rl.tune.options import TuneOptions

STALE_TRIAL_RETRIES = 1
CREATE_ATTEMPTS = 6


def make_sampler(options: TuneOptions, n_existing: int) -> optuna.samplers.BaseSampler:
    """TPE (random for the first ``n_startup_trials`` trials) or random search.

    ``--seed`` is mixed with the number of trials already in the study, so that a resumed study
    does not draw its first trials' parameters again; without ``--seed`` each worker draws from
    fresh entropy, so that workers started together do not duplicate each other's trials.
    ``--fix`` parameters are not drawn (Optuna's ``PartialFixedSampler``).
    """
    seed = None
    if options.seed is not None:
        seed = int(np.random.SeedSequence([options.seed, n_existing]).generate_state(1)[0])
    if options.sampler == "random":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(n_startup_trials=options.n_startup_trials, seed=seed)
    if not options.fix:
        return sampler
    with warnings.catch_warnings():  # "experimental" since Optuna 2.4
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.PartialFixedSampler(options.fix, sampler)


def make_pruner(options: TuneOptions) -> optuna.pruners.BasePruner:
    """Median (once ``n_startup_trials`` trials completed, after a trial's first third of
    evaluations), successive halving, or none."""
    if options.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=options.n_startup_trials, n_warmup_steps=options.n_evaluations // 3
        )
    if options.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=4)
    return optuna.pruners.NopPruner()


def serialize_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """Make each SQLite transaction take the write lock when it begins (``BEGIN IMMEDIATE``).

    SQLite has no row locks, so two workers (or ``--n-jobs`` threads) could both read a queued
    trial as waiting and both run it; serialising the transactions makes claiming it atomic.
    This is SQLAlchemy's recipe for pysqlite; connections made before it are dropped.
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sqlalchemy.engine.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()


def open_study(options: TuneOptions, base: dict[str, Any]) -> optuna.Study:
    """Create the study, or load it if it exists (a rerun, or another worker's study).

    The worker that creates the study queues the default configuration (``base``, with any
    ``--fix``) as its first trial, the baseline every tuned trial is compared with.

    Heartbeats let a killed worker's trial be failed, then retried once, rather than stay
    "running" for ever. SQLite waits for a lock rather than failing when workers write at once,
    and workers that start together on a new database may race to create its tables: the loser
    (whichever of its statements the server refused) retries and opens the tables the winner
    made.
    """
    engine_kwargs: dict[str, Any] = {}
    if options.storage_url.startswith("sqlite"):
        options.out_dir.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120}}
    for attempt in range(CREATE_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # the heartbeat's "experimental" notice
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    options.storage_url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=options.heartbeat_interval,
                    grace_period=2 * options.heartbeat_interval,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=STALE_TRIAL_RETRIES
                    ),
                )
            break
        except (
            sqlalchemy.exc.IntegrityError,  # PostgreSQL: a duplicate key in its catalogue
            sqlalchemy.exc.OperationalError,  # SQLite: "table ... already exists"
            sqlalchemy.exc.ProgrammingError,  # PostgreSQL: DuplicateTable
        ):
            if attempt == CREATE_ATTEMPTS - 1:
                raise
            time.sleep(0.1 * 2**attempt)  # another worker is creating the same tables
    if options.storage_url.startswith("sqlite"):
        serialize_sqlite(storage.engine)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=options.name,
            direction="maximize",
            pruner=make_pruner(options),
        )
        default = default_params(options.task, options.core, base)
        if default is not None:
            study.enqueue_trial(default | (options.fix or {}), user_attrs={"default": True})
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(
            study_name=options.name, storage=storage, pruner=make_pruner(options)
        )
    study.sampler = make_sampler(options, n_existing=len(study.get_trials(deepcopy=False)))
    return study


def state_counts(study: optuna.Study) -> dict[str, int]:
    """How many trials are in each state, e.g. ``{"COMPLETE": 5, "PRUNED": 1, ...}``."""
    states = [trial.state for trial in study.get_trials(deepcopy=False)]
    return {state.name: states.count(state) for state in TrialState}


def write_results(
    study: optuna.Study, options: TuneOptions, base: dict[str, Any]
) -> dict[str, Path]:
    """``trials.csv`` (every trial) and ``best.yaml`` (once a trial completed) under the output
    directory."""
    written = {"trials": options.out_dir / "trials.csv"}
    write_text_atomic(written["trials"], study.trials_dataframe().to_csv(index=False))
    if state_counts(study)["COMPLETE"]:
        best = study.best_trial
        config = sample_config(
            optuna.trial.FixedTrial(best.params), base, options.task, options.core
        )
        header = (
            f"# Best trial of study {study.study_name!r}: #{best.number}, mean reward "
            f"{best.value:.6g} after {best.user_attrs.get('timesteps', '?')} training steps.\n"
            f"# python -m stpn_rl.train --task {options.task} --core {options.core} "
            "--config THIS_FILE\n"
        )
        written["best"] = options.out_dir / "best.yaml"
        write_text_atomic(written["best"], header + yaml.safe_dump(config, sort_keys=False))
    return written


def summary(study: optuna.Study, written: dict[str, Path]) -> str:
    """What is printed at the end: trial counts, the best value and parameters, the files."""
    counts = state_counts(study)
    lines = [
        f"study {study.study_name}: {sum(counts.values())} trials: {counts['COMPLETE']} complete, "
        f"{counts['PRUNED']} pruned, {counts['FAIL']} failed, {counts['RUNNING']} running"
    ]
    trials = study.get_trials(deepcopy=False)
    default = [t for t in trials if t.user_attrs.get("default")]
    if default:
        lines.append(
            f"default config: trial #{default[0].number}, {default[0].state.name}"
            + (f", value {default[0].value:.6g}" if default[0].value is not None else "")
        )
    steps = sorted({t.user_attrs["timesteps"] for t in trials if "timesteps" in t.user_attrs})
    if steps:
        span = f"{steps[0]}" if len(steps) == 1 else f"{steps[0]} to {steps[-1]}"
        lines.append(
            f"steps trained per trial: {span} (--n-timesteps rounded up to whole rollouts of "
            "n_steps x n_envs, at least one per evaluation; pruned trials stop early)"
        )
    if counts["COMPLETE"]:
        best = study.best_trial
        lines.append(f"best trial #{best.number}: value {best.value:.6g}")
        lines += [f"  {name}: {value}" for name, value in best.params.items()]
    lines += [f"{kind}: {path}" for kind, path in written.items()]
    return "\n".join(lines)
