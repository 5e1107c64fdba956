"""What the fused STPN time loop shares between :mod:`.autograd` and its two backends.

:mod:`.backend_c` (the C loop) and :mod:`.backend_torch` (batched torch ops, for machines
without a C compiler and for GPUs) take the same arguments and return the same :class:`Record`,
so :mod:`.autograd` drives either one the same way.

Notation (as in :mod:`.reference`): ``G = W + F``, ``n = ||G||_row + eps``,
``h = act(G v / n + b)``, ``M = F / n`` (``pre``) or ``F`` (``post``), ``P = Λ⊙M + Γe⊙(h ⊗ u)``,
``C = clamp(P)`` and ``F' = C`` (``pre``) or ``C / (||W + C||_row + eps)`` (``post``). ``Γe`` is
the effective Hebbian rate of :func:`hebbian_rate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from torch import Tensor

from stpn_core.base import non_finite

if TYPE_CHECKING:
    from stpn_core.stpn.layer import STPN


@dataclass(frozen=True)
class LoopConfig:
    """The module options the fused loop implements (:func:`unsupported_reason` lists the rest,
    which run on the reference loop)."""

    recurrent: bool
    normalise: bool  # norm "G" (True) or "none" (False)
    post: bool  # norm_timing "post"
    clamp: float | None
    prompt_decay: bool  # update "prompt_decay"
    current: bool  # presynaptic "current": u_t = [x_t; h_t]
    activation: str

    @classmethod
    def of(cls, layer: STPN) -> LoopConfig:
        """The loop's view of ``layer``'s options (assumes :func:`unsupported_reason` is None).

        Read on every call (the options may change after construction), but built once per
        combination of options: a single step is otherwise paying for it.
        """
        return _config(
            cls, layer.recurrent, layer.norm, layer.norm_timing, layer.clamp, layer.update,
            layer.presynaptic, layer.activation,
        )

    @property
    def current_hidden(self) -> bool:
        """Whether ``u_t`` holds this step's output ``h_t`` (so ``u_t ≠ v_t``)."""
        return self.current and self.recurrent


@lru_cache(maxsize=64)
def _config(
    cls: type[LoopConfig], recurrent: bool, norm: str, norm_timing: str, clamp: float | None,
    update: str, presynaptic: str, activation: str,
) -> LoopConfig:
    return cls(
        recurrent=recurrent,
        normalise=norm == "G",
        post=norm_timing == "post",
        clamp=clamp,
        prompt_decay=update == "prompt_decay",
        current=presynaptic == "current",
        activation=activation,
    )


def unsupported_reason(layer: STPN) -> str | None:
    """Why the fused loop cannot run ``layer``'s options, or ``None`` when it can."""
    return _reason(layer.rule, layer.norm, layer.plastic_inputs, layer.plastic_bias)


@lru_cache(maxsize=64)
def _reason(rule: str, norm: str, plastic_inputs: str, plastic_bias: bool) -> str | None:
    checks = {
        'rule="oja"': rule != "hebb",
        f"norm={norm!r}": norm not in ("G", "none"),
        f"plastic_inputs={plastic_inputs!r}": plastic_inputs != "all",
        "plastic_bias=True": plastic_bias,
    }
    reasons = [name for name, unsupported in checks.items() if unsupported]
    return ", ".join(reasons) if reasons else None


CHECKED = ("x", "state.h", "state.F")
"""The inputs a backend's forward checks for NaN and infinity when asked: bit ``k`` of its
``check`` argument stands for the ``k``-th of ``x``, ``h0``, ``F0`` (one not given, ``None``, is
zeros and never checked), as does bit ``k`` of what the C loop reports."""


def raise_nonfinite(found: int) -> None:
    """Raise ``ValueError`` naming the first input of :data:`CHECKED` whose bit is set in
    ``found``; nothing when none is."""
    for bit, name in enumerate(CHECKED):
        if found >> bit & 1:
            raise non_finite(name)


def hebbian_rate(lam: Tensor, gam: Tensor, config: LoopConfig) -> Tensor:
    """``Γe``, the rate of the Hebbian term in ``P = Λ⊙M + Γe⊙Δ``: ``Γ`` for ``stp`` and ``Λ⊙Γ``
    for ``prompt_decay`` (since ``Λ⊙(M + Γ⊙Δ) = Λ⊙M + ΛΓ⊙Δ``), so the loops need no branch on
    the update rule."""
    return lam * gam if config.prompt_decay else gam


def rate_grads(
    g_lam: Tensor, g_rate: Tensor, lam: Tensor, gam: Tensor, config: LoopConfig
) -> tuple[Tensor, Tensor]:
    """Gradients of the parameters ``Λ`` and ``Γ`` (in their own shapes, ``(H, D)`` or scalar)
    from the loop's ``∂L/∂Λ`` (direct term) and ``∂L/∂Γe`` (the inverse of :func:`hebbian_rate`)."""
    if config.prompt_decay:
        g_lam = g_lam + gam * g_rate
        g_gam = lam * g_rate
    else:
        g_gam = g_rate
    if lam.dim() == 0:
        g_lam = g_lam.sum()
    if gam.dim() == 0:
        g_gam = g_gam.sum()
    return g_lam, g_gam


@dataclass
class Record:
    """What a backend's forward keeps for its backward. Batch-major, like the layer's input and
    output; ``out`` (which also gives the presynaptic vectors) and ``F_final`` are what the
    forward returns.

    ``memories`` holds the synaptic memory at some steps: the C loop keeps ``F`` at
    ``t = K, 2K, …`` (``(B, ceil(T/K) - 1, H, D)``; its backward recomputes the steps between),
    the torch loop keeps every ``F_0 … F_T`` (``(B, T + 1, H, D)``).
    """

    config: LoopConfig
    x: Tensor  # (B, T, I)
    h0: Tensor | None  # (B, H); None: zeros (C loop)
    F0: Tensor | None  # (B, H, D); None: zeros (C loop)
    W: Tensor  # (H, D), contiguous
    lam: Tensor  # Λ expanded to (H, D)
    rate: Tensor  # Γe expanded to (H, D)
    has_bias: bool
    out: Tensor | None  # (B, T, H): h_0 .. h_{T-1}
    S: Tensor  # (B, T, H): G_t v_t, before the division by n
    R: Tensor | None  # (B, T, H): ||G_t||_row (normalise only)
    R2: Tensor | None  # (B, T, H): ||W + C_t||_row (post only)
    memories: Tensor
    F_final: Tensor | None  # (B, H, D)
    mask: Tensor | None = None  # torch loop with a clamp: (B, T, H, D), where P was not clamped
    native: Any = None  # C loop: its argument struct and batch split, reused by the backward
