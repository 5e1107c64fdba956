"""Reading runs, the table, the figures and the CLI, on a synthetic runs tree with known numbers.

The tree follows docs/run-format.md: ar/{stpn,lstm}/seed{0,1,2} with metrics.json and a Lightning
style logs/metrics.csv, an STPN Lightning checkpoint; maze/stpn/seed0 with an SB3 progress.csv
and an SB3 zip holding policy.pth.
"""

import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread
from stpn_analysis import (
    format_table,
    load_plasticity,
    load_runs,
    model_colour,
    plot_reward_curves,
    plot_validation_accuracy,
    summarise,
    write_report,
)
from stpn_analysis.__main__ import main
from stpn_analysis.report import _figures
from stpn_core import STPN

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What a 9x9 maze run records (stpn_rl computes them for the run's own maze); any numbers do here.
REFERENCES_9 = {"random": 14.76, "oracle": 419.03}
SEEDS = (0, 1, 2)
EPOCHS = 5


def _metrics(task: str, model: str, seed: int, rng: np.random.Generator) -> dict:
    rl = task == "maze"
    length = 200 if rl else 9
    profile = rng.uniform(1.0, 3.0, length).tolist()
    return {
        "task": task, "model": model, "seed": seed,
        "params": {"stpn": 1063, "lstm": 1058}[model],
        "proficiency": float(rng.uniform(50, 150) if rl else rng.uniform(0.5, 1.0)),
        "proficiency_name": "mean_reward" if rl else "test_acc",
        "energy_per_step": float(np.mean(profile)),
        "energy_per_sequence": float(np.sum(profile)),
        "energy_profile": profile,
        "wall_time_s": float(rng.uniform(10, 20)),
        "versions": {"torch": torch.__version__},
    }


def _val_log(rng: np.random.Generator) -> pd.DataFrame:
    """Lightning CSVLogger style: training rows without val/acc, one validation row per epoch."""
    rows = []
    for epoch in range(EPOCHS):
        rows.append({"epoch": epoch, "step": 10 * epoch + 5, "train/loss": rng.uniform()})
        rows.append({"epoch": epoch, "step": 10 * epoch + 9, "val/acc": rng.uniform(0.2, 0.9),
                     "val/energy": rng.uniform()})
    return pd.DataFrame(rows, columns=["epoch", "step", "val/acc", "val/energy", "train/loss"])


def _stpn_state(prefix: str) -> dict[str, torch.Tensor]:
    core = STPN(4, 3)
    with torch.no_grad():
        core.weight_lambda.copy_(torch.linspace(0.1, 0.9, core.weight_lambda.numel()).view_as(
            core.weight_lambda))
        core.weight_gamma.fill_(-0.25)
    return {prefix + key: value for key, value in core.state_dict().items()}


def _write_tree(root: Path) -> dict:
    """Write the synthetic runs; return what was written, for the expected values."""
    rng = np.random.default_rng(7)
    written: dict = {}
    for model in ("stpn", "lstm"):
        for seed in SEEDS:
            run = root / "ar" / model / f"seed{seed}"
            (run / "logs").mkdir(parents=True)
            metrics = _metrics("ar", model, seed, rng)
            (run / "metrics.json").write_text(json.dumps(metrics))
            log = _val_log(rng)
            log.to_csv(run / "logs" / "metrics.csv", index=False)
            written[("ar", model, seed)] = (metrics, log)
    ckpt = root / "ar" / "stpn" / "seed0" / "checkpoints"
    ckpt.mkdir()
    torch.save({"epoch": 4, "state_dict": _stpn_state("model.core.")}, ckpt / "last.ckpt")

    run = root / "maze" / "stpn" / "seed0"
    (run / "logs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    metrics = _metrics("maze", "stpn", 0, rng) | {"references": REFERENCES_9}
    (run / "metrics.json").write_text(json.dumps(metrics))
    steps = np.arange(1, 11) * 1000
    progress = pd.DataFrame({"time/total_timesteps": steps, "rollout/ep_rew_mean": steps / 100})
    progress.to_csv(run / "logs" / "progress.csv", index=False)
    buffer = io.BytesIO()
    torch.save(_stpn_state("pi_core."), buffer)
    with zipfile.ZipFile(run / "checkpoints" / "model.zip", "w") as archive:
        archive.writestr("policy.pth", buffer.getvalue())
        archive.writestr("data", "{}")
    written[("maze", "stpn", 0)] = (metrics, progress)
    return written


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "runs"
    return root, _write_tree(root)


def test_load_runs_reads_every_run(tree: tuple[Path, dict]) -> None:
    root, written = tree
    runs = load_runs(root)
    assert [(r.task, r.model, r.seed) for r in runs] == sorted(written)
    for run in runs:
        metrics, log = written[(run.task, run.model, run.seed)]
        assert run.metrics == metrics and run.path.name == f"seed{run.seed}"
        pd.testing.assert_frame_equal(run.curves, log, check_dtype=False)
    assert len(load_runs(root / "ar" / "lstm")) == 3  # any level of the tree


def test_summary_values(tree: tuple[Path, dict]) -> None:
    root, written = tree
    table = summarise(load_runs(root)).set_index(["task", "model"])
    assert list(table.index) == [("ar", "lstm"), ("ar", "stpn"), ("maze", "stpn")]
    for model in ("stpn", "lstm"):
        runs = [written[("ar", model, s)][0] for s in SEEDS]
        row = table.loc[("ar", model)]

        def column(key: str, runs: list = runs) -> np.ndarray:
            return np.array([m[key] for m in runs])

        assert row["params"] == runs[0]["params"] and row["n_seeds"] == 3
        assert row["proficiency_name"] == "test_acc"
        assert row["proficiency_mean"] == pytest.approx(column("proficiency").mean())
        assert row["proficiency_std"] == pytest.approx(column("proficiency").std(ddof=1))
        assert row["energy_per_step_mean"] == pytest.approx(column("energy_per_step").mean())
        assert row["energy_per_step_std"] == pytest.approx(column("energy_per_step").std(ddof=1))
        assert row["energy_per_sequence_mean"] == pytest.approx(
            column("energy_per_sequence").mean())
        assert row["wall_time_s_mean"] == pytest.approx(column("wall_time_s").mean())
    maze = table.loc[("maze", "stpn")]
    assert maze["n_seeds"] == 1 and np.isnan(maze["proficiency_std"])
    assert maze["proficiency_mean"] == written[("maze", "stpn", 0)][0]["proficiency"]
    markdown = format_table(summarise(load_runs(root)))
    assert markdown.count("\n") == 5 and "| maze | stpn | 1063 | mean_reward |" in markdown


def test_format_table_rounds_to_the_spread() -> None:
    summary = pd.DataFrame([
        {"task": "ar", "model": "stpn", "params": 1063, "proficiency_name": "test_acc",
         "proficiency_mean": 0.84657, "proficiency_std": 0.0223, "energy_per_step_mean": 98.6,
         "energy_per_step_std": 0.3847, "energy_per_sequence_mean": 152.04,
         "energy_per_sequence_std": float("nan"), "n_seeds": 3, "wall_time_s_mean": 12.5},
    ])
    row = format_table(summary).splitlines()[2]
    assert row == "| ar | stpn | 1063 | test_acc | 0.847 ± 0.022 | 98.60 ± 0.38 | 152 | 3 | 12.5 |"
    with pytest.raises(ValueError, match="summary"):
        format_table(summary.drop(columns="n_seeds"))


def test_plasticity_from_lightning_and_sb3_checkpoints(tree: tuple[Path, dict]) -> None:
    root, _ = tree
    expected = np.linspace(0.1, 0.9, 3 * 7)
    loaded = {(r.task, r.model, r.seed): load_plasticity(r) for r in load_runs(root)}
    for key in (("ar", "stpn", 0), ("maze", "stpn", 0)):
        np.testing.assert_allclose(loaded[key]["lambda"], expected, rtol=1e-6)
        np.testing.assert_allclose(loaded[key]["gamma"], -0.25)
    assert loaded[("ar", "lstm", 0)] is None and loaded[("ar", "stpn", 1)] is None


def test_report_writes_every_figure(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tree
    paths = write_report(root, tmp_path / "out")
    figures = {name for name in paths if not name.startswith("summary")}
    assert figures == {
        "ar_proficiency_energy", "ar_energy_profile", "ar_val_acc", "ar_stpn_plasticity",
        "maze_proficiency_energy", "maze_energy_profile", "maze_reward", "maze_stpn_plasticity",
    }
    for name in figures:
        path = paths[name]
        assert path == tmp_path / "out" / "figures" / f"{name}.png"
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 5000
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image[..., :3].std() > 0.01
    csv = pd.read_csv(paths["summary_csv"])
    pd.testing.assert_frame_equal(csv, summarise(load_runs(root)), check_dtype=False)
    assert paths["summary_md"].read_text() == format_table(summarise(load_runs(root)))
    assert not list((tmp_path / "out").rglob(".*.tmp"))  # atomic writes left no temp file


def test_figures_show_the_data(tree: tuple[Path, dict]) -> None:
    root, written = tree
    runs = load_runs(root)
    axes = plot_validation_accuracy(runs, "ar").axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    expected = np.mean([written[("ar", "lstm", s)][1]["val/acc"].dropna() for s in SEEDS], axis=0)
    np.testing.assert_allclose(lines["lstm (n=3)"].get_ydata(), expected)
    assert lines["stpn (n=3)"].get_color() == model_colour("stpn") == "dodgerblue"
    assert model_colour("lstm") == "brown" and model_colour("rnn") == "red"
    assert model_colour("some_new_model") == model_colour("some_new_model")

    references = REFERENCES_9
    axes = plot_reward_curves(runs, "maze", references).axes[0]
    levels = {line.get_label().split()[0]: line.get_ydata()[0] for line in axes.get_lines()}
    assert levels["random"] == references["random"] and levels["oracle"] == references["oracle"]
    curve = next(line for line in axes.get_lines() if line.get_label().startswith("stpn"))
    np.testing.assert_allclose(curve.get_ydata(), curve.get_xdata() / 100)
    with pytest.raises(ValueError, match="task"):
        plot_validation_accuracy(runs, "pong")


def test_a_run_that_logged_once_is_drawn_as_a_dot(tree: tuple[Path, dict]) -> None:
    root, _ = tree
    progress = root / "maze" / "stpn" / "seed0" / "logs" / "progress.csv"
    first = pd.read_csv(progress).iloc[:1]
    first.to_csv(progress, index=False)
    axes = plot_reward_curves(load_runs(root), "maze").axes[0]
    (curve,) = axes.get_lines()
    assert curve.get_marker() == "o"
    np.testing.assert_allclose(curve.get_ydata(), first["rollout/ep_rew_mean"])


def _reference_levels(runs: list) -> dict[str, float]:
    axes = _figures(runs)["maze_reward"].axes[0]
    return {line.get_label().split()[0]: line.get_ydata()[0] for line in axes.get_lines()
            if line.get_label().split()[0] in ("random", "oracle")}


def test_report_draws_the_references_the_maze_runs_recorded(tree: tuple[Path, dict]) -> None:
    root, _ = tree
    assert _reference_levels(load_runs(root)) == REFERENCES_9
    # A second seed on another maze: the lines would be wrong for one of them, so none are drawn.
    other = root / "maze" / "stpn" / "seed1"
    shutil.copytree(root / "maze" / "stpn" / "seed0", other)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics |= {"seed": 1, "references": {"random": 5.43, "oracle": 270.66}}
    (other / "metrics.json").write_text(json.dumps(metrics))
    with pytest.warns(UserWarning, match="different references"):
        assert _reference_levels(load_runs(root)) == {}
    # A run without references (older format) or with a malformed entry draws none from it.
    metrics["references"] = {"random": "high"}
    (other / "metrics.json").write_text(json.dumps(metrics))
    with pytest.warns(UserWarning, match="references must map names to numbers"):
        assert _reference_levels(load_runs(root)) == REFERENCES_9
    for run in ("seed0", "seed1"):
        path = root / "maze" / "stpn" / run / "metrics.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"references": None}))
    assert _reference_levels(load_runs(root)) == {}


def test_bad_run_files_are_skipped_with_a_warning(tree: tuple[Path, dict]) -> None:
    root, written = tree
    corrupt = root / "ar" / "rnn" / "seed0" / "metrics.json"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_text('{"task": "ar", "model": ')
    unfinished = root / "ar" / "rnn" / "seed1"
    (unfinished / "logs").mkdir(parents=True)
    incomplete = root / "ar" / "rnn" / "seed2" / "metrics.json"
    incomplete.parent.mkdir(parents=True)
    incomplete.write_text(json.dumps({"task": "ar", "model": "rnn", "seed": 2}))
    with pytest.warns(UserWarning) as caught:
        runs = load_runs(root)
    messages = "\n".join(str(w.message) for w in caught)
    assert str(corrupt) in messages and "not valid JSON" in messages
    assert str(unfinished / "metrics.json") in messages and "missing" in messages
    assert str(incomplete) in messages and "params" in messages
    assert [(r.task, r.model, r.seed) for r in runs] == sorted(written)


def test_empty_or_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match="no readable run"):
        load_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_runs(tmp_path / "nowhere")
    assert main(["report", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    result = subprocess.run(
        [sys.executable, "-m", "stpn_analysis", "report", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode != 0
    assert "no readable run" in result.stderr and "Traceback" not in result.stderr


def test_cli_prints_table_and_paths(tree: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    root, _ = tree
    shutil.rmtree(root / "maze")
    assert main(["report", str(root / "ar")]) == 0  # no --out: written beside the runs
    out = capsys.readouterr().out
    assert out.startswith("| task | model |") and "| ar | stpn | 1063 |" in out
    assert str(root / "ar" / "summary.csv") in out and "ar_val_acc.png" in out
    assert (root / "ar" / "figures" / "ar_val_acc.png").is_file()
    assert not (root / "ar" / "figures" / "maze_reward.png").exists()
    assert len(load_runs(root)) == 6  # the report files are not mistaken for runs
