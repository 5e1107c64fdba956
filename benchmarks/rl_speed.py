"""RL throughput on the maze, measured side by side in one run.

1. The vectorised maze with random actions (512 agents) against ``DummyVecEnv`` over the
   single-agent ``MazeEnv``.
2. RecurrentPPO training env-steps/s with our STPN policy (H 55, 12 215 parameters) against
   sb3-contrib's ``MlpLstmPolicy`` at matched parameters (LSTM H 47 shared by actor and critic,
   heads on the LSTM: 12 648), same environment and PPO settings. Target: STPN >= 0.8x LSTM.
   Our policy with the ``lstm`` core is timed too, to show the adapter's own overhead.

Usage: ``python benchmarks/rl_speed.py [--timesteps N] [--n-envs K] [--threads T] [--rounds R]
[--default-malloc]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
from stpn_core.allocator import retain_freed_memory
from stpn_rl.config import load_config, merge
from stpn_rl.envs import MAZE_ID, MazeVecEnv
from stpn_rl.tasks import make_vec_env
from stpn_rl.train import build_agent, count_parameters


def env_steps_per_second(env, n_steps: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 4, (n_steps, env.num_envs))
    env.reset()
    start = time.perf_counter()
    for step_actions in actions:
        env.step(step_actions)
    return n_steps * env.num_envs / (time.perf_counter() - start)


def training_steps_per_second(model: RecurrentPPO, timesteps: int) -> float:
    start = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=False)
    return timesteps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timesteps", type=int, default=25_600)
    parser.add_argument("--n-envs", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's malloc defaults (otherwise freed memory is retained, "
                             "as the project's commands do: stpn_core.allocator)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retained = not args.default_malloc and retain_freed_memory()
    print(f"torch threads: {torch.get_num_threads()}; freed memory retained: {retained}")

    vectorised = env_steps_per_second(MazeVecEnv(512), 400)
    dummy = env_steps_per_second(sb3_make_vec_env(MAZE_ID, n_envs=512, seed=0), 40)
    print(
        f"maze, 512 agents, random actions: MazeVecEnv {vectorised:,.0f} env-steps/s, "
        f"DummyVecEnv(MazeEnv) {dummy:,.0f} env-steps/s, ratio {vectorised / dummy:.1f}x"
    )

    base = merge(load_config("maze", "stpn"), {"n_envs": args.n_envs})
    ppo = base["ppo"]
    env = make_vec_env("maze", args.n_envs, seed=0)
    stpn = build_agent(base, "maze", seed=0, env=env)
    lstm_core = build_agent(
        load_config("maze", "lstm") | {"n_envs": args.n_envs},
        "maze",
        0,
        env=make_vec_env("maze", args.n_envs, seed=0),
    )
    reference = RecurrentPPO(
        "MlpLstmPolicy",
        make_vec_env("maze", args.n_envs, seed=0),
        seed=0,
        **ppo,
        policy_kwargs={
            "lstm_hidden_size": 47,
            "net_arch": [],
            "shared_lstm": True,
            "enable_critic_lstm": False,
        },
    )
    models = {
        "STPN policy (stpn H55)": stpn,
        "our policy, lstm core (H47)": lstm_core,
        "sb3-contrib MlpLstmPolicy (H47)": reference,
    }
    for model in models.values():  # warm-up: first rollout and update of each
        model.learn(model.n_steps * model.n_envs)
    # The machine is shared and noisy: interleave the models and keep each one's median.
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            rates[name].append(training_steps_per_second(model, args.timesteps))
    median = {name: float(np.median(values)) for name, values in rates.items()}
    for name, model in models.items():
        print(
            f"RecurrentPPO training, {name}: {count_parameters(model)} parameters, "
            f"median {median[name]:,.0f} env-steps/s over {args.rounds} rounds "
            f"({', '.join(f'{r:,.0f}' for r in rates[name])})"
        )
    reference_name = "sb3-contrib MlpLstmPolicy (H47)"
    stpn_name = "STPN policy (stpn H55)"
    per_round = np.array(rates[stpn_name]) / np.array(rates[reference_name])
    print(
        f"ratio STPN / MlpLstmPolicy: {median[stpn_name] / median[reference_name]:.2f}"
        f" (target >= 0.8; per round {', '.join(f'{r:.2f}' for r in per_round)})"
    )
    lstm_name = "our policy, lstm core (H47)"
    per_round = np.array(rates[stpn_name]) / np.array(rates[lstm_name])
    print(
        f"ratio STPN / our lstm core: {median[stpn_name] / median[lstm_name]:.2f}"
        f" (per round {', '.join(f'{r:.2f}' for r in per_round)})"
    )
    print(
        "ratio our lstm core / MlpLstmPolicy: "
        f"{median['our policy, lstm core (H47)'] / median[reference_name]:.2f}"
    )


if __name__ == "__main__":
    main()
