"""The maze of docs/model.md §6.1–6.2: options, layout, moves, reward and teleport, observation,
episode length, and the vectorised env against the single one."""

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env
from stpn_rl.envs import MAZE_ID, MazeAgents, MazeEnv, MazeOptions, MazeVecEnv, maze_walls

UP, DOWN, LEFT, RIGHT = range(4)
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


def cell(agents: MazeAgents, row: int, col: int) -> int:
    return row * agents.size + col


def test_the_default_maze_is_the_papers_13x13_layout_with_97_open_cells() -> None:
    assert MazeOptions() == MazeOptions(size=13, episode_length=200, reward=10.0, wall_penalty=0)
    walls = maze_walls(13)
    assert "\n".join("".join(str(int(v)) for v in row) for row in walls) == SPEC_13
    assert len(MazeAgents(1).open_cells) == 97 == int((~walls).sum())


@pytest.mark.parametrize("size", [5, 7, 9])
def test_other_sizes_keep_border_pillars_and_open_centre(size: int) -> None:
    walls = maze_walls(size)
    assert walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()
    assert not walls[size // 2, size // 2]
    assert walls[2, 2] == (size // 2 != 2)


def test_first_observation_layout() -> None:
    env = MazeEnv(size=13)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (17,) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs[:9], maze_walls(13)[5:8, 5:8].ravel())
    assert obs[9] == 0 and obs[10] == 1 and obs[11] == 0 and obs[12] == 0
    np.testing.assert_array_equal(obs[13:], np.zeros(4))  # no previous action at step 0


def test_reward_option_sets_the_payout_and_the_observation_bounds() -> None:
    env = MazeEnv(size=5, reward=3.0, wall_penalty=0.5)
    assert env.observation_space.low.min() == -0.5 and env.observation_space.high.max() == 3.0
    agents = env.agents
    env.reset(seed=0)
    agents.reward_cell[0] = cell(agents, 1, 2)
    agents.position[0] = cell(agents, 1, 1)
    _, reward, *_ = env.step(RIGHT)
    assert reward == 3.0


def test_walls_block_and_cost_the_wall_penalty() -> None:
    agents = MazeAgents(1, MazeOptions(size=7, wall_penalty=0.5))
    agents.reset([0])
    agents.reward_cell[0] = cell(agents, 5, 5)
    agents.position[0] = cell(agents, 1, 1)
    rewards, _ = agents.step(np.array([UP]))
    assert agents.position[0] == cell(agents, 1, 1) and rewards[0] == -0.5
    rewards, _ = agents.step(np.array([RIGHT]))
    assert agents.position[0] == cell(agents, 1, 2) and rewards[0] == 0.0
    rewards, _ = agents.step(np.array([DOWN]))  # (2, 2) is a pillar
    assert agents.position[0] == cell(agents, 1, 2) and rewards[0] == -0.5
    obs = agents.observe()[0]
    np.testing.assert_array_equal(obs[:9], agents.walls[0:3, 1:4].ravel())
    assert obs[12] == -0.5 and obs[13 + DOWN] == 1 and obs[13:].sum() == 1


def test_reward_pays_ten_and_teleports_elsewhere_uniformly() -> None:
    agents = MazeAgents(1, MazeOptions(size=7))
    agents.reset([0])
    target = cell(agents, 1, 2)
    agents.reward_cell[0] = target
    landed = []
    for _ in range(2000):
        agents.position[0] = cell(agents, 1, 1)
        rewards, _ = agents.step(np.array([RIGHT]))
        assert rewards[0] == 10.0
        landed.append(agents.position[0])
    assert agents.observe()[0, 12] == 10.0
    others = set(agents.open_cells) - {target}
    assert set(landed) == others  # every open cell but the reward cell, never the reward cell
    counts = np.bincount(landed)[sorted(others)]
    assert counts.min() > 2000 / len(others) / 3


def test_episode_lasts_exactly_episode_length_steps() -> None:
    env = gym.make(MAZE_ID, size=7, episode_length=30)
    env.reset(seed=1)
    for t in range(1, 31):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert obs[11] == pytest.approx(t / 30)
        assert terminated == (t == 30) and not truncated


def test_gymnasium_checker_accepts_the_env() -> None:
    check_env(gym.make(MAZE_ID, size=9).unwrapped)


def test_vectorised_env_equals_single_envs_under_the_same_seed() -> None:
    n_envs, kwargs = 4, {"size": 7, "episode_length": 25}
    vectorised = MazeVecEnv(n_envs, **kwargs)
    vectorised.seed(3)
    single = make_vec_env(MAZE_ID, n_envs=n_envs, seed=3, env_kwargs=kwargs)
    np.testing.assert_array_equal(vectorised.reset(), single.reset())
    rng = np.random.default_rng(0)
    total_reward = 0.0
    for _ in range(120):
        actions = rng.integers(0, 4, n_envs)
        obs_v, rew_v, done_v, info_v = vectorised.step(actions)
        obs_s, rew_s, done_s, info_s = single.step(actions)
        np.testing.assert_array_equal(obs_v, obs_s)
        np.testing.assert_array_equal(rew_v, rew_s)
        np.testing.assert_array_equal(done_v, done_s)
        for i in np.flatnonzero(done_v):
            np.testing.assert_array_equal(
                info_v[i]["terminal_observation"], info_s[i]["terminal_observation"]
            )
        total_reward += rew_v.sum()
    assert total_reward > 0  # the reward-and-teleport path was exercised


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("size", 4),
        ("size", 3),
        ("size", 7.0),
        ("size", True),
        ("episode_length", 0),
        ("reward", math.nan),
        ("reward", "10"),
        ("wall_penalty", "x"),
        ("reward_value", 10.0),  # the option is called reward
    ],
)
def test_bad_options_are_rejected_by_name(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        MazeVecEnv(2, **{option: value})
    with pytest.raises(ValueError, match=option):
        gym.make(MAZE_ID, **{option: value})


def test_options_are_stored_as_plain_numbers() -> None:
    options = MazeOptions(size=np.int64(9), episode_length=np.int32(50), reward=5, wall_penalty=1)
    assert options == MazeOptions(9, 50, 5.0, 1.0)
    assert [type(v) for v in vars(options).values()] == [int, int, float, float]
    assert MazeOptions.names() == ("size", "episode_length", "reward", "wall_penalty")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\]; valid: \['size'"):
        MazeOptions.from_mapping({"colour": "red"})


def test_bad_actions_are_rejected() -> None:
    env = MazeVecEnv(2, size=5)
    env.reset()
    with pytest.raises(ValueError, match="actions"):
        env.step(np.array([0, 4]))


def test_rgb_render_shows_walls_agent_and_reward() -> None:
    env = gym.make(MAZE_ID, size=7, render_mode="rgb_array")
    env.reset(seed=0)
    image = env.unwrapped.render()
    assert image.shape == (56, 56, 3)
    np.testing.assert_array_equal(image[3 * 8 + 4, 3 * 8 + 4], (200, 0, 0))  # agent at centre
    np.testing.assert_array_equal(image[4, 4], (128, 128, 128))  # corner wall
    assert (image == np.array([0, 160, 0], dtype=np.uint8)).all(-1).any()  # reward cell
