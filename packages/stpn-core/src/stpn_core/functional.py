"""The short-term-plasticity math shared by the recurrent STPN and the feed-forward STPNLinear.

Everything here works on one time step of a batch. Rows are postsynaptic units and columns are
presynaptic inputs; ``F`` is the per-sample short-term synaptic memory ``(B, H, D)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

NORM_EPS = 1e-16
"""Added to every row norm, as in the paper, so an all-zero row does not divide by zero."""

ACTIVATIONS = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "identity": lambda a: a,
}


def row_norm(matrix: Tensor) -> Tensor:
    """L2 norm of each row over the presynaptic dimension, kept as ``(B, H, 1)``, plus ``eps``."""
    return torch.linalg.vector_norm(matrix, dim=-1, keepdim=True) + NORM_EPS


def effective_weight(weight: Tensor, F: Tensor, norm: str) -> tuple[Tensor, Tensor | None]:
    """The weight each synapse applies at this step, and the row norm that was divided out.

    ``norm="G"`` divides the efficacy ``W + F`` by its row norm (the paper's STPN), ``"F"``
    divides only the plastic part, ``"none"`` uses ``W + F`` as is. ``F`` has the full width of
    ``weight`` here (zeros on non-plastic columns).
    """
    if norm == "G":
        efficacy = weight + F
        n = row_norm(efficacy)
        return efficacy / n, n
    if norm == "F":
        n = row_norm(F)
        return weight + F / n, n
    return weight + F, None


def hebbian_term(post: Tensor, pre: Tensor, F: Tensor, rule: str) -> Tensor:
    """``Δ`` of the rule: Hebb ``post ⊗ pre``; Oja ``post_i (pre_j − Σ_k post_k F_kj)``."""
    if rule == "oja":
        pre = pre - torch.einsum("bk,bkj->bj", post, F)
    return post.unsqueeze(-1) * pre.unsqueeze(-2)


def plasticity_update(
    F: Tensor,
    delta: Tensor,
    weight_lambda: Tensor,
    weight_gamma: Tensor,
    update: str,
    clamp: float | None,
) -> Tensor:
    """``stp``: ``Λ⊙F + Γ⊙Δ``; ``prompt_decay``: ``Λ⊙(F + Γ⊙Δ)``; then clamp to ``±clamp``."""
    if update == "prompt_decay":
        new = weight_lambda * (F + weight_gamma * delta)
    else:
        new = weight_lambda * F + weight_gamma * delta
    if clamp is not None:
        new = new.clamp(-clamp, clamp)
    return new
