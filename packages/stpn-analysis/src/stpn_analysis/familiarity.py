"""Generalisation curves of the continual familiarity task: each network is trained at one
repeat distance ``R_train`` and tested at every ``R_test``; a good familiarity detector keeps its
accuracy beyond the distance it saw, i.e. it has learned to forget at the right rate rather than
to remember exactly ``R_train`` steps.

A familiarity run's ``metrics.json`` holds ``repeat_distance`` (``R_train``), ``mode`` and
``generalisation``: one row per ``R_test`` with ``repeat_distance``, ``acc``, ``tpr`` and ``fpr``
(docs/run-format.md). Chance accuracy is 2/3 (a third of the steps are familiar).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from stpn_analysis.plots import _band, model_colour
from stpn_analysis.runs import Run

CHANCE = 2 / 3
RATES = ("acc", "tpr", "fpr")
LABELS = {"hebbff": "HebbFF", "ustpnf": "uSTPNf", "stpnf": "STPNf", "ustpnr": "uSTPNr",
          "stpnr": "STPNr", "lstm": "LSTM"}
"""The paper's names of the six familiarity models."""


def has_generalisation(run: Run) -> bool:
    return bool(run.metrics.get("generalisation"))


def generalisation_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per (run, ``R_test``): ``task``, ``model``, ``seed``, ``r_train``, ``mode``,
    ``r_test``, ``acc``, ``tpr``, ``fpr``. Raises ``ValueError`` if no run has the curves."""
    rows = [
        {"task": run.task, "model": run.model, "seed": run.seed,
         "r_train": run.metrics.get("repeat_distance"), "mode": run.metrics.get("mode"),
         "r_test": int(row["repeat_distance"]), **{key: float(row[key]) for key in RATES}}
        for run in runs if has_generalisation(run) for row in run.metrics["generalisation"]
    ]
    if not rows:
        raise ValueError("runs: no run holds a 'generalisation' list in its metrics.json")
    return pd.DataFrame(rows)


def summarise_generalisation(runs: Sequence[Run]) -> pd.DataFrame:
    """Mean and sample std over seeds of accuracy, TPR and FPR per (task, model, ``R_test``),
    with ``n_seeds``; sorted by task, model and ``R_test``."""
    frame = generalisation_frame(runs)
    aggregations = {f"{key}_{stat}": (key, stat) for key in RATES for stat in ("mean", "std")}
    table = frame.groupby(["task", "model", "r_train", "mode", "r_test"], sort=True).agg(
        **aggregations, n_seeds=("seed", "nunique"))
    return table.reset_index()


def _cell(mean: float, std: float) -> str:
    return f"{mean:.3f}" if pd.isna(std) else f"{mean:.3f} ± {std:.3f}"


def format_generalisation(summary: pd.DataFrame) -> str:
    """Markdown: per task, one row per model with accuracy, TPR and FPR at ``R_test = R_train``
    and the mean accuracy over every tested ``R_test`` (mean ± std over seeds)."""
    lines = ["| task | model | seeds | acc at R_train | TPR at R_train | FPR at R_train | "
             "mean acc over R_test | R_test tested |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for (task, model), group in summary.groupby(["task", "model"], sort=True):
        at = group[group["r_test"] == group["r_train"]]
        cells = [_cell(at[f"{k}_mean"].iloc[0], at[f"{k}_std"].iloc[0]) if len(at) else "–"
                 for k in RATES]
        tested = f"{group['r_test'].min()}–{group['r_test'].max()}"
        lines.append(f"| {task} | {LABELS.get(model, model)} | {group['n_seeds'].max()} | "
                     f"{' | '.join(cells)} | {group['acc_mean'].mean():.3f} | {tested} |")
    return "\n".join(lines) + "\n"


def _title(runs: Sequence[Run], task: str) -> str:
    metrics = next(run.metrics for run in runs if run.task == task)
    return (f"familiarity, trained at R = {metrics.get('repeat_distance', '?')} "
            f"({metrics.get('mode', '?')} mode)")


def _curves(runs: Sequence[Run], task: str, key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """model -> (R_test values, ``(seeds, R_test)`` array of ``key``), seeds aligned on R_test."""
    frame = generalisation_frame([run for run in runs if run.task == task])
    curves = {}
    for model, group in frame.groupby("model", sort=True):
        table = group.pivot_table(index="seed", columns="r_test", values=key)
        curves[model] = (table.columns.to_numpy(), table.to_numpy(dtype=float))
    return curves


def _axes(title: str, ylabel: str) -> tuple[Figure, object]:
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = figure.add_subplot()
    ax.set(title=title, xlabel="R_test (steps between a pattern and its repeat)", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return figure, ax


def _mark_training_distance(ax: object, runs: Sequence[Run], task: str) -> None:
    r_train = next(run.metrics.get("repeat_distance") for run in runs if run.task == task)
    if r_train is not None:
        ax.axvline(r_train, color="grey", ls=":", lw=1, label=f"R_train = {r_train}")


def plot_generalisation_accuracy(runs: Sequence[Run], task: str) -> Figure:
    """Test accuracy against ``R_test`` per model, mean ± std over seeds, with chance (2/3)."""
    figure, ax = _axes(_title(runs, task), "test accuracy (fraction of steps correct)")
    for model, (r_test, values) in _curves(runs, task, "acc").items():
        _band(ax, r_test, values, LABELS.get(model, model), colour=model_colour(model))
    ax.axhline(CHANCE, color="black", ls="--", lw=1, label="chance (2/3)")
    _mark_training_distance(ax, runs, task)
    figure.legend(loc="outside right upper")
    return figure


def plot_generalisation_rates(runs: Sequence[Run], task: str) -> Figure:
    """True-positive rate (solid) and false-positive rate (dashed) against ``R_test`` per model,
    mean ± std over seeds: where accuracy falls, these say whether repeats are missed or new
    patterns are flagged."""
    figure, ax = _axes(_title(runs, task), "rate (fraction of familiar / of new steps)")
    tpr, fpr = _curves(runs, task, "tpr"), _curves(runs, task, "fpr")
    for model in tpr:
        label = LABELS.get(model, model)
        _band(ax, *tpr[model], f"{label} TPR", colour=model_colour(model))
        _band(ax, *fpr[model], f"{label} FPR", colour=model_colour(model), style="--")
    _mark_training_distance(ax, runs, task)
    ax.set_ylim(-0.02, 1.02)
    figure.legend(loc="outside right upper", fontsize="small")
    return figure
