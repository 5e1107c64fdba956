"""``python -m stpn_rl.tune``: real tiny sweeps on a 5x5 maze (study growth on rerun, workers
sharing one storage, pruning), failures that do not stop a study, Ctrl-C, stale trials of a
killed worker, the search space, and bad arguments."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
import sqlalchemy
import stpn_core
import yaml
from optuna.trial import TrialState
from stpn_rl.config import load_config
from stpn_rl.search_spaces import (
    HIDDEN_SIZE_FRACTION,
    STPN_SPACE,
    default_params,
    sample_config,
)
from stpn_rl.train import build_agent, count_parameters
from stpn_rl.tune import TrialEvalCallback, main
from stpn_rl.tune.objective import evaluation_steps
from stpn_rl.tune.options import TuneOptions
from stpn_rl.tune.study import open_study

TINY = {
    "n_envs": 2,
    "env": {"size": 5, "episode_length": 10},
    "ppo": {"batch_size": 100},
    "policy": {"hidden_size": 6},
    "evaluation": {"episodes": 2},
}
# One evaluation after 20 steps; short rollouts and few epochs: a trial takes about a second.
TINY_RUN = [
    "--task",
    "maze",
    "--core",
    "stpn",
    "--n-timesteps",
    "20",
    "--n-evaluations",
    "1",
    "--fix",
    "n_steps=25",
    "--fix",
    "n_epochs=3",
    "--fix",
    "n_minibatches=2",
]


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def tune_args(tiny_config: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY_RUN, "--config", str(tiny_config), "--out", str(out), *extra]


def load(out: Path, name: str = "maze-stpn") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def test_each_trial_evaluates_exactly_n_evaluations_times_whatever_the_rollout(
    tiny_config, tmp_path, capsys
):
    # Rollouts of 25 steps x 2 envs are longer than --n-timesteps: each evaluation gets one.
    out = tmp_path / "sweep"
    args = tune_args(tiny_config, out, "--n-trials", "1", "--n-evaluations", "3")
    assert main(args) == 0
    (trial,) = load(out).trials
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    assert trial.user_attrs["timesteps"] == 150
    assert "steps trained per trial: 150 " in capsys.readouterr().out
    assert "after 150 training steps" in (out / "best.yaml").read_text()


@pytest.mark.parametrize(
    ("rollout", "n_timesteps", "n_evaluations", "steps"),
    [
        (50, 20, 3, [50, 100, 150]),  # at least one rollout per evaluation
        (32, 1024, 4, [256, 512, 768, 1024]),  # evenly spaced
        (32, 100, 3, [64, 96, 128]),  # 100 steps round up to 4 rollouts
        (12800, 512, 2, [12800, 25600]),  # the maze default (200 x 64 envs), issue 10
    ],
)
def test_evaluation_steps_fall_on_rollout_ends(rollout, n_timesteps, n_evaluations, steps):
    assert evaluation_steps(rollout, n_timesteps, n_evaluations) == steps


def test_a_postgresql_storage_without_its_driver_says_what_to_install(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the extra were not installed
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY_RUN, "--out", str(tmp_path), "--storage", "postgresql://u@localhost/db"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "storage: postgresql URLs need the database driver 'psycopg'" in err
    assert 'pip install -e "packages/stpn-rl[postgres]"' in err


def test_trials_complete_write_results_and_a_rerun_continues_the_study(tiny_config, tmp_path):
    out = tmp_path / "sweep"
    args = tune_args(tiny_config, out, "--n-trials", "3", "--seed", "0", "--pruner", "none")
    assert main(args) == 0
    table = pd.read_csv(out / "trials.csv")
    assert list(table["state"]) == ["COMPLETE"] * 3
    best = load(out).best_trial
    config = load_config("maze", "stpn", out / "best.yaml")  # what `train --config` reads
    assert config["ppo"]["learning_rate"] == best.params["learning_rate"]
    # A separate critic's second core may lower the hidden size drawn, to stay within budget.
    assert config["policy"]["hidden_size"] <= best.params["hidden_size"]
    assert config["policy"]["critic"] == best.params["critic"]
    assert config["policy"]["core_options"]["gamma_init_scale"] == best.params["gamma_init_scale"]
    assert config["env"] == load_config("maze", "stpn", tiny_config)["env"]

    assert main(args) == 0
    trials = load(out).trials
    # A new study's first trial is the default configuration (with the --fix values).
    default = default_params("maze", "stpn", load_config("maze", "stpn", tiny_config))
    assert trials[0].params == default | {"n_steps": 25, "n_epochs": 3, "n_minibatches": 2}
    assert trials[0].user_attrs["default"] and not trials[1].user_attrs.get("default")
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state == TrialState.COMPLETE and math.isfinite(t.value) for t in trials)
    assert {(t.params["n_steps"], t.params["n_epochs"]) for t in trials} == {(25, 3)}
    # The rerun's sampler is not the first run's again: it draws new parameters.
    assert {t.params["learning_rate"] for t in trials[3:]}.isdisjoint(
        {t.params["learning_rate"] for t in trials[:3]}
    )
    assert len(pd.read_csv(out / "trials.csv")) == 6
    # Every trial stays within the parameter budget of the default configuration.
    base = load_config("maze", "stpn", tiny_config)
    budget = count_parameters(build_agent(base, "maze", seed=0))
    assert all(t.user_attrs["n_parameters"] <= budget for t in trials)


def _cli(args: list[str]) -> None:
    raise SystemExit(main(args))  # the process exits with the CLI's status


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_study(request, tmp_path) -> Iterator[tuple[str, str]]:
    """A storage URL shared by worker processes, on a database with no tables yet, and a study
    name: a SQLite file, or a new database on the PostgreSQL server ``.ci/run`` starts
    (``STPN_TEST_POSTGRES_URL``), dropped afterwards."""
    name = f"maze-stpn-{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}", name
        return
    server = os.environ.get("STPN_TEST_POSTGRES_URL")
    if not server:
        reason = os.environ.get("STPN_TEST_POSTGRES_UNAVAILABLE")
        pytest.skip(
            "no PostgreSQL server: STPN_TEST_POSTGRES_URL is not set (.ci/run starts a server "
            "and sets it)" + (f"; {reason}" if reason else "")
        )
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    database = name.replace("-", "_")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {database}")
    yield sqlalchemy.engine.make_url(server).set(database=database).render_as_string(False), name
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE {database} WITH (FORCE)")
    admin.dispose()


def _open_once_all_checked(
    options: TuneOptions, barrier: multiprocessing.Barrier, delay: float
) -> None:
    """Open the study, creating the tables ``delay`` seconds after every worker has found them
    missing: the first worker's tables are then committed before the next one's CREATE TABLE."""
    waited = []

    def wait_for_the_others(*_: object, **__: object) -> None:
        if not waited:  # the first attempt only: a retry finds the tables
            waited.append(True)
            barrier.wait(timeout=60)
            time.sleep(delay)

    # Fired after the "does the table exist" checks and before the CREATE TABLE statements.
    sqlalchemy.event.listen(sqlalchemy.MetaData, "before_create", wait_for_the_others)
    open_study(options, load_config("maze", "stpn"))


def test_workers_racing_to_create_a_new_databases_tables_all_open_one_study(shared_study):
    # CI met this race on a new PostgreSQL database ("relation studies already exists").
    storage, name = shared_study
    options = TuneOptions(task="maze", core="stpn", storage=storage, study_name=name)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(3)
    workers = [
        context.Process(target=_open_once_all_checked, args=(options, barrier, 2.0 * i))
        for i in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    (default,) = optuna.load_study(study_name=name, storage=storage).trials  # queued once
    assert default.state == TrialState.WAITING and default.user_attrs["default"]


def test_two_worker_processes_share_one_storage(tiny_config, tmp_path, shared_study):
    # Forked, so that the workers skip re-importing torch; each runs the CLI's main().
    storage, name = shared_study
    workers = [
        multiprocessing.get_context("fork").Process(
            target=_cli,
            args=(
                [
                    "--storage",
                    storage,
                    "--study-name",
                    name,
                    "--n-trials",
                    "2",
                    *tune_args(tiny_config, tmp_path / f"worker{i}"),
                ],
            ),
        )
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0]
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.params["learning_rate"] for t in trials}) == 4
    assert all((tmp_path / f"worker{i}" / "best.yaml").is_file() for i in range(2))


def test_a_trial_reporting_a_poor_value_is_pruned(tiny_config, tmp_path):
    out = tmp_path / "sweep"
    study = optuna.create_study(
        study_name="maze-stpn", storage=f"sqlite:///{tmp_path / 'sweep.db'}", direction="maximize"
    )
    base = load_config("maze", "stpn", tiny_config)
    for _ in range(3):  # three finished trials that scored far above any 5x5 maze agent
        trial = study.ask()
        sample_config(trial, base, "maze", "stpn")
        trial.report(1e6, step=1)
        study.tell(trial, 1e6)
    args = tune_args(
        tiny_config,
        out,
        "--storage",
        f"sqlite:///{tmp_path / 'sweep.db'}",
        "--n-trials",
        "1",
        "--pruner",
        "median",
        "--n-startup-trials",
        "3",
    )
    assert main(args) == 0
    pruned = study.trials[-1]
    assert pruned.state == TrialState.PRUNED
    assert list(pruned.intermediate_values) == [1] and pruned.intermediate_values[1] < 1e6
    assert list(pd.read_csv(out / "trials.csv")["state"]) == ["COMPLETE"] * 3 + ["PRUNED"]


def test_failing_and_diverging_trials_are_recorded_and_the_study_goes_on(tiny_config, tmp_path):
    base = load_config("maze", "stpn", tiny_config)

    def objective(trial: optuna.Trial) -> float:
        config = sample_config(trial, base, "maze", "stpn")
        if trial.number == 0:
            raise RuntimeError("a bug in this trial")
        if trial.number == 1:
            return float("nan")
        if trial.number == 2:  # real training whose evaluation diverges
            model = build_agent(config, "maze", seed=0)
            rollout = model.n_steps * model.n_envs
            model.learn(20, callback=TrialEvalCallback(trial, [rollout], lambda: float("nan")))
        return 1.0

    out = tmp_path / "sweep"
    assert main(tune_args(tiny_config, out, "--n-trials", "4"), objective) == 0
    states = [t.state for t in load(out).trials]
    assert states == [TrialState.FAIL] * 3 + [TrialState.COMPLETE]
    assert (out / "best.yaml").is_file()


def test_parallel_jobs_in_one_process_run_distinct_trials(tiny_config, tmp_path):
    base = load_config("maze", "stpn", tiny_config)

    def objective(trial: optuna.Trial) -> float:
        return sample_config(trial, base, "maze", "stpn")["ppo"]["learning_rate"]

    out = tmp_path / "sweep"
    assert main(tune_args(tiny_config, out, "--n-trials", "4", "--n-jobs", "2"), objective) == 0
    trials = load(out).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.value == t.params["learning_rate"] for t in trials)


def test_ctrl_c_writes_the_results_so_far(tiny_config, tmp_path, capsys):
    base = load_config("maze", "stpn", tiny_config)

    def objective(trial: optuna.Trial) -> float:
        sample_config(trial, base, "maze", "stpn")
        if trial.number == 1:
            raise KeyboardInterrupt
        return 2.5

    out = tmp_path / "sweep"
    assert main(tune_args(tiny_config, out, "--n-trials", "5"), objective) == 130
    printed = capsys.readouterr().out
    assert "1 complete, 0 pruned, 1 failed" in printed and "value 2.5" in printed
    assert list(pd.read_csv(out / "trials.csv")["state"]) == ["COMPLETE", "FAIL"]
    assert (out / "best.yaml").is_file()


def _hang(args: list[str], sampled: Path) -> None:
    base = load_config("maze", "stpn", args[args.index("--config") + 1])

    def objective(trial: optuna.Trial) -> float:
        sample_config(trial, base, "maze", "stpn")
        sampled.touch()  # every parameter is stored: the retry must draw them all back
        time.sleep(600)
        return 0.0

    main(args, objective)


def _wait_for_a_heartbeat(storage: str, name: str, deadline: float) -> None:
    """Wait until the worker's heartbeat thread has written for its trial: a trial killed before
    its first heartbeat is never seen as stale (it races the trial for the database)."""
    engine = sqlalchemy.create_engine(storage)
    query = sqlalchemy.text(
        "SELECT COUNT(*) FROM trial_heartbeats h JOIN trials t ON h.trial_id = t.trial_id "
        "JOIN studies s ON t.study_id = s.study_id WHERE s.study_name = :name")
    try:
        while True:
            with engine.connect() as connection:
                if connection.execute(query, {"name": name}).scalar():
                    return
            assert time.monotonic() < deadline, "the worker never wrote a heartbeat"
            time.sleep(0.2)
    finally:
        engine.dispose()


def test_a_killed_workers_trial_is_failed_and_retried(tiny_config, tmp_path, shared_study):
    storage, name = shared_study
    args = tune_args(tiny_config, tmp_path / "sweep", "--n-trials", "1", "--heartbeat-interval",
                     "1", "--storage", storage, "--study-name", name)
    sampled = tmp_path / "sampled"
    worker = multiprocessing.get_context("fork").Process(target=_hang, args=(args, sampled))
    worker.start()
    deadline = time.monotonic() + 60
    while not sampled.exists():
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.2)
    _wait_for_a_heartbeat(storage, name, deadline)
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    time.sleep(4)  # past the grace period of two heartbeats (timestamps are in whole seconds)
    base = load_config("maze", "stpn", tiny_config)

    def objective(trial: optuna.Trial) -> float:
        sample_config(trial, base, "maze", "stpn")
        return 3.0

    assert main(args, objective) == 0
    first, retry = optuna.load_study(study_name=name, storage=storage).trials
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.params == first.params


def test_the_search_space_fits_the_core_and_the_rollout():
    base = load_config("maze", "stpn")
    for number in range(5):
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=number)).ask()
        config = sample_config(trial, base, "maze", "stpn")
        rollout = config["ppo"]["n_steps"] * config["n_envs"]
        assert config["ppo"]["batch_size"] == max(2, rollout // trial.params["n_minibatches"])
        hidden = config["policy"]["hidden_size"]
        assert round(55 * HIDDEN_SIZE_FRACTION) <= hidden <= 55
        options = config["policy"]["core_options"]
        assert options["norm_timing"] == "post"  # the default config's other options are kept
        stpn_core.STPN(17, hidden, **options)  # the drawn options are the core's own
        assert set(options) >= {"lambda_init", "gamma_init_scale", "clamp"}
        fixed = sample_config(optuna.trial.FixedTrial(trial.params), base, "maze", "stpn")
        assert fixed == config
    # The default configuration is a point of the search space, drawn back unchanged.
    again = sample_config(
        optuna.trial.FixedTrial(default_params("maze", "stpn", base)), base, "maze", "stpn"
    )
    assert again["ppo"] == base["ppo"] and again["policy"]["hidden_size"] == 55
    built, expected = (
        stpn_core.build_model("stpn", 17, 55, **c["policy"]["core_options"]) for c in (again, base)
    )
    assert built.extra_repr() == expected.extra_repr()
    lstm = sample_config(optuna.create_study().ask(), load_config("maze", "lstm"), "maze", "lstm")
    assert not set(lstm["policy"]["core_options"]) & (set(STPN_SPACE) | {"lambda_init"})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "chess"], "task: expected one of"),
        (["--core", "transformer"], "core: expected one of"),
        (["--n-trials", "0"], "n_trials: expected an integer >= 1"),
        (["--n-evaluations", "50"], "n_evaluations: expected at most n_timesteps"),
        (["--sampler", "grid"], "sampler: expected one of"),
        (["--pruner", "hyperband"], "pruner: expected one of"),
        (["--storage", "not a url"], "storage: expected a SQLAlchemy URL"),
        (["--config", "missing.yaml"], "no configuration file"),
        (["--fix", "momentum=0.9"], "fix: 'momentum' is not searched"),
        (["--fix", "hidden_size=500"], "fix: hidden_size=500 is outside its search space"),
        (["--fix", "clamp"], "fix: expected NAME=VALUE"),
    ],
)
def test_bad_arguments_are_refused_clearly(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY_RUN, "--out", str(tmp_path), *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
