"""The figures of docs/model.md §9.2, drawn from loaded runs; each ``plot_*`` returns a ``Figure``.

Figures are built with ``matplotlib.figure.Figure`` rather than ``pyplot``: that draws headless
(Agg canvas) on any machine, keeps no global figure state in long report runs, and leaves a
notebook's backend alone (Jupyter still displays the returned figure). A model keeps the same
colour in every figure so that figures can be read side by side.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from stpn_core.files import atomic_path

from stpn_analysis.runs import Run, load_plasticity
from stpn_analysis.tables import summarise

# docs/model.md §9.2 fixes the first five; the rest stay clear of them.
MODEL_COLOURS = {
    "stpn": "dodgerblue", "stpnr": "royalblue", "stpnf": "blueviolet", "lstm": "brown",
    "rnn": "red", "stpn_scalar": "deepskyblue", "stpnf_scalar": "mediumpurple",
    "fast_weights": "darkorange", "modplast": "forestgreen",
    "differentiable_plasticity": "forestgreen", "neuromodulated_plasticity": "olivedrab",
    "hebbff": "goldenrod", "mlp": "grey", "ustpnr": "darkcyan", "ustpnf": "orchid",
}
ENERGY_UNIT = "a.u. = Σ|w|·v²"
PROFICIENCY_LABELS = {
    "test_acc": "test accuracy (fraction correct)",
    "mean_reward": "mean episode reward (reward / episode)",
}
REFERENCE_STYLES = {"random": ("grey", "--"), "oracle": ("black", ":")}


def model_colour(model: str) -> str:
    """The model's colour: those of docs/model.md §9.2 for known names, else a fixed pick from
    ``tab20`` by a hash of the name, so that it is the same in every figure and every report."""
    key = model.lower().replace("-", "_")
    if key in MODEL_COLOURS:
        return MODEL_COLOURS[key]
    rgba = colormaps["tab20"](zlib.crc32(key.encode()) % 20)
    return "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in rgba[:3]))


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as PNG atomically (temp file + rename): a reader never sees half a file."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    return Path(path)


def _by_model(runs: Sequence[Run], task: str) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.task == task:
            groups[run.model].append(run)
    if not groups:
        raise ValueError(f"task: no run of task {task!r} among the runs")
    return dict(sorted(groups.items()))


def _band(ax: Axes, x: np.ndarray, series: np.ndarray, model: str, *,
          colour: str | None = None, style: str = "-") -> None:
    """Mean over seeds (rows of ``series``) as a line, ± one sample std as a shaded band,
    labelled ``model (n=seeds)`` in the model's colour (or ``colour``). A single point (a run
    that logged once) is drawn as a dot, since a line through one point is invisible."""
    mean = np.nanmean(series, axis=0)
    n = series.shape[0]
    label = f"{model} (n={n})"
    colour = colour or model_colour(model)
    marker = "o" if len(x) == 1 else None
    ax.plot(x, mean, color=colour, label=label, lw=1.6, ls=style, marker=marker)
    if n > 1:
        std = np.nanstd(series, axis=0, ddof=1)
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, lw=0)


def _new_axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = figure.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return figure, ax


def plot_validation_accuracy(runs: Sequence[Run], task: str = "ar") -> Figure:
    """Validation accuracy against epoch per model, mean ± std over seeds (``val/acc`` of each
    run's ``logs/metrics.csv``; the last value logged in each epoch)."""
    figure, ax = _new_axes(
        f"{task}: validation accuracy", "epoch", "validation accuracy (fraction correct)"
    )
    drawn = 0
    for model, group in _by_model(runs, task).items():
        per_seed = []
        for run in group:
            curves = run.curves
            if curves is not None and {"epoch", "val/acc"} <= set(curves.columns):
                values = curves.dropna(subset=["val/acc"]).groupby("epoch")["val/acc"].last()
                per_seed.append(values)
        if per_seed:
            epochs = sorted(set().union(*(s.index for s in per_seed)))
            series = np.array([s.reindex(epochs).to_numpy(dtype=float) for s in per_seed])
            _band(ax, np.asarray(epochs), series, model)
            drawn += 1
    if not drawn:
        raise ValueError(f"runs: no run of task {task!r} has a logs/metrics.csv with val/acc")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # short runs: no epoch 0.5
    figure.legend(loc="outside right upper")  # beside the curves, never over them
    return figure


def plot_proficiency_energy(runs: Sequence[Run], task: str) -> Figure:
    """Proficiency against energy per step, one point per model with ± std error bars over
    seeds: the paper's claim is that the STPN sits up and to the left."""
    table = summarise([run for group in _by_model(runs, task).values() for run in group])
    name = str(table["proficiency_name"].iloc[0])
    figure, ax = _new_axes(
        f"{task}: proficiency against energy",
        f"energy per step ({ENERGY_UNIT})",
        PROFICIENCY_LABELS.get(name, name),
    )
    for row in table.itertuples(index=False):
        ax.errorbar(
            row.energy_per_step_mean, row.proficiency_mean,
            xerr=np.nan_to_num(row.energy_per_step_std), yerr=np.nan_to_num(row.proficiency_std),
            fmt="o", color=model_colour(row.model), capsize=4, ms=7,
            label=f"{row.model} ({row.params} params, n={row.n_seeds})",
        )
    ax.legend()
    return figure


def plot_energy_profile(runs: Sequence[Run], task: str) -> Figure:
    """Energy at each step along the sequence or episode (``energy_profile`` of metrics.json),
    mean ± std over seeds; runs of unequal length are cut to the shortest."""
    rl = any(run.is_rl for run in runs if run.task == task)
    figure, ax = _new_axes(
        f"{task}: energy along the {'episode' if rl else 'sequence'}",
        f"step within the {'episode' if rl else 'sequence'}",
        f"energy per step ({ENERGY_UNIT})",
    )
    drawn = 0
    for model, group in _by_model(runs, task).items():
        profiles = [np.asarray(r.metrics["energy_profile"], float) for r in group
                    if r.metrics.get("energy_profile")]
        if profiles:
            length = min(len(p) for p in profiles)
            _band(ax, np.arange(length), np.stack([p[:length] for p in profiles]), model)
            drawn += 1
    if not drawn:
        raise ValueError(f"runs: no run of task {task!r} has an energy_profile in metrics.json")
    ax.legend()
    return figure


def plot_reward_curves(
    runs: Sequence[Run], task: str, references: Mapping[str, float] | None = None
) -> Figure:
    """Mean episode reward against environment steps (SB3 ``logs/progress.csv``), mean ± std
    over seeds on a common grid, with horizontal reference lines (e.g. the ``references`` a maze
    run records in ``metrics.json``: ``{"random": ..., "oracle": ...}``)."""
    figure, ax = _new_axes(
        f"{task}: training reward", "environment steps", "mean episode reward (reward / episode)"
    )
    x_key, y_key = "time/total_timesteps", "rollout/ep_rew_mean"
    drawn = 0
    for model, group in _by_model(runs, task).items():
        logs = [r.curves.dropna(subset=[x_key, y_key]) for r in group
                if r.curves is not None and {x_key, y_key} <= set(r.curves.columns)]
        logs = [log for log in logs if len(log)]
        if logs:
            low = max(log[x_key].min() for log in logs)
            high = min(log[x_key].max() for log in logs)
            grid = np.linspace(low, high, 200) if high > low else np.array([low])
            series = np.array([np.interp(grid, log[x_key], log[y_key]) for log in logs])
            _band(ax, grid, series, model)
            drawn += 1
    if not drawn:
        raise ValueError(f"runs: no run of task {task!r} has a logs/progress.csv with {y_key}")
    for name, value in (references or {}).items():
        colour, style = REFERENCE_STYLES.get(name, ("dimgrey", "-."))
        ax.axhline(value, color=colour, ls=style, lw=1.2, label=f"{name} ({value:.4g})")
    ax.legend()
    return figure


def plot_plasticity(runs: Sequence[Run], task: str, model: str = "stpn") -> Figure:
    """Histograms of the learned Λ (how much a synapse keeps of its short-term memory each step)
    and Γ (how strongly activity writes into it), pooled over the seeds' final checkpoints."""
    group = [run for run in _by_model(runs, task).get(model, [])]
    loaded = [p for p in (load_plasticity(run) for run in group) if p is not None]
    if not loaded:
        raise ValueError(f"runs: no checkpoint of {task}/{model} holds weight_lambda/weight_gamma")
    figure = Figure(figsize=(9.6, 3.8), layout="constrained")
    axes = figure.subplots(1, 2)
    labels = {"lambda": "Λ, memory retention per step (dimensionless)",
              "gamma": "Γ, plasticity gain (dimensionless)"}
    for ax, (key, label) in zip(axes, labels.items(), strict=True):
        values = np.concatenate([p[key] for p in loaded])
        ax.hist(values, bins=40, color=model_colour(model), alpha=0.85)
        ax.axvline(float(np.median(values)), color="black", ls="--", lw=1,
                   label=f"median {np.median(values):.3g}")
        ax.set(xlabel=label, ylabel="synapses (count)")
        ax.grid(alpha=0.3)
        ax.legend()
    seeds = f"{len(loaded)} seed" + "s" * (len(loaded) > 1)
    figure.suptitle(f"{task}: learned Λ and Γ of {model} ({seeds}, "
                    f"{loaded[0]['lambda'].size} synapses each)")
    return figure
