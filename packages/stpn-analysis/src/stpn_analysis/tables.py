"""The comparison table: one row per (task, model), figures aggregated over seeds.

The paper's claims are comparisons across models at equal parameter count, so the parameter
count sits beside proficiency and energy, and the seed count says how much the spread means.
Standard deviations are the sample ones (``ddof=1``), hence NaN for a single seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from stpn_analysis.runs import Run

COLUMNS = (
    "task", "model", "params", "proficiency_name", "proficiency_mean", "proficiency_std",
    "energy_per_step_mean", "energy_per_step_std", "energy_per_sequence_mean",
    "energy_per_sequence_std", "n_seeds", "wall_time_s_mean",
)


def _flat(run: Run) -> dict[str, object]:
    m = run.metrics
    return {
        "task": run.task,
        "model": run.model,
        "seed": run.seed,
        "params": int(m["params"]),
        "proficiency_name": m.get("proficiency_name", "mean_reward" if run.is_rl else "test_acc"),
        "proficiency": float(m["proficiency"]),
        "energy_per_step": float(m["energy_per_step"]),
        "energy_per_sequence": float(m.get("energy_per_sequence", math.nan)),
        "wall_time_s": float(m.get("wall_time_s", math.nan)),
    }


def summarise(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per (task, model) with the columns of :data:`COLUMNS`, sorted by task and model.

    ``params`` is the largest count among the seeds (they should all agree).
    """
    if not runs:
        raise ValueError("runs: expected at least one Run, got none")
    frame = pd.DataFrame([_flat(run) for run in runs])
    table = frame.groupby(["task", "model"], sort=True).agg(
        params=("params", "max"),
        proficiency_name=("proficiency_name", "first"),
        proficiency_mean=("proficiency", "mean"),
        proficiency_std=("proficiency", "std"),
        energy_per_step_mean=("energy_per_step", "mean"),
        energy_per_step_std=("energy_per_step", "std"),
        energy_per_sequence_mean=("energy_per_sequence", "mean"),
        energy_per_sequence_std=("energy_per_sequence", "std"),
        n_seeds=("seed", "nunique"),
        wall_time_s_mean=("wall_time_s", "mean"),
    )
    return table.reset_index()[list(COLUMNS)]


def _number(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.4g}"


def _spread(mean: float, std: float) -> str:
    """``mean ± std`` with two significant digits of std and the mean to the same decimals."""
    if pd.isna(std) or std <= 0 or pd.isna(mean):
        return _number(mean) if pd.isna(std) else f"{_number(mean)} ± 0"
    decimals = max(0, 1 - math.floor(math.log10(std)))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def format_table(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (mean ± std over seeds), ready to print or paste."""
    missing = [c for c in COLUMNS if c not in summary.columns]
    if missing:
        raise ValueError(f"summary: expected the output of summarise(), missing {missing}")
    header = (
        "| task | model | params | metric | proficiency (mean ± std) | energy / step | "
        "energy / sequence | seeds | wall time (s) |"
    )
    lines = [header, "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for row in summary.itertuples(index=False):
        lines.append(
            f"| {row.task} | {row.model} | {row.params} | {row.proficiency_name} | "
            f"{_spread(row.proficiency_mean, row.proficiency_std)} | "
            f"{_spread(row.energy_per_step_mean, row.energy_per_step_std)} | "
            f"{_spread(row.energy_per_sequence_mean, row.energy_per_sequence_std)} | "
            f"{row.n_seeds} | {_number(row.wall_time_s_mean)} |"
        )
    return "\n".join(lines) + "\n"
