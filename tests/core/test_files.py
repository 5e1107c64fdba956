"""Atomic writes: the new content replaces the old at once, a failed write leaves the old file
and no temporary file behind; a run folder has one writer."""

import os
import signal
import subprocess
import sys

import pytest
from stpn_core.files import RunLock, RunLockedError, atomic_path, write_text_atomic


def test_write_replaces_the_file_and_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "metrics.json"
    assert write_text_atomic(path, "old") == path
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(path) as temporary:
            temporary.write_text("half")
            assert temporary.parent == tmp_path and temporary != path
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_run_lock_refuses_a_second_holder_and_names_the_pid(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        assert lock.held
        with pytest.raises(RunLockedError, match=rf"{tmp_path / 'run'} is in use by process "
                                                 rf"{os.getpid()}") as caught:
            RunLock(tmp_path / "run").acquire()
        assert caught.value.pid == os.getpid()
    RunLock(tmp_path / "run").acquire().release()  # released on exit


def test_a_killed_holders_lock_is_taken_over(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from stpn_core.files import RunLock; "
         f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(RunLockedError, match=f"process {child.pid}"):
        RunLock(tmp_path).acquire()
    child.send_signal(signal.SIGKILL)
    child.wait()
    with RunLock(tmp_path) as lock:  # the stale lock file is still there; the lock is free
        assert lock.held and (tmp_path / ".lock").read_text().strip() == str(os.getpid())
