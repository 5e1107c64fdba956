"""Reference rewards for the grid maze of spec §6.1, computed from the maze itself.

A maze reward only means something next to what no memory (a random policy) and perfect memory
(an oracle that knows where the reward is) would score. Both are derived here from the geometry,
so they follow the maze size, episode length and reward value instead of being copied numbers.
This module is self-contained on purpose: ``stpn_analysis`` reads runs and never imports
``stpn_rl``, so it carries its own statement of the maze rules:

- ``size`` × ``size`` grid; walls on the border and a pillar wherever row and column are both
  even; the centre cell is opened.
- Actions move one cell up, down, left or right; moving into a wall leaves the agent in place.
- Every agent starts at the centre; its reward cell is uniform over the open cells (centre
  included). Stepping onto it (after the move) pays ``reward`` and teleports the agent, in the
  same step, to a uniform open cell other than the reward cell.
"""

from __future__ import annotations

from collections import deque

import numpy as np

MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right


def _is_int(value: object, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= minimum


def check_maze_options(size: int, episode_length: int, **numbers: float) -> None:
    """Raise ``ValueError`` naming the first bad maze option: ``size`` (odd, >= 5),
    ``episode_length`` (>= 1) and any named real-valued option (finite, e.g. ``reward=10``).
    The one check of the maze geometry, shared with the environments of ``stpn_rl``."""
    if not _is_int(size, 5) or size % 2 == 0:
        raise ValueError(f"size: expected an odd integer >= 5, got {size!r}")
    if not _is_int(episode_length, 1):
        raise ValueError(f"episode_length: expected a positive integer, got {episode_length!r}")
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value!r}")


def maze_walls(size: int = 13) -> np.ndarray:
    """``(size, size)`` bool array, True for walls: border, even-even pillars, centre opened."""
    check_maze_options(size, 1)
    walls = np.zeros((size, size), dtype=bool)
    walls[[0, -1], :] = True
    walls[:, [0, -1]] = True
    walls[::2, ::2] = True
    walls[size // 2, size // 2] = False
    return walls


def _step(walls: np.ndarray, cell: tuple[int, int], move: tuple[int, int]) -> tuple[int, int]:
    """Where one move from ``cell`` lands: the neighbour, or ``cell`` itself if it is a wall."""
    target = (cell[0] + move[0], cell[1] + move[1])
    return cell if walls[target] else target


def bfs_distances(walls: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Fewest moves from every cell to ``target`` (breadth-first search around the walls).

    Returns an int array shaped like ``walls``: 0 at ``target``, -1 on walls and unreachable
    cells. Moves are symmetric, so a search outward from ``target`` gives distances *to* it.
    """
    walls = np.asarray(walls, dtype=bool)
    if walls.ndim != 2:
        raise ValueError(f"walls: expected a 2-D bool array, got shape {walls.shape}")
    if walls[target]:
        raise ValueError(f"target: expected an open cell, got wall cell {target}")
    distance = np.full(walls.shape, -1, dtype=np.int64)
    distance[target] = 0
    queue = deque([target])
    while queue:
        cell = queue.popleft()
        for move in MOVES:
            nxt = _step(walls, cell, move)
            if distance[nxt] < 0:
                distance[nxt] = distance[cell] + 1
                queue.append(nxt)
    return distance


def _open_cells(walls: np.ndarray) -> list[tuple[int, int]]:
    return [(int(r), int(c)) for r, c in zip(*np.nonzero(~walls), strict=True)]


def oracle_reward(size: int = 13, episode_length: int = 200, reward: float = 10.0) -> float:
    """Exact expected episode reward of an agent that knows the reward cell (perfect memory).

    The agent walks a shortest path (BFS, around the pillars) from the centre to the reward cell,
    and after each teleport from its landing cell back to it. Nothing can do better: every move
    shortens the distance by at most one, and where the teleport lands does not depend on the
    policy. The number of rewards is a renewal count, computed exactly by dynamic programming over
    time (no sampling) and averaged over the reward cells. Starting on the reward cell (the
    centre) needs one step away and one back, or a single bump into a wall if it has one.
    """
    check_maze_options(size, episode_length, reward=reward)
    walls = maze_walls(size)
    cells = _open_cells(walls)
    centre = (size // 2, size // 2)
    totals = []
    for target in cells:
        distance = bfs_distances(walls, target)
        first = distance[centre] or 1 + min(distance[_step(walls, centre, m)] for m in MOVES)
        returns = np.array([distance[c] for c in cells if c != target])
        gap = np.bincount(returns, minlength=episode_length + 1) / len(returns)  # P(trip = k)
        arrival = np.zeros(episode_length + 1)  # arrival[t]: P(a reward is collected at step t)
        for t in range(1, episode_length + 1):
            arrival[t] = float(t == first) + gap[1 : t + 1] @ arrival[t - 1 :: -1][:t]
        totals.append(arrival.sum())
    return float(reward * np.mean(totals))


def random_policy_reward(
    size: int = 13,
    episode_length: int = 200,
    reward: float = 10.0,
    seed: int = 0,
    n_episodes: int = 20_000,
) -> tuple[float, float]:
    """Expected episode reward of uniformly random actions, by simulation.

    Returns ``(mean, standard error)`` over ``n_episodes`` simulated episodes, all agents stepped
    together with one seeded ``numpy`` generator, so the figure is reproducible.
    """
    check_maze_options(size, episode_length, reward=reward)
    if not _is_int(n_episodes, 2):
        raise ValueError(f"n_episodes: expected an integer >= 2, got {n_episodes!r}")
    rng = np.random.default_rng(seed)
    is_wall = maze_walls(size).ravel()
    open_cells = np.flatnonzero(~is_wall)
    moves = np.array([-size, size, -1, 1])
    position = np.full(n_episodes, (size // 2) * size + size // 2)
    target = rng.choice(open_cells, size=n_episodes)
    target_index = np.searchsorted(open_cells, target)
    total = np.zeros(n_episodes)
    for _ in range(episode_length):
        moved = position + moves[rng.integers(4, size=n_episodes)]
        position = np.where(is_wall[moved], position, moved)
        found = np.flatnonzero(position == target)
        total[found] += reward
        landing = rng.integers(len(open_cells) - 1, size=len(found))
        landing += landing >= target_index[found]  # skip the reward cell itself
        position[found] = open_cells[landing]
    return float(total.mean()), float(total.std(ddof=1) / np.sqrt(n_episodes))


def manhattan_estimate(size: int = 13, episode_length: int = 200, reward: float = 10.0) -> float:
    """The paper's oracle estimate (spec §6.6), kept to compare with :func:`oracle_reward`.

    For each reward cell r: ``reward · episode_length / d̄(r)``, with d̄(r) the mean *Manhattan*
    distance from every open cell (r included) to r; then the mean over r. As in the original
    script, the centre is *not* opened here (96 cells for 13×13), which reproduces its 274.73
    (13×13) and 432.20 (9×9). The BFS oracle gives 270.38 for 13×13 instead, because the estimate
    (1) ignores the pillars, which make many paths longer than the Manhattan distance, and the
    opened centre; (2) ignores the first trip from the centre, and counts r itself (distance 0) in
    d̄(r) although the teleport never lands there; (3) counts ``episode_length / d̄(r)`` trips, a
    ratio of means with no truncation of the last trip, where the BFS oracle counts exactly the
    trips that finish within the episode.
    """
    check_maze_options(size, episode_length, reward=reward)
    walls = maze_walls(size)
    walls[size // 2, size // 2] = True
    cells = np.array(_open_cells(walls))
    mean_distance = np.abs(cells[:, None, :] - cells[None, :, :]).sum(-1).mean(axis=0)
    return float(np.mean(reward * episode_length / mean_distance))


def maze_references(
    size: int = 13, episode_length: int = 200, reward: float = 10.0, seed: int = 0
) -> dict[str, float]:
    """Reference lines for maze reward plots: ``{"random": ..., "oracle": ...}``.

    ``random`` is simulated (:func:`random_policy_reward`), ``oracle`` is the exact BFS renewal
    count (:func:`oracle_reward`); :func:`manhattan_estimate` explains the paper's 274.73.
    """
    random_mean, _ = random_policy_reward(size, episode_length, reward, seed)
    return {"random": random_mean, "oracle": oracle_reward(size, episode_length, reward)}
