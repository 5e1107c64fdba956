"""The settings of one sweep, named as the CLI flags of ``python -m stpn_rl.tune``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy

from stpn_rl.tasks import TASKS

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "halving", "none")


DRIVER_EXTRAS = {"psycopg": 'pip install -e "packages/stpn-rl[postgres]"'}
"""How to install a database driver the package's extras provide (``postgresql://`` URLs'), by
module name."""


def check_storage(storage: str) -> None:
    """Raise ``ValueError`` unless ``storage`` is a SQLAlchemy URL whose driver is installed
    (saying how to install it), so that a sweep fails before it starts, not at its first write."""
    try:
        url = sqlalchemy.engine.make_url(storage)
        dialect = url.get_dialect()
    except sqlalchemy.exc.ArgumentError as error:
        raise ValueError(
            "storage: expected a SQLAlchemy URL such as sqlite:///study.db or "
            f"postgresql://user:password@host/db, got {storage!r}"
        ) from error
    try:
        dialect.import_dbapi()
    except ImportError as error:
        install = DRIVER_EXTRAS.get(error.name, f"install the {error.name} package")
        raise ValueError(
            f"storage: {url.drivername} URLs need the database driver {error.name!r}, which is "
            f"not installed; {install}"
        ) from error


@dataclass(frozen=True)
class TuneOptions:
    """One sweep's settings, named as the CLI flags. Checked on construction."""

    task: str
    core: str
    n_trials: int | None = 20
    timeout: float | None = None
    n_timesteps: int = 100_000
    n_evaluations: int = 4
    n_eval_episodes: int | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    n_startup_trials: int = 5
    n_jobs: int = 1
    storage: str | None = None
    study_name: str | None = None
    seed: int | None = None
    heartbeat_interval: int = 60
    fix: dict[str, Any] | None = None
    config: Path | None = None
    out: Path | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task: expected one of {sorted(TASKS)}, got {self.task!r}")
        for name, low in (
            ("n_timesteps", 1),
            ("n_evaluations", 1),
            ("n_jobs", 1),
            ("heartbeat_interval", 1),
            ("n_startup_trials", 0),
            ("n_trials", 1),
            ("n_eval_episodes", 1),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < low
            ):
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        if self.n_evaluations > self.n_timesteps:
            raise ValueError(
                f"n_evaluations: expected at most n_timesteps ({self.n_timesteps}),"
                f" got {self.n_evaluations}"
            )
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout: expected a positive number of seconds, got {self.timeout}")
        for name, choices in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}: expected one of {choices}, got {getattr(self, name)!r}")
        if self.storage is not None:
            check_storage(self.storage)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out is not None else Path("runs/tune", self.task, self.core)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out_dir / 'study.db').resolve()}"

    @property
    def name(self) -> str:
        return self.study_name or f"{self.task}-{self.core}"
