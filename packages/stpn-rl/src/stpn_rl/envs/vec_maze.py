"""The maze as an SB3 ``VecEnv`` that steps all agents with array operations.

``DummyVecEnv`` over ``MazeEnv`` would call Python once per agent per step; here one call of
:class:`~stpn_rl.envs.maze.MazeAgents` moves all of them. Seeding follows SB3's convention
(``seed(s)`` gives agent ``i`` the seed ``s + i`` at the next reset), so agent ``i`` behaves
exactly like ``MazeEnv`` reset with seed ``s + i``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from stpn_rl.envs.maze import N_ACTIONS, MazeAgents, MazeOptions, observation_space


class MazeVecEnv(VecEnv):
    """``n_envs`` maze agents; ``options`` are the fields of
    :class:`~stpn_rl.envs.maze.MazeOptions`.

    Finished agents are reset automatically; their last observation is in
    ``info["terminal_observation"]``, as SB3 expects.
    """

    def __init__(self, n_envs: int, **options: Any) -> None:
        self.agents = MazeAgents(n_envs, MazeOptions.from_mapping(options))
        self.render_mode = None
        space = observation_space(self.agents.options)
        super().__init__(n_envs, space, spaces.Discrete(N_ACTIONS))
        self._actions: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        for i, seed in enumerate(self._seeds):
            if seed is not None:
                self.agents.rngs[i] = seeding.np_random(seed)[0]
        self._reset_seeds()
        self._reset_options()
        self.agents.reset(np.arange(self.num_envs))
        return self.agents.observe()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait: call step_async first")
        rewards, dones = self.agents.step(self._actions)
        self._actions = None
        obs = self.agents.observe()
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        finished = np.flatnonzero(dones)
        if len(finished):
            for i in finished:
                infos[i]["terminal_observation"] = obs[i].copy()
                infos[i]["TimeLimit.truncated"] = False
            self.agents.reset(finished)
            obs[finished] = self.agents.observe()[finished]
        return obs, rewards, dones.copy(), infos

    def close(self) -> None:
        """Nothing to release: the maze holds only arrays."""

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        method = getattr(self, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]
