"""``write_report``: the table and every figure the runs have data for, written to disk.

A figure is drawn only where the runs hold its data (an ART run has no reward curve, an LSTM no
Λ/Γ), so one call covers a supervised runs tree, an RL one, or both under one root. Reference
lines on a reward figure are the ``references`` the runs recorded for their own environment
(a maze run: random policy and oracle on its maze), never recomputed here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure
from stpn_core.files import write_text_atomic

from stpn_analysis.familiarity import (
    format_generalisation,
    has_generalisation,
    plot_generalisation_accuracy,
    plot_generalisation_rates,
    summarise_generalisation,
)
from stpn_analysis.plots import (
    plot_energy_profile,
    plot_plasticity,
    plot_proficiency_energy,
    plot_reward_curves,
    plot_validation_accuracy,
    save_figure,
)
from stpn_analysis.runs import Run, load_plasticity, load_runs
from stpn_analysis.tables import format_table, summarise


def _has_columns(runs: list[Run], *columns: str) -> bool:
    return any(r.curves is not None and set(columns) <= set(r.curves.columns) for r in runs)


def _is_references(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in value.values()
    )


def _references(runs: list[Run], task: str) -> Mapping[str, float] | None:
    """The reference rewards the runs of ``task`` recorded, if they all recorded the same ones;
    runs on different environments (e.g. maze sizes) disagree, and then none are drawn."""
    recorded = []
    for run in runs:
        references = run.metrics.get("references")
        if references is not None and not _is_references(references):
            message = f"{run.path}: metrics.json references must map names to numbers; ignored"
            warnings.warn(message, stacklevel=3)
        elif references:
            recorded.append(references)
    if any(references != recorded[0] for references in recorded[1:]):
        warnings.warn(
            f"runs of task {task!r} recorded different references (different environment "
            "options?); the reward figure is drawn without reference lines",
            stacklevel=3,
        )
        return None
    return recorded[0] if recorded else None


def _figures(runs: list[Run]) -> dict[str, Figure]:
    """Name -> figure for everything the runs can show, task by task."""
    figures: dict[str, Figure] = {}
    for task in sorted({run.task for run in runs}):
        group = [run for run in runs if run.task == task]
        figures[f"{task}_proficiency_energy"] = plot_proficiency_energy(group, task)
        if any(run.metrics.get("energy_profile") for run in group):
            figures[f"{task}_energy_profile"] = plot_energy_profile(group, task)
        if _has_columns(group, "epoch", "val/acc"):
            figures[f"{task}_val_acc"] = plot_validation_accuracy(group, task)
        if _has_columns(group, "time/total_timesteps", "rollout/ep_rew_mean"):
            references = _references(group, task)
            figures[f"{task}_reward"] = plot_reward_curves(group, task, references)
        if any(has_generalisation(run) for run in group):
            figures[f"{task}_generalisation_acc"] = plot_generalisation_accuracy(group, task)
            figures[f"{task}_generalisation_rates"] = plot_generalisation_rates(group, task)
        for model in sorted({run.model for run in group}):
            if any(load_plasticity(run) for run in group if run.model == model):
                figures[f"{task}_{model}_plasticity"] = plot_plasticity(group, task, model)
    return figures


def write_report(runs_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Read the runs under ``runs_dir`` and write ``summary.csv``, ``summary.md`` and
    ``figures/*.png`` into ``out_dir`` (default: ``runs_dir``).

    Returns the written paths by name: ``"summary_csv"``, ``"summary_md"`` and one entry per
    figure (e.g. ``"ar_val_acc"``); with familiarity runs also ``"generalisation_csv"`` and
    ``"generalisation_md"`` (accuracy, TPR and FPR per R_test). Errors as
    :func:`stpn_analysis.load_runs`.
    """
    runs = load_runs(runs_dir)
    out = Path(runs_dir if out_dir is None else out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = summarise(runs)
    paths = {
        "summary_csv": write_text_atomic(out / "summary.csv", table.to_csv(index=False)),
        "summary_md": write_text_atomic(out / "summary.md", format_table(table)),
    }
    if any(has_generalisation(run) for run in runs):
        curves = summarise_generalisation(runs)
        paths["generalisation_csv"] = write_text_atomic(out / "generalisation.csv",
                                                        curves.to_csv(index=False))
        paths["generalisation_md"] = write_text_atomic(out / "generalisation.md",
                                                       format_generalisation(curves))
    for name, figure in _figures(runs).items():
        paths[name] = save_figure(figure, out / "figures" / f"{name}.png")
    return paths
