"""Maze references: geometry against the spec, BFS by hand, the oracle by hand on a tiny case,
and the simulated random policy against an exact probability-propagation reference."""

import math

import numpy as np
import pytest
from stpn_analysis import (
    bfs_distances,
    manhattan_estimate,
    maze_references,
    maze_walls,
    oracle_reward,
    random_policy_reward,
)

SPEC_13 = """\
1111111111111
1000000000001
1010101010101
1000000000001
1010101010101
1000000000001
1010100010101
1000000000001
1010101010101
1000000000001
1010101010101
1000000000001
1111111111111"""


def test_13x13_layout_is_the_spec_layout() -> None:
    walls = maze_walls(13)
    assert "\n".join("".join(str(int(v)) for v in row) for row in walls) == SPEC_13
    assert int((~walls).sum()) == 97


def test_bfs_on_5x5_by_hand() -> None:
    # 5x5: border walls, the only pillar (2,2) is the centre, which is opened: a 3x3 open room.
    walls = maze_walls(5)
    assert not walls[1:4, 1:4].any() and walls[0].all() and walls[:, 4].all()
    distance = bfs_distances(walls, (1, 1))
    assert distance[1:4, 1:4].tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert (distance[walls] == -1).all()
    assert bfs_distances(walls, (2, 2))[1:4, 1:4].tolist() == [[2, 1, 2], [1, 0, 1], [2, 1, 2]]


def test_bfs_goes_around_pillars_on_7x7() -> None:
    # 7x7 has pillars at (2,2), (2,4), (4,2), (4,4); from (1,2) to (3,2) Manhattan says 2, but
    # the pillar at (2,2) forces a detour through (1,1)/(2,1)/(3,1) or (1,3)/(2,3)/(3,3).
    distance = bfs_distances(maze_walls(7), (1, 2))
    assert distance[3, 2] == 4
    assert distance[1:6, 1:6].tolist() == [
        [1, 0, 1, 2, 3],
        [2, -1, 2, -1, 4],
        [3, 4, 3, 4, 5],
        [4, -1, 4, -1, 6],
        [5, 6, 5, 6, 7],
    ]


def test_oracle_by_hand_on_5x5_two_steps() -> None:
    # Start at the centre of the 3x3 room, 2 steps, reward 1. Edge cells (4): reached at t=1, then
    # the teleport lands on one of 8 cells, 3 of them adjacent -> 1 + 3/8. Corners (4): reached at
    # t=2 -> 1. Centre: one step out, one back -> 1. Mean over the 9 cells: 7/6.
    assert oracle_reward(5, episode_length=2, reward=1.0) == pytest.approx(7 / 6)
    assert oracle_reward(5, episode_length=1, reward=1.0) == pytest.approx(4 / 9)


def _random_policy_exact(size: int, episode_length: int, reward: float) -> float:
    """Expected reward of the uniform random policy by propagating the position distribution."""
    walls = maze_walls(size)
    cells = list(zip(*np.nonzero(~walls), strict=True))
    index = {cell: i for i, cell in enumerate(cells)}
    move = np.zeros((len(cells), len(cells)))
    for cell, i in index.items():
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            target = (cell[0] + dr, cell[1] + dc)
            move[i, index.get(target, i)] += 0.25
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


@pytest.mark.parametrize(("size", "episode_length"), [(5, 10), (13, 200)])
def test_random_policy_simulation_matches_exact(size: int, episode_length: int) -> None:
    mean, stderr = random_policy_reward(size, episode_length, 10.0, seed=0, n_episodes=20_000)
    exact = _random_policy_exact(size, episode_length, 10.0)
    assert 0 < stderr and abs(mean - exact) < 4 * stderr


def test_references_13x13() -> None:
    references = maze_references(13, 200, 10.0, seed=0)
    assert set(references) == {"random", "oracle"}
    assert math.isfinite(references["oracle"]) and references["oracle"] >= references["random"]
    assert references["random"] > 0
    assert references == maze_references(13, 200, 10.0, seed=0)  # seeded: reproducible
    # Nothing can collect more than one reward per step.
    assert references["oracle"] < 10.0 * 200


def test_manhattan_estimate_reproduces_the_paper_figures() -> None:
    # Spec §6.6: the original script's formula gives 274.73 (13x13) and 432.20 (9x9).
    assert manhattan_estimate(13) == pytest.approx(274.73, abs=0.005)
    assert manhattan_estimate(9) == pytest.approx(432.20, abs=0.005)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"size": 12}, "size"), ({"size": 3}, "size"), ({"episode_length": 0}, "episode_length"),
     ({"reward": math.nan}, "reward")],
)
def test_bad_maze_options(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        oracle_reward(**kwargs)


def test_bfs_rejects_a_wall_target() -> None:
    with pytest.raises(ValueError, match="target"):
        bfs_distances(maze_walls(5), (0, 0))
