"""Fast STPN sequence forward and backward: a ``torch.autograd.Function`` over the whole loop.

Why not autograd on the plain loop: it records ~20 tiny nodes per step, and replaying them
dominated the training time (architecture.md). Why not ``torch.compile``: 40-60 s of compile on
this CPU, and a recompile per new sequence length. Here the forward runs without a graph and
the backward is derived by hand (:mod:`stpn_core.fast_kernels`), so a training step costs a few
large batched ops per time step and no compile; any batch size or length runs at once.

``checkpoint_every`` trades compute for memory: only the state at every ``k``-th step is kept,
and each chunk's forward is recomputed during the backward (exact gradients).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from stpn_core import fast_native
from stpn_core.fast_kernels import Config, backward_loop, forward_loop

if TYPE_CHECKING:
    from stpn_core.stpn import STPN, STPNState


def unsupported_reason(module: STPN) -> str | None:
    """Why the fast path cannot run ``module``'s options, or ``None`` when it can."""
    checks = {
        'rule="oja"': module.rule != "hebb",
        f"norm={module.norm!r}": module.norm not in ("G", "none"),
        f"plastic_inputs={module.plastic_inputs!r}": module.plastic_inputs != "all",
        "plastic_bias=True": module.plastic_bias,
    }
    reasons = [name for name, unsupported in checks.items() if unsupported]
    return ", ".join(reasons) if reasons else None


def config_of(module: STPN) -> Config:
    """The fast loop's view of the module options (assumes :func:`unsupported_reason` is None)."""
    return Config(
        recurrent=module.recurrent,
        normalise=module.norm == "G",
        post=module.norm_timing == "post",
        clamp=module.clamp,
        prompt_decay=module.update == "prompt_decay",
        current=module.presynaptic == "current",
        activation=module.activation,
    )


class _STPNSequence(torch.autograd.Function):
    """``(x (T,B,I), h0, F0, W, b, Λ, Γ) -> (outputs (T,B,H), F_T)``, hand-written backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, cfg: Config, every: int, x: Tensor, h0: Tensor, F0: Tensor, W: Tensor,
        b: Tensor | None, lam: Tensor, gam: Tensor,
    ) -> tuple[Tensor, Tensor]:
        T = x.shape[0]
        native = fast_native.usable(x, W)
        run = fast_native.forward if native else forward_loop
        outputs, starts = [], []
        h, F = h0, F0
        for t0 in range(0, T, every):
            saved = run(x[t0 : t0 + every], h, F, W, b, lam, gam, cfg)
            starts.append((h, F))
            outputs.append(saved.out)
            h, F = saved.out[-1].clone(), saved.F_final.clone()  # do not pin the chunk's buffers
        out = torch.cat(outputs) if len(outputs) > 1 else outputs[0].clone()
        F_final = F.clone()
        ctx.cfg, ctx.every, ctx.native = cfg, every, native
        # One chunk: keep its buffers. Several: keep only each chunk's starting state.
        ctx.saved = saved if len(starts) == 1 else None
        ctx.starts = starts
        ctx.save_for_backward(x, W, b, lam, gam)
        return out, F_final

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor | None, grad_F: Tensor | None) -> tuple[Any, ...]:
        x, W, b, lam, gam = ctx.saved_tensors
        cfg, every = ctx.cfg, ctx.every
        T, B, input_size = x.shape
        H, D = W.shape
        if grad_out is None:
            grad_out = torch.zeros(T, B, H, dtype=x.dtype, device=x.device)
        if grad_F is None:
            grad_F = torch.zeros(B, H, D, dtype=x.dtype, device=x.device)
        grad_x = torch.empty_like(x)
        grad_params: list[Tensor | None] = [None, None, None, None]
        run, walk_back = (
            (fast_native.forward, fast_native.backward) if ctx.native
            else (forward_loop, backward_loop)
        )
        gF, gh = grad_F, None
        for index in range(len(ctx.starts) - 1, -1, -1):
            t0 = index * every
            t1 = min(T, t0 + every)
            saved = ctx.saved
            if saved is None:
                h_start, F_start = ctx.starts[index]
                saved = run(x[t0:t1], h_start, F_start, W, b, lam, gam, cfg)
            g_out = grad_out[t0:t1]
            if gh is not None:
                g_out = g_out.clone()
                g_out[-1] += gh
            gx, gh, gF, *grads = walk_back(
                saved, g_out, gF, W, b, lam, gam, cfg, input_size
            )
            grad_x[t0:t1] = gx
            grad_params = [
                g if acc is None else (None if g is None else acc + g)
                for acc, g in zip(grad_params, grads, strict=True)
            ]
        grad_h0 = gh if cfg.recurrent else None
        return (None, None, grad_x, grad_h0, gF, *grad_params)


def fast_sequence(
    module: STPN, x: Tensor, state: STPNState, checkpoint_every: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``module`` over ``x`` ``(B, T, I)`` from ``state``: ``(output (B, T, H), h_T, F_T)``.

    ``checkpoint_every``: keep only every ``k``-th state and recompute in the backward.
    """
    T = x.shape[1]
    every = T if checkpoint_every is None else min(T, checkpoint_every)
    out, F = _STPNSequence.apply(
        config_of(module), every, x.transpose(0, 1), state.h, state.F, module.weight,
        module.bias, module.weight_lambda, module.weight_gamma,
    )
    return out.transpose(0, 1).contiguous(), out[-1], F


def reference_sequence(
    module: STPN, x: Tensor, state: STPNState, checkpoint_every: int | None = None
) -> tuple[Tensor, STPNState]:
    """The plain loop over ``module._step`` (the definition), optionally checkpointed per chunk."""

    def run(x_chunk: Tensor, *fields: Tensor | None) -> tuple[Tensor, ...]:
        chunk_state = type(state)(*fields)
        outputs = []
        for t in range(x_chunk.shape[1]):
            chunk_state = module._step(x_chunk[:, t], chunk_state)
            outputs.append(chunk_state.h)
        return torch.stack(outputs, dim=1), *chunk_state

    if checkpoint_every is None:
        out, *fields = run(x, *state)
        return out, type(state)(*fields)
    outputs = []
    for t0 in range(0, x.shape[1], checkpoint_every):
        out, *fields = torch.utils.checkpoint.checkpoint(
            run, x[:, t0 : t0 + checkpoint_every], *state, use_reentrant=False
        )
        state = type(state)(*fields)
        outputs.append(out)
    return torch.cat(outputs, dim=1), state
