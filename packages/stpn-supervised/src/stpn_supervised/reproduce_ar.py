"""Reproduce the associative retrieval comparison: ``python -m stpn_supervised.reproduce_ar``.

For every (model, seed) it trains the packaged config, tests the best-validation checkpoint and
the final model, and writes ``<out>/<model>/seed<k>/`` as docs/run-format.md describes. A run
with a valid ``metrics.json`` is skipped and an interrupted one continues from its
``checkpoints/last.ckpt``, so a killed reproduction resumes where it stopped. At the end
``stpn_analysis`` writes ``summary.csv``, ``summary.md`` and ``figures/`` into ``<out>``.

Profiles: ``quick`` (what ``make reproduce-ar`` runs; the five main models, one seed, 24 epochs:
long enough for the STPN to pass 0.9 test accuracy; minutes with two runs at a time, see the
README) and ``paper`` (docs/model.md §5.3: 200 epochs on 100k sequences, all nine configs, three
seeds; hours, see the README).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass, replace
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from stpn_analysis import format_table, load_runs, summarise, write_report
from stpn_core.cli import run_command

from stpn_supervised.cli import CONFIG_MODELS, config_path, reproduce_parser
from stpn_supervised.data import AssociativeRetrievalDataModule
from stpn_supervised.module import SequenceClassifier
from stpn_supervised.runner import EpochLine, RunFolder

MAIN_MODELS = CONFIG_MODELS[:5]


@dataclass(frozen=True)
class Profile:
    """How long and on how much data each run trains."""

    models: tuple[str, ...]
    seeds: tuple[int, ...]
    max_epochs: int
    train_size: int
    val_size: int = 10_000
    test_size: int = 20_000


PROFILES = {
    # Measured (README): on 80k sequences the STPN's validation accuracy passes 0.9 after 22
    # epochs and reaches 0.94 after 24 (test 0.943); every model gets the same epochs.
    "quick": Profile(MAIN_MODELS, (0,), max_epochs=24, train_size=80_000),
    "paper": Profile(CONFIG_MODELS, (0, 1, 2), max_epochs=200, train_size=100_000),
}

METRIC_KEYS = (
    "task", "model", "seed", "params", "proficiency", "proficiency_name", "energy_per_step",
    "energy_per_sequence", "energy_profile", "wall_time_s", "versions", "test_acc",
    "test_energy", "best_val_acc", "best_test_acc", "final_test_acc", "epochs",
)
"""Keys every ``metrics.json`` holds (docs/run-format.md), plus a few extras."""


def _versions() -> dict[str, str]:
    names = ("torch", "lightning", "torchmetrics", "numpy", "stpn-core", "stpn-supervised")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def run_config(model: str, seed: int, profile: Profile) -> dict[str, Any]:
    """The resolved configuration of one run, in the CLI's YAML layout (so it can be re-run
    with ``python -m stpn_supervised fit --config config.yaml``)."""
    config = yaml.safe_load(config_path(model).read_text())
    config["seed_everything"] = seed
    config["data"].update(seed=seed, train_size=profile.train_size, val_size=profile.val_size,
                          test_size=profile.test_size)
    config["trainer"] = {"max_epochs": profile.max_epochs}
    return config


@dataclass(frozen=True)
class Job:
    """One (model, seed) run, as handed to a worker process."""

    label: str
    model: str
    seed: int
    path: Path
    config: dict[str, Any]
    profile_name: str
    epoch_lines: bool
    """One line per epoch instead of Lightning's progress bar (for parallel runs)."""


def train_one(job: Job) -> dict[str, Any]:
    """Train (or resume), test, and write ``metrics.json`` into ``job.path``, whose lock the
    caller holds; returns the metrics."""
    model, seed, config = job.model, job.seed, job.config
    run = RunFolder(job.path, lock=False)
    run.write_config(config)
    L.seed_everything(seed, workers=True, verbose=False)
    data = AssociativeRetrievalDataModule(**config["data"])
    module = SequenceClassifier(**config["model"])
    display: dict[str, Any] = ({"enable_progress_bar": False, "callbacks": [EpochLine(job.label)]}
                               if job.epoch_lines else {})
    trainer = run.fit(module, data, max_epochs=config["trainer"]["max_epochs"],
                      log_every_n_steps=50, **display)
    best_path = run.best.best_model_path or None
    epochs, wall_time = trainer.current_epoch, run.timer.time_elapsed("train")
    final = trainer.test(module, data, verbose=False)[0]
    best = trainer.test(module, data, ckpt_path=best_path, verbose=False)[0]
    metrics = {
        "task": "ar", "model": model, "seed": seed, "params": module.num_parameters,
        "proficiency": best["test/acc"], "proficiency_name": "test_acc",
        "energy_per_step": best["test/energy"],
        "energy_per_sequence": best["test/energy_per_sequence"],
        "energy_profile": module.energy_profile,
        "wall_time_s": wall_time, "versions": _versions(),
        "test_acc": best["test/acc"], "test_energy": best["test/energy"],
        "best_val_acc": float(run.best.best_model_score or float("nan")),
        "best_test_acc": best["test/acc"], "final_test_acc": final["test/acc"],
        "final_test_energy": final["test/energy"], "epochs": epochs,
        "best_checkpoint": Path(best_path or "").name,
        "hidden_size": config["model"]["hidden_size"], "profile": job.profile_name,
        "train_size": config["data"]["train_size"],
    }
    run.finish(metrics)
    return metrics


def _announce(job: Job, metrics: dict[str, Any]) -> None:
    print(f"{job.label}: test accuracy {metrics['test_acc']:.4f}, energy/step "
          f"{metrics['energy_per_step']:.4g}, {metrics['wall_time_s']:.0f} s", flush=True)


def _train_all(pending: Sequence[Job], workers: int, threads: int) -> None:
    """Train the pending runs in this process, or in ``workers`` spawned processes."""
    if workers <= 1:
        for job in pending:
            print(f"{job.label} -> {job.path}", flush=True)
            _announce(job, train_one(job))
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(train_one, job): job for job in pending}
        print(f"{len(pending)} runs in {workers} processes: "
              f"{', '.join(job.label for job in pending)}", flush=True)
        try:
            for future in as_completed(futures):
                _announce(futures[future], future.result())
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def reproduce(
    profile_name: str = "quick",
    models: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    out: str | os.PathLike[str] = "runs/ar",
    data_dir: str | os.PathLike[str] = "data/ar",
    threads: int = 1,
    max_epochs: int | None = None,
    jobs: int = 1,
) -> dict[str, Path]:
    """Run every (model, seed) not yet finished, then write the report; returns its paths.

    ``max_epochs`` overrides the profile's epochs (e.g. part of the paper profile now, the rest
    later: the runs continue from their last checkpoints). ``jobs`` runs train in that many
    processes at once (each with ``threads`` torch threads), in the order of the profile."""
    if profile_name not in PROFILES:
        raise ValueError(f"profile: expected one of {', '.join(PROFILES)}; got {profile_name!r}")
    profile = PROFILES[profile_name]
    if max_epochs is not None:
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"max_epochs: expected a positive int; got {max_epochs!r}")
        profile = replace(profile, max_epochs=max_epochs)
    models = tuple(models or profile.models)
    seeds = tuple(profile.seeds if seeds is None else seeds)
    for model in models:
        if model not in CONFIG_MODELS:
            raise ValueError(f"models: expected names from {', '.join(CONFIG_MODELS)}; "
                             f"got {model!r}")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) or not seeds:
        raise ValueError(f"seeds: expected non-negative ints; got {seeds!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected a positive int; got {threads!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected a positive int; got {jobs!r}")
    torch.set_num_threads(threads)
    root = Path(out)
    runs = [(model, seed) for model in models for seed in seeds]
    started = time.monotonic()
    with ExitStack() as held:  # every run's lock, taken before any work: a clash stops at once
        pending = []
        for index, (model, seed) in enumerate(runs, start=1):
            label = f"[{index}/{len(runs)}] {model} seed {seed}"
            run = held.enter_context(RunFolder(root / model / f"seed{seed}"))
            if run.is_finished(METRIC_KEYS, profile.max_epochs):
                print(f"{label}: finished, skipped ({run.path})")
                continue
            config = run_config(model, seed, profile)
            config["data"]["data_dir"] = str(data_dir)
            pending.append(Job(label, model, seed, run.path, config, profile_name, False))
        workers = min(jobs, len(pending))
        pending = [replace(job, epoch_lines=workers > 1) for job in pending]
        for job in {job.seed: job for job in pending}.values():  # data cached once per seed
            AssociativeRetrievalDataModule(**job.config["data"]).prepare_data()
        _train_all(pending, workers, threads)
    paths = write_report(root, root)
    print(format_table(summarise(load_runs(root))))
    print(f"total {time.monotonic() - started:.0f} s; table: {paths['summary_md']}; "
          f"figures: {root / 'figures'}")
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """The command line; every error is one ``error: ...`` line, exit status 2."""
    parser = reproduce_parser("reproduce_ar", __doc__, PROFILES, CONFIG_MODELS, "ar", "data cache")
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="override the profile's epochs (runs resume from last.ckpt)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs trained at once, one process each (default: 2, or 1 on a "
                             "one-core machine)")
    args = parser.parse_args(argv)
    reproduce(args.profile, args.models, args.seeds, args.out, args.data_dir, args.threads,
              args.max_epochs, args.jobs)


if __name__ == "__main__":
    run_command(main)
