"""HebbFF (Tyulmankov et al. 2022) as the STPN paper's ablation (docs/model.md §2.2, §3.5).

A feed-forward layer whose synapses carry a per-sample Hebbian memory ``F`` with one scalar decay
and one scalar learning rate; the paper's ART wrapper also passed ``F`` through the sigmoid before
the decay, which is an artefact not reproduced here.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from stpn_core.base import Device, DType, check_bool
from stpn_core.baselines._common import SteppedModel
from stpn_core.energy import synaptic_energy

INITIAL_DECAY = 0.99


class HebbFFState(NamedTuple):
    """State of :class:`HebbFF`: output ``h`` ``(B, H)`` and Hebbian memory ``F`` ``(B, H, I)``."""

    h: Tensor
    F: Tensor


class HebbFF(SteppedModel):
    """HebbFF layer over a sequence::

        h_t     = σ(W x_t + b + F_t x_t)
        F_{t+1} = λ F_t + γ (h_t ⊗ x_t)

    with ``λ = sigmoid(lambda_raw)``, initialised to 0.99 (so it stays in (0, 1)), and ``γ``
    initialised to ``−5/H``.

    Args:
        input_size, hidden_size, bias, batch_first: as ``torch.nn.RNN``.
        anti_hebbian: force ``γ = −exp(gamma_raw) < 0`` as the paper's code did; by default
            ``γ = gamma_raw`` is free (Tyulmankov's unforced form, which the paper's code
            comments found slightly better).

    Parameters: ``weight`` ``(H, I)``, ``bias`` ``(H,)`` (both ``U(±1/√I)``), scalars
    ``lambda_raw`` and ``gamma_raw``; :attr:`decay` and :attr:`rate` give ``λ`` and ``γ``.
    Energy (docs/model.md §4.2): ``Σ |W + F_t|·x_t²``.
    """

    state_type = HebbFFState

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 batch_first: bool = True, *, anti_hebbian: bool = False, device: Device = None,
                 dtype: DType = None) -> None:
        super().__init__(input_size, hidden_size, bias, batch_first)
        check_bool("anti_hebbian", anti_hebbian)
        self.anti_hebbian = anti_hebbian
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.hidden_size, self.input_size, **factory))
        self.bias = nn.Parameter(torch.empty(self.hidden_size, **factory)) if bias else None
        self.lambda_raw = nn.Parameter(torch.empty((), **factory))
        self.gamma_raw = nn.Parameter(torch.empty((), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``W``, ``b`` ~ ``U(±1/√I)``; ``λ`` = 0.99; ``γ`` = ``−5/H``."""
        bound = 1.0 / math.sqrt(self.input_size)
        initial_rate = 5.0 / self.hidden_size
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)
            self.lambda_raw.fill_(math.log(INITIAL_DECAY / (1.0 - INITIAL_DECAY)))
            self.gamma_raw.fill_(math.log(initial_rate) if self.anti_hebbian else -initial_rate)

    @property
    def decay(self) -> Tensor:
        """``λ``, the per-step retention of the Hebbian memory."""
        return torch.sigmoid(self.lambda_raw)

    @property
    def rate(self) -> Tensor:
        """``γ``, the Hebbian learning rate (negative: anti-Hebbian)."""
        return -torch.exp(self.gamma_raw) if self.anti_hebbian else self.gamma_raw

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, bias={self.bias is not None}, "
            f"batch_first={self.batch_first}, anti_hebbian={self.anti_hebbian}"
        )

    def state_shapes(self) -> dict[str, tuple[int, ...] | None]:
        return {"h": (self.hidden_size,), "F": (self.hidden_size, self.input_size)}

    def _step(self, x_t: Tensor, state: HebbFFState) -> HebbFFState:
        F = state.F
        a = torch.bmm(self.weight + F, x_t.unsqueeze(-1)).squeeze(-1)
        h = torch.sigmoid(a if self.bias is None else a + self.bias)
        F = self.decay * F + self.rate * (h.unsqueeze(-1) * x_t.unsqueeze(-2))
        return HebbFFState(h, F)

    def _step_with_energy(self, x_t: Tensor, state: HebbFFState) -> tuple[HebbFFState, Tensor]:
        spent = synaptic_energy(self.weight + state.F, x_t).sum(dim=-1)
        return self._step(x_t, state), spent
