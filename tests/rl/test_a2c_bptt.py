"""The paper's maze algorithm: rollout-then-replay gives the per-step algorithm's loss and
gradients, resuming from a checkpoint continues exactly, and it learns a small maze."""

from typing import Any

import pytest
import torch
from stpn_rl.a2c_bptt import A2CBPTT, discounted_returns
from stpn_rl.bptt_policy import SequencePolicy, policy_step
from stpn_rl.evaluate import evaluate_random, run_episodes
from stpn_rl.tasks import make_vec_env

TINY_MAZE = {"size": 5, "episode_length": 12}


def tiny_agent(core: str, seed: int = 3, n_envs: int = 6, **kwargs: Any) -> A2CBPTT:
    env = make_vec_env("maze", n_envs, seed, **TINY_MAZE)
    policy_kwargs = {"core": core, "hidden_size": 8} | kwargs.pop("policy_kwargs", {})
    return A2CBPTT(SequencePolicy, env, seed=seed, policy_kwargs=policy_kwargs, **kwargs)


@pytest.mark.parametrize("core", ["stpn", "lstm", "modplast"])
def test_replaying_the_recorded_inputs_gives_the_rollouts_outputs(core: str) -> None:
    agent = tiny_agent(core)
    episode = agent.collect_episode()
    assert episode.observations.shape == (6, TINY_MAZE["episode_length"], 17)
    with torch.no_grad():
        logits, _, _ = agent.policy(episode.observations)
    torch.testing.assert_close(logits, episode.logits, rtol=1e-5, atol=1e-6)


def reference_loss(
    agent: A2CBPTT, seed: int, n_envs: int
) -> tuple[torch.Tensor, SequencePolicy]:
    """The algorithm written plainly: step a copy of the policy (STPN on its reference loop)
    with autograd, one step at a time, sampling with an equally seeded generator, then sum
    the loss over agents and steps in loops."""
    kwargs = dict(agent.policy_kwargs)
    if kwargs["core"] == "stpn":
        kwargs["core_options"] = {"implementation": "reference"}
    policy = SequencePolicy(agent.observation_space, agent.action_space, lambda _: 1e-4, **kwargs)
    policy.load_state_dict(agent.policy.state_dict())
    env = make_vec_env("maze", n_envs, seed, **TINY_MAZE)
    generator = torch.Generator().manual_seed(seed)
    obs, state, steps = env.reset(), None, []
    for _ in range(TINY_MAZE["episode_length"]):
        logits, values, state = policy(torch.as_tensor(obs).unsqueeze(1), state)
        probs = logits[:, 0].softmax(-1)
        action = torch.multinomial(probs.detach(), 1, generator=generator).squeeze(-1)
        obs, reward, _, _ = env.step(action.numpy())
        steps.append((probs, values[:, 0], action, reward))
    total, returns = torch.zeros(()), [0.0] * n_envs
    for probs, values, action, reward in reversed(steps):
        for b in range(n_envs):
            returns[b] = float(reward[b]) + agent.gamma * returns[b]
            advantage = returns[b] - values[b]
            total = (
                total
                + agent.simpson_coef * probs[b].square().sum()
                - torch.log(probs[b, action[b]]) * advantage.detach()
                + agent.value_coef * advantage.square()
            )
    return total / (n_envs * len(steps)), policy


@pytest.mark.parametrize("core", ["stpn", "lstm"])
def test_one_iteration_equals_the_plain_per_step_algorithm(core: str) -> None:
    agent = tiny_agent(core, seed=5)
    episode = agent.collect_episode()
    assert episode.rewards.sum() > 0  # the policy term is exercised
    loss, _ = agent.episode_loss(episode)
    loss.backward()
    reference, policy = reference_loss(agent, seed=5, n_envs=6)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    expected = dict(policy.named_parameters())
    for name, parameter in agent.policy.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        torch.testing.assert_close(parameter.grad, expected[name].grad, rtol=1e-4, atol=1e-6)


def test_returns_discount_from_the_end_of_the_episode() -> None:
    rewards = torch.tensor([[0.0, 10.0, 0.0, 10.0]])
    expected = torch.tensor([[9.0 + 0.729 * 10, 10.0 + 0.81 * 10, 9.0, 10.0]])
    torch.testing.assert_close(discounted_returns(rewards, 0.9), expected)


def test_a_resumed_run_continues_exactly_as_the_uninterrupted_one(tmp_path) -> None:
    per_episode = 6 * TINY_MAZE["episode_length"]
    straight = tiny_agent("stpn").learn(5 * per_episode)
    first = tiny_agent("stpn").learn(3 * per_episode)
    first.save(tmp_path / "agent.zip")
    env = make_vec_env("maze", 6, 3, **TINY_MAZE)
    resumed = A2CBPTT.load(tmp_path / "agent.zip", env=env)
    assert resumed.num_timesteps == 3 * per_episode
    resumed.learn(2 * per_episode, reset_num_timesteps=False)
    assert resumed.num_timesteps == straight.num_timesteps == 5 * per_episode
    expected = straight.policy.state_dict()
    for name, value in resumed.policy.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)
    # and the optimiser's moments came back too
    moments = straight.policy.optimizer.state_dict()["state"]
    for key, state in resumed.policy.optimizer.state_dict()["state"].items():
        torch.testing.assert_close(state["exp_avg"], moments[key]["exp_avg"], rtol=0, atol=0)


def test_bad_settings_and_environments_are_refused() -> None:
    with pytest.raises(ValueError, match="gamma"):
        tiny_agent("lstm", gamma=1.5)
    with pytest.raises(ValueError, match="max_grad_norm"):
        tiny_agent("lstm", max_grad_norm=-1.0)
    env = make_vec_env("inverted-pendulum", 2, 0)
    with pytest.raises(ValueError, match="action_space"):
        A2CBPTT(SequencePolicy, env, policy_kwargs={"core": "lstm", "hidden_size": 4})


def test_it_learns_the_memory_task_of_a_small_maze() -> None:
    """Within an episode the agent must find the hidden reward, remember where it is, and
    return to it after each teleport: after 300 episodes of 64 agents it collects clearly more
    than the random policy."""
    maze = {"size": 5, "episode_length": 40}
    env = make_vec_env("maze", 64, 0, **maze)
    policy_kwargs = {"core": "stpn", "hidden_size": 16,
                     "core_options": {"norm_timing": "post", "clamp": 1.0}}
    agent = A2CBPTT(SequencePolicy, env, learning_rate=3e-3, seed=0, policy_kwargs=policy_kwargs)
    agent.learn(300 * 64 * 40)
    trained = run_episodes(
        make_vec_env("maze", 256, 1, **maze), policy_step(agent.policy, False), 256
    )
    chance = evaluate_random("maze", 256, seed=1, env_kwargs=maze)
    assert trained["mean_reward"] > 1.4 * chance["mean_reward"]
    assert trained["energy_per_step"] > 0
