"""What the data modules share: integer checks and a cache of generated arrays on disk.

Generated data sets are cached so that every run of a comparison (and every DDP rank) trains on
the same bytes, and a rerun does not pay the generation again. A cache file is named by a hash of
every parameter its content depends on, and stores that key, so a file is only ever read back for
the parameters that made it; an unreadable or mismatched file is regenerated with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from stpn_core.files import atomic_path

Arrays = dict[str, np.ndarray]


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    """Raise ``TypeError`` unless ``value`` is an int, ``ValueError`` unless it is in range."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name}: expected an int {bound}, got {value}")


class ArrayCache:
    """``.npz`` files of named arrays under ``data_dir``, one per key (a JSON-able dict).

    Args:
        data_dir: the cache folder (created on the first write).
        prefix: start of every file name, e.g. ``"ar_train"``.
    """

    def __init__(self, data_dir: str | os.PathLike[str], prefix: str) -> None:
        self.data_dir, self.prefix = Path(data_dir), prefix

    @staticmethod
    def _encode(key: Mapping[str, Any]) -> str:
        return json.dumps(dict(key), sort_keys=True)

    def path(self, key: Mapping[str, Any]) -> Path:
        digest = hashlib.sha256(self._encode(key).encode()).hexdigest()[:16]
        return self.data_dir / f"{self.prefix}_{digest}.npz"

    def write(self, key: Mapping[str, Any], arrays: Arrays) -> None:
        """Atomic: a temporary file in the cache folder renamed into place, so a concurrent
        reader (another rank, another run) never sees half a file."""
        with atomic_path(self.path(key)) as temporary, temporary.open("wb") as file:
            np.savez(file, **arrays, key=np.array(self._encode(key)))

    def read(self, key: Mapping[str, Any], names: tuple[str, ...],
             valid: Callable[[Arrays], bool]) -> Arrays | None:
        """The cached arrays ``names``, or ``None`` with a warning when the file is unreadable,
        was written for another key or fails ``valid``; ``None`` silently when there is none."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in names}
                stored = str(data["key"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            warnings.warn(f"regenerating {path}: unreadable cache file ({exc})", stacklevel=3)
            return None
        if stored != self._encode(key) or not valid(arrays):
            warnings.warn(f"regenerating {path}: its content does not match its key", stacklevel=3)
            return None
        return arrays

    def load_or_generate(self, key: Mapping[str, Any], names: tuple[str, ...],
                         generate: Callable[[], Arrays],
                         valid: Callable[[Arrays], bool]) -> Arrays:
        """Read the arrays ``names`` of ``key``, or generate them and cache the result."""
        arrays = self.read(key, names, valid)
        if arrays is None:
            arrays = generate()
            self.write(key, arrays)
        return arrays
