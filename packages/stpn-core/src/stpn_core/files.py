"""Durable atomic file writes and a one-writer lock for run folders, shared by every stpn package.

A run can be killed at any moment and several processes (DDP ranks, Optuna workers, a second
command started by mistake) may touch the same folder. Writing to a temporary file in the same
folder, flushing it to disk and renaming it into place means a reader sees the old file or the new
one, never half of either, even after a power cut. A run folder has one writer at a time: the
:class:`RunLock` holder.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

__all__ = ["RunLock", "RunLockedError", "atomic_path", "write_text_atomic"]

LOCK_NAME = ".lock"


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    handle = os.open(path, flags)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; when the block ends normally, flush it to
    disk and rename it onto ``path`` (then flush the folder, so that the rename itself survives a
    crash); delete it when the block raises. Creates the parent folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        _fsync_path(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_path(target.parent, directory=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically and durably; returns the path."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"run folder {folder} is in use by {holder}; wait for it to finish or stop it "
            "(one writer per run folder)"
        )
        self.folder, self.pid = folder, pid


class RunLock:
    """An exclusive lock on a run folder (``<folder>/.lock``), held while a process writes it.

    It is an ``fcntl`` lock, so the kernel releases it when the holder dies however it dies: the
    lock file of a killed run is taken over by the next command without any clean-up. The file
    records the holder's pid so that the error can name it. Use as a context manager, or call
    :meth:`acquire` and keep the object alive for the life of the process.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._handle: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLockedError` at once (never waits)."""
        if self._handle is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(handle, 32, 0).decode(errors="replace").strip()
            os.close(handle)
            raise RunLockedError(self.folder, int(text) if text.isdigit() else None) from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        self._handle = handle
        return self

    def release(self) -> None:
        """Give the lock back (the file stays; an unlocked file means a free folder)."""
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
