"""CoreRolloutBuffer / CoreRecurrentPPO: the same samples and the same training as sb3-contrib's
stock buffer, with each recurrent state stored once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stpn_rl.policies import CorePolicy
from stpn_rl.ppo import CoreRecurrentPPO, CoreRolloutBuffer
from stpn_rl.tasks import get_task, make_vec_env

STEPS, ENVS, WIDTH = 12, 3, 5


def fill(buffer: RecurrentRolloutBuffer, separate: bool, seed: int = 0) -> None:
    """The same random rollout into any buffer; the critic's state is the actor's unless
    ``separate``, as a shared or detached critic hands them over."""
    rng = np.random.default_rng(seed)
    buffer.reset()
    for _ in range(STEPS):
        pi = tuple(torch.as_tensor(rng.normal(size=(1, ENVS, WIDTH)), dtype=torch.float32)
                   for _ in range(2))
        vf = tuple(torch.as_tensor(rng.normal(size=(1, ENVS, WIDTH)), dtype=torch.float32)
                   for _ in range(2)) if separate else pi
        buffer.add(
            rng.normal(size=(ENVS, 4)).astype(np.float32), rng.integers(0, 3, (ENVS, 1)),
            rng.normal(size=ENVS), rng.random(ENVS) < 0.3,
            torch.as_tensor(rng.normal(size=(ENVS, 1))), torch.as_tensor(rng.normal(size=ENVS)),
            lstm_states=RNNStates(pi, vf),
        )
    last = torch.as_tensor(rng.normal(size=(ENVS, 1)))
    buffer.compute_returns_and_advantage(last, np.zeros(ENVS, dtype=bool))


@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.parametrize("batch_size", [None, 7])
def test_samples_equal_the_stock_buffers(separate: bool, batch_size: int | None) -> None:
    args = (STEPS, spaces.Box(-1, 1, (4,)), spaces.Discrete(3), (STEPS, 1, ENVS, WIDTH), "cpu")
    stock = RecurrentRolloutBuffer(*args, n_envs=ENVS)
    ours = CoreRolloutBuffer(*args, n_envs=ENVS, separate_critic=separate)
    samples = []
    for buffer in (stock, ours):
        fill(buffer, separate)
        np.random.seed(3)  # the buffers split the rollout at a random index
        samples.append(list(buffer.get(batch_size)))
    assert len(samples[0]) == len(samples[1]) > 0
    for want, got in zip(*samples, strict=True):
        for name, value in want._asdict().items():
            if name == "lstm_states":
                got_states = (*got.lstm_states.pi, *got.lstm_states.vf)
                for w, g in zip((*value.pi, *value.vf), got_states, strict=True):
                    torch.testing.assert_close(g, w, rtol=0, atol=0)
            else:
                torch.testing.assert_close(getattr(got, name), value, rtol=0, atol=0)
    # each state stored once: a quarter of the stock arrays with a shared critic, half if not
    stock_bytes = sum(getattr(stock, f"{k}_states_{r}").nbytes
                      for k in ("hidden", "cell") for r in ("pi", "vf"))
    ours_bytes = ours.states_pi.nbytes + (0 if ours.states_vf is None else ours.states_vf.nbytes)
    assert ours_bytes * (2 if separate else 4) == stock_bytes * 2


@pytest.mark.parametrize("critic", ["detached", "separate"])
def test_training_equals_stock_recurrent_ppo(critic: str, tiny) -> None:
    """Same seed, same config: CoreRecurrentPPO ends with the very parameters RecurrentPPO
    does, and only its buffer differs."""
    config = tiny("maze", "stpn", policy={"critic": critic})
    models = []
    for cls in (RecurrentPPO, CoreRecurrentPPO):
        env = make_vec_env("maze", config["n_envs"], 0, **config["env"])
        kwargs = get_task("maze").policy_defaults | config["policy"]
        model = cls(CorePolicy, env, policy_kwargs=kwargs, seed=0, **config["ppo"])
        model.learn(64)
        models.append(model)
    stock, ours = models
    assert type(ours.rollout_buffer) is CoreRolloutBuffer
    assert type(stock.rollout_buffer) is RecurrentRolloutBuffer
    assert (ours.rollout_buffer.states_vf is not None) == (critic == "separate")
    for (name, want), got in zip(stock.policy.state_dict().items(),
                                 ours.policy.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
