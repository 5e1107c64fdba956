"""Option checks and the per-step sequence loop shared by the plastic baselines.

FastWeights, DifferentiablePlasticity and HebbFF carry a per-sample synaptic state that changes at
every step, so they have no fused kernel: each defines one step (the definition, written from
docs/model.md §3) and this module runs it over the sequence, for the output and for the energy
alike.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from stpn_core.base import RecurrentModel


def check_real(name: str, value: Any, *, positive: bool = False) -> None:
    """Raise unless ``value`` is a finite real number (and ``> 0`` when ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or (positive and value <= 0):
        kind = "a positive finite number" if positive else "a finite number"
        raise ValueError(f"{name}: expected {kind}, got {value}")


class SteppedModel(RecurrentModel):
    """A :class:`RecurrentModel` defined by one step; runs it over the time axis.

    Subclasses implement :meth:`_step` (the new state; ``state.h`` is the step's output) and
    :meth:`_step_with_energy` (the same step plus its energy ``(B,)``, summed over units, taken
    from the state at the start of the step).
    """

    def _step(self, x_t: Tensor, state: NamedTuple) -> NamedTuple:
        raise NotImplementedError

    def _step_with_energy(self, x_t: Tensor, state: NamedTuple) -> tuple[NamedTuple, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor, state: NamedTuple | None = None) -> tuple[Tensor, NamedTuple]:
        """Run the sequence ``x`` from ``state`` (zeros if ``None``); return every ``h_t`` and
        the final state, which continues the sequence when passed to the next call."""
        x, state = self._prepare_input(x, state)
        outputs = []
        for t in range(x.shape[1]):
            state = self._step(x[:, t], state)
            outputs.append(state.h)  # type: ignore[attr-defined]
        return self._finish_output(torch.stack(outputs, dim=1)), state

    def energy(self, x: Tensor, state: NamedTuple | None = None) -> Tensor:
        """Energy of every step ``(B, T)``, summed over units, each from the state before it."""
        with torch.no_grad():
            x, state = self._prepare_input(x, state)
            energies = []
            for t in range(x.shape[1]):
                state, spent = self._step_with_energy(x[:, t], state)
                energies.append(spent)
            return torch.stack(energies, dim=1)
