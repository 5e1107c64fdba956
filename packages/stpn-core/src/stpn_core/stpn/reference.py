"""The STPN's definition: one step written as the equations, and the plain loop over it.

Everything here works on one time step of a batch. Rows are postsynaptic units and columns are
presynaptic inputs; ``F`` is the per-sample short-term synaptic memory ``(B, H, D_p)`` over the
plastic columns. Per step, with ``v_t = [x_t; h_{t-1}]`` (input columns first, then hidden)::

    G_t     = W + F_t                                  efficacy
    n_t     = ||G_t||_row + 1e-16                      one norm per unit and sample
    h_t     = act(G_t v_t / n_t + b)                   normalised before bias and nonlinearity
    F_{t+1} = Λ ⊙ (F_t / n_t) + Γ ⊙ (h_t ⊗ u_t)        u_t = v_t (textbook Hebbian form)

for the paper's STPN; the layer's options (:class:`stpn_core.stpn.layer._STPNBase`) select the
variants. :mod:`.autograd` runs the same model faster; the tests hold it to this loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as nnf
from torch import Tensor

from stpn_core.energy import synaptic_energy

if TYPE_CHECKING:
    from stpn_core.stpn.layer import STPNState, _STPNBase

NORM_EPS = 1e-16
"""Added to every row norm, as in the paper, so an all-zero row does not divide by zero."""


class Activation(NamedTuple):
    """A nonlinearity, its slope written in terms of its output (what a backward has at hand),
    and the code that ``native/stpn_loop.c`` switches on."""

    function: Callable[[Tensor], Tensor]
    slope: Callable[[Tensor], Tensor | float]
    code: int


ACTIVATIONS = {
    "tanh": Activation(torch.tanh, lambda h: 1 - h * h, 0),
    "sigmoid": Activation(torch.sigmoid, lambda h: h * (1 - h), 1),
    "relu": Activation(torch.relu, lambda h: h > 0, 2),
    "identity": Activation(lambda a: a, lambda h: 1.0, 3),
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


def _efficacy(layer: _STPNBase, F: Tensor) -> tuple[Tensor, Tensor | None]:
    """Effective (normalised) weight ``(B, H, I+H)`` for memory ``F``, and the norm used."""
    return effective_weight(layer.weight, nnf.pad(F, layer._plastic_padding), layer.norm)


def _presynaptic(layer: _STPNBase, x_t: Tensor, h: Tensor) -> Tensor:
    return torch.cat([x_t, h], dim=1) if layer.recurrent else x_t


def _post_norm(layer: _STPNBase, F: Tensor) -> Tensor:
    """Row norm that the ``post`` variant divides the new memory by."""
    if layer.norm == "G":
        return row_norm(layer.weight + nnf.pad(F, layer._plastic_padding))
    return row_norm(F)


def step(layer: _STPNBase, x_t: Tensor, state: STPNState) -> STPNState:
    """Advance ``layer`` one step from ``state`` on ``x_t`` ``(B, I)``: the STPN's definition."""
    h, F, F_bias = state
    v = _presynaptic(layer, x_t, h)
    weight, n = _efficacy(layer, F)
    a = torch.bmm(weight, v.unsqueeze(-1)).squeeze(-1)
    if layer.bias is not None:
        a = a + layer.bias if F_bias is None else a + layer.bias + F_bias
    h_new = ACTIVATIONS[layer.activation].function(a)

    u = v if layer.presynaptic == "previous" else _presynaptic(layer, x_t, h_new)
    memory = F / n if layer.norm_timing == "pre" and n is not None else F
    delta = hebbian_term(h_new, u[:, layer.plastic_columns], memory, layer.rule)
    F_new = plasticity_update(
        memory, delta, layer.weight_lambda, layer.weight_gamma, layer.update, layer.clamp
    )
    if layer.norm_timing == "post":
        F_new = F_new / _post_norm(layer, F_new)
    if F_bias is not None:
        F_bias = plasticity_update(
            F_bias, h_new, layer.bias_lambda, layer.bias_gamma, layer.update, layer.clamp
        )
    return type(state)(h_new, F_new, F_bias)


def step_energy(layer: _STPNBase, x_t: Tensor, state: STPNState) -> Tensor:
    """Energy ``(B,)`` of the step about to be taken from ``state``, summed over units."""
    weight, _ = _efficacy(layer, state.F)
    return synaptic_energy(weight, _presynaptic(layer, x_t, state.h)).sum(dim=-1)


def sequence(
    layer: _STPNBase, x: Tensor, state: STPNState, bptt_chunk: int | None = None
) -> tuple[Tensor, STPNState]:
    """The plain loop over :func:`step` on ``x`` ``(B, T, I)``: ``(output (B, T, H), state)``.

    ``bptt_chunk``: run each chunk of this many steps under ``torch.utils.checkpoint`` (only
    its starting state is kept; the chunk is recomputed in the backward, gradients exact).
    """

    def run(x_chunk: Tensor, *fields: Tensor | None) -> tuple[Tensor, ...]:
        chunk_state = type(state)(*fields)
        outputs = []
        for t in range(x_chunk.shape[1]):
            chunk_state = step(layer, x_chunk[:, t], chunk_state)
            outputs.append(chunk_state.h)
        return torch.stack(outputs, dim=1), *chunk_state

    if bptt_chunk is None:
        out, *fields = run(x, *state)
        return out, type(state)(*fields)
    outputs = []
    for t0 in range(0, x.shape[1], bptt_chunk):
        out, *fields = torch.utils.checkpoint.checkpoint(
            run, x[:, t0 : t0 + bptt_chunk], *state, use_reentrant=False
        )
        state = type(state)(*fields)
        outputs.append(out)
    return torch.cat(outputs, dim=1), state
