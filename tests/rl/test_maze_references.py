"""Maze references, measured by playing the env: BFS by hand, and the simulated random policy and
oracle against exact values computed here from the maze rules written out independently
(probability propagation, and a renewal count over shortest-path trips); a 9×9 run records its
own maze's references and the report draws those."""

import json
import math

import numpy as np
import pytest
from stpn_analysis import load_runs
from stpn_analysis.report import _figures
from stpn_rl.envs import (
    MazeAgents,
    MazeOptions,
    bfs_distances,
    manhattan_estimate,
    maze_references,
    maze_walls,
    oracle_reward,
    random_policy_reward,
)
from stpn_rl.train import train

MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))


def _distances(size: int, row: int, col: int) -> np.ndarray:
    agents = MazeAgents(1, MazeOptions(size=size))
    return bfs_distances(agents, row * size + col).reshape(size, size)


def test_bfs_on_5x5_by_hand() -> None:
    # 5x5: border walls, the only pillar (2,2) is the centre, which is opened: a 3x3 open room.
    walls = maze_walls(5)
    assert not walls[1:4, 1:4].any() and walls[0].all() and walls[:, 4].all()
    distance = _distances(5, 1, 1)
    assert distance[1:4, 1:4].tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert (distance[walls] == -1).all()
    assert _distances(5, 2, 2)[1:4, 1:4].tolist() == [[2, 1, 2], [1, 0, 1], [2, 1, 2]]


def test_bfs_goes_around_pillars_on_7x7() -> None:
    # 7x7 has pillars at (2,2), (2,4), (4,2), (4,4); from (1,2) to (3,2) Manhattan says 2, but
    # the pillar at (2,2) forces a detour through (1,1)/(2,1)/(3,1) or (1,3)/(2,3)/(3,3).
    distance = _distances(7, 1, 2)
    assert distance[3, 2] == 4
    assert distance[1:6, 1:6].tolist() == [
        [1, 0, 1, 2, 3],
        [2, -1, 2, -1, 4],
        [3, 4, 3, 4, 5],
        [4, -1, 4, -1, 6],
        [5, 6, 5, 6, 7],
    ]


def test_bfs_rejects_a_wall_target() -> None:
    with pytest.raises(ValueError, match="target"):
        bfs_distances(MazeAgents(1, MazeOptions(size=5)), 0)


def _open_cells(size: int) -> list[tuple[int, int]]:
    return [(int(r), int(c)) for r, c in np.argwhere(~maze_walls(size))]


def _random_policy_exact(size: int, episode_length: int, reward: float) -> float:
    """Expected reward of the uniform random policy by propagating the position distribution."""
    cells = _open_cells(size)
    index = {cell: i for i, cell in enumerate(cells)}
    move = np.zeros((len(cells), len(cells)))
    for cell, i in index.items():
        for dr, dc in MOVES:
            move[i, index.get((cell[0] + dr, cell[1] + dc), i)] += 0.25
    total = 0.0
    for r in range(len(cells)):
        p = np.zeros(len(cells))
        p[index[(size // 2, size // 2)]] = 1.0
        for _ in range(episode_length):
            p = p @ move
            found, p[r] = p[r], 0.0
            total += reward * found
            p += found / (len(cells) - 1)
            p[r] = 0.0
    return total / len(cells)


def _oracle_exact(size: int, episode_length: int, reward: float) -> float:
    """Expected reward of shortest-path walking, as a renewal count over time: the first trip
    from the centre, then trips from a uniform landing cell other than the reward cell. No
    centre cell has a wall beside it, so on the reward cell at the start it steps out and back."""
    cells = _open_cells(size)
    centre = (size // 2, size // 2)
    totals = []
    for target in cells:
        distance = _distances(size, *target)
        first = distance[centre] or 2
        returns = np.array([distance[c] for c in cells if c != target])
        gap = np.bincount(returns, minlength=episode_length + 1) / len(returns)  # P(trip = k)
        arrival = np.zeros(episode_length + 1)  # arrival[t]: P(a reward is collected at step t)
        for t in range(1, episode_length + 1):
            arrival[t] = float(t == first) + gap[1 : t + 1] @ arrival[t - 1 :: -1][:t]
        totals.append(arrival.sum())
    return float(reward * np.mean(totals))


def test_exact_oracle_by_hand_on_5x5() -> None:
    # Start at the centre of the 3x3 room, reward 1. Edge cells (4): reached at t=1, then the
    # teleport lands on one of 8 cells, 3 of them adjacent -> 1 + 3/8 in 2 steps. Corners (4):
    # reached at t=2 -> 1. Centre: one step out, one back -> 1. Mean over the 9 cells: 7/6.
    assert _oracle_exact(5, 2, 1.0) == pytest.approx(7 / 6)
    assert _oracle_exact(5, 1, 1.0) == pytest.approx(4 / 9)


@pytest.mark.parametrize(
    ("size", "episode_length", "n_episodes"), [(5, 2, 5_000), (7, 30, 5_000), (13, 200, 2_000)]
)
def test_simulated_references_match_the_exact_values(
    size: int, episode_length: int, n_episodes: int
) -> None:
    options = MazeOptions(size=size, episode_length=episode_length)
    for simulate, exact in ((random_policy_reward, _random_policy_exact),
                            (oracle_reward, _oracle_exact)):
        mean, stderr = simulate(options, seed=0, n_episodes=n_episodes)
        assert 0 < stderr and abs(mean - exact(size, episode_length, 10.0)) < 4 * stderr


def test_references_follow_the_maze_and_are_reproducible() -> None:
    small = MazeOptions(size=7, episode_length=50)
    references = maze_references(small, seed=0, n_episodes=500)
    assert set(references) == {"random", "oracle"}
    assert 0 < references["random"] < references["oracle"] < 10.0 * 50
    assert references == maze_references(small, seed=0, n_episodes=500)  # seeded
    doubled = maze_references(MazeOptions(7, 50, reward=20.0), seed=0, n_episodes=500)
    assert doubled == pytest.approx({k: 2 * v for k, v in references.items()})
    penalised = maze_references(MazeOptions(7, 50, wall_penalty=1.0), seed=0, n_episodes=500)
    assert penalised["random"] < references["random"]  # random moves bump into walls
    assert penalised["oracle"] == references["oracle"]  # shortest paths never do


def test_manhattan_estimate_reproduces_the_paper_figures() -> None:
    # docs/model.md §6.6: the original script's formula gives 274.73 (13x13) and 432.20 (9x9).
    assert manhattan_estimate() == pytest.approx(274.73, abs=0.005)
    assert manhattan_estimate(MazeOptions(size=9)) == pytest.approx(432.20, abs=0.005)


def test_too_few_episodes_are_rejected() -> None:
    with pytest.raises(ValueError, match="n_episodes"):
        random_policy_reward(n_episodes=1)
    assert math.isfinite(oracle_reward(MazeOptions(size=5, episode_length=3), n_episodes=2)[0])


def test_a_maze_run_records_and_its_report_draws_the_references_of_its_own_maze(
    tiny, tmp_path
) -> None:
    config = tiny("maze", "stpn", env={"size": 9, "episode_length": 20})
    run = train("maze", "stpn", config, out=tmp_path, progress_bar=False)
    expected = maze_references(MazeOptions(size=9, episode_length=20))
    recorded = json.loads((run / "metrics.json").read_text())["references"]
    assert recorded == expected
    axes = _figures(load_runs(tmp_path))["maze_reward"].axes[0]
    levels = {line.get_label().split()[0]: line.get_ydata()[0] for line in axes.get_lines()}
    assert levels["random"] == expected["random"] and levels["oracle"] == expected["oracle"]
