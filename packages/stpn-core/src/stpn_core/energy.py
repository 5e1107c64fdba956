"""The synaptic energy metric of the STPN paper, shared by every model.

A synapse is a conductance |w| driven by a presynaptic voltage v, so it dissipates v² · |w|.
The energy of one forward step is the sum, over postsynaptic units i and presynaptic inputs j,
of |effective weight_ij| · input_j², taken from the state at the start of the step. Biases,
read-outs, layer norms and gate products are excluded. Every model in :mod:`stpn_core`
computes its per-unit energy with :func:`synaptic_energy`, so all are measured the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor


def synaptic_energy(weight: Tensor, presynaptic: Tensor) -> Tensor:
    """Per-unit energy ``e_i = sum_j |w_ij| * v_j**2``.

    Args:
        weight: effective weights, rows postsynaptic and columns presynaptic: ``(H, D)`` shared by
            the batch, or ``(B, H, D)`` per sample (for plastic models).
        presynaptic: the inputs the synapses see at this step, ``(B, D)``.

    Returns:
        ``(B, H)``: the energy dissipated by each postsynaptic unit.
    """
    squared = presynaptic.square()
    if weight.dim() == 2:
        return squared @ weight.abs().T
    return torch.bmm(weight.abs(), squared.unsqueeze(-1)).squeeze(-1)


def energy_profile(energy: Tensor) -> Tensor:
    """Mean over the batch of a ``(B, T)`` energy trace: the energy at each step, ``(T,)``."""
    return energy.mean(dim=0)


def energy_per_step(energy: Tensor) -> Tensor:
    """Mean energy of one step over sequences and steps of a ``(B, T)`` trace: a scalar, as
    ``energy_per_step`` in a run's ``metrics.json``."""
    return energy.mean()


def energy_per_sequence(energy: Tensor) -> Tensor:
    """Total energy of each sequence or episode: ``(B, T) -> (B,)``."""
    return energy.sum(dim=1)
