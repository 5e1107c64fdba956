"""``python -m stpn_rl.reproduce``: every core at an equal budget, finished runs skipped, a table
and the stpn_analysis report at the end."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from stpn_rl.reproduce import PROFILES, format_rows, reproduce, run_config


def test_every_core_trains_at_the_same_budget_and_a_rerun_skips_them(tmp_path) -> None:
    profile = replace(PROFILES["maze"]["quick"], episodes=2, n_envs=4, evaluation_episodes=4)
    table = reproduce("maze", profile, tmp_path)
    metrics = {
        core: json.loads((tmp_path / "maze" / core / "seed0" / "metrics.json").read_text())
        for core in profile.cores
    }
    assert set(profile.cores) == {"stpn", "lstm", "rnn", "modplast"}
    assert {metrics[core]["timesteps"] for core in profile.cores} == {2 * 4 * 200}
    assert all(metrics[core]["energy_per_step"] > 0 for core in profile.cores)
    assert all(metrics[core]["episodes"] == 4 for core in profile.cores)
    for row in [*profile.cores, "random (reference)", "oracle (reference)"]:
        assert f"| {row} |" in table
    assert (tmp_path / "maze" / "figures").is_dir()  # stpn_analysis is installed here
    stamps = {c: (tmp_path / "maze" / c / "seed0" / "metrics.json").stat().st_mtime_ns
              for c in profile.cores}
    reproduce("maze", profile, tmp_path)
    assert stamps == {c: (tmp_path / "maze" / c / "seed0" / "metrics.json").stat().st_mtime_ns
                      for c in profile.cores}


def test_runs_use_the_papers_algorithm_and_the_profile_budget() -> None:
    config = run_config("maze", "stpn", PROFILES["maze"]["paper"])
    assert config["algo"] == "a2c-bptt"
    assert config["total_timesteps"] == 50_000 * 512 * 200
    assert config["checkpoint_freq"] == 50 * 512 * 200
    assert config["a2c_bptt"]["learning_rate"] == pytest.approx(1e-4)
    assert config["policy"]["core_options"] == {"norm_timing": "post", "clamp": 1.0}


def test_a2c_runs_ignore_a_ppo_sweeps_tuned_file(tmp_path, monkeypatch) -> None:
    # A tuned-<core>.yaml holds a PPO agent; the maze's a2c-bptt runs keep the paper's settings.
    (tmp_path / "tuned-stpn.yaml").write_text("policy:\n  hidden_size: 7\n")
    monkeypatch.setattr("stpn_rl.reproduce.config_dir", lambda task: tmp_path)
    a2c = PROFILES["maze"]["quick"]
    assert run_config("maze", "stpn", a2c)["policy"]["hidden_size"] == 55
    ppo = replace(a2c, algo="ppo")
    assert run_config("maze", "stpn", ppo)["policy"]["hidden_size"] == 7


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--episodes", "0"], "--episodes"), (["--task", "pong"], "--task")],
)
def test_bad_arguments_give_one_error_line(tmp_path, arguments, message) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stpn_rl.reproduce", "--out", str(tmp_path), *arguments],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_table_shows_a_spread_only_across_seeds() -> None:
    row = {"model": "stpn", "timesteps": 1000, "energy_per_step": 2.0, "params": 10}
    one = format_rows([row | {"mean_reward": 8.0}])
    two = format_rows([row | {"mean_reward": 8.0}, row | {"mean_reward": 10.0}])
    assert "| stpn | 1 | 1e+03 | 8.00 | 2 | 10 |" in one
    assert "| stpn | 2 | 1e+03 | 9.00 ± 1.41 | 2 | 10 |" in two  # sample std of 8 and 10
