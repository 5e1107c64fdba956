"""Optuna sweeps of a task's RecurrentPPO agent: ``python -m stpn_rl.tune --task maze --core stpn``.

The study lives in an RDB storage (a SQLite file under ``--out`` unless ``--storage`` names
another SQLAlchemy URL, e.g. PostgreSQL), so that rerunning the command continues it and any
number of workers, on one machine or many, share it. Each trial trains for ``--n-timesteps``,
evaluates ``--n-evaluations`` times, reports each mean reward to Optuna and stops when the pruner
says so. A trial that raises or diverges (NaN) is recorded as failed and the study goes on; a
worker killed mid-trial stops sending heartbeats, so the next worker to start a trial fails its
trial and retries it once. At the end, and on Ctrl-C, every trial is written to ``trials.csv``
and the best configuration to ``best.yaml``, which ``python -m stpn_rl.train --config`` accepts.
What is searched is in :mod:`stpn_rl.search_spaces`.
"""

from stpn_rl.tune.cli import main, run
from stpn_rl.tune.objective import TrialEvalCallback, make_objective
from stpn_rl.tune.options import TuneOptions
from stpn_rl.tune.study import open_study, write_results

__all__ = [
    "TrialEvalCallback",
    "TuneOptions",
    "main",
    "make_objective",
    "open_study",
    "run",
    "write_results",
]
