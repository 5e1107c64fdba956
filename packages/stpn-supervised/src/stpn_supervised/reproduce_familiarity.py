"""Reproduce the continual familiarity comparison:
``python -m stpn_supervised.reproduce_familiarity``.

For every training setting (repeat distance ``R`` and mode), model and seed it trains the packaged
config, tests the final network on fresh sequences at every ``R_test`` from 1 to 19, and writes
``<out>/r<R>-<mode>/<model>/seed<k>/`` as docs/run-format.md describes (``metrics.json`` holds
the ``generalisation`` rows). Runs go through :class:`~stpn_supervised.runner.RunFolder`: a
finished run is skipped, an interrupted one resumes exactly from its last checkpoint, and two
processes never write one folder. At the end ``stpn_analysis`` writes ``summary.md``,
``generalisation.md`` and ``figures/`` into ``<out>``.

Profiles: ``quick`` (what ``make reproduce-familiarity`` runs: ``R = 3``, ``inf`` mode, one seed,
iterations cut to finish in about 15 minutes on a 2-core CPU) and ``paper`` (``R`` in {3, 6},
both modes, five seeds, the paper's iterations: ``inf`` 1600 for ``R = 3`` and 3500 for
``R = 6``, ``dat`` 3000 epochs of one sequence).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from stpn_analysis import (
    format_generalisation,
    format_table,
    load_runs,
    summarise,
    summarise_generalisation,
    write_report,
)
from stpn_core.cli import run_command

from stpn_supervised.cli import FAMILIARITY_MODELS, config_path, reproduce_parser
from stpn_supervised.familiarity import MODES, FamiliarityDataModule
from stpn_supervised.familiarity_module import R_TEST, FamiliarityClassifier, generalisation
from stpn_supervised.reproduce_ar import _versions
from stpn_supervised.runner import RunFolder

Setting = tuple[int, str]
"""A training setting: (repeat distance R, mode)."""

PAPER_ITERATIONS: Mapping[Setting, int] = {(3, "inf"): 1600, (6, "inf"): 3500,
                                           (3, "dat"): 3000, (6, "dat"): 3000}
"""Training iterations of the paper's runs (one Adam step over one 5000-step sequence each)."""


@dataclass(frozen=True)
class Profile:
    """Which runs to make and how long each trains.

    ``iterations`` gives each setting's training iterations; ``model_iterations`` caps a model's
    (HebbFF runs its per-step loop in Python, ~30 times slower per iteration than the others).
    """

    models: tuple[str, ...]
    seeds: tuple[int, ...]
    settings: tuple[Setting, ...]
    iterations: Mapping[Setting, int]
    model_iterations: Mapping[str, int] = field(default_factory=dict)
    test_sequences: int = 1
    seq_len: int = 5000

    def iterations_of(self, model: str, setting: Setting) -> int:
        return min(self.iterations[setting], self.model_iterations.get(model, 10**9))


PROFILES = {
    # Measured on the shared 2-core CPU (README): the STPNs pass 0.95 accuracy within 100-200
    # iterations; HebbFF costs ~3 s per iteration against 0.05-0.2 s for the others.
    "quick": Profile(FAMILIARITY_MODELS, (0,), ((3, "inf"),), {(3, "inf"): 400},
                     model_iterations={"hebbff": 150}),
    "paper": Profile(FAMILIARITY_MODELS, (0, 1, 2, 3, 4),
                     ((3, "inf"), (3, "dat"), (6, "inf"), (6, "dat")), PAPER_ITERATIONS,
                     test_sequences=2),
}

METRIC_KEYS = (
    "task", "model", "seed", "params", "proficiency", "proficiency_name", "energy_per_step",
    "energy_per_sequence", "energy_profile", "wall_time_s", "versions", "test_acc",
    "test_energy", "final_test_acc", "best_val_acc", "epochs", "iterations", "repeat_distance",
    "mode", "generalisation",
)
"""Keys every familiarity ``metrics.json`` holds (docs/run-format.md)."""


def setting_name(setting: Setting) -> str:
    """``(3, "inf")`` -> ``"r3-inf"``, the folder of that setting's runs."""
    return f"r{setting[0]}-{setting[1]}"


def run_config(model: str, seed: int, setting: Setting, iterations: int,
               profile: Profile) -> dict[str, Any]:
    """The resolved configuration of one run, in the CLI's YAML layout (re-runnable with
    ``python -m stpn_supervised fit --config config.yaml``)."""
    config = yaml.safe_load(config_path(f"familiarity/{model}").read_text())
    repeat_distance, mode = setting
    config["seed_everything"] = seed
    config["data"].update(seed=seed, repeat_distance=repeat_distance, mode=mode,
                          test_sequences=profile.test_sequences, seq_len=profile.seq_len)
    epochs = -(-iterations // config["data"]["iterations_per_epoch"])
    config["trainer"] = {"max_epochs": epochs}
    return config


def train_one(model: str, seed: int, run: RunFolder, config: dict[str, Any],
              profile_name: str) -> dict[str, Any]:
    """Train (or resume), sweep ``R_test``, and write ``metrics.json``; returns the metrics."""
    run.write_config(config)
    L.seed_everything(seed, workers=True, verbose=False)
    data_options = dict(config["data"])
    data = FamiliarityDataModule(**data_options)
    module = FamiliarityClassifier(**config["model"])
    trainer = run.fit(module, data, max_epochs=config["trainer"]["max_epochs"],
                      num_sanity_val_steps=0, log_every_n_steps=data.iterations_per_epoch,
                      enable_progress_bar=False, enable_model_summary=False)
    repeat_distance = data_options.pop("repeat_distance")
    rows = generalisation(module, R_TEST, energy_at=repeat_distance, **data_options)
    at_train = next(row for row in rows if row["repeat_distance"] == repeat_distance)
    task = f"familiarity-{setting_name((repeat_distance, data.mode))}"
    metrics = {
        "task": task, "model": model, "seed": seed, "params": module.num_parameters,
        "proficiency": at_train["acc"], "proficiency_name": "test_acc",
        "energy_per_step": at_train["energy"],
        "energy_per_sequence": at_train["energy_per_sequence"],
        "energy_profile": module.energy_profile,
        "wall_time_s": run.timer.time_elapsed("train"), "versions": _versions(),
        "test_acc": at_train["acc"], "test_energy": at_train["energy"],
        "final_test_acc": at_train["acc"], "test_tpr": at_train["tpr"],
        "test_fpr": at_train["fpr"],
        "best_val_acc": float(run.best.best_model_score or float("nan")),
        "epochs": trainer.current_epoch,
        "iterations": trainer.current_epoch * data.iterations_per_epoch,
        "repeat_distance": repeat_distance, "mode": data.mode, "generalisation": rows,
        "hidden_size": config["model"]["hidden_size"], "profile": profile_name,
    }
    run.finish(metrics)
    return metrics


def _check_choices(name: str, values: Sequence[Any], choices: Sequence[Any]) -> None:
    for value in values:
        if value not in choices:
            raise ValueError(f"{name}: expected values from {', '.join(map(str, choices))}; "
                             f"got {value!r}")


def reproduce(
    profile_name: str = "quick",
    models: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    settings: Sequence[Setting] | None = None,
    out: str | os.PathLike[str] = "runs/familiarity",
    data_dir: str | os.PathLike[str] = "data/familiarity",
    threads: int = 1,
) -> dict[str, Path]:
    """Run every (setting, model, seed) not yet finished, then write the report; returns its
    paths. ``models``, ``seeds`` and ``settings`` narrow the profile's."""
    if profile_name not in PROFILES:
        raise ValueError(f"profile: expected one of {', '.join(PROFILES)}; got {profile_name!r}")
    profile = PROFILES[profile_name]
    models = tuple(models or profile.models)
    seeds = tuple(profile.seeds if seeds is None else seeds)
    settings = tuple(settings or profile.settings)
    _check_choices("models", models, FAMILIARITY_MODELS)
    _check_choices("settings", settings, tuple(PAPER_ITERATIONS))
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds: expected non-negative ints; got {seeds!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected a positive int; got {threads!r}")
    torch.set_num_threads(threads)
    root = Path(out)
    jobs = [(s, m, k) for s in settings for m in models for k in seeds]
    started = time.monotonic()
    for index, (setting, model, seed) in enumerate(jobs, start=1):
        name = f"[{index}/{len(jobs)}] {setting_name(setting)} {model} seed {seed}"
        iterations = profile.iterations_of(model, setting)
        config = run_config(model, seed, setting, iterations, profile)
        config["data"]["data_dir"] = str(data_dir)
        run_dir = root / setting_name(setting) / model / f"seed{seed}"
        with RunFolder(run_dir) as run:
            if run.is_finished(METRIC_KEYS, config["trainer"]["max_epochs"]):
                print(f"{name}: finished, skipped ({run_dir})", flush=True)
                continue
            print(f"{name}: {iterations} iterations -> {run_dir}", flush=True)
            metrics = train_one(model, seed, run, config, profile_name)
        print(f"{name}: accuracy at R_test = R_train {metrics['test_acc']:.4f} (TPR "
              f"{metrics['test_tpr']:.3f}, FPR {metrics['test_fpr']:.3f}), energy/step "
              f"{metrics['energy_per_step']:.4g}, {metrics['wall_time_s']:.0f} s", flush=True)
    paths = write_report(root, root)
    runs = load_runs(root)
    print(format_table(summarise(runs)))
    print(format_generalisation(summarise_generalisation(runs)))
    print(f"total {time.monotonic() - started:.0f} s; tables: {paths['summary_md']}, "
          f"{paths['generalisation_md']}; figures: {root / 'figures'}")
    return paths


def _setting(text: str) -> Setting:
    """``"3-inf"`` -> ``(3, "inf")`` (argparse type: a ValueError becomes a usage error)."""
    distance, _, mode = text.partition("-")
    if not distance.isdigit() or mode not in MODES:
        raise ValueError(text)
    return int(distance), mode


def main(argv: Sequence[str] | None = None) -> None:
    """The command line; every error is one ``error: ...`` line, exit status 2."""
    parser = reproduce_parser("reproduce_familiarity", __doc__, PROFILES, FAMILIARITY_MODELS,
                              "familiarity", "cache of the dat sequences")
    parser.add_argument("--settings", nargs="+", type=_setting, default=None, metavar="R-MODE",
                        help="e.g. 3-inf 6-dat (default: the profile's)")
    args = parser.parse_args(argv)
    reproduce(args.profile, args.models, args.seeds, args.settings, args.out, args.data_dir,
              args.threads)


if __name__ == "__main__":
    run_command(main)
