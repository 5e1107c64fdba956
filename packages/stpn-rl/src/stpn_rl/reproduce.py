"""Reproduce the RL comparison of the paper: ``python -m stpn_rl.reproduce --task maze``.

Every core of the task's comparison trains at the same budget of environment steps with the
same seeds (``stpn_rl.train`` with the task's ``algo``), and is evaluated (reward, energy per
step); runs go to ``<out>/<task>/<core>/seed<k>/`` (docs/run-format.md). A finished run is
skipped and an interrupted one resumes from its last checkpoint, so rerunning the command
continues a reproduction that was stopped. At the end a table is printed, with the references
the maze runs record (the random policy's reward and the oracle's, for their maze), and, where
``stpn_analysis`` is installed (it is optional: stpn-rl does not depend on it), its report
(``summary.md``, figures of reward against steps and against energy) is written into
``<out>/<task>``.

Profiles (maze, ``algo: a2c-bptt``, the paper's algorithm with 200-step episodes):
``quick`` (``make reproduce-maze``) trains each core for the same 500 episodes of 64 agents
(6.4·10⁶ agent-steps), sized to finish within 30 minutes on a 2-core CPU; ``paper`` is the
paper's protocol, 50 000 episodes of 512 agents (5.12·10⁹ agent-steps) per core and seed, three
seeds.

Profiles (``inverted-pendulum-po``, RecurrentPPO with the task's settings): the cores lstm, rnn,
stpn, stpnf (the paper's STPNf, clamp 0.1) and mlp (no memory: the floor), each from
``configs/inverted-pendulum-po/tuned-<core>.yaml`` where a sweep left one there, else from the
task's configuration; then the fully observed ``inverted-pendulum`` at the same budget as a
sanity row. ``quick`` is one seed at 40 960 steps per run (20 rollouts; the sanity row for the
STPN only); ``paper`` is 10⁶ steps, three seeds, every core on both tasks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stpn_core.cli import ArgumentParser, run_command

from stpn_rl.config import config_dir, load_config, merge
from stpn_rl.envs import MazeOptions
from stpn_rl.train import train


@dataclass(frozen=True)
class Profile:
    """One comparison: which cores, seeds and how many episodes of ``n_envs`` agents each."""

    algo: str
    cores: tuple[str, ...]
    seeds: tuple[int, ...]
    episodes: int
    n_envs: int
    evaluation_episodes: int
    timesteps: int | None = None
    """Environment steps per run where episodes have no fixed length (``None``: ``episodes``
    of ``n_envs`` agents)."""
    sanity_task: str | None = None
    """A task trained at the same budget for a sanity row (the fully observed pendulum)."""
    sanity_cores: tuple[str, ...] = ()
    config_changes: dict[str, Any] = field(default_factory=dict)
    """Changes to every run's configuration (e.g. shorter rollouts)."""


MAZE_CORES = ("stpn", "lstm", "rnn", "modplast")
PENDULUM_CORES = ("lstm", "rnn", "stpn", "stpnf", "mlp")
PROFILES: dict[str, dict[str, Profile]] = {
    "maze": {
        # 200 episodes of 64 agents per core took 6.2 min of CPU (reproduce, evaluations
        # included; modplast, with autograd over its Hebbian trace, about half of it), so 500
        # take about 15 min on one core.
        "quick": Profile("a2c-bptt", MAZE_CORES, (0,), episodes=500, n_envs=64,
                         evaluation_episodes=256),
        "paper": Profile("a2c-bptt", MAZE_CORES, (0, 1, 2), episodes=50_000, n_envs=512,
                         evaluation_episodes=512),
    },
    "inverted-pendulum-po": {
        # 40 960 steps per run: the LSTM's took 640 s of wall time on the shared 2-core
        # machine at a load of about 12 (so the six runs about an hour there).
        "quick": Profile("ppo", PENDULUM_CORES, (0,), episodes=0, n_envs=1,
                         evaluation_episodes=10, timesteps=40_960,
                         sanity_task="inverted-pendulum", sanity_cores=("stpn",)),
        "paper": Profile("ppo", PENDULUM_CORES, (0, 1, 2), episodes=0, n_envs=1,
                         evaluation_episodes=10, timesteps=1_000_000,
                         sanity_task="inverted-pendulum", sanity_cores=PENDULUM_CORES),
    },
}


def run_config(task: str, core: str, profile: Profile) -> dict[str, Any]:
    """The configuration of ``core``'s runs: the packaged one for the profile's algorithm, at
    the profile's budget (for PPO, a sweep's ``tuned-<core>.yaml`` where there is one: the sweeps
    tune PPO agents, so a2c-bptt runs never read them); maze runs checkpoint every 50 episodes
    (a stopped reproduction loses at most those)."""
    tuned = config_dir(task) / f"tuned-{core}.yaml"
    use_tuned = profile.algo == "ppo" and tuned.is_file()
    config = load_config(task, core, tuned if use_tuned else None, algo=profile.algo)
    config = merge(config, profile.config_changes)
    budget = {"n_envs": profile.n_envs, "evaluation": {"episodes": profile.evaluation_episodes}}
    if profile.timesteps is not None:
        return merge(config, budget | {"total_timesteps": profile.timesteps})
    episode = profile.n_envs * MazeOptions.from_mapping(config["env"]).episode_length
    return merge(config, budget | {
        "total_timesteps": profile.episodes * episode,
        "checkpoint_freq": 50 * episode,
    })


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the runs, one line per core: mean ± sample std over seeds (the mean
    alone for one seed, which has no spread to show)."""
    lines = ["| core | seeds | agent-steps | reward (mean ± std) | energy / step | params |",
             "|---|---|---|---|---|---|"]
    for core in dict.fromkeys(row["model"] for row in rows):
        group = [row for row in rows if row["model"] == core]
        rewards = np.array([row["mean_reward"] for row in group])
        energies = [row["energy_per_step"] for row in group if row["energy_per_step"]]
        energy = f"{np.mean(energies):.4g}" if energies else "–"
        spread = f" ± {rewards.std(ddof=1):.2f}" if len(rewards) > 1 else ""
        lines.append(
            f"| {core} | {len(group)} | {group[0]['timesteps']:.3g} | "
            f"{rewards.mean():.2f}{spread} | {energy} | {group[0]['params']} |"
        )
    references = next((row["references"] for row in rows if row.get("references")), {})
    for name, value in references.items():  # e.g. the maze's random policy and oracle
        lines.append(f"| {name} (reference) | – | – | {value:.2f} | – | – |")
    return "\n".join(lines)


def train_runs(task: str, cores: Sequence[str], profile: Profile, out: Path) -> list[dict]:
    """Train and evaluate ``cores`` on ``task`` for every seed of ``profile`` (finished runs
    are skipped); their ``metrics.json`` records."""
    rows = []
    for seed in profile.seeds:
        for core in cores:
            config = run_config(task, core, profile)
            run_dir = train(task, core, config, seed=seed, out=out, progress_bar=False)
            rows.append(json.loads((run_dir / "metrics.json").read_text()))
            print(f"{task}/{core} seed {seed}: mean reward {rows[-1]['mean_reward']:.2f} "
                  f"after {rows[-1]['timesteps']} agent-steps -> {run_dir}", flush=True)
    return rows


def reproduce(task: str, profile: Profile, out: Path) -> str:
    """Train and evaluate every run of ``profile`` (skipping finished ones), then its sanity
    runs, and return the tables; write the ``stpn_analysis`` reports too where it is
    installed."""
    parts = [(task, profile.cores)]
    if profile.sanity_task is not None and profile.sanity_cores:
        parts.append((profile.sanity_task, profile.sanity_cores))
    tables = [(name, format_rows(train_runs(name, cores, profile, out))) for name, cores in parts]
    try:
        from stpn_analysis import write_report
    except ImportError:
        return "\n\n".join(f"{name}:\n{table}" for name, table in tables)
    texts = []
    for name, table in tables:
        paths = write_report(out / name)
        figures = sorted(str(path) for key, path in paths.items() if not key.startswith("summary"))
        texts.append(f"{name}:\n{table}\n\nfigures: " + ", ".join(figures))
    return "\n\n".join(texts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m stpn_rl.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(PROFILES), default="maze")
    parser.add_argument("--profile", choices=("quick", "paper"), default="quick")
    parser.add_argument("--out", type=Path, default=Path("runs/rl"))
    parser.add_argument("--episodes", type=int, default=None,
                        help="episodes per run instead of the profile's (equal for every core)")
    parser.add_argument("--timesteps", type=int, default=None,
                        help="environment steps per run instead of the profile's, for the "
                             "pendulum (equal for every core)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--cores", nargs="+", default=None,
                        help="train only these of the comparison's cores (e.g. to share a "
                             "comparison between processes that write to one --out)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.task][args.profile]
    if args.cores is not None:
        unknown = sorted(set(args.cores) - set(profile.cores))
        if unknown:
            parser.error(f"--cores: {', '.join(unknown)} not in the {args.task} comparison; "
                         f"expected some of {', '.join(profile.cores)}")
        chosen = tuple(dict.fromkeys(args.cores))
        profile = replace(profile, cores=chosen, sanity_cores=tuple(
            core for core in profile.sanity_cores if core in chosen))
    if (args.episodes is not None and profile.timesteps is not None) or (
        args.timesteps is not None and profile.timesteps is None
    ):
        flag = "--episodes" if args.episodes is not None else "--timesteps"
        parser.error(f"{flag}: not a budget of task {args.task!r}; "
                     f"use {'--timesteps' if flag == '--episodes' else '--episodes'}")
    if args.timesteps is not None:
        if args.timesteps < 1:
            parser.error(f"--timesteps: expected a positive integer, got {args.timesteps}")
        profile = replace(profile, timesteps=args.timesteps)
    if args.episodes is not None:
        if args.episodes < 1:
            parser.error(f"--episodes: expected a positive integer, got {args.episodes}")
        profile = replace(profile, episodes=args.episodes)
    if args.seeds is not None:
        if min(args.seeds) < 0:
            parser.error(f"--seeds: expected non-negative integers, got {args.seeds}")
        profile = replace(profile, seeds=tuple(args.seeds))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(reproduce(args.task, profile, args.out))


if __name__ == "__main__":
    run_command(main)
