"""reproduce_ar survives kill -9 and a second writer: real child processes killed with SIGKILL at
points the test chooses, compared with an uninterrupted run."""

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
import torch
from stpn_supervised.reproduce_ar import PROFILES, Profile, reproduce

TINY = Profile(("stpn",), (0,), max_epochs=3, train_size=1024, val_size=256, test_size=256)

# The child runs the real command; a fault, when asked for, is injected at a chosen point:
#   kill-batch:E   SIGKILL at the 4th training batch of epoch E (after epoch E-1's checkpoint)
#   kill-write:E   SIGKILL with half of epoch E's last.ckpt written to the file being written
#   wait-batch:E   block at the 4th batch of epoch E until the file named by argv[4] exists
CHILD = r"""
import io, os, signal, sys, time
import torch
from lightning.fabric.plugins.io import torch_io
from stpn_core.cli import run_command
from stpn_supervised import SequenceClassifier
from stpn_supervised.reproduce_ar import PROFILES, Profile, main

out, data, fault = sys.argv[1:4]
PROFILES["tiny"] = Profile(("stpn",), (0,), max_epochs=3, train_size=1024, val_size=256,
                           test_size=256)
action, _, epoch = fault.partition(":")
if action in ("kill-batch", "wait-batch"):
    def on_train_batch_start(self, batch, batch_idx):
        if self.current_epoch == int(epoch) and batch_idx == 3:
            if action == "kill-batch":
                os.kill(os.getpid(), signal.SIGKILL)
            while not os.path.exists(sys.argv[4]):
                time.sleep(0.05)
    SequenceClassifier.on_train_batch_start = on_train_batch_start
elif action == "kill-write":
    save = torch_io._atomic_save
    def half_save(checkpoint, path):
        if "last.ckpt" in str(path) and checkpoint["epoch"] == int(epoch):
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            with open(path, "wb") as file:
                file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                file.flush()
                os.fsync(file.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        save(checkpoint, path)
    torch_io._atomic_save = half_save
run_command(main, ["--profile", "tiny", "--out", out, "--data-dir", data])
"""


def _child(tmp_path: Path, out: str, fault: str = "none", *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / out),
                             str(tmp_path / "data"), fault, *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(child: subprocess.Popen) -> tuple[int, str]:
    _, stderr = child.communicate(timeout=300)
    return child.returncode, stderr


def _epoch_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


def _outcome(run: Path) -> tuple[list, list, dict, dict[str, torch.Tensor]]:
    log = pd.read_csv(run / "logs" / "metrics.csv")
    evaluated = log.dropna(subset=["val/acc"])
    metrics = json.loads((run / "metrics.json").read_text())
    tested = {key: metrics[key] for key in ("test_acc", "final_test_acc", "epochs")}
    weights = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return list(evaluated["epoch"]), list(evaluated["val/acc"]), tested, weights


@pytest.fixture
def tiny_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PROFILES, "tiny", TINY)


def test_killed_twice_then_resumed_equals_uninterrupted(tiny_profile, tmp_path) -> None:
    reproduce("tiny", out=tmp_path / "reference", data_dir=tmp_path / "data")
    run = tmp_path / "killed" / "stpn" / "seed0"
    last = run / "checkpoints" / "last.ckpt"

    code, _ = _finish(_child(tmp_path, "killed", "kill-batch:1"))
    assert code == -signal.SIGKILL and _epoch_of(last) == 0
    code, _ = _finish(_child(tmp_path, "killed", "kill-write:1"))
    assert code == -signal.SIGKILL
    assert _epoch_of(last) == 0  # the half-written file was a temporary one, never last.ckpt
    code, stderr = _finish(_child(tmp_path, "killed"))
    assert code == 0, stderr[-2000:]
    assert "unreadable" not in stderr and not list(run.glob("checkpoints/.*.tmp"))

    epochs, val_acc, tested, weights = _outcome(run)
    ref_epochs, ref_val_acc, ref_tested, ref_weights = _outcome(
        tmp_path / "reference" / "stpn" / "seed0")
    assert epochs == ref_epochs == [0, 1, 2]
    assert val_acc == ref_val_acc and tested == ref_tested
    assert all(torch.equal(weights[name], ref_weights[name]) for name in ref_weights)


def test_truncated_last_checkpoint_is_reported_and_the_previous_one_used(
        tiny_profile, tmp_path) -> None:
    out, data = tmp_path / "runs", tmp_path / "data"
    reproduce("tiny", out=out, data_dir=data, max_epochs=2)
    run = out / "stpn" / "seed0"
    (run / "metrics.json").unlink()  # as if killed before the end
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.warns(UserWarning, match=r"checkpoint .*last\.ckpt is unreadable"):
        reproduce("tiny", out=out, data_dir=data)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and _epoch_of(last) == 2
    assert (run / "checkpoints" / "last.ckpt.unreadable").is_file()  # kept aside, not reused
    log = pd.read_csv(run / "logs" / "metrics.csv")
    assert list(log.dropna(subset=["val/acc"])["epoch"]) == [0, 1, 2]


def test_second_writer_exits_at_once_naming_the_folder_and_pid(tmp_path) -> None:
    go_on = tmp_path / "go-on"
    first = _child(tmp_path, "runs", "wait-batch:1", str(go_on))
    lock = tmp_path / "runs" / "stpn" / "seed0" / ".lock"
    try:
        deadline = time.monotonic() + 240
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        code, stderr = _finish(_child(tmp_path, "runs"))
    except BaseException:
        first.kill()
        raise
    finally:
        go_on.touch()  # the first writer goes on
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("error: ") and str(lock.parent) in lines[0]
    assert f"process {first.pid}" in lines[0]
    code, stderr = _finish(first)
    assert code == 0, stderr[-2000:]
    log = pd.read_csv(lock.parent / "logs" / "metrics.csv")
    assert list(log.dropna(subset=["val/acc"])["epoch"]) == [0, 1, 2]
