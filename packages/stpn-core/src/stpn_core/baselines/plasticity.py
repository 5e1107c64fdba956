"""Differentiable plasticity (Miconi et al. 2018) and its neuromodulated form, Backpropamine
(Miconi et al. 2019), as the STPN paper's "MODPLAST" baseline (docs/model.md §3.4).

Each recurrent synapse is ``w_ij + α_ij·Hebb_ij``: a learned fixed part, a learned plasticity
coefficient, and a per-sample Hebbian trace written during the sequence. In ``"neuromodulated"``
mode the network gates its own plasticity through a learned dopamine-like signal.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from stpn_core.base import Device, DType, check_choice
from stpn_core.baselines._common import SteppedModel, check_real
from stpn_core.energy import synaptic_energy

MODES = ("neuromodulated", "plastic")


class PlasticityState(NamedTuple):
    """State of :class:`DifferentiablePlasticity`: ``h`` ``(B, H)``, ``hebb`` ``(B, H, H)``."""

    h: Tensor
    hebb: Tensor


class DifferentiablePlasticity(SteppedModel):
    """Plastic recurrent network over a sequence. Per step (rows post-, columns presynaptic)::

        h_t        = tanh(W_i2h x_t + b_i2h + (w + α ⊙ Hebb_t) h_{t-1})
        Δ_t        = h_t ⊗ h_{t-1}
        Hebb_{t+1} = clamp(Hebb_t + m_t Δ_t, ±clamp)

    with ``m_t = tanh(h2DA(h_t))`` (one neuromodulator per sample, ``mode="neuromodulated"``,
    Backpropamine) or ``m_t = η``, a learned scalar initialised to 0.01 (``mode="plastic"``: the
    2018 rule as the paper's maze code ran it, purely additive and clamped, no decay).

    Args:
        input_size, hidden_size, bias, batch_first: as ``torch.nn.RNN`` (``bias`` is ``b_i2h``).
        mode: ``"neuromodulated"`` (the paper's MODPLAST) or ``"plastic"``.
        clamp: bound of the Hebbian trace (paper: 1.0); ``None`` leaves it unbounded.

    Parameters: ``i2h`` (``nn.Linear(I, H)``, default init), ``w`` and ``alpha`` ``(H, H)``
    initialised ``0.01·U[0, 1)``, and ``h2DA`` (``nn.Linear(H, 1)``) or ``eta``.
    Energy (docs/model.md §4.2): ``Σ |W_i2h|·x_t² + Σ |w + α ⊙ Hebb_t|·h_{t-1}²``.
    """

    state_type = PlasticityState

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 batch_first: bool = True, *, mode: str = "neuromodulated",
                 clamp: float | None = 1.0, device: Device = None, dtype: DType = None) -> None:
        super().__init__(input_size, hidden_size, bias, batch_first)
        check_choice("mode", mode, MODES)
        if clamp is not None:
            check_real("clamp", clamp, positive=True)
        self.mode, self.clamp = mode, clamp
        factory = {"device": device, "dtype": dtype}
        self.i2h = nn.Linear(self.input_size, self.hidden_size, bias=bias, **factory)
        self.w = nn.Parameter(torch.empty(self.hidden_size, self.hidden_size, **factory))
        self.alpha = nn.Parameter(torch.empty(self.hidden_size, self.hidden_size, **factory))
        if mode == "neuromodulated":
            self.h2DA = nn.Linear(self.hidden_size, 1, **factory)
        else:
            self.eta = nn.Parameter(torch.empty((), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """docs/model.md §3.4: ``nn.Linear`` defaults for ``i2h``/``h2DA``; ``w``, ``α`` ~
        0.01·U[0, 1); ``η`` = 0.01 (Miconi's initial value)."""
        self.i2h.reset_parameters()
        with torch.no_grad():
            self.w.uniform_(0.0, 0.01)
            self.alpha.uniform_(0.0, 0.01)
            if self.mode == "neuromodulated":
                self.h2DA.reset_parameters()
            else:
                self.eta.fill_(0.01)

    def extra_repr(self) -> str:
        return f"batch_first={self.batch_first}, mode={self.mode!r}, clamp={self.clamp}"

    def state_shapes(self) -> dict[str, tuple[int, ...] | None]:
        H = self.hidden_size
        return {"h": (H,), "hebb": (H, H)}

    def _recurrent_weight(self, hebb: Tensor) -> Tensor:
        """Per-sample recurrent efficacy ``w + α ⊙ Hebb`` ``(B, H, H)``."""
        return self.w + self.alpha * hebb

    def _step(self, x_t: Tensor, state: PlasticityState) -> PlasticityState:
        h, hebb = state
        recurrent = torch.bmm(self._recurrent_weight(hebb), h.unsqueeze(-1)).squeeze(-1)
        h_new = torch.tanh(self.i2h(x_t) + recurrent)
        delta = h_new.unsqueeze(-1) * h.unsqueeze(-2)
        if self.mode == "neuromodulated":
            modulation = torch.tanh(self.h2DA(h_new)).unsqueeze(-1)  # (B, 1, 1)
        else:
            modulation = self.eta
        hebb = hebb + modulation * delta
        if self.clamp is not None:
            hebb = hebb.clamp(-self.clamp, self.clamp)
        return PlasticityState(h_new, hebb)

    def _step_with_energy(
        self, x_t: Tensor, state: PlasticityState
    ) -> tuple[PlasticityState, Tensor]:
        recurrent = self._recurrent_weight(state.hebb)
        weight = torch.cat([self.i2h.weight.expand(x_t.shape[0], -1, -1), recurrent], dim=2)
        spent = synaptic_energy(weight, torch.cat([x_t, state.h], dim=1)).sum(dim=-1)
        return self._step(x_t, state), spent
