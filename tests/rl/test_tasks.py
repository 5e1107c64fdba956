"""Tasks by name: the environments they build, short training runs on each, and bad names."""

import numpy as np
import pytest
import torch
from stpn_rl.evaluate import evaluate_agent
from stpn_rl.tasks import TASKS, make_vec_env
from stpn_rl.train import build_agent


def test_task_names() -> None:
    assert set(TASKS) == {"maze", "pong", "inverted-pendulum", "inverted-pendulum-po"}


def test_pong_frames_are_single_channel_84x84_with_six_actions() -> None:
    env = make_vec_env("pong", 1, seed=0)
    assert env.reset().shape == (1, 1, 84, 84)
    assert env.action_space.n == 6
    # ALE's own frame skip is off, so SB3's AtariWrapper skips 4 frames, not 16.
    assert env.get_attr("_frameskip")[0] == 1
    env.close()


def test_partially_observable_pendulum_hides_the_velocities() -> None:
    full, partial = (
        make_vec_env("inverted-pendulum", 1, 3),
        make_vec_env("inverted-pendulum-po", 1, 3),
    )
    obs_full, obs_partial = full.reset(), partial.reset()
    for _ in range(20):
        assert obs_full.shape == (1, 4) and obs_partial.shape == (1, 2)
        np.testing.assert_array_equal(obs_partial, obs_full[:, :2])
        action = np.array([[0.3]], dtype=np.float32)
        obs_full, obs_partial = full.step(action)[0], partial.step(action)[0]


@pytest.mark.parametrize("task", ["pong", "inverted-pendulum", "inverted-pendulum-po"])
def test_a_few_hundred_training_steps_run(task: str, tiny) -> None:
    config = tiny(task, "stpn", n_envs=2, ppo={"n_steps": 64, "batch_size": 64, "n_epochs": 2})
    model = build_agent(config, task, seed=0)
    before = [p.detach().clone() for p in model.policy.lstm_actor.parameters()]
    model.learn(256)
    assert model.num_timesteps == 256
    after = list(model.policy.lstm_actor.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(b, p) for b, p in zip(before, after, strict=True))
    if task != "pong":  # an untrained pendulum episode lasts a few steps; Pong's thousands
        result = evaluate_agent(model, task, 2, deterministic=False, seed=1)
        assert result["episodes"] == 2 and result["energy_per_step"] > 0


def test_unknown_task_and_bad_options_are_reported() -> None:
    with pytest.raises(ValueError, match="task: expected one of"):
        make_vec_env("cartpole", 1, 0)
    with pytest.raises(ValueError, match="unknown option"):
        make_vec_env("maze", 1, 0, colour="red")
    with pytest.raises(ValueError, match="n_envs"):
        make_vec_env("maze", 0, 0)
