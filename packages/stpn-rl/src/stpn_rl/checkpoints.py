"""Checkpoints a run resumes from exactly, written so that a kill at any moment loses nothing.

A checkpoint is SB3's ``.zip`` (weights, optimiser, ``num_timesteps``, the last observation,
the episode statistics) plus one more member, ``training_state.pkl``, holding what SB3 leaves
out and a resumed run needs to continue as if it had never stopped: the torch (CPU and CUDA),
numpy and Python RNG states, the environments' own state, the recurrent state of each env,
the log values waiting for the next ``progress.csv`` row, and the training wall time so far.
Checkpoints are taken where a rollout starts (after the previous update), the only point at
which no half-filled rollout buffer would need saving.

Each file is written next to its place, flushed to disk and renamed (``stpn_core.files``), so a
kill leaves the previous checkpoint intact; :func:`resume_latest` skips, with a warning naming
it, a checkpoint that cannot be read (a damaged disk, a file copied half-way).
"""

from __future__ import annotations

import os
import pickle
import random
import re
import signal
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecEnvWrapper
from stpn_core.files import atomic_path

from stpn_rl.a2c_bptt import A2CBPTT
from stpn_rl.ppo import CoreRecurrentPPO

CHECKPOINT_PREFIX = "rl_model"
TRAINING_STATE = "training_state.pkl"
KILL_HOOK = "STPN_RL_KILL_AT_CHECKPOINT"
"""``STEPS:after`` or ``STEPS:during``: the process kills itself (SIGKILL) right after writing,
or in the middle of writing, the checkpoint at ``STEPS`` steps; the resume tests use it."""
_CHECKPOINT = re.compile(rf"{CHECKPOINT_PREFIX}_(\d+)_steps\.zip")


class CheckpointWarning(UserWarning):
    """A checkpoint could not be used as it is (damaged, or without its training state)."""


class ResumablePPO(CoreRecurrentPPO):
    """``RecurrentPPO`` (with :class:`~stpn_rl.ppo.CoreRolloutBuffer`) whose ``time/iterations``
    counts rollouts since the run began rather than since this ``learn`` call, so that a resumed
    run logs the rows an uninterrupted one would."""

    def dump_logs(self, iteration: int = 0) -> None:
        super().dump_logs(self.num_timesteps // (self.n_steps * self.n_envs))


ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": ResumablePPO, "a2c-bptt": A2CBPTT}
"""The training algorithms by the name a configuration's ``algo`` gives."""


def checkpoint_path(directory: Path, steps: int) -> Path:
    return directory / f"{CHECKPOINT_PREFIX}_{steps}_steps.zip"


def list_checkpoints(directory: Path) -> list[Path]:
    """The checkpoints in ``directory``, newest (most timesteps) first."""
    found = [
        (int(m.group(1)), p)
        for p in directory.glob("*.zip")
        if (m := _CHECKPOINT.fullmatch(p.name))
    ]
    return [path for _, path in sorted(found, reverse=True)]


def _env_layers(env: VecEnv) -> list[VecEnv]:
    layers = [env]
    while isinstance(layers[-1], VecEnvWrapper):
        layers.append(layers[-1].venv)
    return layers


def env_state(env: VecEnv) -> bytes | None:
    """The environments' state (each wrapper's attributes and the innermost ``VecEnv``'s), or
    ``None`` when the innermost one holds gymnasium environments: those pickle by rebuilding
    themselves from their constructor arguments, which would silently restart their episodes."""
    layers = _env_layers(env)
    if isinstance(layers[-1], DummyVecEnv | SubprocVecEnv):
        return None
    skip = {"venv", "class_attributes"}  # the next layer, and SB3's unpicklable class cache
    return pickle.dumps([{k: v for k, v in vars(e).items() if k not in skip} for e in layers])


def restore_env_state(env: VecEnv, state: bytes) -> None:
    """Put ``env`` (built like the saved one) back in the state :func:`env_state` recorded."""
    for layer, attributes in zip(_env_layers(env), pickle.loads(state), strict=True):
        vars(layer).update(attributes)


def _training_state(model: RecurrentPPO, wall_time: float) -> dict[str, Any]:
    logger = model.logger
    states = getattr(model, "_last_lstm_states", None)  # a2c-bptt keeps no state between
    return {
        "num_timesteps": model.num_timesteps,
        "wall_time": wall_time,
        "torch": torch.get_rng_state().numpy(),
        "cuda": [s.numpy() for s in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else [],
        "numpy": np.random.get_state(),
        "random": random.getstate(),
        "env": env_state(model.get_env()),
        "lstm_states": None
        if states is None
        else [[t.detach().cpu().numpy() for t in pair] for pair in states],
        "log": (
            dict(logger.name_to_value),
            dict(logger.name_to_count),
            dict(logger.name_to_excluded),
        ),
    }


def _kill_hook(steps: int, moment: str) -> None:
    if os.environ.get(KILL_HOOK) == f"{steps}:{moment}":
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(model: RecurrentPPO, path: Path, wall_time: float) -> Path:
    """Write ``model`` and its training state to ``path`` atomically and durably."""
    state = pickle.dumps(_training_state(model, wall_time))
    with atomic_path(path) as temporary:
        model.save(temporary)
        _kill_hook(model.num_timesteps, "during")
        with zipfile.ZipFile(temporary, "a") as archive:
            archive.writestr(TRAINING_STATE, state)
    _kill_hook(model.num_timesteps, "after")
    return path


def load_checkpoint(
    path: Path,
    env: VecEnv,
    device: str | torch.device = "auto",
    algorithm: type[BaseAlgorithm] = ResumablePPO,
) -> tuple[RecurrentPPO, dict[str, Any] | None]:
    """The ``algorithm`` model of checkpoint ``path`` on ``device``, training on ``env``, with
    ``env`` put back in its saved state; and the rest of the training state for
    :func:`restore_training` (``None`` for a checkpoint that has none: its run resumes from
    fresh episodes)."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        state = pickle.loads(archive.read(TRAINING_STATE)) if TRAINING_STATE in names else None
    model = algorithm.load(path, env=None, device=device, force_reset=False)
    exact = state is not None and state["env"] is not None
    # Otherwise the environments restart, and so must the episodes SB3 remembers.
    model.set_env(env, force_reset=not exact)
    if exact:  # only now: a checkpoint that fails to load leaves the environments untouched
        restore_env_state(env, state["env"])
    if exact and state["lstm_states"] is not None:
        model._last_lstm_states = RNNStates(
            *(tuple(torch.as_tensor(a, device=model.device) for a in pair)
              for pair in state["lstm_states"])
        )
    return model, state


def restore_training(model: RecurrentPPO, state: dict[str, Any]) -> None:
    """Restore the RNGs and the pending log values of ``state``; call it last, just before
    ``learn``, since building and loading models draws random numbers."""
    values, counts, excluded = state["log"]
    model.logger.name_to_value.update(values)
    model.logger.name_to_count.update(counts)
    model.logger.name_to_excluded.update(excluded)
    torch.set_rng_state(torch.from_numpy(state["torch"]))
    if state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.from_numpy(s) for s in state["cuda"]])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])


def resume_latest(
    directory: Path,
    env: VecEnv,
    device: str | torch.device = "auto",
    algorithm: type[BaseAlgorithm] = ResumablePPO,
) -> tuple[RecurrentPPO, dict[str, Any] | None] | None:
    """The newest checkpoint of ``directory`` that loads (see :func:`load_checkpoint`), warning
    about each newer one that does not; ``None`` if there is none."""
    for path in list_checkpoints(directory):
        try:
            model, state = load_checkpoint(path, env, device, algorithm)
        except (zipfile.BadZipFile, EOFError, KeyError, pickle.UnpicklingError, RuntimeError,
                ValueError, OSError) as error:
            warnings.warn(
                f"checkpoint {path} is damaged and is skipped ({type(error).__name__}: "
                f"{error}); resuming from the previous one", CheckpointWarning, stacklevel=2
            )
            continue
        if state is None:
            warnings.warn(
                f"checkpoint {path} has no training state (written by an older stpn_rl): "
                "the run resumes with fresh episodes and RNGs, so it will not match an "
                "uninterrupted one", CheckpointWarning, stacklevel=2
            )
        elif state["env"] is None:
            warnings.warn(
                f"resuming from {path}: this task's gymnasium environments cannot be saved, so "
                "they restart their episodes; the run will not match an uninterrupted one",
                CheckpointWarning, stacklevel=2
            )
        return model, state
    return None


class RolloutCheckpoint(BaseCallback):
    """Save a checkpoint where a rollout starts, every ``every`` rollouts of the run (counted
    from step 0, so that a resumed run checkpoints at the same steps), and keep the training
    wall time, ``wall_offset`` seconds of it from earlier sessions."""

    def __init__(self, directory: Path, every: int, wall_offset: float) -> None:
        super().__init__()
        self.directory, self.every, self.wall_offset = directory, every, wall_offset
        self.started, self.resumed_at = time.perf_counter(), 0

    def wall_time(self) -> float:
        return self.wall_offset + time.perf_counter() - self.started

    def _on_training_start(self) -> None:
        self.started, self.resumed_at = time.perf_counter(), self.model.num_timesteps

    def _on_rollout_start(self) -> None:
        steps = self.model.num_timesteps
        rollout = self.model.n_steps * self.model.n_envs
        if steps > self.resumed_at and steps % (self.every * rollout) == 0:
            save_checkpoint(self.model, checkpoint_path(self.directory, steps), self.wall_time())

    def _on_step(self) -> bool:
        return True
