"""LSTM baseline (docs/model.md §3.2) on torch's fused ``nn.LSTM``, with the paper's energy
metric."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from stpn_core.base import Device, DType, RecurrentModel
from stpn_core.energy import synaptic_energy


class LSTMState(NamedTuple):
    """State of an :class:`LSTM`: hidden ``h`` and cell ``c``, both ``(B, H)``."""

    h: Tensor
    c: Tensor


class LSTM(RecurrentModel):
    """One-layer LSTM over a sequence (gate order i, f, g, o; torch's init ``U(±1/√H)``)::

        i, f, g, o = σ, σ, tanh, σ (W_ih x_t + W_hh h_{t-1} + b_ih + b_hh)
        c_t = f ⊙ c_{t-1} + i ⊙ g,    h_t = o ⊙ tanh(c_t)

    The parameters are those of the ``lstm`` submodule (``nn.LSTM``: two bias vectors, i.e. 4H
    more than the paper's associative-retrieval LSTM, 1.7% of that budget).
    Energy (docs/model.md §4.2), one value per gate row and summed over the 4H rows:
    ``e_t = Σ x_t²·|W_ih|ᵀ + h_{t-1}²·|W_hh|ᵀ``.
    """

    state_type = LSTMState

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 batch_first: bool = True, *, device: Device = None, dtype: DType = None) -> None:
        super().__init__(input_size, hidden_size, bias, batch_first)
        self.lstm = nn.LSTM(
            self.input_size, self.hidden_size, bias=bias, batch_first=True, device=device,
            dtype=dtype,
        )

    def reset_parameters(self) -> None:
        """torch's LSTM init, ``U(±1/√H)`` for every tensor (as the paper's LSTMs)."""
        self.lstm.reset_parameters()

    def extra_repr(self) -> str:
        return f"batch_first={self.batch_first}"

    def state_shapes(self) -> dict[str, tuple[int, ...] | None]:
        return {"h": (self.hidden_size,), "c": (self.hidden_size,)}

    def _run(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        output, (h, c) = self.lstm(x, (state.h.unsqueeze(0), state.c.unsqueeze(0)))
        return output, LSTMState(h[0], c[0])

    def forward(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """``x`` ``(B, T, I)`` -> every ``h_t`` ``(B, T, H)`` and the final :class:`LSTMState`."""
        x, state = self._prepare_input(x, state)
        output, final = self._run(x, state)
        return self._finish_output(output), final

    def energy(self, x: Tensor, state: LSTMState | None = None) -> Tensor:
        """Energy of every step ``(B, T)``, summed over the 4H gate rows, from the state before
        it: the fused run gives every ``h_{t-1}``, then one batched product gives all steps."""
        with torch.no_grad():
            x, state = self._prepare_input(x, state)
            output, _ = self._run(x, state)
            previous = torch.cat([state.h.unsqueeze(1), output[:, :-1]], dim=1)
            v = torch.cat([x, previous], dim=-1)
            weight = torch.cat([self.lstm.weight_ih_l0, self.lstm.weight_hh_l0], dim=1)
            per_row = synaptic_energy(weight, v.reshape(-1, v.shape[-1]))
            return per_row.sum(dim=-1).view(x.shape[0], x.shape[1])
