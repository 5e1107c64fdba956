"""The fused STPN sequence as one ``torch.autograd.Function`` with a hand-derived backward.

Why not autograd on the plain loop: it records ~20 tiny nodes per step, and replaying them
dominated the training time. Why not ``torch.compile``: 40-60 s of compile on a small CPU, and a
recompile per new sequence length. Here the forward runs without a graph and the backward is
derived by hand, so a training step costs a few large batched ops (or one C call) per time step
and no compile; any batch size or length runs at once. The loop itself runs in C
(:mod:`.backend_c`) on CPU tensors when a compiler is present, else on batched torch ops
(:mod:`.backend_torch`); both return the same :class:`.loop.Record`.

``bptt_chunk`` trades compute for memory: only each chunk's starting state is kept, and the
chunk's forward is recomputed during the backward (exact gradients).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from stpn_core.stpn import backend_c, backend_torch
from stpn_core.stpn.loop import LoopConfig, Record

if TYPE_CHECKING:
    from stpn_core.stpn.layer import STPN, STPNState


class _STPNSequence(torch.autograd.Function):
    """``(x (B,T,I), h0, F0, W, b, Λ, Γ) -> (outputs (B,T,H), F_T)``, hand-written backward;
    ``h0`` and ``F0`` may be ``None`` (zeros), and ``check`` asks the forward to test the inputs
    for NaN and infinity (:data:`.loop.CHECKED`).

    With one chunk the output is the backend's own buffer, and the backward reads it, the input
    and the initial state in place: all are saved for the backward, so an in-place change of any
    of them raises there instead of corrupting the gradient. The run's own buffers (the C loop's
    sums, norms and checkpoints) are saved too rather than kept on the record, so that autograd
    frees them as soon as the backward has run (unless the graph is retained), as it frees the
    rest, and the next run can reuse their memory (:func:`.backend_c._internal`).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, config: LoopConfig, chunk: int, check: int, x: Tensor, h0: Tensor | None,
        F0: Tensor | None, W: Tensor, b: Tensor | None, lam: Tensor, gam: Tensor,
    ) -> tuple[Tensor, Tensor]:
        T = x.shape[1]
        backend = backend_c if backend_c.usable(x, W) else backend_torch
        ctx.config, ctx.chunk, ctx.backend = config, chunk, backend
        # An output the loss does not use (usually F_T) gets None instead of a tensor of zeros
        # as large as the memory: the backends take None as zero and skip reading it.
        ctx.set_materialize_grads(False)
        if chunk >= T:
            ctx.record = backend.forward(x, h0, F0, W, b, lam, gam, config, check)
            ctx.starts = None
            out, F_final = ctx.record.out, ctx.record.F_final
            # Not kept here: out -> grad_fn -> ctx -> record -> out would be a reference cycle,
            # freed only by the garbage collector (memory and page faults piled up until then).
            # Autograd keeps ``out`` (saved below, with the other buffers) without one.
            ctx.record.F_final = None
            own = _take_buffers(ctx.record)
        else:  # keep only each chunk's starting state; the chunk is recomputed in the backward
            outputs, ctx.starts, ctx.record = [], [], None
            h, F_final = h0, F0
            for t0 in range(0, T, chunk):
                ctx.starts.append((h, F_final))
                piece = x[:, t0 : t0 + chunk]
                record = backend.forward(piece, h, F_final, W, b, lam, gam, config, check)
                check &= 1  # x only: h and F_final are the loop's own from here on
                outputs.append(record.out)
                h, F_final = record.out[:, -1].clone(), record.F_final
            out = torch.cat(outputs, dim=1)
            own = (None,) * len(BUFFERS)
        ctx.save_for_backward(x, h0, F0, W, b, lam, gam, *own)
        return out, F_final

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor | None, grad_F: Tensor | None) -> tuple[Any, ...]:
        x, _, _, W, b, lam, gam, *own = ctx.saved_tensors  # checks that nothing saved changed
        config, chunk, backend = ctx.config, ctx.chunk, ctx.backend
        B, T, _ = x.shape
        if grad_out is None:
            grad_out = torch.zeros(B, T, W.shape[0], dtype=x.dtype, device=x.device)
        if ctx.starts is None:
            _give_buffers(ctx.record, own)  # for this call only (see forward)
            gx, gh, gF, *grads = backend.backward(
                ctx.record, grad_out, grad_F, lam, gam,
                need_x=ctx.needs_input_grad[3], need_F=ctx.needs_input_grad[5],
            )
            _take_buffers(ctx.record)
            return None, None, None, gx, _h0_grad(ctx, gh), gF, *grads
        gF, gh, pieces = grad_F, None, []
        grad_params: list[Tensor | None] = [None, None, None, None]
        for index in range(len(ctx.starts) - 1, -1, -1):
            t0 = index * chunk
            h_start, F_start = ctx.starts[index]
            piece = x[:, t0 : t0 + chunk]
            record = backend.forward(piece, h_start, F_start, W, b, lam, gam, config)
            g_out = grad_out[:, t0 : t0 + chunk]
            if gh is not None:
                g_out = g_out.clone()
                g_out[:, -1] += gh
            gx, gh, gF, *grads = backend.backward(record, g_out, gF, lam, gam)
            pieces.append(gx)
            grad_params = [
                g if acc is None else (None if g is None else acc + g)
                for acc, g in zip(grad_params, grads, strict=True)
            ]
        grad_x = torch.cat(pieces[::-1], dim=1)
        gF = gF if ctx.needs_input_grad[5] else None  # (autograd refuses one for None)
        return None, None, None, grad_x, _h0_grad(ctx, gh), gF, *grad_params


def _h0_grad(ctx: Any, gh: Tensor | None) -> Tensor | None:
    """The gradient returned for ``h0``: none for an ``h0`` not given (autograd refuses a
    gradient for ``None``) or a feed-forward layer's (which does not read it)."""
    return gh if ctx.config.recurrent and ctx.needs_input_grad[4] else None


BUFFERS = ("out", "S", "R", "R2", "memories", "mask")
"""The fields of a :class:`.loop.Record` that its backward reads and autograd keeps for it: the
output and the run's own buffers."""


def _take_buffers(record: Record) -> tuple[Tensor | None, ...]:
    """The record's own buffers (:data:`BUFFERS`), which it no longer holds."""
    own = tuple(getattr(record, name) for name in BUFFERS)
    for name in BUFFERS:
        setattr(record, name, None)
    return own


def _give_buffers(record: Record, own: tuple[Tensor | None, ...]) -> None:
    """Hand the record its own buffers back (for the backward call only)."""
    for name, tensor in zip(BUFFERS, own, strict=True):
        setattr(record, name, tensor)


def sequence(
    layer: STPN, x: Tensor, state: STPNState | None, bptt_chunk: int | None = None, *,
    check_state: bool = True,
) -> tuple[Tensor, STPNState]:
    """Run ``layer`` over ``x`` ``(B, T, I)`` from ``state`` (``None``: zeros): ``(output
    (B, T, H), state)``.

    ``bptt_chunk``: keep only each chunk's starting state and recompute it in the backward.
    Raises ``ValueError`` naming ``x``, ``state.h`` or ``state.F`` if it holds a NaN or an
    infinity (the loop checks them, more cheaply than :meth:`.STPN.forward` could), the state
    only if ``check_state``.
    """
    T = x.shape[1]
    chunk = T if bptt_chunk is None else min(T, bptt_chunk)
    h0, F0 = (None, None) if state is None else (state.h, state.F)
    # Bits of loop.CHECKED: x always, state.h and state.F when given and asked for.
    check = 0b001 | (0b110 if check_state and state is not None else 0)
    tensors = (x, h0, F0, layer.weight, layer.bias, layer.weight_lambda, layer.weight_gamma)
    state_type = layer.state_type
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)):
        # Nothing to differentiate (rollouts, evaluation, online use): the backend's forward
        # alone, without the autograd Function and what it saves.
        backend = backend_c if backend_c.usable(x, layer.weight) else backend_torch
        record = backend.forward(*tensors, LoopConfig.of(layer), check)
        return record.out, state_type(record.out[:, -1], record.F_final, None)
    out, F = _STPNSequence.apply(LoopConfig.of(layer), chunk, check, *tensors)
    return out, state_type(out[:, -1], F, None)
