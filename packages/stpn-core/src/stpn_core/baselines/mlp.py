"""A memoryless baseline: one feed-forward ``tanh`` layer applied to each step on its own.

The floor of the partially observed tasks: whatever a recurrent model earns above it, it owes to
its memory. It follows the sequence protocol of :class:`~stpn_core.base.RecurrentModel`, so any
task code runs it unchanged; its state is the last output, kept only because the protocol
carries one (RecurrentPPO allocates state slots from it), and never read back.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from stpn_core.base import Device, DType, RecurrentModel
from stpn_core.energy import synaptic_energy


class MLPState(NamedTuple):
    """State of an :class:`MLP`: its last output ``h`` ``(B, H)`` (not an input of any step)."""

    h: Tensor


class MLP(RecurrentModel):
    """``h_t = tanh(W x_t + b)`` at every step, with no dependence on earlier steps.

    Args:
        input_size: features ``I`` of each input step.
        hidden_size: units ``H``.
        bias: learn the bias ``b`` ``(H,)``.
        batch_first: inputs and outputs are ``(B, T, ·)`` (default) rather than ``(T, B, ·)``.

    Parameters: ``linear``, an ``nn.Linear(I, H)`` (``W`` and ``b``, with its initialisation).
    Energy: ``e_t = Σ_ij |W_ij| x_tj²`` (:func:`synaptic_energy`).
    """

    state_type = MLPState

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 batch_first: bool = True, *, device: Device = None, dtype: DType = None) -> None:
        super().__init__(input_size, hidden_size, bias, batch_first)
        self.linear = nn.Linear(
            self.input_size, self.hidden_size, bias=bias, device=device, dtype=dtype
        )

    def extra_repr(self) -> str:
        return f"batch_first={self.batch_first}"

    def state_shapes(self) -> dict[str, tuple[int, ...] | None]:
        return {"h": (self.hidden_size,)}

    def forward(self, x: Tensor, state: MLPState | None = None) -> tuple[Tensor, MLPState]:
        """``x`` ``(B, T, I)`` -> every ``h_t`` ``(B, T, H)`` and the final :class:`MLPState`;
        ``state`` is checked but does not change the output."""
        x, _ = self._prepare_input(x, state)
        output = torch.tanh(self.linear(x))
        return self._finish_output(output), MLPState(output[:, -1])

    def energy(self, x: Tensor, state: MLPState | None = None) -> Tensor:
        """Energy of every step ``(B, T)``, summed over units."""
        with torch.no_grad():
            x, _ = self._prepare_input(x, state)
            per_unit = synaptic_energy(self.linear.weight, x.reshape(-1, self.input_size))
            return per_unit.sum(dim=-1).view(x.shape[0], x.shape[1])
