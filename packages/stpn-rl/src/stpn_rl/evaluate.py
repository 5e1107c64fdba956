"""Evaluate a trained agent: episode rewards and the energy its core spends (docs/model.md §4).

``python -m stpn_rl.evaluate RUN_DIR [--episodes N] [--deterministic]`` writes ``eval.json`` in
the run directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.vec_env import VecEnv
from stpn_core.cli import ArgumentParser, run_command

from stpn_rl.bptt_policy import SequencePolicy, policy_step
from stpn_rl.policies import CorePolicy
from stpn_rl.runs import load_run, write_json
from stpn_rl.tasks import make_vec_env

# One step of an agent: observations and episode starts -> actions, and the per-env energy of
# the step (``None`` when the agent has no core to measure).
StepFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]]


def _n_envs(task: str, n_episodes: int) -> int:
    # Maze agents all run in one array step, so every episode runs in parallel.
    return n_episodes if task == "maze" else min(n_episodes, 8)


def run_episodes(env: VecEnv, step: StepFn, n_episodes: int) -> dict[str, Any]:
    """Play ``n_episodes`` episodes, spread evenly over the envs (as SB3's ``evaluate_policy``
    does, so short episodes are not over-represented), and summarise them."""
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 1:
        raise ValueError(f"n_episodes: expected a positive integer, got {n_episodes!r}")
    n_envs = env.num_envs
    targets = np.array([(n_episodes + i) // n_envs for i in range(n_envs)])
    counts = np.zeros(n_envs, dtype=int)
    rewards, lengths, traces = [], [], []
    running_reward = np.zeros(n_envs)
    current: list[list[float]] = [[] for _ in range(n_envs)]
    obs, starts = env.reset(), np.ones(n_envs, dtype=bool)
    while (counts < targets).any():
        actions, energy = step(obs, starts)
        obs, reward, dones, infos = env.step(actions)
        running_reward += reward
        if energy is not None:
            for i in np.flatnonzero(counts < targets):
                current[i].append(float(energy[i]))
        for i in np.flatnonzero(dones):
            if counts[i] < targets[i]:
                episode = infos[i].get("episode")
                rewards.append(float(episode["r"]) if episode else float(running_reward[i]))
                lengths.append(int(episode["l"]) if episode else len(current[i]))
                if energy is not None:
                    traces.append(np.array(current[i]))
                counts[i] += 1
            running_reward[i], current[i] = 0.0, []
        starts = dones
    env.close()
    result: dict[str, Any] = {
        "mean_reward": float(np.mean(rewards)),
        "std_reward": float(np.std(rewards)),
        "episodes": len(rewards),
        "episode_rewards": rewards,
        "mean_episode_length": float(np.mean(lengths)),
    }
    if traces:
        longest = max(len(t) for t in traces)
        padded = np.full((len(traces), longest), np.nan)
        for row, trace in zip(padded, traces, strict=True):
            row[: len(trace)] = trace
        result["energy_per_step"] = float(np.nanmean(padded))
        result["energy_per_sequence"] = float(np.mean([t.sum() for t in traces]))
        result["energy_profile"] = np.nanmean(padded, axis=0).tolist()
    return result


def _agent_step(model: RecurrentPPO, deterministic: bool) -> StepFn:
    """The agent's step through ``model.predict``; for our policy, the energy its actor core
    spent on that very step, which the core measures while it runs it."""
    if isinstance(model.policy, SequencePolicy):  # an a2c-bptt agent
        return policy_step(model.policy, deterministic)
    core = model.policy.lstm_actor if isinstance(model.policy, CorePolicy) else None
    state: tuple[np.ndarray, np.ndarray] | None = None

    def step(obs: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        nonlocal state
        if core is not None:
            core.measure_energy = True
        try:
            actions, state = model.predict(
                obs, state=state, episode_start=starts, deterministic=deterministic
            )
        finally:
            if core is not None:
                core.measure_energy = False
        return actions, None if core is None else core.energy.cpu().numpy()

    return step


def evaluate_agent(
    model: RecurrentPPO,
    task: str,
    n_episodes: int,
    deterministic: bool,
    seed: int,
    env_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Mean/std episode reward of ``model`` on fresh ``task`` environments, and, for our policy,
    the energy of its actor core: ``energy_per_step`` (mean over episodes and steps of the
    energy summed over units), ``energy_per_sequence`` and ``energy_profile`` (mean at each
    step)."""
    env = make_vec_env(task, _n_envs(task, n_episodes), seed, **(env_kwargs or {}))
    model.policy.set_training_mode(False)
    return run_episodes(env, _agent_step(model, deterministic), n_episodes)


def evaluate_random(
    task: str, n_episodes: int, seed: int, env_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The same summary for the policy that samples actions uniformly (the paper's baseline)."""
    env = make_vec_env(task, _n_envs(task, n_episodes), seed, **(env_kwargs or {}))
    env.action_space.seed(seed)

    def step(obs: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, None]:
        return np.array([env.action_space.sample() for _ in range(len(obs))]), None

    return run_episodes(env, step, n_episodes)


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m stpn_rl.evaluate", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--episodes", type=int, default=None,
                        help="episodes to play (default: the run's evaluation.episodes)")
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None,
                        help="torch device (default: the run's ppo.device, else the best one)")
    args = parser.parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        parser.error(f"--episodes: expected a positive integer, got {args.episodes}")
    model, config = load_run(args.run_dir, args.device)
    episodes = args.episodes or config.get("evaluation", {}).get("episodes", 100)
    result = evaluate_agent(
        model,
        config["task"],
        episodes,
        args.deterministic,
        args.seed if args.seed is not None else config["seed"] + 10_000,
        config["env"],
    )
    out = args.run_dir / "eval.json"
    write_json(out, result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    run_command(main)
