"""The CLI under Lightning's DDP with two CPU processes (gloo): the data are generated once, both
ranks train, and the logged metrics cover the whole evaluation set, not one rank's half.

Only ``fit`` runs here: every CLI call under DDP starts three Python processes, which costs most
of a minute on the 2-core machine. ``test`` synchronises through the same torchmetrics states as
the validation checked below (and was run by hand under DDP, see the package README).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
from stpn_supervised import AssociativeRetrievalDataModule, SequenceClassifier

DATA = {"train_size": 512, "val_size": 256, "test_size": 384, "batch_size": 64}


def _cli(stage: str, cwd: Path, *extra: str) -> None:
    command = [sys.executable, "-m", "stpn_supervised", stage, "--config", "ar/rnn",
               "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
               "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
               "--data.data_dir=data", *(f"--data.{k}={v}" for k, v in DATA.items()), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _single_process(stage: str, checkpoint: Path, cwd: Path) -> dict[str, float]:
    module = SequenceClassifier.load_from_checkpoint(checkpoint)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        devices=1)
    data = AssociativeRetrievalDataModule(data_dir=cwd / "data", **DATA)
    run = trainer.validate if stage == "val" else trainer.test
    return run(module, data, verbose=False)[0]


def test_ddp_fit_and_test_on_two_cpu_processes(tmp_path: Path) -> None:
    _cli("fit", tmp_path, "--trainer.max_epochs=1")
    run = tmp_path / "runs" / "ar-cli" / "rnn"
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    assert len(list((tmp_path / "data").iterdir())) == 3  # three splits, written once each
    logged = pd.read_csv(run / "logs" / "metrics.csv")
    val_acc = logged["val/acc"].dropna().iloc[-1]
    # The last checkpoint holds the weights validated at the end of the epoch: one process on
    # the whole validation set must see what the two ranks reported together.
    expected = _single_process("val", checkpoint, tmp_path)
    assert val_acc == pytest.approx(expected["val/acc"], abs=1e-6)
    assert logged["val/energy"].dropna().iloc[-1] == pytest.approx(expected["val/energy"],
                                                                     rel=1e-5)

