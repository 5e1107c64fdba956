"""``python -m stpn_rl.reproduce --task inverted-pendulum-po``: every core, the memoryless floor
included, at one budget of environment steps, the fully observed sanity runs, finished runs
skipped on a rerun."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from stpn_rl.config import config_dir, load_config
from stpn_rl.reproduce import PROFILES, main, reproduce, run_config

TASK = "inverted-pendulum-po"
TINY = {"ppo": {"n_steps": 16, "batch_size": 16, "n_epochs": 1}, "policy": {"hidden_size": 8}}


def test_every_core_trains_at_one_budget_and_a_rerun_skips_them(tmp_path) -> None:
    profile = replace(PROFILES[TASK]["quick"], timesteps=32, evaluation_episodes=2,
                      config_changes=TINY)
    table = reproduce(TASK, profile, tmp_path)
    runs = [(TASK, core) for core in profile.cores]
    runs += [("inverted-pendulum", core) for core in profile.sanity_cores]
    assert set(profile.cores) == {"lstm", "rnn", "stpn", "stpnf", "mlp"}
    assert profile.sanity_cores == ("stpn",)
    paths = {run: tmp_path / run[0] / run[1] / "seed0" / "metrics.json" for run in runs}
    metrics = {run: json.loads(path.read_text()) for run, path in paths.items()}
    assert {m["timesteps"] for m in metrics.values()} == {32}
    assert {m["task"] for m in metrics.values()} == {TASK, "inverted-pendulum"}
    assert all(m["energy_per_step"] > 0 and m["episodes"] == 2 for m in metrics.values())
    for core in profile.cores:
        assert f"| {core} |" in table
    assert "inverted-pendulum:\n| core |" in table  # the sanity table
    assert (tmp_path / TASK / "figures").is_dir()  # stpn_analysis is installed here
    stamps = {run: path.stat().st_mtime_ns for run, path in paths.items()}
    reproduce(TASK, profile, tmp_path)
    assert stamps == {run: path.stat().st_mtime_ns for run, path in paths.items()}


def test_cores_selects_the_runs_and_their_sanity_runs(tmp_path, monkeypatch, capsys) -> None:
    tiny = replace(PROFILES[TASK]["paper"], evaluation_episodes=2, config_changes=TINY)
    monkeypatch.setitem(PROFILES[TASK], "paper", tiny)
    main(["--task", TASK, "--profile", "paper", "--cores", "mlp", "stpnf", "--timesteps", "32",
          "--seeds", "0", "--out", str(tmp_path)])
    trained = {path.parent.parent.relative_to(tmp_path).as_posix()
               for path in tmp_path.glob("*/*/seed0/metrics.json")}
    assert trained == {f"{TASK}/mlp", f"{TASK}/stpnf", "inverted-pendulum/mlp",
                       "inverted-pendulum/stpnf"}
    table = capsys.readouterr().out
    assert "| mlp |" in table and "| stpnf |" in table and "| lstm |" not in table
    # The quick profile's sanity row is the STPN's alone: without it, no sanity runs.
    monkeypatch.setitem(PROFILES[TASK], "quick", replace(tiny, sanity_cores=("stpn",)))
    main(["--task", TASK, "--cores", "mlp", "--timesteps", "32", "--out", str(tmp_path / "q")])
    quick = [path.relative_to(tmp_path / "q").parts[:2]
             for path in (tmp_path / "q").glob("*/*/seed0/metrics.json")]
    assert quick == [(TASK, "mlp")]


def test_the_pendulum_runs_take_the_papers_settings_or_a_sweeps() -> None:
    paper = PROFILES[TASK]["paper"]
    assert paper.seeds == (0, 1, 2) and paper.timesteps == 1_000_000
    for core in paper.cores:
        config = run_config(TASK, core, paper)
        assert config["total_timesteps"] == 1_000_000 and config.get("algo", "ppo") == "ppo"
        tuned = config_dir(TASK) / f"tuned-{core}.yaml"
        assert config["ppo"] == load_config(TASK, core, tuned if tuned.is_file() else None)["ppo"]
    assert run_config(TASK, "stpnf", paper)["policy"]["core_options"]["clamp"] == 0.1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--timesteps", "0"], "--timesteps: expected a positive integer"),
     (["--episodes", "3"], "--episodes: not a budget of task 'inverted-pendulum-po'"),
     (["--cores", "stpn", "modplast"],
      "--cores: modplast not in the inverted-pendulum-po comparison; expected some of lstm")],
)
def test_bad_budgets_give_one_error_line(tmp_path, arguments, message) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stpn_rl.reproduce", "--task", TASK, "--out", str(tmp_path),
         *arguments],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
