"""Optuna sweeps of a task's RecurrentPPO agent: ``python -m stpn_rl.tune --task maze --core stpn``.

The study lives in an RDB storage (a SQLite file under ``--out`` unless ``--storage`` names
another SQLAlchemy URL, e.g. PostgreSQL), so that rerunning the command continues it and any
number of workers, on one machine or many, share it. Each trial trains for ``--n-timesteps``,
evaluates ``--n-evaluations`` times, reports each mean reward to Optuna and stops when the pruner
says so. A trial that raises or diverges (NaN) is recorded as failed and the study goes on; a
worker killed mid-trial stops sending heartbeats, so the next worker to start a trial fails its
trial and retries it once. At the end, and on Ctrl-C, every trial is written to ``trials.csv``
and the best configuration to ``best.yaml``, which ``python -m stpn_rl.train --config`` accepts.
What is searched is in :mod:`stpn_rl.search_spaces`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
import yaml
from optuna.trial import TrialState
from stable_baselines3.common.callbacks import BaseCallback

from stpn_rl.config import load_config
from stpn_rl.search_spaces import check_fixed, default_params, sample_config, search_space
from stpn_rl.tasks import TASKS, make_vec_env
from stpn_rl.train import build_agent, count_parameters

Objective = Callable[[optuna.Trial], float]
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "halving", "none")
STALE_TRIAL_RETRIES = 1
CREATE_ATTEMPTS = 6
EVAL_SEED_OFFSET = 10_000  # as stpn_rl.train: evaluation episodes never replay training's seeds


@dataclass(frozen=True)
class TuneOptions:
    """One sweep's settings, named as the CLI flags. Checked on construction."""

    task: str
    core: str
    n_trials: int | None = 20
    timeout: float | None = None
    n_timesteps: int = 100_000
    n_evaluations: int = 4
    n_eval_episodes: int | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    n_startup_trials: int = 5
    n_jobs: int = 1
    storage: str | None = None
    study_name: str | None = None
    seed: int | None = None
    heartbeat_interval: int = 60
    fix: dict[str, Any] | None = None
    config: Path | None = None
    out: Path | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task: expected one of {sorted(TASKS)}, got {self.task!r}")
        for name, low in (
            ("n_timesteps", 1),
            ("n_evaluations", 1),
            ("n_jobs", 1),
            ("heartbeat_interval", 1),
            ("n_startup_trials", 0),
            ("n_trials", 1),
            ("n_eval_episodes", 1),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < low
            ):
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        if self.n_evaluations > self.n_timesteps:
            raise ValueError(
                f"n_evaluations: expected at most n_timesteps ({self.n_timesteps}),"
                f" got {self.n_evaluations}"
            )
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout: expected a positive number of seconds, got {self.timeout}")
        for name, choices in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}: expected one of {choices}, got {getattr(self, name)!r}")
        if self.storage is not None:
            try:
                sqlalchemy.engine.make_url(self.storage)
            except sqlalchemy.exc.ArgumentError as error:
                raise ValueError(
                    "storage: expected a SQLAlchemy URL such as sqlite:///study.db or "
                    f"postgresql://user:password@host/db, got {self.storage!r}"
                ) from error

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out is not None else Path("runs/tune", self.task, self.core)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out_dir / 'study.db').resolve()}"

    @property
    def name(self) -> str:
        return self.study_name or f"{self.task}-{self.core}"


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
    simply opens the tables the winner made.
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
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
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


class TrialEvalCallback(BaseCallback):
    """Every ``eval_freq`` calls, evaluate the agent (:func:`stpn_rl.evaluate.evaluate_agent`,
    the figure ``stpn_rl.train`` reports), report the mean reward to the trial and stop training
    if the pruner says so. A non-finite mean reward (a diverged agent) raises, failing the trial.
    """

    def __init__(self, trial: optuna.Trial, eval_freq: int, evaluate: Callable[[], float]):
        super().__init__()
        self.trial, self.eval_freq, self.evaluate = trial, eval_freq, evaluate
        self.n_evaluations, self.last_mean_reward, self.is_pruned = 0, -math.inf, False

    def _on_step(self) -> bool:
        if self.n_calls % self.eval_freq:
            return True
        self.n_evaluations += 1
        self.last_mean_reward = self.evaluate()
        if not math.isfinite(self.last_mean_reward):
            raise FloatingPointError(
                f"diverged: mean reward {self.last_mean_reward} at evaluation "
                f"{self.n_evaluations} ({self.num_timesteps} steps)"
            )
        self.trial.report(self.last_mean_reward, self.n_evaluations)
        self.is_pruned = self.trial.should_prune()
        return not self.is_pruned


def make_objective(options: TuneOptions, base: dict[str, Any]) -> Objective:
    """Train the trial's agent for ``n_timesteps``, evaluating it ``n_evaluations`` times on the
    same ``n_eval_episodes`` episodes (greedy or sampled, as the config's ``evaluation`` says);
    the value is the last mean reward. Trial ``k`` trains with seed ``seed + k``."""
    from stpn_rl.evaluate import evaluate_agent

    evaluation = base.get("evaluation", {})
    n_episodes = options.n_eval_episodes or evaluation.get("episodes", 10)

    def objective(trial: optuna.Trial) -> float:
        config = sample_config(trial, base, options.task, options.core)
        seed = (options.seed or 0) + trial.number
        env = make_vec_env(options.task, config["n_envs"], seed, **config["env"])
        model = build_agent(config, options.task, seed=seed, env=env)
        trial.set_user_attr("n_parameters", count_parameters(model))

        def evaluate() -> float:
            result = evaluate_agent(
                model,
                options.task,
                n_episodes,
                evaluation.get("deterministic", False),
                seed=seed + EVAL_SEED_OFFSET,
                env_kwargs=config["env"],
            )
            return result["mean_reward"]

        eval_freq = max(1, options.n_timesteps // options.n_evaluations // env.num_envs)
        callback = TrialEvalCallback(trial, eval_freq, evaluate)
        try:
            model.learn(options.n_timesteps, callback=callback)
        finally:
            env.close()
        if callback.is_pruned:
            raise optuna.TrialPruned(f"pruned at evaluation {callback.n_evaluations}")
        return callback.last_mean_reward

    return objective


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so that no reader, and no other worker
    writing the same file, ever sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


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
    write_atomic(written["trials"], study.trials_dataframe().to_csv(index=False))
    if state_counts(study)["COMPLETE"]:
        best = study.best_trial
        config = sample_config(
            optuna.trial.FixedTrial(best.params), base, options.task, options.core
        )
        header = (
            f"# Best trial of study {study.study_name!r}: #{best.number}, mean reward "
            f"{best.value:.6g} after {options.n_timesteps} training steps.\n"
            f"# python -m stpn_rl.train --task {options.task} --core {options.core} "
            "--config THIS_FILE\n"
        )
        written["best"] = options.out_dir / "best.yaml"
        write_atomic(written["best"], header + yaml.safe_dump(config, sort_keys=False))
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
    if counts["COMPLETE"]:
        best = study.best_trial
        lines.append(f"best trial #{best.number}: value {best.value:.6g}")
        lines += [f"  {name}: {value}" for name, value in best.params.items()]
    lines += [f"{kind}: {path}" for kind, path in written.items()]
    return "\n".join(lines)


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


def parser() -> argparse.ArgumentParser:
    """The CLI: one flag per :class:`TuneOptions` field."""
    defaults = {f.name: f.default for f in fields(TuneOptions)}
    p = argparse.ArgumentParser(
        prog="python -m stpn_rl.tune",
        description="Optuna sweep of a task's RecurrentPPO agent; resumable, multi-worker.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
    arguments, 130 after Ctrl-C."""
    cli = parser()
    try:
        args = cli.parse_args(argv)
        args.fix = dict(parse_fix(item) for item in args.fix) if args.fix else None
        options = TuneOptions(**vars(args))
        load_base(options)
    except (TypeError, ValueError) as error:
        cli.error(str(error))
    optuna.logging.set_verbosity(optuna.logging.INFO)
    study, interrupted = run(options, objective)
    return 130 if interrupted else 0 if state_counts(study)["COMPLETE"] else 1


if __name__ == "__main__":
    sys.exit(main())
