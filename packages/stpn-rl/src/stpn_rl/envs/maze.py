"""The grid maze of Miconi et al., as used by the STPN paper (spec §6.1–6.2).

The agent must find a reward cell it never observes, then keep returning to it after being
teleported away: it has to remember, within the episode, where the reward is. All the rules live
in :class:`MazeAgents`, which steps any number of agents with array operations; the
``gymnasium.Env`` (:class:`MazeEnv`) and the SB3 ``VecEnv`` (:class:`MazeVecEnv`) are thin views
of it, so the two forms cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from stpn_analysis.maze import (  # one geometry for the env and its references
    check_maze_options,
    maze_walls,
)

OBSERVATION_SIZE = 17
N_ACTIONS = 4
# Observation slots (spec §6.2).
PATCH, UNUSED, BIAS, PROGRESS, PREVIOUS_REWARD, PREVIOUS_ACTION = (
    slice(0, 9),
    9,
    10,
    11,
    12,
    slice(13, 17),
)


class MazeAgents:
    """``n_agents`` independent agents in one maze layout, stepped together.

    Each agent draws from its own ``numpy`` generator, so agent ``i`` of a batch seeded ``s + i``
    follows exactly the trajectory of a single environment seeded ``s + i``.
    Actions: 0 up (row − 1), 1 down, 2 left, 3 right.
    """

    def __init__(
        self,
        n_agents: int,
        size: int = 13,
        episode_length: int = 200,
        reward_value: float = 10.0,
        wall_penalty: float = 0.0,
    ) -> None:
        check_maze_options(
            size, episode_length, reward_value=reward_value, wall_penalty=wall_penalty
        )
        if isinstance(n_agents, bool) or not isinstance(n_agents, int) or n_agents < 1:
            raise ValueError(f"n_agents: expected a positive integer, got {n_agents!r}")
        self.n_agents, self.size, self.episode_length = n_agents, int(size), int(episode_length)
        self.reward_value, self.wall_penalty = float(reward_value), float(wall_penalty)
        self.walls = maze_walls(self.size)
        self._walls_flat = self.walls.ravel().astype(np.float32)
        self._is_wall = self.walls.ravel()
        self.open_cells = np.flatnonzero(~self._is_wall)
        self.centre = (self.size // 2) * self.size + self.size // 2
        n = self.size
        self._moves = np.array([-n, n, -1, 1])
        self._patch_offsets = np.array([-n - 1, -n, -n + 1, -1, 0, 1, n - 1, n, n + 1])
        self.position = np.full(n_agents, self.centre)
        self.reward_cell = np.full(n_agents, self.centre)
        self.step_count = np.zeros(n_agents, dtype=np.int64)
        self._observation = np.zeros((n_agents, OBSERVATION_SIZE), dtype=np.float32)
        self._observation[:, BIAS] = 1.0
        self.rngs: list[np.random.Generator] = [seeding.np_random(None)[0] for _ in range(n_agents)]

    def reset(self, agents: Sequence[int] | np.ndarray) -> None:
        """Start a new episode for ``agents``: centre start, fresh hidden reward cell."""
        agents = np.asarray(agents, dtype=np.int64)
        for i in agents:
            self.reward_cell[i] = self.open_cells[self.rngs[i].integers(len(self.open_cells))]
        self.position[agents] = self.centre
        self.step_count[agents] = 0
        self._observation[agents, PREVIOUS_REWARD] = 0.0
        self._observation[agents, PREVIOUS_ACTION] = 0.0

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move every agent; return ``(rewards (N,), done (N,))``. Observe with :meth:`observe`."""
        actions = np.asarray(actions).reshape(self.n_agents).astype(np.int64, copy=False)
        if actions.min() < 0 or actions.max() >= N_ACTIONS:
            raise ValueError(f"actions: expected integers in [0, {N_ACTIONS}), got {actions}")
        target = self.position + self._moves[actions]
        blocked = self._is_wall[target]
        self.position = np.where(blocked, self.position, target)
        rewards = np.where(blocked, -self.wall_penalty, 0.0).astype(np.float32)
        found = np.flatnonzero(self.position == self.reward_cell)
        if len(found):
            rewards[found] += self.reward_value
            self._teleport(found)
        self.step_count += 1
        self._observation[:, PREVIOUS_REWARD] = rewards
        self._observation[:, PREVIOUS_ACTION] = 0.0
        self._observation[np.arange(self.n_agents), PREVIOUS_ACTION.start + actions] = 1.0
        return rewards, self.step_count >= self.episode_length

    def _teleport(self, agents: np.ndarray) -> None:
        """Send each agent to a uniformly drawn open cell other than its reward cell."""
        n_open = len(self.open_cells)
        reward_index = np.searchsorted(self.open_cells, self.reward_cell[agents])
        draws = np.array([self.rngs[i].integers(n_open - 1) for i in agents])
        draws += draws >= reward_index
        self.position[agents] = self.open_cells[draws]

    def observe(self) -> np.ndarray:
        """The 17-dim observations of spec §6.2, ``(N, 17)`` float32 (a fresh array)."""
        obs = self._observation
        obs[:, PATCH] = self._walls_flat[self.position[:, None] + self._patch_offsets]
        obs[:, PROGRESS] = self.step_count / self.episode_length
        return obs.copy()


def observation_space(agents: MazeAgents) -> spaces.Box:
    """Bounds of the 17 slots: walls and one-hots in [0, 1], the previous reward between the
    wall penalty and the reward value."""
    low = min(0.0, -agents.wall_penalty)
    high = max(1.0, agents.reward_value)
    return spaces.Box(low=low, high=high, shape=(OBSERVATION_SIZE,), dtype=np.float32)


class MazeEnv(gym.Env):
    """One agent in the maze, as a ``gymnasium.Env`` (registered as ``stpn_rl/Maze-v0``).

    Episodes end (``terminated``) after ``episode_length`` steps: the observation carries the
    step count, so the horizon is part of the state rather than a truncation.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        size: int = 13,
        episode_length: int = 200,
        reward_value: float = 10.0,
        wall_penalty: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.agents = MazeAgents(1, size, episode_length, reward_value, wall_penalty)
        self.observation_space = observation_space(self.agents)
        self.action_space = spaces.Discrete(N_ACTIONS)
        self.render_mode = render_mode

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.agents.rngs[0] = self.np_random
        self.agents.reset([0])
        return self.agents.observe()[0], {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        rewards, done = self.agents.step(np.asarray(action))
        return self.agents.observe()[0], float(rewards[0]), bool(done[0]), False, {}

    def render(self) -> np.ndarray | None:
        """An ``(8·size, 8·size, 3)`` image: walls grey, the reward cell green, the agent red."""
        if self.render_mode != "rgb_array":
            return None
        colours = np.where(self.agents.walls[..., None], 128, 255).astype(np.uint8)
        colours = np.repeat(colours, 3, axis=-1)
        size = self.agents.size
        for flat, colour in (
            (self.agents.reward_cell[0], (0, 160, 0)),
            (self.agents.position[0], (200, 0, 0)),
        ):
            colours[flat // size, flat % size] = colour
        return np.kron(colours, np.ones((8, 8, 1), dtype=np.uint8))
