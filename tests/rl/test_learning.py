"""The STPN agent learns the maze's memory task: within an episode it must remember where the
hidden reward is to return to it, so after training it collects clearly more than chance."""

from stpn_rl.evaluate import evaluate_agent, evaluate_random
from stpn_rl.train import build_agent


def test_stpn_agent_clearly_beats_the_random_policy_on_a_small_maze(tiny) -> None:
    env = {"size": 5, "episode_length": 40}
    config = tiny(
        "maze",
        "stpn",
        n_envs=32,
        env=env,
        ppo={"n_steps": 40, "batch_size": 640, "n_epochs": 4, "learning_rate": 0.003, "gamma": 0.9},
        policy={"hidden_size": 16},
    )
    model = build_agent(config, "maze", seed=0)
    model.learn(64_000)
    trained = evaluate_agent(model, "maze", 256, deterministic=False, seed=1, env_kwargs=env)
    chance = evaluate_random("maze", 256, seed=1, env_kwargs=env)
    assert trained["mean_reward"] > 2 * chance["mean_reward"]
