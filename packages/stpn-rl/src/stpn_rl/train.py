"""Train an agent with sb3-contrib's RecurrentPPO and a ``stpn_core`` core, and record the run.

``python -m stpn_rl.train --task maze --core stpn [--config FILE] [--total-timesteps N]
[--n-envs K] [--seed S] [--out runs/rl]`` writes ``<out>/<task>/<core>/seed<S>/`` as
docs/run-format.md describes; rerunning it resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv
from stpn_core.files import write_text_atomic

from stpn_rl.config import load_config, merge, validate_config
from stpn_rl.evaluate import evaluate_agent
from stpn_rl.policies import CorePolicy
from stpn_rl.runs import CHECKPOINT_PREFIX, latest_checkpoint, write_json
from stpn_rl.tasks import get_task, make_vec_env


def build_agent(
    config: dict[str, Any],
    task: str,
    seed: int,
    env: VecEnv | None = None,
    tensorboard_log: str | None = None,
    verbose: int = 0,
) -> RecurrentPPO:
    """A RecurrentPPO agent with :class:`CorePolicy`, configured by ``config`` (see
    :mod:`stpn_rl.config`), on ``env`` or on fresh ``task`` environments seeded ``seed``."""
    validate_config(config, task)
    if env is None:
        env = make_vec_env(task, config["n_envs"], seed, **config["env"])
    policy_kwargs = get_task(task).policy_defaults | config["policy"]
    return RecurrentPPO(
        CorePolicy,
        env,
        policy_kwargs=policy_kwargs,
        seed=seed,
        tensorboard_log=tensorboard_log,
        verbose=verbose,
        **config["ppo"],
    )


def count_parameters(model: RecurrentPPO) -> int:
    return sum(p.numel() for p in model.policy.parameters() if p.requires_grad)


class WallTimedCheckpoint(CheckpointCallback):
    """SB3's checkpoint callback that also records the training wall time at each checkpoint,
    so that a resumed run reports its whole training time."""

    def __init__(self, save_freq: int, directory: Path, wall_offset: float) -> None:
        super().__init__(save_freq, str(directory), name_prefix=CHECKPOINT_PREFIX)
        self.directory, self.wall_offset = directory, wall_offset
        self.started = time.perf_counter()

    def wall_time(self) -> float:
        return self.wall_offset + time.perf_counter() - self.started

    def save(self) -> Path:
        path = Path(self._checkpoint_path(extension="zip"))
        self.model.save(path)
        record = _read_wall_times(self.directory) | {path.name: self.wall_time()}
        write_json(self.directory / "wall_time.json", record)
        return path

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            self.save()
        return True


class WallTimeLimit(BaseCallback):
    """Stop training once ``seconds`` of wall time have passed, so that agents can be compared
    at an equal CPU budget rather than an equal number of steps."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
            raise ValueError(
                f"max_wall_time: expected a positive number of seconds, got {seconds!r}"
            )
        self.seconds = seconds
        self.started = time.perf_counter()

    def _on_training_start(self) -> None:
        self.started = time.perf_counter()

    def _on_step(self) -> bool:
        return time.perf_counter() - self.started < self.seconds


def _read_wall_times(directory: Path) -> dict[str, float]:
    path = directory / "wall_time.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _merge_progress(logs: Path) -> None:
    """Join the CSV logs of interrupted and resumed sessions into ``progress.csv``; rows an
    earlier session logged past the checkpoint a later one resumed from are dropped."""
    parts = sorted(logs.glob("progress.part*.csv"), key=lambda p: int(p.stem.split("part")[1]))
    if not parts:
        return
    frames = [pd.read_csv(p) for p in [*parts, logs / "progress.csv"] if p.stat().st_size > 0]
    merged = frames[0]
    for frame in frames[1:]:
        first = frame["time/total_timesteps"].min()
        merged = pd.concat([merged[merged["time/total_timesteps"] < first], frame])
    write_text_atomic(logs / "progress.csv", merged.to_csv(index=False))
    for p in parts:
        p.unlink()


def versions() -> dict[str, str]:
    names = ("torch", "stable-baselines3", "sb3-contrib", "gymnasium", "stpn-core", "stpn-rl")
    return {name: version(name) for name in names}


def train(
    task: str,
    core: str,
    config: dict[str, Any] | str | Path | None = None,
    total_timesteps: int | None = None,
    n_envs: int | None = None,
    seed: int = 0,
    out: str | Path = "runs",
    callbacks: Sequence[BaseCallback] = (),
    progress_bar: bool = True,
    max_wall_time: float | None = None,
) -> Path:
    """Train ``core`` on ``task``, evaluate it, and return the run directory
    ``<out>/<task>/<core>/seed<seed>``. A run that stopped part-way resumes from its last
    checkpoint; a finished run (``metrics.json`` present) is returned as it is.
    ``max_wall_time`` (seconds of this session) ends training early, for equal-budget
    comparisons; ``metrics.json`` then records the timesteps reached."""
    if isinstance(config, dict):
        chosen = config.get("policy", {}).get("core", core)
        if chosen != core:
            raise ValueError(f"core: the config is for core {chosen!r}, but core={core!r}")
        config = merge(config, {"policy": {"core": core}})
    else:
        config = load_config(task, core, config)
    overrides = {"total_timesteps": total_timesteps, "n_envs": n_envs}
    config = merge(config, {k: v for k, v in overrides.items() if v is not None})
    config |= {"task": task, "seed": seed}
    validate_config(config, task)
    run_dir = Path(out) / task / core / f"seed{seed}"
    if (run_dir / "metrics.json").is_file():
        return run_dir
    checkpoints, logs = run_dir / "checkpoints", run_dir / "logs"
    previous = run_dir / "config.yaml"
    if previous.is_file():
        recorded = yaml.safe_load(previous.read_text())
        if {**recorded, "total_timesteps": 0} != {**config, "total_timesteps": 0}:
            raise ValueError(f"out: {run_dir} holds a run with another configuration")
    write_text_atomic(previous, yaml.safe_dump(config, sort_keys=False))

    set_random_seed(seed)
    env = make_vec_env(task, config["n_envs"], seed, **config["env"])
    resume_from = latest_checkpoint(checkpoints)
    if resume_from is None:
        model, wall_offset = build_agent(config, task, seed, env=env), 0.0
    else:
        model = RecurrentPPO.load(resume_from, env=env, device="cpu")
        wall_offset = _read_wall_times(checkpoints).get(resume_from.name, 0.0)
        if (logs / "progress.csv").is_file():
            index = len(list(logs.glob("progress.part*.csv")))
            (logs / "progress.csv").rename(logs / f"progress.part{index}.csv")
    model.set_logger(configure(str(logs), ["csv", "tensorboard"]))
    checkpoint = WallTimedCheckpoint(
        max(config.get("checkpoint_freq", 100_000) // config["n_envs"], 1), checkpoints, wall_offset
    )
    remaining = config["total_timesteps"] - model.num_timesteps
    limit = [] if max_wall_time is None else [WallTimeLimit(max_wall_time)]
    if remaining > 0:
        model.learn(
            remaining,
            callback=[checkpoint, *limit, *callbacks],
            reset_num_timesteps=resume_from is None,
            progress_bar=progress_bar,
        )
    wall_time = checkpoint.wall_time()
    model.save(checkpoints / "final.zip")
    model.get_env().close()
    _merge_progress(logs)

    evaluation = config.get("evaluation", {})
    result = evaluate_agent(
        model,
        task,
        evaluation.get("episodes", 100),
        evaluation.get("deterministic", False),
        seed=seed + 10_000,
        env_kwargs=config["env"],
    )
    metrics = {
        "task": task,
        "model": core,
        "seed": seed,
        "params": count_parameters(model),
        "proficiency": result["mean_reward"],
        "proficiency_name": "mean_reward",
        "energy_per_step": result.get("energy_per_step"),
        "energy_per_sequence": result.get("energy_per_sequence"),
        "energy_profile": result.get("energy_profile"),
        "wall_time_s": wall_time,
        "versions": versions(),
        "mean_reward": result["mean_reward"],
        "std_reward": result["std_reward"],
        "timesteps": int(model.num_timesteps),
        "episodes": result["episodes"],
    }
    references = get_task(task).references
    if references is not None:  # e.g. the maze's random policy and oracle, on this run's maze
        metrics["references"] = references(config["env"])
    write_json(run_dir / "metrics.json", metrics)
    return run_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train a RecurrentPPO agent with a stpn_core core."
    )
    parser.add_argument("--task", required=True)
    parser.add_argument("--core", required=True)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--total-timesteps", type=int, default=None)
    parser.add_argument("--n-envs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/rl"))
    parser.add_argument("--max-wall-time", type=float, default=None, help="seconds of training")
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    run_dir = train(
        args.task,
        args.core,
        args.config,
        args.total_timesteps,
        args.n_envs,
        args.seed,
        args.out,
        progress_bar=not args.no_progress_bar,
        max_wall_time=args.max_wall_time,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(
        f"{args.task}/{args.core} seed {args.seed}: mean reward {metrics['mean_reward']:.2f} "
        f"± {metrics['std_reward']:.2f} after {metrics['timesteps']} steps, "
        f"{metrics['wall_time_s']:.0f} s, {metrics['params']} parameters -> {run_dir}"
    )


if __name__ == "__main__":
    main()
