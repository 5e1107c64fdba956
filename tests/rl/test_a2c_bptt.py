"""The paper's maze algorithm: rollout-then-replay gives the per-step algorithm's loss and
gradients, resuming from a checkpoint continues exactly, and it learns a small maze."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from stpn_rl import train
from stpn_rl.a2c_bptt import A2CBPTT, discounted_returns
from stpn_rl.bptt_policy import SequencePolicy, policy_step
from stpn_rl.checkpoints import KILL_HOOK
from stpn_rl.config import load_config, merge
from stpn_rl.evaluate import evaluate_random, run_episodes
from stpn_rl.runs import load_run
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
    with autograd, one step at a time, sampling from the same seed, then sum the loss over
    agents and steps in loops."""
    kwargs = dict(agent.policy_kwargs)
    if kwargs["core"] == "stpn":
        kwargs["core_options"] = {"implementation": "reference"}
    policy = SequencePolicy(agent.observation_space, agent.action_space, lambda _: 1e-4, **kwargs)
    policy.load_state_dict(agent.policy.state_dict())
    env = make_vec_env("maze", n_envs, seed, **TINY_MAZE)
    torch.manual_seed(seed)
    obs, state, steps = env.reset(), None, []
    for _ in range(TINY_MAZE["episode_length"]):
        logits, values, state = policy(torch.as_tensor(obs).unsqueeze(1), state)
        probs = logits[:, 0].softmax(-1)
        action = torch.multinomial(probs.detach(), 1).squeeze(-1)
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
    torch.manual_seed(5)
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


def tiny_run_config(**changes: Any) -> dict[str, Any]:
    """The maze's a2c-bptt configuration shrunk: 4 agents, 12-step episodes of a 5×5 maze."""
    small = {
        "n_envs": 4, "total_timesteps": 5 * 4 * 12, "checkpoint_freq": 48,
        "env": TINY_MAZE, "policy": {"hidden_size": 8}, "evaluation": {"episodes": 4},
    }
    return merge(merge(load_config("maze", "stpn", algo="a2c-bptt"), small), changes)


def run_outcome(run: Path) -> tuple[dict, pd.DataFrame, dict[str, torch.Tensor]]:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("wall_time_s")
    log = pd.read_csv(run / "logs" / "progress.csv").drop(columns=["time/fps"])
    model, _ = load_run(run, device="cpu")
    assert isinstance(model, A2CBPTT)
    return metrics, log.sort_index(axis=1), model.policy.state_dict()


def test_a_killed_run_resumes_exactly_as_the_uninterrupted_one(tmp_path) -> None:
    config = tiny_run_config(a2c_bptt={"learning_rate": 1e-2})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command line's child (OMP_NUM_THREADS=1)
    try:
        straight = train.train("maze", "stpn", config, out=tmp_path / "a", progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "stpn_rl.train", "--task", "maze", "--core", "stpn",
               "--algo", "a2c-bptt", "--config", str(path), "--out", str(tmp_path / "b"),
               "--no-progress-bar"]
    environ = os.environ | {"OMP_NUM_THREADS": "1", KILL_HOOK: "96:after"}
    killed = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    environ.pop(KILL_HOOK)
    resumed = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    metrics, log, weights = run_outcome(tmp_path / "b" / "maze" / "stpn" / "seed0")
    expected_metrics, expected_log, expected_weights = run_outcome(straight)
    assert metrics == expected_metrics and metrics["timesteps"] == 240
    pd.testing.assert_frame_equal(log, expected_log)
    for name, value in expected_weights.items():
        assert torch.equal(weights[name], value), name


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
    return to it after each teleport: after 500 episodes of 64 agents, three agents (seeds 0-2)
    collect clearly more than the random policy on average (the learning rate is raised from
    the paper's 1e-4 to fit the test's budget). One agent is not enough to decide: at one thread
    seeds 0-5 scored 49.4, 35.5, 44.8, 43.8, 35.8, 54.4 on 2026-12-02, and a change of the C
    loop's float32 rounding alone moved them to 32.4, 31.4, 54.0, 40.0, 37.0, 43.3 (seed 0 below
    the bound of 33.0); the mean of seeds 0-2 was 43.2 and 39.3."""
    maze = {"size": 5, "episode_length": 40}
    policy_kwargs = {"core": "stpn", "hidden_size": 16,
                     "core_options": {"norm_timing": "post", "clamp": 1.0}}
    scores = []
    for seed in (0, 1, 2):
        env = make_vec_env("maze", 64, seed, **maze)
        agent = A2CBPTT(
            SequencePolicy, env, learning_rate=3e-3, seed=seed, policy_kwargs=policy_kwargs
        )
        agent.learn(500 * 64 * 40)
        trained = run_episodes(
            make_vec_env("maze", 256, 1, **maze), policy_step(agent.policy, False), 256
        )
        assert trained["energy_per_step"] > 0
        scores.append(trained["mean_reward"])
    chance = evaluate_random("maze", 256, seed=1, env_kwargs=maze)
    # Chance scores 26.4 on these episodes.
    assert sum(scores) / len(scores) > 1.25 * chance["mean_reward"], scores
