"""reproduce_ar: the run directory of docs/run-format.md, resuming, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
import yaml
from stpn_core.cli import run_command
from stpn_supervised import AssociativeRetrievalDataModule, SequenceClassifier, reproduce_ar
from stpn_supervised.cli import main
from stpn_supervised.reproduce_ar import (
    METRIC_KEYS,
    PROFILES,
    Profile,
    reproduce,
)
from stpn_supervised.runner import checkpoint_callbacks

TINY = {"train_size": 256, "val_size": 128, "test_size": 160}


@pytest.fixture
def tiny_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PROFILES, "tiny1", Profile(("rnn",), (0,), max_epochs=1, **TINY))
    monkeypatch.setitem(PROFILES, "tiny2", Profile(("rnn",), (0,), max_epochs=2, **TINY))


def _run(profile: str, tmp_path: Path) -> dict[str, Path]:
    return reproduce(profile, out=tmp_path / "runs" / "ar", data_dir=tmp_path / "data")


def test_run_directory_metrics_resume_and_report(tiny_profiles, tmp_path, capsys) -> None:
    # An interrupted run: one epoch done, its metrics.json lost (killed before the end).
    _run("tiny1", tmp_path)
    run = tmp_path / "runs" / "ar" / "rnn" / "seed0"
    (run / "metrics.json").unlink()
    # Resumed from checkpoints/last.ckpt: trains the second epoch only, keeps the first's log.
    paths = _run("tiny2", tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics)
    assert (metrics["task"], metrics["model"], metrics["seed"]) == ("ar", "rnn", 0)
    assert metrics["epochs"] == 2 and metrics["params"] == 1937
    assert metrics["proficiency"] == metrics["test_acc"] == metrics["best_test_acc"]
    assert 0 <= metrics["final_test_acc"] <= 1 and metrics["proficiency_name"] == "test_acc"
    assert metrics["energy_per_step"] == pytest.approx(sum(metrics["energy_profile"]) / 9)
    assert metrics["energy_per_sequence"] == pytest.approx(sum(metrics["energy_profile"]))
    assert metrics["versions"]["torch"] and metrics["wall_time_s"] > 0
    log = pd.read_csv(run / "logs" / "metrics.csv")
    assert {"epoch", "step", "val/acc", "val/energy", "train/loss"} <= set(log.columns)
    assert sorted(log.dropna(subset=["val/acc"])["epoch"]) == [0, 1]  # epoch 0 kept on resume
    assert not (run / "logs" / "previous_metrics.csv").exists()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["name"] == "rnn" and config["data"]["seed"] == 0
    last = run / "checkpoints" / "last.ckpt"
    cli = main(["validate", "--config", str(run / "config.yaml"), "--trainer.logger=false",
                "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={run}",
                f"--ckpt_path={last}"])
    assert cli.trainer.callback_metrics["val/acc"] == pytest.approx(
        log.dropna(subset=["val/acc"])["val/acc"].iloc[-1], abs=1e-6)  # config.yaml re-runs
    assert paths["summary_md"].is_file() and paths["ar_val_acc"].is_file()
    assert "| ar | rnn | 1937 |" in capsys.readouterr().out

    # A finished run is skipped: nothing is retrained or rewritten.
    written = (run / "metrics.json").stat().st_mtime_ns

    def fail(*args: object) -> None:
        raise AssertionError("a finished run was trained again")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reproduce_ar, "train_one", fail)
        _run("tiny2", tmp_path)
    assert (run / "metrics.json").stat().st_mtime_ns == written
    assert "finished, skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"profile_name": "slow"}, "profile"),
        ({"models": ["gru"]}, "models"),
        ({"seeds": [-1]}, "seeds"),
        ({"threads": 0}, "threads"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, message: str, tmp_path) -> None:
    with pytest.raises(ValueError, match=message):
        reproduce(**{"out": tmp_path, **kwargs})


def test_quick_profile_is_the_five_main_models() -> None:
    assert PROFILES["quick"].models == ("stpn", "rnn", "lstm", "fast_weights", "modplast")
    assert len(PROFILES["paper"].models) == 9 and PROFILES["paper"].max_epochs == 200


def test_last_checkpoint_is_the_latest_epoch_even_without_improvement(tmp_path) -> None:
    best, latest = checkpoint_callbacks(tmp_path / "checkpoints")
    data = AssociativeRetrievalDataModule(train_size=64, val_size=64, test_size=64,
                                          batch_size=64, data_dir=tmp_path / "data")
    module = SequenceClassifier("rnn", 20, lr=1e-12)  # validation accuracy cannot improve
    trainer = L.Trainer(max_epochs=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[best, latest])
    trainer.fit(module, data)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2 and Path(best.best_model_path).name == "best-epoch000.ckpt"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--max-epochs", "0"], "max_epochs: expected a positive int"),
     (["--models", "gru"], "argument --models: invalid choice: 'gru'"),
     (["--threads", "x"], "argument --threads")],
)
def test_command_errors_are_one_line_exit_2(arguments: list[str], message: str, tmp_path,
                                            capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        run_command(reproduce_ar.main, [*arguments, "--out", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: ") and message in lines[0]


def test_parallel_processes_give_the_sequential_results(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setitem(PROFILES, "tiny2m", Profile(("rnn", "stpn"), (0,), max_epochs=2, **TINY))
    results = {}
    for jobs in (2, 1):
        out = tmp_path / f"jobs{jobs}"
        reproduce("tiny2m", out=out, data_dir=tmp_path / "data", jobs=jobs)
        results[jobs] = {model: json.loads((out / model / "seed0" / "metrics.json").read_text())
                         for model in ("rnn", "stpn")}
        if jobs == 2:
            assert "2 runs in 2 processes" in capsys.readouterr().out
    keys = ("test_acc", "final_test_acc", "best_val_acc", "epochs", "energy_per_step")
    for model in ("rnn", "stpn"):
        assert {k: results[2][model][k] for k in keys} == {k: results[1][model][k] for k in keys}
