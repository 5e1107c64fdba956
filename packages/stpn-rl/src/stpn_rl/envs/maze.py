"""The grid maze of Miconi et al., as used by the STPN paper (docs/model.md §6.1–6.2).

The agent must find a reward cell it never observes, then keep returning to it after being
teleported away: it has to remember, within the episode, where the reward is. The options and
their defaults are :class:`MazeOptions`; the layout is :func:`maze_walls`; all the rules live in
:class:`MazeAgents`, which steps any number of agents with array operations. The
``gymnasium.Env`` (:class:`MazeEnv`), the SB3 ``VecEnv`` (:class:`~stpn_rl.envs.MazeVecEnv`) and
the reference rewards (:mod:`stpn_rl.envs.references`) all drive it, so none can drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding

OBSERVATION_SIZE = 17
N_ACTIONS = 4
# Observation slots (docs/model.md §6.2).
PATCH, UNUSED, BIAS, PROGRESS, PREVIOUS_REWARD, PREVIOUS_ACTION = (
    slice(0, 9),
    9,
    10,
    11,
    12,
    slice(13, 17),
)


def _is_int(value: object, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= minimum


def _check_size(size: object) -> int:
    if not _is_int(size, 5) or size % 2 == 0:  # type: ignore[operator]
        raise ValueError(f"size: expected an odd integer >= 5, got {size!r}")
    return int(size)  # type: ignore[call-overload]


@dataclass(frozen=True)
class MazeOptions:
    """The maze's options, checked on construction; the defaults are the paper's 13×13 maze.

    This is the one place they are written: the environments, the ``maze`` task's config check
    and the reference rewards all take them from here.
    """

    size: int = 13
    """Side of the square grid, odd and >= 5 (border walls, pillars where both indices are even)."""
    episode_length: int = 200
    """Steps per episode; the observation carries the step count, so the horizon is visible."""
    reward: float = 10.0
    """Paid for stepping onto the hidden reward cell (the agent is then teleported)."""
    wall_penalty: float = 0.0
    """Subtracted for every move into a wall."""

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # frozen: store the checked, plain-Python values
        set_field(self, "size", _check_size(self.size))
        if not _is_int(self.episode_length, 1):
            raise ValueError(
                f"episode_length: expected a positive integer, got {self.episode_length!r}"
            )
        set_field(self, "episode_length", int(self.episode_length))
        for name in ("reward", "wall_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number) or (
                not math.isfinite(value)
            ):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
            set_field(self, name, float(value))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(field.name for field in fields(cls))

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> MazeOptions:
        """Options from keyword arguments or a config's ``env`` section; ``ValueError`` naming
        any unknown key and listing the valid ones."""
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise ValueError(f"maze: unknown option(s) {unknown}; valid: {list(cls.names())}")
        return cls(**options)


def maze_walls(size: int) -> np.ndarray:
    """``(size, size)`` bool array, True for walls: border, even-even pillars, centre opened."""
    size = _check_size(size)
    walls = np.zeros((size, size), dtype=bool)
    walls[[0, -1], :] = True
    walls[:, [0, -1]] = True
    walls[::2, ::2] = True
    walls[size // 2, size // 2] = False
    return walls


class MazeAgents:
    """``n_agents`` independent agents in one maze layout, stepped together.

    Cells are flat indices ``row * size + column``. Each agent draws from its own ``numpy``
    generator in ``rngs`` (the environments seed them), so agent ``i`` of a batch seeded
    ``s + i`` follows exactly the trajectory of a single environment seeded ``s + i``; given
    ``rng``, all agents share that one instead, which many agents set up at once (simulations).
    Actions: 0 up (row − 1), 1 down, 2 left, 3 right.
    """

    def __init__(
        self,
        n_agents: int,
        options: MazeOptions | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not _is_int(n_agents, 1):
            raise ValueError(f"n_agents: expected a positive integer, got {n_agents!r}")
        self.options = MazeOptions() if options is None else options
        self.n_agents, self.size = int(n_agents), self.options.size
        self.walls = maze_walls(self.size)
        self._walls_flat = self.walls.ravel().astype(np.float32)
        self._is_wall = self.walls.ravel()
        self.open_cells = np.flatnonzero(~self._is_wall)
        self.centre = (self.size // 2) * self.size + self.size // 2
        n = self.size
        self._moves = np.array([-n, n, -1, 1])
        self._patch_offsets = np.array([-n - 1, -n, -n + 1, -1, 0, 1, n - 1, n, n + 1])
        self.position = np.full(self.n_agents, self.centre)
        self.reward_cell = np.full(self.n_agents, self.centre)
        self.step_count = np.zeros(self.n_agents, dtype=np.int64)
        self._observation = np.zeros((self.n_agents, OBSERVATION_SIZE), dtype=np.float32)
        self._observation[:, BIAS] = 1.0
        self.rngs: list[np.random.Generator] = (
            [rng] * self.n_agents
            if rng is not None
            else [seeding.np_random()[0] for _ in range(self.n_agents)]
        )

    def reset(self, agents: Sequence[int] | np.ndarray) -> None:
        """Start a new episode for ``agents``: centre start, fresh hidden reward cell."""
        agents = np.asarray(agents, dtype=np.int64)
        for i in agents:
            self.reward_cell[i] = self.open_cells[self.rngs[i].integers(len(self.open_cells))]
        self.position[agents] = self.centre
        self.step_count[agents] = 0
        self._observation[agents, PREVIOUS_REWARD] = 0.0
        self._observation[agents, PREVIOUS_ACTION] = 0.0

    def destination(self, cells: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Where each action moves from each cell: the neighbour, or the cell itself if the
        neighbour is a wall. The one statement of the move rule (also used by the oracle)."""
        target = cells + self._moves[actions]
        return np.where(self._is_wall[target], cells, target)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move every agent; return ``(rewards (N,), done (N,))``. Observe with :meth:`observe`."""
        actions = np.asarray(actions).reshape(self.n_agents).astype(np.int64, copy=False)
        if actions.min() < 0 or actions.max() >= N_ACTIONS:
            raise ValueError(f"actions: expected integers in [0, {N_ACTIONS}), got {actions}")
        moved = self.destination(self.position, actions)
        blocked = moved == self.position  # a move always changes the cell unless it is blocked
        self.position = moved
        rewards = np.where(blocked, -self.options.wall_penalty, 0.0).astype(np.float32)
        found = np.flatnonzero(self.position == self.reward_cell)
        if len(found):
            rewards[found] += self.options.reward
            self._teleport(found)
        self.step_count += 1
        self._observation[:, PREVIOUS_REWARD] = rewards
        self._observation[:, PREVIOUS_ACTION] = 0.0
        self._observation[np.arange(self.n_agents), PREVIOUS_ACTION.start + actions] = 1.0
        return rewards, self.step_count >= self.options.episode_length

    def _teleport(self, agents: np.ndarray) -> None:
        """Send each agent to a uniformly drawn open cell other than its reward cell."""
        n_open = len(self.open_cells)
        reward_index = np.searchsorted(self.open_cells, self.reward_cell[agents])
        draws = np.array([self.rngs[i].integers(n_open - 1) for i in agents])
        draws += draws >= reward_index
        self.position[agents] = self.open_cells[draws]

    def observe(self) -> np.ndarray:
        """The 17-dim observations (docs/model.md §6.2), ``(N, 17)`` float32, a fresh array."""
        obs = self._observation
        obs[:, PATCH] = self._walls_flat[self.position[:, None] + self._patch_offsets]
        obs[:, PROGRESS] = self.step_count / self.options.episode_length
        return obs.copy()


def observation_space(options: MazeOptions) -> spaces.Box:
    """Bounds of the 17 slots: walls and one-hots in [0, 1], the previous reward between the
    wall penalty and the reward."""
    low = min(0.0, -options.wall_penalty, options.reward)
    high = max(1.0, options.reward, -options.wall_penalty)
    return spaces.Box(low=low, high=high, shape=(OBSERVATION_SIZE,), dtype=np.float32)


class MazeEnv(gym.Env):
    """One agent in the maze, as a ``gymnasium.Env`` (registered as ``stpn_rl/Maze-v0``);
    ``options`` are the fields of :class:`MazeOptions`.

    Episodes end (``terminated``) after ``episode_length`` steps: the observation carries the
    step count, so the horizon is part of the state rather than a truncation.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None, **options: Any) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.agents = MazeAgents(1, MazeOptions.from_mapping(options))
        self.observation_space = observation_space(self.agents.options)
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
