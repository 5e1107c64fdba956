"""CorePolicy inside RecurrentPPO: LSTM-shaped state, resets at episode starts, sequence
processing against a plain per-step loop, the training pass against the rollout, every core,
save/load, bad options."""

import math

import numpy as np
import pytest
import stpn_core
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.logger import configure
from stpn_rl.policies import CorePolicy, RecurrentCore
from stpn_rl.tasks import make_vec_env
from stpn_rl.train import build_agent


def test_state_is_presented_lstm_shaped_in_two_halves(tiny) -> None:
    model = build_agent(tiny("maze", "stpn"), "maze", seed=0)
    core = model.policy.lstm_actor.core
    width = math.ceil(core.state_size() / 2)  # STPN: h (8) + F (8 x (17 + 8)) = 208 floats
    assert core.state_size() == 8 + 8 * 25
    h, c = model._last_lstm_states.pi
    assert h.shape == c.shape == (1, 2, width)
    # one (h, c) row per step and environment; nothing for the detached critic
    assert model.rollout_buffer.states_pi.shape == (16, 2, 2, width)
    assert model.rollout_buffer.states_vf is None


@pytest.mark.parametrize("name", ["stpn", "lstm", "rnn"])
def test_pack_and_unpack_round_trip(name: str) -> None:
    adapter = RecurrentCore(stpn_core.build_model(name, 5, 3))
    _, state = adapter.core(torch.randn(4, 6, 5))
    restored = adapter.unpack(adapter.pack(state))
    for got, want in zip(restored, state, strict=True):
        assert (got is None and want is None) or torch.equal(got, want)


def reference_sequence(core, x, state, starts):
    """Per-step loop: reset a sample's state to zeros where its episode starts."""
    outputs = []
    for t in range(x.shape[1]):
        keep = 1.0 - starts[:, t]
        state = type(state)(
            *(None if s is None else s * keep.view(-1, *[1] * (s.dim() - 1)) for s in state)
        )
        out, state = core(x[:, t : t + 1], state)
        outputs.append(out)
    return torch.cat(outputs, dim=1), state


@pytest.mark.parametrize("name", ["stpn", "lstm", "modplast"])
def test_sequences_with_episode_starts_match_a_per_step_loop(name: str) -> None:
    adapter = RecurrentCore(stpn_core.build_model(name, 5, 4))
    n_seq, steps = 3, 7
    x = torch.randn(n_seq, steps, 5)
    _, state = adapter.core(torch.randn(n_seq, 4, 5))  # a non-zero state to start from
    starts = torch.zeros(n_seq, steps)
    starts[0, 0] = starts[1, 3] = starts[2, 3] = starts[2, 5] = 1.0
    out, slots = adapter(x.reshape(-1, 5), adapter.pack(state), starts.reshape(-1))
    want_out, want_state = reference_sequence(adapter.core, x, state, starts)
    torch.testing.assert_close(out, want_out.reshape(n_seq * steps, -1))
    torch.testing.assert_close(slots, adapter.pack(want_state))


def test_episode_start_resets_the_state_and_otherwise_it_carries(tiny) -> None:
    policy = build_agent(tiny("maze", "stpn"), "maze", seed=0).policy
    env = make_vec_env("maze", 2, seed=0, size=7)
    obs = torch.as_tensor(env.reset())
    adapter = policy.lstm_actor
    _, busy = adapter.core(torch.randn(2, 5, adapter.input_size))
    zeros = adapter.pack(adapter.core.initial_state(2))
    with torch.no_grad():
        fresh = policy.get_distribution(obs, zeros, torch.zeros(2))[0].distribution.probs
        # (SB3 reuses one distribution object, so read the probabilities at once.)
        reset = policy.get_distribution(obs, adapter.pack(busy), torch.ones(2))[
            0
        ].distribution.probs
        carried = policy.get_distribution(obs, adapter.pack(busy), torch.zeros(2))[0]
        carried = carried.distribution.probs
    torch.testing.assert_close(reset, fresh)
    assert not torch.allclose(carried, fresh)


@pytest.mark.parametrize("name", stpn_core.MODELS)
def test_every_core_trains_inside_recurrent_ppo(name: str, tiny) -> None:
    model = build_agent(tiny("maze", name, total_timesteps=32), "maze", seed=0)
    core = model.policy.lstm_actor.core
    before = [p.detach().clone() for p in core.parameters()]
    model.learn(32)
    assert model.num_timesteps == 32
    changed = [not torch.equal(b, p) for b, p in zip(before, core.parameters(), strict=True)]
    assert any(changed)


@pytest.mark.parametrize(
    ("critic", "trained"), [("shared", True), ("detached", False), ("separate", False)]
)
def test_value_loss_trains_the_actor_core_only_when_shared(
    critic: str, trained: bool, tiny
) -> None:
    policy = build_agent(tiny("maze", "stpn", policy={"critic": critic}), "maze", seed=0).policy
    obs = torch.as_tensor(make_vec_env("maze", 2, seed=0, size=7).reset())
    zeros = policy.lstm_actor.pack(policy.lstm_actor.core.initial_state(2))
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    values, _, _ = policy.evaluate_actions(
        obs, torch.zeros(2), RNNStates(zeros, zeros), torch.ones(2)
    )
    values.sum().backward()
    assert (policy.lstm_actor.core.weight.grad is not None) == trained
    if critic == "separate":
        assert policy.lstm_critic.core.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("task", "name", "critic"),
    [
        ("inverted-pendulum-po", "stpn", "detached"),
        ("inverted-pendulum-po", "stpn", "separate"),
        ("inverted-pendulum-po", "lstm", "detached"),
        ("maze", "stpn", "detached"),
    ],
)
def test_training_pass_gives_back_the_rollouts_log_probabilities(
    task: str, name: str, critic: str, tiny
) -> None:
    """With a learning rate of 0 the parameters never move, so each PPO epoch must recompute,
    from the stored states and episode starts, exactly the log-probabilities the single steps of
    the rollout sampled with. A state that is not reset, or reset on one side only, shows as a
    KL of 1e-8 to 1e-6 on these tiny cores; rounding alone stays below 1e-10. Short pendulum
    episodes and 20-step maze episodes put episode starts inside every rollout."""
    ppo = {"learning_rate": 0.0, "n_steps": 48, "batch_size": 32, "n_epochs": 2}
    model = build_agent(tiny(task, name, ppo=ppo, policy={"critic": critic}), task, seed=0)
    model.set_logger(configure(None, []))
    model.learn(2 * 48 * model.n_envs)
    assert abs(model.logger.name_to_value["train/approx_kl"]) < 1e-9


def test_save_and_load_give_identical_deterministic_actions(tiny, tmp_path) -> None:
    model = build_agent(tiny("maze", "stpn"), "maze", seed=0)
    model.learn(32)
    model.save(tmp_path / "agent.zip")
    loaded = RecurrentPPO.load(tmp_path / "agent.zip", device="cpu")
    assert isinstance(loaded.policy, CorePolicy)
    env = make_vec_env("maze", 3, seed=5, size=7)
    obs, state_a, state_b = env.reset(), None, None
    starts = np.ones(3, dtype=bool)
    for _ in range(25):
        action_a, state_a = model.predict(obs, state_a, starts, deterministic=True)
        action_b, state_b = loaded.predict(obs, state_b, starts, deterministic=True)
        np.testing.assert_array_equal(action_a, action_b)
        np.testing.assert_array_equal(state_a[0], state_b[0])
        obs, _, starts, _ = env.step(action_a)


def test_bad_core_name_and_options_are_reported(tiny) -> None:
    with pytest.raises(ValueError, match="core"):
        build_agent(tiny("maze", "stpn", policy={"core": "transformer"}), "maze", seed=0)
    with pytest.raises(ValueError, match="not_an_option"):
        build_agent(
            tiny("maze", "stpn", policy={"core_options": {"not_an_option": 1}}), "maze", seed=0
        )
    with pytest.raises(ValueError, match="critic"):
        build_agent(tiny("maze", "stpn", policy={"critic": "both"}), "maze", seed=0)
    env = make_vec_env("maze", 1, seed=0)
    with pytest.raises(TypeError, match="lstm_hidden_size"):
        RecurrentPPO(CorePolicy, env, policy_kwargs={"lstm_hidden_size": 8})


@pytest.mark.parametrize("name", ["stpn", "lstm", "stpnf"])
def test_a_call_leaves_the_callers_slots_alone(name: str) -> None:
    """The reset changes the unpacked state in place: it must be a copy, never the slots."""
    adapter = RecurrentCore(stpn_core.build_model(name, 5, 3))
    _, state = adapter.core(torch.randn(4, 6, 5))
    slots = adapter.pack(state)
    kept = [s.clone() for s in slots]
    out, _ = adapter(torch.randn(4, 5), slots, torch.ones(4))
    for slot, copy in zip(slots, kept, strict=True):
        assert torch.equal(slot, copy)
    for field in adapter.unpack(slots):
        assert field is None or all(field.data_ptr() != s.data_ptr() for s in slots)


@pytest.mark.parametrize("name", ["stpn", "modplast"])
def test_energy_comes_from_the_steps_the_policy_ran(name: str) -> None:
    """With measure_energy, the adapter's call leaves each step's energy, equal to the core's
    energy on the same inputs from the same (reset) states."""
    adapter = RecurrentCore(stpn_core.build_model(name, 5, 4))
    n_seq, steps = 3, 6
    x = torch.randn(n_seq, steps, 5)
    _, state = adapter.core(torch.randn(n_seq, 4, 5))
    starts = torch.zeros(n_seq, steps)
    starts[1, 0] = starts[0, 2] = starts[2, 4] = 1.0
    adapter.measure_energy = True
    with torch.no_grad():
        adapter(x.reshape(-1, 5), adapter.pack(state), starts.reshape(-1))
    want = []
    for t in range(steps):
        state = adapter.core.reset_state(state, starts[:, t])
        want.append(adapter.core.energy(x[:, t : t + 1], state))
        _, state = adapter.core(x[:, t : t + 1], state)
    torch.testing.assert_close(adapter.energy, torch.cat(want, dim=1).reshape(-1))
    assert adapter.energy.min() > 0


@pytest.mark.parametrize("name", ["stpn", "lstm"])
def test_rollout_steps_reusing_the_state_match_unpacked_slots(name: str) -> None:
    """Without gradients, slots given straight back reuse the previous call's state: the steps
    must equal those from copies of the slots, the outputs the caller keeps must not change,
    and slots changed in place must be read, not the kept state."""
    core = stpn_core.build_model(name, 5, 3)
    reusing, copying = RecurrentCore(core), RecurrentCore(core)
    x = torch.randn(6, 4, 5)
    starts = torch.zeros(6, 4)
    starts[2, 1] = starts[4, 3] = 1.0
    kept = []
    with torch.no_grad():
        slots = copied = reusing.pack(core.initial_state(4))
        for t in range(6):
            out, slots = reusing(x[t], slots, starts[t])
            want, copied = copying(x[t], tuple(s.clone() for s in copied), starts[t])
            assert torch.equal(out, want)
            assert all(torch.equal(a, b) for a, b in zip(slots, copied, strict=True))
            kept.append((out, out.clone()))
        assert all(torch.equal(out, copy) for out, copy in kept)
        slots[1].zero_()
        got, _ = reusing(x[0], slots, starts[0])
        want, _ = copying(x[0], tuple(s.clone() for s in slots), starts[0])
    assert torch.equal(got, want)
