"""Killed runs resume exactly; damaged checkpoints are skipped; one writer per run folder.

The kills are real: ``python -m stpn_rl.train`` runs in a child process that SIGKILLs itself
(``STPN_RL_KILL_AT_CHECKPOINT``) right after a checkpoint or in the middle of writing one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from stpn_core.cli import run_command
from stpn_core.files import RunLock
from stpn_rl import train
from stpn_rl.checkpoints import KILL_HOOK, CheckpointWarning
from stpn_rl.config import merge
from stpn_rl.runs import load_run

TOTAL = 160  # five rollouts of 16 steps x 2 envs, a checkpoint after each
WALL_CLOCK_COLUMNS = ["time/fps", "time/time_elapsed"]


def run_train(config: Path, out: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    env.pop(KILL_HOOK, None)
    if kill is not None:
        env[KILL_HOOK] = kill
    command = [sys.executable, "-m", "stpn_rl.train", "--task", "maze", "--core", "stpn",
               "--config", str(config), "--out", str(out), "--no-progress-bar"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def outcome(out: Path) -> tuple[dict, pd.DataFrame, dict[str, torch.Tensor]]:
    """What an uninterrupted run and a resumed one must share: the metrics, every logged value
    but the wall-clock ones, and the final weights."""
    run = out / "maze" / "stpn" / "seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("wall_time_s")
    log = pd.read_csv(run / "logs" / "progress.csv").drop(columns=WALL_CLOCK_COLUMNS)
    weights = load_run(run, device="cpu")[0].policy.state_dict()
    return metrics, log.sort_index(axis=1).reset_index(drop=True), weights


@pytest.fixture(scope="module")
def config_file(tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny("maze", "stpn", total_timesteps=TOTAL)))
    return path


@pytest.fixture(scope="module")
def uninterrupted(config_file, tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command line's children (OMP_NUM_THREADS=1)
    try:
        train.train("maze", "stpn", config_file, out=out, progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    return outcome(out)


def test_a_run_killed_at_checkpoints_resumes_exactly(config_file, uninterrupted, tmp_path):
    checkpoints = tmp_path / "maze" / "stpn" / "seed0" / "checkpoints"
    # Killed while writing the checkpoint at 64 steps: only its temporary file exists.
    assert run_train(config_file, tmp_path, kill="64:during").returncode == -signal.SIGKILL
    assert not (checkpoints / "rl_model_64_steps.zip").exists()
    assert list(checkpoints.glob(".rl_model_64_steps.zip.*.tmp"))
    # Resumed from 32 steps, then killed right after writing the checkpoint at 128 steps.
    assert run_train(config_file, tmp_path, kill="128:after").returncode == -signal.SIGKILL
    assert (checkpoints / "rl_model_128_steps.zip").is_file()
    assert not list(checkpoints.glob(".*.tmp"))

    resumed = run_train(config_file, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    metrics, log, weights = outcome(tmp_path)
    expected_metrics, expected_log, expected_weights = uninterrupted
    assert metrics == expected_metrics
    pd.testing.assert_frame_equal(log, expected_log)
    assert list(log["time/total_timesteps"]) == [32, 64, 96, 128, 160]
    for name, tensor in expected_weights.items():
        assert torch.equal(weights[name], tensor), name


def test_a_damaged_latest_checkpoint_is_reported_and_the_previous_one_used(tiny, tmp_path):
    config = tiny("maze", "stpn", total_timesteps=96, checkpoint_freq=32)
    run = train.train("maze", "stpn", config, out=tmp_path, progress_bar=False)
    expected = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    latest = run / "checkpoints" / "rl_model_96_steps.zip"
    latest.write_bytes(latest.read_bytes()[:1000])  # a file cut short
    with pytest.warns(CheckpointWarning, match="rl_model_96_steps.zip"):
        train.train("maze", "stpn", config, out=tmp_path, progress_bar=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["timesteps"] == 96
    for key in ("mean_reward", "std_reward", "energy_per_step", "energy_profile"):
        assert metrics[key] == expected[key], key


def test_a_second_writer_is_refused_at_once_and_a_stale_lock_taken_over(
    config_file, tiny, tmp_path, capsys
) -> None:
    run = tmp_path / "maze" / "stpn" / "seed0"
    argv = ["--task", "maze", "--core", "stpn", "--config", str(config_file),
            "--out", str(tmp_path), "--no-progress-bar"]
    with RunLock(run), pytest.raises(SystemExit) as exit_info:  # the first writer's lock
        run_command(train.main, argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: run folder {run} is in use by process {os.getpid()}; wait for it to finish "
        "or stop it (one writer per run folder)"
    ]
    assert not (run / "config.yaml").exists()
    # The lock file of a writer that died (unlocked, naming a dead pid) does not block anyone.
    (run / ".lock").write_text("999999999\n")
    config = tiny("maze", "stpn", total_timesteps=32)
    train.train("maze", "stpn", config, out=tmp_path, progress_bar=False)
    assert (run / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"policy": {"core_options": {"norm_timng": "post"}}}, "policy.core_options: norm_timng"),
        ({"policy": {"core_options": {"clamp": -1.0}}}, "policy.core_options: clamp"),
        ({"env": {"episode_length": 0}}, "episode_length"),
    ],
)
def test_a_bad_configuration_leaves_no_trace_in_the_run_folder(change, match, tiny, tmp_path):
    bad = merge(tiny("maze", "stpn", total_timesteps=32), change)
    with pytest.raises(ValueError, match=match):
        train.train("maze", "stpn", bad, out=tmp_path, progress_bar=False)
    assert not (tmp_path / "maze").exists()
    run = train.train("maze", "stpn", tiny("maze", "stpn", total_timesteps=32), out=tmp_path,
                      progress_bar=False)
    assert (run / "metrics.json").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_run_moves_between_devices(tiny, tmp_path) -> None:
    # Trained on the CPU, extended on the GPU (checkpoints map onto the configured device).
    cpu = tiny("maze", "stpn", total_timesteps=64, ppo={"device": "cpu"})
    run = train.train("maze", "stpn", cpu, out=tmp_path, progress_bar=False)
    gpu = merge(cpu, {"total_timesteps": 128, "ppo": {"device": "cuda"}})
    train.train("maze", "stpn", gpu, out=tmp_path, progress_bar=False)
    assert json.loads((run / "metrics.json").read_text())["timesteps"] == 128
    assert load_run(run)[0].device.type == "cuda"  # the run's configured device
    # The GPU-written checkpoints load where no GPU is visible: the run resumes there, and
    # evaluation and the analysis read them.
    (run / "metrics.json").unlink()
    (run / "checkpoints" / "rl_model_128_steps.zip").unlink()
    script = (
        "import sys, torch; from stpn_rl import train; from stpn_rl.runs import load_run\n"
        "from stpn_analysis import load_plasticity, load_runs\n"
        "assert not torch.cuda.is_available()\n"
        "run = train.train('maze', 'stpn', sys.argv[1], out=sys.argv[2], progress_bar=False)\n"
        "assert load_run(run)[0].device.type == 'cpu'\n"
        "assert load_plasticity(load_runs(sys.argv[2])[0])['lambda'].size > 0\n"
    )
    config = tmp_path / "cpu.yaml"
    config.write_text(yaml.safe_dump(merge(gpu, {"ppo": {"device": "auto"}})))
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", script, str(config), str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr
    assert json.loads((run / "metrics.json").read_text())["timesteps"] == 128


def test_resuming_a_task_whose_environments_cannot_be_saved_says_so(tiny, tmp_path) -> None:
    config = tiny("inverted-pendulum", "stpn", total_timesteps=64, checkpoint_freq=32)
    run = train.train("inverted-pendulum", "stpn", config, out=tmp_path, progress_bar=False)
    with pytest.warns(CheckpointWarning, match="restart their episodes"):
        train.train("inverted-pendulum", "stpn", config, total_timesteps=96, out=tmp_path,
                    progress_bar=False)
    assert json.loads((run / "metrics.json").read_text())["timesteps"] == 96
