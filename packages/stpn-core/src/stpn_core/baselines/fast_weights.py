"""Fast Weights (Ba et al. 2016), as configured in the STPN paper (docs/model.md §3.3).

A fast associative memory ``A`` (one ``H × H`` matrix per sample) stores outer products of past
hidden states and is queried by a short inner loop at every step. Only the recurrent synapses are
plastic, and ``λ``, ``γ`` are fixed by default. The paper's associative-retrieval runs updated
``A`` twice per step by accident (effective decay 0.81, rate 0.95); this class updates it once.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from stpn_core.base import Device, DType, check_bool, check_choice, check_positive_int
from stpn_core.baselines._common import (
    SteppedModel,
    check_real,
)
from stpn_core.energy import synaptic_energy

LAYER_NORM_INITS = ("uniform", "standard")


class FastWeightsState(NamedTuple):
    """State of :class:`FastWeights`: hidden ``h`` ``(B, H)``, fast memory ``A`` ``(B, H, H)``."""

    h: Tensor
    A: Tensor


class FastWeights(SteppedModel):
    """Fast-weights RNN over a sequence. Per step, with ``v_t = [x_t; h_{t-1}]``::

        A_t     = λ A_{t-1} + γ h_{t-1} h_{t-1}ᵀ
        p_t     = W v_t + b
        h⁽⁰⁾    = tanh(LN(p_t))
        h⁽ˢ⁺¹⁾  = tanh(LN(p_t + A_t h⁽ˢ⁾))      s = 0 … S−1, one LayerNorm shared by all
        h_t     = h⁽ˢ⁾

    Args:
        input_size, hidden_size, bias, batch_first: as ``torch.nn.RNN``.
        inner_steps: ``S``, the number of inner-loop steps (paper: 1).
        decay: ``λ`` (paper: 0.9).
        rate: ``γ`` (paper: 0.5).
        learn_plasticity: learn ``λ`` and ``γ`` as parameters (initialised to ``decay`` and
            ``rate``) instead of keeping them fixed as in the paper.
        layer_norm_init: ``"uniform"`` initialises the LayerNorm gain and bias ``U(±1/√H)`` like
            every other tensor of the paper's cell (docs/model.md §1.2); ``"standard"`` uses
            1 and 0.

    Parameters: ``weight`` ``(H, I+H)``, ``bias`` ``(H,)``, ``layer_norm`` (gain and bias);
    ``decay`` and ``rate`` are buffers unless learned.
    Energy (docs/model.md §4.2): ``|W|·v_t² + Σ_s |A_t|·(h⁽ˢ⁾)²`` over the ``S`` inner steps taken.
    """

    state_type = FastWeightsState

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 batch_first: bool = True, *, inner_steps: int = 1, decay: float = 0.9,
                 rate: float = 0.5, learn_plasticity: bool = False,
                 layer_norm_init: str = "uniform", device: Device = None,
                 dtype: DType = None) -> None:
        super().__init__(input_size, hidden_size, bias, batch_first)
        check_positive_int("inner_steps", inner_steps)
        check_real("decay", decay)
        check_real("rate", rate)
        check_bool("learn_plasticity", learn_plasticity)
        check_choice("layer_norm_init", layer_norm_init, LAYER_NORM_INITS)
        self.inner_steps, self.layer_norm_init = inner_steps, layer_norm_init
        self.initial_decay, self.initial_rate = float(decay), float(rate)
        factory = {"device": device, "dtype": dtype}
        width = self.input_size + self.hidden_size
        self.weight = nn.Parameter(torch.empty(self.hidden_size, width, **factory))
        self.bias = nn.Parameter(torch.empty(self.hidden_size, **factory)) if bias else None
        self.layer_norm = nn.LayerNorm(self.hidden_size, **factory)
        for name in ("decay", "rate"):
            tensor = torch.empty((), **factory)
            if learn_plasticity:
                self.register_parameter(name, nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """docs/model.md §1.2/§3.3: ``W``, ``b`` (and by default the LayerNorm) ``U(±1/√H)``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)
            if self.layer_norm_init == "uniform":
                self.layer_norm.weight.uniform_(-bound, bound)
                self.layer_norm.bias.uniform_(-bound, bound)
            else:
                self.layer_norm.reset_parameters()
            self.decay.fill_(self.initial_decay)
            self.rate.fill_(self.initial_rate)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, bias={self.bias is not None}, "
            f"batch_first={self.batch_first}, inner_steps={self.inner_steps}, "
            f"learn_plasticity={isinstance(self.decay, nn.Parameter)}, "
            f"layer_norm_init={self.layer_norm_init!r}"
        )

    def state_shapes(self) -> dict[str, tuple[int, ...] | None]:
        H = self.hidden_size
        return {"h": (H,), "A": (H, H)}

    def _advance(
        self, x_t: Tensor, state: FastWeightsState
    ) -> tuple[FastWeightsState, list[Tensor]]:
        """One step; also returns ``v_t`` and every inner state ``h⁽ˢ⁾`` that met ``A_t``."""
        h, A = state
        A = self.decay * A + self.rate * (h.unsqueeze(-1) * h.unsqueeze(-2))
        v = torch.cat([x_t, h], dim=1)
        p = nnf.linear(v, self.weight, self.bias)
        inner = torch.tanh(self.layer_norm(p))
        queried = []
        for _ in range(self.inner_steps):
            queried.append(inner)
            recalled = torch.bmm(A, inner.unsqueeze(-1)).squeeze(-1)
            inner = torch.tanh(self.layer_norm(p + recalled))
        return FastWeightsState(inner, A), [v, *queried]

    def _step(self, x_t: Tensor, state: FastWeightsState) -> FastWeightsState:
        return self._advance(x_t, state)[0]

    def _step_with_energy(
        self, x_t: Tensor, state: FastWeightsState
    ) -> tuple[FastWeightsState, Tensor]:
        new_state, (v, *queried) = self._advance(x_t, state)
        spent = synaptic_energy(self.weight, v).sum(dim=-1)
        for inner in queried:
            spent = spent + synaptic_energy(new_state.A, inner).sum(dim=-1)
        return new_state, spent
