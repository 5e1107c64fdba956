"""Elman RNN baseline (docs/model.md §3.1): one weight over ``[x_t; h_{t-1}]`` and one bias.

The math is the definition; the sequence runs through torch's fused ``nn.RNN`` kernel, fed with
this module's own parameters, which is exact (the kernel's second bias is fed zeros) and keeps the
paper's parameter count (one bias, not two).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from stpn_core.base import Device, DType, RecurrentModel, check_choice
from stpn_core.energy import synaptic_energy

INITS = ("uniform", "miconi")


class RNNState(NamedTuple):
    """State of an :class:`RNN`: the hidden state ``h`` ``(B, H)``."""

    h: Tensor


class RNN(RecurrentModel):
    """Elman RNN over a sequence, used like ``torch.nn.RNN`` with one layer::

        h_t = tanh(W [x_t; h_{t-1}] + b)

    Args:
        input_size: features ``I`` of each input step.
        hidden_size: units ``H``.
        bias: learn the bias ``b`` ``(H,)``.
        batch_first: inputs and outputs are ``(B, T, ·)`` (default) rather than ``(T, B, ·)``.
        init: ``"uniform"`` draws ``W`` and ``b`` from ``U(±1/√H)`` (the paper's associative
            retrieval RNN, and torch's default); ``"miconi"`` is the paper's maze RNN: input
            columns and bias ``U(±1/√I)`` (``nn.Linear``'s default), recurrent block
            ``0.01·U[0, 1)``.

    Parameters: ``weight`` ``(H, I+H)`` (input columns first) and ``bias`` ``(H,)``.
    Energy (docs/model.md §4.2): ``e_t = Σ_ij |W_ij| v_tj²`` with ``v_t = [x_t; h_{t-1}]``.
    """

    state_type = RNNState

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 batch_first: bool = True, *, init: str = "uniform", device: Device = None,
                 dtype: DType = None) -> None:
        super().__init__(input_size, hidden_size, bias, batch_first)
        check_choice("init", init, INITS)
        self.init = init
        factory = {"device": device, "dtype": dtype}
        width = self.input_size + self.hidden_size
        self.weight = nn.Parameter(torch.empty(self.hidden_size, width, **factory))
        self.bias = nn.Parameter(torch.empty(self.hidden_size, **factory)) if bias else None
        # The fused kernel only lends its forward: every tensor it uses is passed in by
        # functional_call, so it lives on the meta device and outside the module tree.
        kernel = nn.RNN(
            self.input_size, self.hidden_size, bias=bias, batch_first=True, device="meta"
        )
        object.__setattr__(self, "_kernel", kernel)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as selected by ``init`` (docs/model.md §3.1)."""
        inputs = self.input_size
        with torch.no_grad():
            if self.init == "uniform":
                bound = 1.0 / math.sqrt(self.hidden_size)
                self.weight.uniform_(-bound, bound)
                if self.bias is not None:
                    self.bias.uniform_(-bound, bound)
                return
            bound = 1.0 / math.sqrt(inputs)
            self.weight[:, :inputs].uniform_(-bound, bound)
            self.weight[:, inputs:].uniform_(0.0, 0.01)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, bias={self.bias is not None}, "
            f"batch_first={self.batch_first}, init={self.init!r}"
        )

    def state_shapes(self) -> dict[str, tuple[int, ...] | None]:
        return {"h": (self.hidden_size,)}

    def _run(self, x: Tensor, state: RNNState) -> Tensor:
        """Every ``h_t`` ``(B, T, H)`` for a batch-first ``x``, via the fused kernel."""
        inputs = self.input_size
        tensors = {
            "weight_ih_l0": self.weight[:, :inputs].contiguous(),
            "weight_hh_l0": self.weight[:, inputs:].contiguous(),
        }
        if self.bias is not None:
            tensors |= {"bias_ih_l0": self.bias, "bias_hh_l0": torch.zeros_like(self.bias)}
        output, _ = functional_call(self._kernel, tensors, (x, state.h.unsqueeze(0)))
        return output

    def forward(self, x: Tensor, state: RNNState | None = None) -> tuple[Tensor, RNNState]:
        """``x`` ``(B, T, I)`` -> every ``h_t`` ``(B, T, H)`` and the final :class:`RNNState`."""
        x, state = self._prepare_input(x, state)
        output = self._run(x, state)
        return self._finish_output(output), RNNState(output[:, -1])

    def energy(self, x: Tensor, state: RNNState | None = None) -> Tensor:
        """Energy of every step ``(B, T)``, summed over units, from the state before it."""
        with torch.no_grad():
            x, state = self._prepare_input(x, state)
            output = self._run(x, state)
            previous = torch.cat([state.h.unsqueeze(1), output[:, :-1]], dim=1)
            v = torch.cat([x, previous], dim=-1)
            per_unit = synaptic_energy(self.weight, v.reshape(-1, v.shape[-1]))
            return per_unit.sum(dim=-1).view(x.shape[0], x.shape[1])
