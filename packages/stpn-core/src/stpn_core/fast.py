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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from stpn_core import fast_native
from stpn_core.fast_kernels import Config, Saved, backward_loop, forward_loop

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


@dataclass
class _TorchRecord:
    """The torch fallback's record (time-major), with batch-first copies of what it returns."""

    saved: Saved
    out: Tensor  # (B, T, H)
    F_final: Tensor


def _torch_forward(
    x: Tensor, h0: Tensor, F0: Tensor, W: Tensor, b: Tensor | None, lam: Tensor, gam: Tensor,
    cfg: Config,
) -> _TorchRecord:
    saved = forward_loop(x.transpose(0, 1), h0, F0, W, b, lam, gam, cfg)
    # Copies: the caller owns (and may modify) what is returned; F_final views all of saved.F.
    return _TorchRecord(saved, saved.out.transpose(0, 1).contiguous(), saved.F_final.clone())


def _torch_backward(
    record: _TorchRecord, grad_out: Tensor, grad_F: Tensor | None, *args: Any, **_: bool
) -> tuple[Any, ...]:
    if grad_F is None:
        grad_F = torch.zeros_like(record.saved.F_final)
    gx, *rest = backward_loop(record.saved, grad_out.transpose(0, 1), grad_F, *args)
    return gx.transpose(0, 1), *rest


class _STPNSequence(torch.autograd.Function):
    """``(x (B,T,I), h0, F0, W, b, Λ, Γ) -> (outputs (B,T,H), F_T)``, hand-written backward.

    Batch-major throughout, like the module's input and output, so no transposed copies are
    made. With one chunk the output is the C loop's own buffer, and the backward reads it, the
    input and the initial state in place: all are saved for the backward, so an in-place
    change of any of them raises there instead of corrupting the gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, cfg: Config, every: int, x: Tensor, h0: Tensor, F0: Tensor, W: Tensor,
        b: Tensor | None, lam: Tensor, gam: Tensor,
    ) -> tuple[Tensor, Tensor]:
        T = x.shape[1]
        native = fast_native.usable(x, W)
        run = fast_native.forward if native else _torch_forward
        ctx.cfg, ctx.every, ctx.native = cfg, every, native
        if every >= T:
            ctx.saved = run(x, h0, F0, W, b, lam, gam, cfg)
            ctx.starts = None
            out, F_final = ctx.saved.out, ctx.saved.F_final
            # Not kept here: out -> grad_fn -> ctx -> record -> out would be a reference cycle,
            # freed only by the garbage collector (memory and page faults piled up until then).
            # Autograd keeps ``out`` (saved below) without one.
            ctx.saved.out = ctx.saved.F_final = None
        else:  # keep only each chunk's starting state; the chunk is recomputed in the backward
            outputs, ctx.starts, ctx.saved = [], [], None
            h, F_final = h0, F0
            for t0 in range(0, T, every):
                ctx.starts.append((h, F_final))
                saved = run(x[:, t0 : t0 + every], h, F_final, W, b, lam, gam, cfg)
                outputs.append(saved.out)
                h, F_final = saved.out[:, -1].clone(), saved.F_final
            out = torch.cat(outputs, dim=1)
        ctx.save_for_backward(x, h0, F0, W, b, lam, gam, out if ctx.starts is None else None)
        return out, F_final

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor | None, grad_F: Tensor | None) -> tuple[Any, ...]:
        x, _, _, W, b, lam, gam, out = ctx.saved_tensors  # checks that nothing saved changed
        cfg, every = ctx.cfg, ctx.every
        B, T, input_size = x.shape
        if grad_out is None:
            grad_out = torch.zeros(B, T, W.shape[0], dtype=x.dtype, device=x.device)
        run, walk_back = (
            (fast_native.forward, fast_native.backward) if ctx.native
            else (_torch_forward, _torch_backward)
        )
        if ctx.starts is None:
            ctx.saved.out = out  # for this call only (see forward)
            gx, gh, gF, *grads = walk_back(
                ctx.saved, grad_out, grad_F, W, b, lam, gam, cfg, input_size,
                need_x=ctx.needs_input_grad[2], need_F=ctx.needs_input_grad[4],
            )
            ctx.saved.out = None
            return None, None, gx, gh if cfg.recurrent else None, gF, *grads
        gF, gh, pieces = grad_F, None, []
        grad_params: list[Tensor | None] = [None, None, None, None]
        for index in range(len(ctx.starts) - 1, -1, -1):
            t0 = index * every
            h_start, F_start = ctx.starts[index]
            saved = run(x[:, t0 : t0 + every], h_start, F_start, W, b, lam, gam, cfg)
            g_out = grad_out[:, t0 : t0 + every]
            if gh is not None:
                g_out = g_out.clone()
                g_out[:, -1] += gh
            gx, gh, gF, *grads = walk_back(saved, g_out, gF, W, b, lam, gam, cfg, input_size)
            pieces.append(gx)
            grad_params = [
                g if acc is None else (None if g is None else acc + g)
                for acc, g in zip(grad_params, grads, strict=True)
            ]
        grad_x = torch.cat(pieces[::-1], dim=1)
        return None, None, grad_x, gh if cfg.recurrent else None, gF, *grad_params


def fast_sequence(
    module: STPN, x: Tensor, state: STPNState, checkpoint_every: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``module`` over ``x`` ``(B, T, I)`` from ``state``: ``(output (B, T, H), h_T, F_T)``.

    ``checkpoint_every``: keep only every ``k``-th state and recompute in the backward.
    """
    T = x.shape[1]
    every = T if checkpoint_every is None else min(T, checkpoint_every)
    out, F = _STPNSequence.apply(
        config_of(module), every, x, state.h, state.F, module.weight, module.bias,
        module.weight_lambda, module.weight_gamma,
    )
    return out, out[:, -1], F


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
