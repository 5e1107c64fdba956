"""Familiarity generalisation curves: the long frame, the mean ± std over seeds, the Markdown
table and the two figures per training setting, on a synthetic runs tree with known numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from stpn_analysis import (
    format_generalisation,
    generalisation_frame,
    load_runs,
    summarise_generalisation,
    write_report,
)
from stpn_analysis.__main__ import main

R_TEST = range(1, 8)


def _accuracy(model: str, seed: int, r_test: int) -> float:
    """A known curve: perfect up to R_test 3 for the STPN, then falling; seeds differ by 0.01."""
    fall = 0.02 if model == "stpnr" else 0.05
    return 1.0 - fall * max(0, r_test - 3) - 0.01 * seed


def _write_tree(root: Path) -> None:
    for model in ("stpnr", "lstm"):
        for seed in (0, 1):
            run = root / "r3-inf" / model / f"seed{seed}"
            run.mkdir(parents=True)
            rows = [{"repeat_distance": r, "acc": _accuracy(model, seed, r),
                     "tpr": 0.9 - 0.01 * r, "fpr": 0.01 * r, "loss": 0.1} for r in R_TEST]
            metrics = {"task": "familiarity-r3-inf", "model": model, "seed": seed,
                       "params": 10342, "proficiency": rows[2]["acc"],
                       "proficiency_name": "test_acc", "energy_per_step": 1.0 + seed,
                       "energy_per_sequence": 5.0, "energy_profile": [1.0] * 5,
                       "repeat_distance": 3, "mode": "inf", "generalisation": rows}
            (run / "metrics.json").write_text(json.dumps(metrics))


def test_frame_and_summary_hold_the_known_curves(tmp_path) -> None:
    _write_tree(tmp_path)
    runs = load_runs(tmp_path)
    frame = generalisation_frame(runs)
    assert len(frame) == 2 * 2 * len(R_TEST)
    summary = summarise_generalisation(runs)
    row = summary[(summary.model == "lstm") & (summary.r_test == 7)].iloc[0]
    assert row.acc_mean == pytest.approx(np.mean([_accuracy("lstm", s, 7) for s in (0, 1)]))
    assert row.acc_std == pytest.approx(np.std([_accuracy("lstm", s, 7) for s in (0, 1)],
                                               ddof=1))
    assert row.n_seeds == 2 and row.r_train == 3 and row["mode"] == "inf"
    table = format_generalisation(summary)
    assert "| familiarity-r3-inf | STPNr | 2 | 0.995 ± 0.007 |" in table
    assert table.count("\n") == 4  # header, rule, two models


def test_report_writes_the_table_and_both_figures(tmp_path, capsys) -> None:
    _write_tree(tmp_path / "runs")
    paths = write_report(tmp_path / "runs", tmp_path / "out")
    for kind in ("acc", "rates"):
        assert imread(paths[f"familiarity-r3-inf_generalisation_{kind}"]).shape[2] in (3, 4)
    assert "mean acc over R_test" in paths["generalisation_md"].read_text()
    assert "r_test" in paths["generalisation_csv"].read_text().splitlines()[0]
    assert main(["report", str(tmp_path / "runs")]) == 0
    assert "acc at R_train" in capsys.readouterr().out


def test_runs_without_curves_are_an_error_for_the_frame(tmp_path) -> None:
    _write_tree(tmp_path)
    runs = [run for run in load_runs(tmp_path)]
    for run in runs:
        run.metrics.pop("generalisation")
    with pytest.raises(ValueError, match="generalisation"):
        generalisation_frame(runs)
