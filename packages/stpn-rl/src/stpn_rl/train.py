"""Train an agent with a ``stpn_core`` core, and record the run: sb3-contrib's RecurrentPPO, or
on the maze the paper's algorithm (``--algo a2c-bptt``, :mod:`stpn_rl.a2c_bptt`).

``python -m stpn_rl.train --task maze --core stpn [--algo a2c-bptt] [--config FILE]
[--total-timesteps N] [--n-envs K] [--seed S] [--out runs/rl]`` writes
``<out>/<task>/<core>/seed<S>/`` as docs/run-format.md describes. Rerunning it resumes from the
last checkpoint and ends as the uninterrupted run would have (:mod:`stpn_rl.checkpoints`);
rerunning a finished run with a larger ``--total-timesteps`` trains it further. One process
writes a run folder at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
import yaml
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv
from stpn_core.cli import ArgumentParser, CommandError, run_command
from stpn_core.files import RunLock, RunLockedError, atomic_path, write_text_atomic

from stpn_rl.a2c_bptt import A2CBPTT
from stpn_rl.bptt_policy import SequencePolicy
from stpn_rl.checkpoints import (
    ALGORITHMS,
    ResumablePPO,
    RolloutCheckpoint,
    checkpoint_path,
    restore_training,
    resume_latest,
    save_checkpoint,
)
from stpn_rl.config import load_config, merge, read_yaml, settings_section, validate_config
from stpn_rl.envs import MazeOptions
from stpn_rl.evaluate import evaluate_agent
from stpn_rl.policies import CorePolicy
from stpn_rl.runs import (
    FINAL_MODEL,
    merge_progress,
    remove_temporaries,
    set_progress_aside,
    write_json,
)
from stpn_rl.tasks import get_task, make_vec_env


def build_agent(
    config: dict[str, Any],
    task: str,
    seed: int,
    env: VecEnv | None = None,
    tensorboard_log: str | None = None,
    verbose: int = 0,
) -> RecurrentPPO:
    """The agent ``config`` describes (see :mod:`stpn_rl.config`), on ``env`` or on fresh
    ``task`` environments seeded ``seed``: RecurrentPPO with :class:`CorePolicy`, or for
    ``algo: a2c-bptt`` the paper's maze algorithm with :class:`SequencePolicy`."""
    validate_config(config, task)
    if env is None:
        env = make_vec_env(task, config["n_envs"], seed, **config["env"])
    if config.get("algo", "ppo") == "a2c-bptt":
        policy = config["policy"]
        return A2CBPTT(
            SequencePolicy,
            env,
            policy_kwargs={k: policy[k] for k in ("core", "hidden_size", "core_options")},
            # Only the maze configures a2c-bptt; every episode lasts episode_length steps.
            n_steps=MazeOptions.from_mapping(config["env"]).episode_length,
            seed=seed,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            **config["a2c_bptt"],
        )
    policy_kwargs = get_task(task).policy_defaults | config["policy"]
    return ResumablePPO(
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


def versions() -> dict[str, str]:
    names = ("torch", "stable-baselines3", "sb3-contrib", "gymnasium", "stpn-core", "stpn-rl")
    return {name: version(name) for name in names}


def resolve_config(
    task: str,
    core: str,
    config: dict[str, Any] | str | Path | None,
    overrides: dict[str, Any],
    seed: int,
    algo: str | None = None,
) -> dict[str, Any]:
    """The run's whole configuration, validated: ``config`` (a dict, or a YAML file over the
    task's, the algorithm's and the core's defaults) with the non-``None`` ``overrides`` and
    the task and seed. ``algo`` (``None``: the one ``config`` names, else ``ppo``) must agree
    with a dict ``config``."""
    if isinstance(config, dict):
        chosen = config.get("policy", {}).get("core", core)
        if chosen != core:
            raise ValueError(f"core: the config is for core {chosen!r}, but core={core!r}")
        if algo is not None and config.get("algo", "ppo") != algo:
            raise ValueError(f"algo: the config is for {config.get('algo', 'ppo')!r}, not {algo!r}")
        config = merge(config, {"policy": {"core": core}})
    else:
        config = load_config(task, core, config, algo)
    config = merge(config, {k: v for k, v in overrides.items() if v is not None})
    config |= {"task": task, "seed": seed}
    validate_config(config, task)
    return config


def _claim_run(run_dir: Path, config: dict[str, Any]) -> bool:
    """Check ``config`` against the one the folder records and record it; ``False`` when the
    run is finished and ``config`` asks for no more steps than it had."""
    previous = run_dir / "config.yaml"
    if previous.is_file():
        recorded = read_yaml(previous)
        # The length may grow and the device change; anything else is another experiment.
        ignored = {"total_timesteps": 0, "ppo": {"device": None}}
        if merge(recorded, ignored) != merge(config, ignored):
            raise ValueError(f"out: {run_dir} holds a run with another configuration")
        if (run_dir / "metrics.json").is_file():
            if config["total_timesteps"] <= recorded["total_timesteps"]:
                return False
            (run_dir / "metrics.json").unlink()  # extended: no longer finished
    write_text_atomic(previous, yaml.safe_dump(config, sort_keys=False))
    return True


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
    algo: str | None = None,
) -> Path:
    """Train ``core`` on ``task`` with ``algo`` (``ppo`` or ``a2c-bptt``; ``None``: the one
    ``config`` names, else ``ppo``), evaluate it, and return the run directory
    ``<out>/<task>/<core>/seed<seed>``.

    The whole configuration is checked (the environments and the agent are built) before the
    folder is touched. A run that stopped part-way resumes from its last checkpoint and ends
    exactly as an uninterrupted run; a finished run (``metrics.json`` present) is returned as it
    is, unless ``total_timesteps`` grew, in which case it trains on. ``max_wall_time`` (seconds
    of this session) ends training early, for equal-budget comparisons (``metrics.json`` then
    records the timesteps reached; such a run resumes, but not step for step). Raises
    :class:`~stpn_core.files.RunLockedError` if another process is writing the run folder.
    """
    overrides = {"total_timesteps": total_timesteps, "n_envs": n_envs}
    config = resolve_config(task, core, config, overrides, seed, algo)
    run_dir = Path(out) / task / core / f"seed{seed}"
    checkpoints, logs = run_dir / "checkpoints", run_dir / "logs"
    limit = [] if max_wall_time is None else [WallTimeLimit(max_wall_time)]
    set_random_seed(seed)
    env = make_vec_env(task, config["n_envs"], seed, **config["env"])
    model = build_agent(config, task, seed, env=env)
    with RunLock(run_dir):
        if not _claim_run(run_dir, config):
            env.close()
            return run_dir
        remove_temporaries(run_dir)
        algo = config.get("algo", "ppo")
        device = config[settings_section(algo)].get("device", "auto")
        resumed = resume_latest(checkpoints, env, device, ALGORITHMS[algo])
        if resumed is not None:
            model, state = resumed
            set_progress_aside(logs)
        model.set_logger(configure(str(logs), ["csv", "tensorboard"]))
        if resumed is not None and state is not None:
            restore_training(model, state)
        rollout = model.n_steps * model.n_envs
        checkpoint = RolloutCheckpoint(
            checkpoints,
            max(config.get("checkpoint_freq", 100_000) // rollout, 1),
            0.0 if resumed is None or state is None else state["wall_time"],
        )
        remaining = config["total_timesteps"] - model.num_timesteps
        if remaining > 0:
            model.learn(
                remaining,
                callback=[checkpoint, *limit, *callbacks],
                reset_num_timesteps=resumed is None,
                progress_bar=progress_bar,
            )
        wall_time = checkpoint.wall_time()
        last = save_checkpoint(model, checkpoint_path(checkpoints, model.num_timesteps), wall_time)
        with atomic_path(checkpoints / FINAL_MODEL) as temporary:
            shutil.copyfile(last, temporary)
        model.get_env().close()
        merge_progress(logs)
        write_json(run_dir / "metrics.json", _evaluate(model, config, wall_time))
    return run_dir


def _evaluate(model: RecurrentPPO, config: dict[str, Any], wall_time: float) -> dict[str, Any]:
    """The run's ``metrics.json``: the trained agent evaluated on fresh episodes."""
    task, seed = config["task"], config["seed"]
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
        "model": config["policy"]["core"],
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
    return metrics


def _show_warning(message: Warning | str, *args: Any, **kwargs: Any) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m stpn_rl.train",
        description="Train an agent with a stpn_core core (RecurrentPPO, or the paper's "
        "a2c-bptt on the maze); rerun to resume or extend.",
    )
    parser.add_argument("--task", required=True)
    parser.add_argument("--core", required=True)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--algo", choices=sorted(ALGORITHMS), default=None,
                        help="training algorithm (default: the config's algo, else ppo)")
    parser.add_argument("--total-timesteps", type=int, default=None)
    parser.add_argument("--n-envs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/rl"))
    parser.add_argument("--max-wall-time", type=float, default=None, help="seconds of training")
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed: expected a non-negative integer, got {args.seed}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        with warnings.catch_warnings():  # warnings as one line each, like errors
            warnings.showwarning = _show_warning
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
                algo=args.algo,
            )
    except RunLockedError as error:
        raise CommandError(str(error)) from error
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(
        f"{args.task}/{args.core} seed {args.seed}: mean reward {metrics['mean_reward']:.2f} "
        f"± {metrics['std_reward']:.2f} after {metrics['timesteps']} steps, "
        f"{metrics['wall_time_s']:.0f} s, {metrics['params']} parameters -> {run_dir}"
    )


if __name__ == "__main__":
    run_command(main)
