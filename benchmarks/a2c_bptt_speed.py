"""Training speed of the paper's maze algorithm (``stpn_rl.a2c_bptt``) in agent-steps/s.

Each core at its paper size (``stpn_core.paper_preset("maze", core)``; LSTM H 47, STPN H 55)
trains on the 13×13 maze with ``--n-envs`` agents (default 512, the paper's batch) for
``--episodes`` episodes after one warm-up episode; the rollout (single steps without gradients)
and the update (replay through the sequence path, backward, Adam) are timed separately.
The median episode is reported, and the agent-steps per second of CPU time this process got
(with one thread, about what a core of its own would give on a busy machine).

Usage: ``python benchmarks/a2c_bptt_speed.py [--cores stpn lstm] [--n-envs 512]
[--episodes 5] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from stpn_core import paper_preset
from stpn_core.allocator import retain_freed_memory
from stpn_rl.a2c_bptt import A2CBPTT
from stpn_rl.bptt_policy import SequencePolicy
from stpn_rl.tasks import make_vec_env


def time_episodes(core: str, n_envs: int, episodes: int) -> tuple[float, float, float, int]:
    """Median wall seconds of the rollout and of the update, median CPU seconds of the
    episode, and agent-steps per episode."""
    preset = paper_preset("maze", core)
    policy_kwargs = {
        "core": preset.model,
        "hidden_size": preset.hidden_size,
        "core_options": dict(preset.options),
    }
    agent = A2CBPTT(
        SequencePolicy, make_vec_env("maze", n_envs, 0), seed=0, policy_kwargs=policy_kwargs
    )
    rollouts, updates, cpu = [], [], []
    for index in range(episodes + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        episode = agent.collect_episode()
        middle = time.perf_counter()
        agent.train_episode(episode)
        if index > 0:  # the first episode loads the C library and warms the allocator
            rollouts.append(middle - start)
            updates.append(time.perf_counter() - middle)
            cpu.append(time.process_time() - start_cpu)
    medians = (float(np.median(times)) for times in (rollouts, updates, cpu))
    return *medians, episode.actions.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", nargs="+", default=["stpn", "lstm"])
    parser.add_argument("--n-envs", type=int, default=512)
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's malloc defaults (otherwise freed memory is retained, "
                             "as the project's commands do: stpn_core.allocator)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retained = not args.default_malloc and retain_freed_memory()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
          f"{args.threads} torch thread(s), {args.n_envs} agents, freed memory retained: "
          f"{retained}")
    print(f"{'core':8} {'rollout s':>10} {'update s':>10} {'agent-steps/s':>14} "
          f"{'per CPU-s':>10}")
    for core in args.cores:
        rollout, update, cpu, steps = time_episodes(core, args.n_envs, args.episodes)
        print(f"{core:8} {rollout:10.3f} {update:10.3f} {steps / (rollout + update):14.0f} "
              f"{steps / cpu:10.0f}")


if __name__ == "__main__":
    main()
