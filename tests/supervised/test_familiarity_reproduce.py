"""reproduce_familiarity: the run folders, the generalisation rows, the report, skipping finished
runs, and an exact resume after a real ``kill -9``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from stpn_supervised import reproduce_familiarity
from stpn_supervised.reproduce_familiarity import (
    METRIC_KEYS,
    PROFILES,
    Profile,
    main,
    reproduce,
)

TINY = Profile(("stpnr",), (0,), ((3, "inf"),), {(3, "inf"): 30}, seq_len=300)
LONG = Profile(("stpnr",), (0,), ((3, "inf"),), {(3, "inf"): 200}, seq_len=1000)

DRIVER = """
import sys
from stpn_supervised import reproduce_familiarity as r
r.PROFILES["long"] = r.Profile(("stpnr",), (0,), ((3, "inf"),), {(3, "inf"): 200}, seq_len=1000)
r.reproduce("long", out=sys.argv[1], data_dir=sys.argv[2])
"""


def _run(profile: str, root: Path, name: str = "runs") -> dict[str, Path]:
    return reproduce(profile, out=root / name, data_dir=root / "data")


def test_runs_report_and_skip(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(PROFILES, "tiny", TINY)
    paths = _run("tiny", tmp_path)
    run = tmp_path / "runs" / "r3-inf" / "stpnr" / "seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics)
    assert (metrics["task"], metrics["model"], metrics["repeat_distance"], metrics["mode"]) == (
        "familiarity-r3-inf", "stpnr", 3, "inf")
    assert metrics["params"] == 10342 and metrics["iterations"] == 30 and metrics["epochs"] == 3
    rows = metrics["generalisation"]
    assert [row["repeat_distance"] for row in rows] == list(range(1, 20))
    assert metrics["proficiency"] == rows[2]["acc"] and len(metrics["energy_profile"]) == 300
    log = pd.read_csv(run / "logs" / "metrics.csv")
    assert {"train/loss", "train/acc", "val/acc", "val/tpr", "val/fpr"} <= set(log.columns)
    assert paths["generalisation_md"].is_file()
    assert paths["familiarity-r3-inf_generalisation_acc"].is_file()
    assert paths["familiarity-r3-inf_generalisation_rates"].is_file()
    assert "| familiarity-r3-inf | STPNr | 1 |" in capsys.readouterr().out

    def fail(*args: object) -> None:
        raise AssertionError("a finished run was trained again")

    written = (run / "metrics.json").stat().st_mtime_ns
    monkeypatch.setattr(reproduce_familiarity, "train_one", fail)
    _run("tiny", tmp_path)
    assert (run / "metrics.json").stat().st_mtime_ns == written
    assert "finished, skipped" in capsys.readouterr().out


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch) -> None:
    out, data = tmp_path / "killed", tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as stderr:
        child = subprocess.Popen([sys.executable, "-c", DRIVER, str(out), str(data)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=stderr)
    run = out / "r3-inf" / "stpnr" / "seed0"
    deadline = time.monotonic() + 300
    while (not (run / "checkpoints" / "last.ckpt").is_file() and child.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (run / "checkpoints" / "last.ckpt").is_file(), errors.read_text()[-2000:]
    assert not (run / "metrics.json").exists()  # killed mid-training

    monkeypatch.setitem(PROFILES, "long", LONG)
    _run("long", tmp_path, "killed")
    _run("long", tmp_path, "whole")
    resumed = json.loads((run / "metrics.json").read_text())
    whole = json.loads((tmp_path / "whole" / "r3-inf" / "stpnr" / "seed0" /
                        "metrics.json").read_text())
    assert resumed["epochs"] == whole["epochs"] == 20
    assert resumed["generalisation"] == whole["generalisation"]  # the same network
    log = pd.read_csv(run / "logs" / "metrics.csv").dropna(subset=["val/acc"])
    assert sorted(log["epoch"]) == list(range(20))  # rows of the killed attempt kept


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"profile_name": "slow"}, "profile"), ({"models": ["gru"]}, "models"),
     ({"seeds": [-1]}, "seeds"), ({"settings": [(4, "inf")]}, "settings"),
     ({"threads": 0}, "threads")],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, message: str, tmp_path) -> None:
    with pytest.raises(ValueError, match=message):
        reproduce(**{"out": tmp_path, **kwargs})


def test_cli_errors_are_one_line(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stpn_supervised.reproduce_familiarity", "--settings", "3-online"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "error:" in result.stderr


def test_profiles() -> None:
    paper = PROFILES["paper"]
    assert len(paper.models) == 6 and paper.seeds == (0, 1, 2, 3, 4)
    assert paper.iterations_of("lstm", (3, "inf")) == 1600
    assert paper.iterations_of("hebbff", (6, "inf")) == 3500
    assert paper.iterations_of("stpnr", (6, "dat")) == 3000
    assert PROFILES["quick"].settings == ((3, "inf"),)
    with pytest.raises(SystemExit):
        main(["--profile", "slow"])
