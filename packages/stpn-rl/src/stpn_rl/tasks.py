"""The RL tasks by name, each building its vectorised environment with the right wrappers.

- ``maze``: our grid maze (docs/model.md §6), all agents stepped in one :class:`MazeVecEnv`;
  its options are :class:`~stpn_rl.envs.MazeOptions`, and its runs record the random-policy and
  oracle rewards of their own maze (:func:`~stpn_rl.envs.maze_references`).
- ``pong``: ``ALE/Pong-v5`` with SB3's standard Atari preprocessing (the env's own frame skip is
  turned off, since ``AtariWrapper`` already skips 4), channel-first frames for the CNN torso.
- ``inverted-pendulum``: MuJoCo ``InvertedPendulum-v5``.
- ``inverted-pendulum-po``: the same with the velocities removed from the observation, so that a
  policy needs memory to balance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecMonitor, VecTransposeImage

from stpn_rl.envs import MazeOptions, MazeVecEnv, maze_references
from stpn_rl.policies import SmallAtariCNN

ATARI_WRAPPER_OPTIONS = (
    "noop_max",
    "frame_skip",
    "screen_size",
    "terminal_on_life_loss",
    "clip_reward",
    "action_repeat_probability",
)


class VelocityMask(gym.ObservationWrapper):
    """Keep only the positions (cart position, pole angle) of InvertedPendulum's observation."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        low, high = env.observation_space.low[:2], env.observation_space.high[:2]
        self.observation_space = gym.spaces.Box(low, high, dtype=env.observation_space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[:2]


def _make_maze(n_envs: int, seed: int, env_kwargs: dict[str, Any]) -> VecEnv:
    env = MazeVecEnv(n_envs, **env_kwargs)
    env.seed(seed)
    return VecMonitor(env)


def _maze_references(env_kwargs: dict[str, Any]) -> dict[str, float]:
    return maze_references(MazeOptions.from_mapping(env_kwargs))


def _make_pong(n_envs: int, seed: int, env_kwargs: dict[str, Any]) -> VecEnv:
    import ale_py

    gym.register_envs(ale_py)
    wrapper_kwargs = {k: v for k, v in env_kwargs.items() if k in ATARI_WRAPPER_OPTIONS}
    make_kwargs = {"frameskip": 1} | {
        k: v for k, v in env_kwargs.items() if k not in ATARI_WRAPPER_OPTIONS
    }
    env = make_atari_env(
        "ALE/Pong-v5",
        n_envs=n_envs,
        seed=seed,
        env_kwargs=make_kwargs,
        wrapper_kwargs=wrapper_kwargs,
    )
    return VecTransposeImage(env)


def _make_pendulum(partial: bool) -> Callable[[int, int, dict[str, Any]], VecEnv]:
    def make(n_envs: int, seed: int, env_kwargs: dict[str, Any]) -> VecEnv:
        return sb3_make_vec_env(
            "InvertedPendulum-v5",
            n_envs=n_envs,
            seed=seed,
            env_kwargs=env_kwargs,
            wrapper_class=VelocityMask if partial else None,
        )

    return make


@dataclass(frozen=True)
class Task:
    """How to build a task's environments and what its policy needs beyond the config."""

    name: str
    build: Callable[[int, int, dict[str, Any]], VecEnv]
    env_options: tuple[str, ...] | None
    """Accepted environment keyword arguments (``None``: passed through to ``gym.make``)."""
    policy_defaults: dict[str, Any] = field(default_factory=dict)
    references: Callable[[dict[str, Any]], dict[str, float]] | None = None
    """Reference episode rewards for the given environment options (e.g. a random policy's),
    recorded in a run's ``metrics.json``; ``None`` where the task has none."""


TASKS: dict[str, Task] = {
    "maze": Task("maze", _make_maze, MazeOptions.names(), references=_maze_references),
    "pong": Task("pong", _make_pong, None, {"features_extractor_class": SmallAtariCNN}),
    "inverted-pendulum": Task("inverted-pendulum", _make_pendulum(False), None),
    "inverted-pendulum-po": Task("inverted-pendulum-po", _make_pendulum(True), None),
}


def get_task(task: str) -> Task:
    """The task called ``task``; ``ValueError`` listing the valid names otherwise."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task]


def check_env_kwargs(task: str, env_kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` on environment options the task does not take."""
    allowed = get_task(task).env_options
    unknown = sorted(set(env_kwargs) - set(allowed)) if allowed is not None else []
    if unknown:
        raise ValueError(f"env: unknown option(s) {unknown} for task {task!r}; valid: {allowed}")
    if task == "maze":
        MazeOptions.from_mapping(env_kwargs)


def make_vec_env(task: str, n_envs: int, seed: int, **env_kwargs: Any) -> VecEnv:
    """``n_envs`` environments of ``task``, environment ``i`` seeded ``seed + i``, with episode
    statistics (``info["episode"]``) recorded for SB3's logger."""
    spec = get_task(task)
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise ValueError(f"n_envs: expected a positive integer, got {n_envs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed: expected an integer, got {seed!r}")
    check_env_kwargs(task, env_kwargs)
    return spec.build(n_envs, int(seed), env_kwargs)
