"""Reference rewards for the maze: what no memory and perfect memory score on a given maze.

A maze reward only means something next to what a random policy (no memory) and an oracle that
knows where the reward is (perfect memory) would score. Both are measured by playing seeded
episodes in :class:`~stpn_rl.envs.maze.MazeAgents` itself, so they follow the maze's size,
episode length, reward and wall penalty, and its rules (start, teleport) are never restated.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stpn_rl.envs.maze import N_ACTIONS, MazeAgents, MazeOptions, maze_walls

Policy = Callable[[MazeAgents, np.random.Generator], np.ndarray]
"""Actions ``(N,)`` for the agents in their current state, drawing from the generator if needed."""

DEFAULT_EPISODES = 20_000


def bfs_distances(agents: MazeAgents, target: int) -> np.ndarray:
    """Fewest moves from every cell to the open cell ``target`` (breadth-first search with the
    maze's own move rule, :meth:`MazeAgents.destination`).

    Returns ``(size * size,)`` int64 indexed by flat cell: 0 at ``target``, -1 on walls and
    unreachable cells. Moves are reversible, so a search outward from ``target`` gives the
    distances *to* it.
    """
    if target not in agents.open_cells:
        raise ValueError(f"target: expected an open cell of the maze, got {target!r}")
    distance = np.full(agents.size**2, -1, dtype=np.int64)
    distance[target] = 0
    frontier, steps = np.array([target]), 0
    actions = np.arange(N_ACTIONS)
    while len(frontier):
        steps += 1
        reached = agents.destination(frontier[:, None], actions[None, :]).ravel()
        frontier = np.unique(reached[distance[reached] < 0])
        distance[frontier] = steps
    return distance


def play(options: MazeOptions, policy: Policy, seed: int, n_episodes: int) -> tuple[float, float]:
    """``(mean, standard error)`` of the episode reward of ``policy`` over ``n_episodes``
    episodes played side by side, the maze and the policy drawing from one generator seeded
    ``seed``."""
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 2:
        raise ValueError(f"n_episodes: expected an integer >= 2, got {n_episodes!r}")
    rng = np.random.default_rng(seed)
    agents = MazeAgents(n_episodes, options, rng)
    agents.reset(np.arange(n_episodes))
    total = np.zeros(n_episodes)
    for _ in range(options.episode_length):
        rewards, _ = agents.step(policy(agents, rng))
        total += rewards
    return float(total.mean()), float(total.std(ddof=1) / np.sqrt(n_episodes))


def random_policy_reward(
    options: MazeOptions | None = None, seed: int = 0, n_episodes: int = DEFAULT_EPISODES
) -> tuple[float, float]:
    """Episode reward of uniformly random actions: ``(mean, standard error)``."""
    return play(
        options or MazeOptions(),
        lambda agents, rng: rng.integers(N_ACTIONS, size=agents.n_agents),
        seed,
        n_episodes,
    )


def oracle_reward(
    options: MazeOptions | None = None, seed: int = 0, n_episodes: int = DEFAULT_EPISODES
) -> tuple[float, float]:
    """Episode reward of an agent that knows its reward cell: ``(mean, standard error)``.

    Each step it takes the move that lands closest (by :func:`bfs_distances`) to the reward
    cell, i.e. a shortest path around the pillars, from the centre and after every teleport.
    Nothing does better: a move shortens the distance by at most one, and where the teleport
    lands does not depend on the policy.
    """
    options = options or MazeOptions()
    layout = MazeAgents(1, options)
    distance = np.zeros((options.size**2, options.size**2), dtype=np.int64)
    for cell in layout.open_cells:
        distance[cell] = bfs_distances(layout, int(cell))
    actions = np.arange(N_ACTIONS)

    def policy(agents: MazeAgents, rng: np.random.Generator) -> np.ndarray:
        landing = agents.destination(agents.position[:, None], actions[None, :])
        return np.argmin(distance[agents.reward_cell[:, None], landing], axis=1)

    return play(options, policy, seed, n_episodes)


def manhattan_estimate(options: MazeOptions | None = None) -> float:
    """The paper's oracle estimate (docs/model.md §6.6), kept to explain its gap to the oracle.

    For each reward cell r: ``reward · episode_length / d̄(r)``, with d̄(r) the mean *Manhattan*
    distance from every open cell (r included) to r; then the mean over r. As in the original
    script, the centre is *not* opened here (96 cells for 13×13), which reproduces its 274.73
    (13×13) and 432.20 (9×9). The oracle scores less (about 270 for 13×13) because the estimate
    (1) ignores the pillars, which make many paths longer than the Manhattan distance, and the
    opened centre; (2) ignores the first trip from the centre, and counts r itself (distance 0) in
    d̄(r) although the teleport never lands there; (3) counts ``episode_length / d̄(r)`` trips, a
    ratio of means with no truncation of the last trip.
    """
    options = options or MazeOptions()
    walls = maze_walls(options.size)
    walls[options.size // 2, options.size // 2] = True
    cells = np.argwhere(~walls)
    mean_distance = np.abs(cells[:, None, :] - cells[None, :, :]).sum(-1).mean(axis=0)
    return float(np.mean(options.reward * options.episode_length / mean_distance))


def maze_references(
    options: MazeOptions | None = None, seed: int = 0, n_episodes: int = DEFAULT_EPISODES
) -> dict[str, float]:
    """Reference lines for maze reward plots, ``{"random": ..., "oracle": ...}``: the mean
    episode rewards of :func:`random_policy_reward` and :func:`oracle_reward`."""
    return {
        "random": random_policy_reward(options, seed, n_episodes)[0],
        "oracle": oracle_reward(options, seed, n_episodes)[0],
    }
