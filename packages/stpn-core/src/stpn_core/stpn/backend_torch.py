"""The fused loop on batched torch ops: where the C loop cannot run (no C compiler, GPUs).

Autograd on the reference loop records ~20 small nodes per step and replays them one by one;
here the forward writes each step into preallocated buffers (no graph), and the backward walks
``t = T-1 .. 0`` carrying only the two recurrent gradients (``∂L/∂F_t``, ``∂L/∂h_{t-1}``). Every
term that is a plain sum over steps (the gradients of ``W``, ``b``, ``Λ``, ``Γ``) is left out of the
loop and computed afterwards with a few large batched ops over all steps at once. Unlike the C
loop, which recomputes, the forward keeps the memory of every step. Notation: :mod:`.loop`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stpn_core.base import check_finite
from stpn_core.stpn.loop import CHECKED, LoopConfig, Record, hebbian_rate, rate_grads
from stpn_core.stpn.reference import ACTIVATIONS, NORM_EPS

CHUNK_ELEMENTS = 1 << 22
"""Elements of ``(B, steps, H, D)`` taken at once by the post-loop reductions (bounds memory)."""


def forward(
    x: Tensor, h0: Tensor | None, F0: Tensor | None, W: Tensor, b: Tensor | None, lam: Tensor,
    gam: Tensor, config: LoopConfig, check: int = 0,
) -> Record:
    """Run the sequence ``x`` ``(B, T, I)``; return the outputs, final memory and everything the
    backward needs. ``h0``, ``F0``: ``None`` for zeros; ``check``: see :data:`.loop.CHECKED`."""
    for bit, (name, tensor) in enumerate(zip(CHECKED, (x, h0, F0), strict=True)):
        if check >> bit & 1 and tensor is not None:
            check_finite(name, tensor)
    B, T, I = x.shape  # noqa: E741
    H, D = W.shape
    opts = {"device": x.device, "dtype": x.dtype}
    if h0 is None:  # the backward reads it (the C loop's takes None as zeros)
        h0 = torch.zeros(B, H, **opts)
    memories = torch.empty(B, T + 1, H, D, **opts)
    memories[:, 0] = 0 if F0 is None else F0
    out, S = torch.empty(B, T, H, **opts), torch.empty(B, T, H, **opts)
    R = torch.empty(B, T, H, **opts) if config.normalise else None
    R2 = torch.empty(B, T, H, **opts) if config.post else None
    mask = torch.empty(B, T, H, D, dtype=torch.bool, device=x.device) if config.clamp else None
    lam, rate = lam.expand(W.shape), hebbian_rate(lam, gam, config).expand(W.shape)
    activate = ACTIVATIONS[config.activation].function
    G = torch.empty(B, H, D, **opts)
    outer = torch.empty(B, H, D, **opts)
    v = torch.empty(B, D, **opts)
    for t in range(T):
        F, new = memories[:, t], memories[:, t + 1]
        v[:, :I] = x[:, t]
        if config.recurrent:
            v[:, I:] = h0 if t == 0 else out[:, t - 1]
        torch.add(F, W, out=G)
        a = torch.bmm(G, v.unsqueeze(-1)).squeeze(-1)
        S[:, t] = a
        if R is not None:
            r = torch.linalg.vector_norm(G, dim=-1)
            R[:, t] = r
            a = a / (r + NORM_EPS)
        if b is not None:
            a = a + b
        h = activate(a)
        out[:, t] = h
        u = torch.cat([x[:, t], h], dim=1) if config.current_hidden else v
        if R is not None and not config.post:
            torch.div(F, (r + NORM_EPS).unsqueeze(-1), out=new)
            new.mul_(lam)
        else:
            torch.mul(F, lam, out=new)
        torch.mul(h.unsqueeze(-1), u.unsqueeze(-2), out=outer)
        new.addcmul_(outer, rate)
        if mask is not None:
            mask[:, t] = new.abs() <= config.clamp
            new.clamp_(-config.clamp, config.clamp)
        if R2 is not None:
            torch.add(new, W, out=G)
            r2 = torch.linalg.vector_norm(G, dim=-1)
            R2[:, t] = r2
            new.div_((r2 + NORM_EPS).unsqueeze(-1))
    # A copy: the caller owns (and may change) the final memory; the backward reads memories.
    F_final = memories[:, T].clone()
    return Record(config, x, h0, F0, W, lam, rate, b is not None, out, S, R, R2, memories,
                  F_final, mask)


def _presynaptic(record: Record) -> tuple[Tensor, Tensor]:
    """``v_t = [x_t; h_{t-1}]`` and ``u_t`` (``v_t``, or ``[x_t; h_t]``) for every step."""
    x, out = record.x, record.out
    if not record.config.recurrent:
        return x, x
    previous = torch.cat([record.h0.unsqueeze(1), out[:, :-1]], dim=1)
    V = torch.cat([x, previous], dim=-1)
    return V, torch.cat([x, out], dim=-1) if record.config.current_hidden else V


def backward(
    record: Record, grad_out: Tensor, grad_F: Tensor | None, lam: Tensor, gam: Tensor,
    need_x: bool = True, need_F: bool = True,
) -> tuple[Tensor | None, Tensor, Tensor | None, Tensor, Tensor | None, Tensor, Tensor]:
    """Gradients of ``x`` ``(B, T, I)``, ``h0``, ``F0``, ``W``, ``b``, ``Λ``, ``Γ`` from
    ``grad_out`` ``(B, T, H)`` and ``grad_F`` (``None``: zero); those of ``x`` and ``F0`` are
    ``None`` unless needed. ``lam`` and ``gam`` are the parameters (for their gradients' shapes)."""
    config, memories, out, R, S, R2 = (
        record.config, record.memories, record.out, record.R, record.S, record.R2
    )
    W, lam_full, rate = record.W, record.lam, record.rate
    B, T, I = record.x.shape  # noqa: E741
    H, D = W.shape
    opts = {"device": W.device, "dtype": W.dtype}
    slope = ACTIVATIONS[config.activation].slope
    V, U = _presynaptic(record)
    gP_all = torch.empty(B, T, H, D, **opts)  # ∂L/∂P_t
    GA = torch.empty(B, T, H, **opts)  # ∂L/∂a_t
    GS = torch.empty(B, T, H, **opts)  # ∂L/∂(G_t v_t)
    CN = torch.empty(B, T, H, **opts) if R is not None else None  # ∂L/∂||G_t|| / ||G_t||
    K = torch.empty(B, T, H, **opts) if R2 is not None else None  # post-norm coefficient
    gx = torch.empty(B, T, I, **opts)
    gF = torch.zeros(B, H, D, **opts) if grad_F is None else grad_F.clone()
    gh = torch.zeros(B, H, **opts)  # ∂L/∂h_t through step t+1 (a later chunk adds to grad_out)
    G = torch.empty(B, H, D, **opts)
    gPg = torch.empty(B, H, D, **opts)
    for t in range(T - 1, -1, -1):
        F, v, u, h = memories[:, t], V[:, t], U[:, t], out[:, t]
        gP = gP_all[:, t]
        if R2 is not None:
            n2 = (R2[:, t] + NORM_EPS).unsqueeze(-1)
            F_next = memories[:, t + 1]
            r2 = R2[:, t].unsqueeze(-1)  # a zero row: vector_norm's gradient is 0, not 0/0
            k = torch.where(r2 > 0, torch.linalg.vecdot(gF, F_next).unsqueeze(-1) / (n2 * r2), 0)
            K[:, t] = k.squeeze(-1)
            # ∂/∂C of C / (||W + C|| + eps), with C = F_{t+1} n2
            torch.div(gF, n2, out=gP)
            gP.sub_(k * W).addcmul_(F_next, -k * n2)
        else:
            gP.copy_(gF)
        if record.mask is not None:
            gP.mul_(record.mask[:, t])
        torch.mul(gP, rate, out=gPg)
        g_hebb = torch.bmm(gPg, u.unsqueeze(-1)).squeeze(-1)
        g_u = torch.bmm(h.unsqueeze(1), gPg).squeeze(1)
        g_total = grad_out[:, t] + gh + g_hebb
        if config.current_hidden:
            g_total = g_total + g_u[:, I:]
        ga = g_total * slope(h)
        GA[:, t] = ga
        torch.add(F, W, out=G)
        torch.mul(gP, lam_full, out=gF)  # ∂L/∂M, turned into ∂L/∂F_t below
        if R is not None:
            n = R[:, t] + NORM_EPS
            gs = ga / n
            gn = -ga * S[:, t] / (n * n)
            if not config.post:
                gn = gn - torch.linalg.vecdot(gF, F) / (n * n)
                gF.div_(n.unsqueeze(-1))
            c = torch.where(R[:, t] > 0, gn / R[:, t], 0)
            CN[:, t] = c
            gF.addcmul_(G, c.unsqueeze(-1))
        else:
            gs = ga
        GS[:, t] = gs
        gF.baddbmm_(gs.unsqueeze(-1), v.unsqueeze(1))
        gv = torch.bmm(gs.unsqueeze(1), G).squeeze(1)
        if config.current_hidden:  # u_t holds h_t, already counted in g_total
            gx[:, t] = gv[:, :I] + g_u[:, :I]
        else:
            gv = gv + g_u
            gx[:, t] = gv[:, :I]
        if config.recurrent:
            gh = gv[:, I:]
    grads = _parameter_grads(record, V, U, gP_all, GA, GS, CN, K, lam, gam)
    return gx if need_x else None, gh, gF if need_F else None, *grads


def _parameter_grads(
    record: Record, V: Tensor, U: Tensor, gP_all: Tensor, GA: Tensor, GS: Tensor,
    CN: Tensor | None, K: Tensor | None, lam: Tensor, gam: Tensor,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Gradients of ``W``, ``b``, ``Λ``, ``Γ``: sums over all steps, done in large batched ops."""
    memories, out, R, W = record.memories, record.out, record.R, record.W
    B, T, H, D = gP_all.shape
    grad_b = GA.sum((0, 1)) if record.has_bias else None
    # W: the outer products gs ⊗ v (one GEMM), the norm terms c·G and, for post, -k·(W + C).
    grad_W = GS.reshape(-1, H).T @ V.reshape(-1, D)
    if CN is not None:
        grad_W += CN.sum((0, 1)).unsqueeze(-1) * W
        grad_W += torch.einsum("bth,bthd->hd", CN, memories[:, :T])
    if K is not None:
        grad_W -= K.sum((0, 1)).unsqueeze(-1) * W
        grad_W -= torch.einsum("bth,bthd->hd", K * (record.R2 + NORM_EPS), memories[:, 1:])
    grad_lam = torch.zeros(H, D, device=W.device, dtype=W.dtype)
    grad_rate = torch.zeros(H, D, device=W.device, dtype=W.dtype)  # ∂L/∂Γe
    step = max(1, CHUNK_ELEMENTS // (B * H * D))
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        gP = gP_all[:, t0:t1]
        memory = memories[:, t0:t1]
        if R is not None and not record.config.post:
            memory = memory / (R[:, t0:t1] + NORM_EPS).unsqueeze(-1)
        grad_lam += (gP * memory).sum((0, 1))
        grad_rate += ((gP * out[:, t0:t1].unsqueeze(-1)) * U[:, t0:t1].unsqueeze(-2)).sum((0, 1))
    return grad_W, grad_b, *rate_grads(grad_lam, grad_rate, lam, gam, record.config)
