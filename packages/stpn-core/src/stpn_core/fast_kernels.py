"""The fast STPN time loop: a forward that records per-step state and a hand-derived backward.

Autograd on the reference loop records ~20 small nodes per step and replays them one by one;
here the forward writes each step into preallocated buffers (no graph), and the backward walks
``t = T-1 .. 0`` carrying only the two recurrent gradients (``∂L/∂F_t``, ``∂L/∂h_{t-1}``). Every
term that is a plain sum over steps (the gradients of ``W``, ``b``, ``Λ``, ``Γ``) is left out of the
loop and computed afterwards with a few large batched ops over all steps at once.

Shapes (time-major inside): ``x`` ``(T, B, I)``, ``F`` ``(B, H, D)``, ``h`` ``(B, H)``. Notation
as in :mod:`stpn_core.stpn`: ``G = W + F``, ``n = ||G||_row + eps``, ``h = act(G v / n + b)``,
``M = F / n`` (``pre``) or ``F`` (``post``), ``P = Λ⊙M + Γe⊙(h ⊗ u)`` with ``Γe = Γ`` (``stp``) or
``Λ⊙Γ`` (``prompt_decay``, since ``Λ⊙(M + Γ⊙Δ) = Λ⊙M + ΛΓ⊙Δ``), ``C = clamp(P)``, and
``F' = C`` (``pre``) or ``C / (||W + C||_row + eps)`` (``post``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from stpn_core.functional import NORM_EPS

CHUNK_ELEMENTS = 1 << 22
"""Elements of ``(steps, B, H, D)`` taken at once by the post-loop reductions (bounds memory)."""


@dataclass(frozen=True)
class Config:
    """The module options the fast loop implements (everything else falls back)."""

    recurrent: bool
    normalise: bool  # norm "G" (True) or "none" (False)
    post: bool  # norm_timing "post"
    clamp: float | None
    prompt_decay: bool
    current: bool  # presynaptic "current": u_t = [x_t; h_t]
    activation: str


@dataclass
class Saved:
    """What the forward keeps for the backward (all time-major)."""

    F: Tensor  # (T+1, B, H, D): F_0 .. F_T
    V: Tensor  # (T+1, B, D): v_0 .. v_{T-1} (the hidden part of slot t+1 holds h_t)
    out: Tensor  # (T, B, H): h_0 .. h_{T-1} (a view into V when recurrent)
    R: Tensor | None  # (T, B, H): ||G_t||_row
    S: Tensor  # (T, B, H): G_t v_t (before the division by n)
    R2: Tensor | None  # (T, B, H): ||W + C_t||_row (post only)
    mask: Tensor | None  # (T, B, H, D) bool: where the clamp let the gradient through

    @property
    def F_final(self) -> Tensor:
        return self.F[-1]


def _activate(a: Tensor, name: str) -> Tensor:
    if name == "tanh":
        return torch.tanh(a)
    if name == "sigmoid":
        return torch.sigmoid(a)
    if name == "relu":
        return torch.relu(a)
    return a


def _activation_grad(h: Tensor, grad: Tensor, name: str) -> Tensor:
    """``grad · act'(a)`` written in terms of the output ``h = act(a)``."""
    if name == "tanh":
        return grad * (1 - h * h)
    if name == "sigmoid":
        return grad * h * (1 - h)
    if name == "relu":
        return grad * (h > 0)
    return grad


def _presynaptic_current(V: Tensor, t: int, input_size: int, cfg: Config) -> Tensor:
    """``u_t``: ``v_t`` or, for ``presynaptic="current"``, ``[x_t; h_t]``."""
    if not cfg.current or not cfg.recurrent:
        return V[t]
    return torch.cat([V[t, :, :input_size], V[t + 1, :, input_size:]], dim=1)


def forward_loop(
    x: Tensor, h0: Tensor, F0: Tensor, W: Tensor, b: Tensor | None, lam: Tensor, gam: Tensor,
    cfg: Config,
) -> Saved:
    """Run the sequence; return the outputs, final memory and everything the backward needs."""
    T, B, I = x.shape  # noqa: E741
    H, D = W.shape
    opts = {"device": x.device, "dtype": x.dtype}
    Fs = torch.empty(T + 1, B, H, D, **opts)
    Fs[0] = F0
    V = torch.zeros(T + 1, B, D, **opts)
    V[:T, :, :I] = x
    if cfg.recurrent:
        V[0, :, I:] = h0
        out = V[1:, :, I:]
    else:
        out = torch.empty(T, B, H, **opts)
    S = torch.empty(T, B, H, **opts)
    R = torch.empty(T, B, H, **opts) if cfg.normalise else None
    R2 = torch.empty(T, B, H, **opts) if cfg.post else None
    mask = torch.empty(T, B, H, D, dtype=torch.bool, device=x.device) if cfg.clamp else None
    gam_eff = lam * gam if cfg.prompt_decay else gam
    G = torch.empty(B, H, D, **opts)
    outer = torch.empty(B, H, D, **opts)
    for t in range(T):
        F, v, new = Fs[t], V[t], Fs[t + 1]
        torch.add(F, W, out=G)
        torch.bmm(G, v.unsqueeze(-1), out=S[t].unsqueeze(-1))
        a = S[t]
        if R is not None:
            torch.linalg.vector_norm(G, dim=-1, out=R[t])
            a = a / (R[t] + NORM_EPS)
        if b is not None:
            a = a + b
        out[t] = _activate(a, cfg.activation)
        h = out[t]
        u = _presynaptic_current(V, t, I, cfg)
        if R is not None and not cfg.post:
            torch.div(F, (R[t] + NORM_EPS).unsqueeze(-1), out=new)
            new.mul_(lam)
        else:
            torch.mul(F, lam, out=new)
        torch.mul(h.unsqueeze(-1), u.unsqueeze(-2), out=outer)
        new.addcmul_(outer, gam_eff)
        if mask is not None:
            torch.le(new.abs(), cfg.clamp, out=mask[t])
            new.clamp_(-cfg.clamp, cfg.clamp)
        if R2 is not None:
            torch.add(new, W, out=G)
            torch.linalg.vector_norm(G, dim=-1, out=R2[t])
            new.div_((R2[t] + NORM_EPS).unsqueeze(-1))
    return Saved(Fs, V, out, R, S, R2, mask)


def backward_loop(
    saved: Saved, grad_out: Tensor, grad_F: Tensor, W: Tensor, b: Tensor | None, lam: Tensor,
    gam: Tensor, cfg: Config, input_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """Gradients of ``x`` ``(T, B, I)``, ``h0``, ``F0``, ``W``, ``b``, ``Λ``, ``Γ``."""
    Fs, V, out, R, S = saved.F, saved.V, saved.out, saved.R, saved.S
    T, B, H, D = Fs.shape[0] - 1, Fs.shape[1], Fs.shape[2], Fs.shape[3]
    I = input_size  # noqa: E741
    opts = {"device": Fs.device, "dtype": Fs.dtype}
    gam_eff = lam * gam if cfg.prompt_decay else gam
    gP_all = torch.empty(T, B, H, D, **opts)  # ∂L/∂P_t
    GA = torch.empty(T, B, H, **opts)  # ∂L/∂a_t
    GS = torch.empty(T, B, H, **opts)  # ∂L/∂(G_t v_t)
    CN = torch.empty(T, B, H, **opts) if R is not None else None  # ∂L/∂||G_t|| / ||G_t||
    K = torch.empty(T, B, H, **opts) if cfg.post else None  # post-norm coefficient
    gx = torch.empty(T, B, I, **opts)
    gF = grad_F.clone()
    gh = torch.zeros(B, H, **opts)  # ∂L/∂h_t through step t+1 (a later chunk adds to grad_out)
    G = torch.empty(B, H, D, **opts)
    gPg = torch.empty(B, H, D, **opts)
    for t in range(T - 1, -1, -1):
        F, v, h = Fs[t], V[t], out[t]
        u = _presynaptic_current(V, t, I, cfg)
        gP = gP_all[t]
        if saved.R2 is not None:
            n2 = (saved.R2[t] + NORM_EPS).unsqueeze(-1)
            k = torch.linalg.vecdot(gF, Fs[t + 1]).unsqueeze(-1) / (n2 * saved.R2[t].unsqueeze(-1))
            K[t] = k.squeeze(-1)
            # ∂/∂C of C / (||W + C|| + eps), with C = F_{t+1} n2
            torch.div(gF, n2, out=gP)
            gP.sub_(k * W).addcmul_(Fs[t + 1], -k * n2)
        else:
            gP.copy_(gF)
        if saved.mask is not None:
            gP.mul_(saved.mask[t])
        torch.mul(gP, gam_eff, out=gPg)
        g_hebb = torch.bmm(gPg, u.unsqueeze(-1)).squeeze(-1)
        g_u = torch.bmm(h.unsqueeze(1), gPg).squeeze(1)
        g_total = grad_out[t] + gh + g_hebb
        if cfg.current and cfg.recurrent:
            g_total = g_total + g_u[:, I:]
        ga = _activation_grad(h, g_total, cfg.activation)
        GA[t] = ga
        torch.add(F, W, out=G)
        torch.mul(gP, lam, out=gF)  # ∂L/∂M, turned into ∂L/∂F_t below
        if R is not None:
            n = R[t] + NORM_EPS
            gs = ga / n
            gn = -ga * S[t] / (n * n)
            if not cfg.post:
                gn = gn - torch.linalg.vecdot(gF, F) / (n * n)
                gF.div_(n.unsqueeze(-1))
            c = gn / R[t]
            CN[t] = c
            gF.addcmul_(G, c.unsqueeze(-1))
        else:
            gs = ga
        GS[t] = gs
        gF.baddbmm_(gs.unsqueeze(-1), v.unsqueeze(1))
        gv = torch.bmm(gs.unsqueeze(1), G).squeeze(1)
        if cfg.current and cfg.recurrent:  # u_t holds h_t, already counted in g_total
            gx[t] = gv[:, :I] + g_u[:, :I]
        else:
            gv = gv + g_u
            gx[t] = gv[:, :I]
        if cfg.recurrent:
            gh = gv[:, I:]
    return gx, gh, gF, *_parameter_grads(saved, gP_all, GA, GS, CN, K, W, b, lam, gam, cfg)


def _parameter_grads(
    saved: Saved, gP_all: Tensor, GA: Tensor, GS: Tensor, CN: Tensor | None, K: Tensor | None,
    W: Tensor, b: Tensor | None, lam: Tensor, gam: Tensor, cfg: Config,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Gradients of ``W``, ``b``, ``Λ``, ``Γ``: sums over all steps, done in large batched ops."""
    Fs, V, out, R = saved.F, saved.V, saved.out, saved.R
    T, B, H, D = gP_all.shape
    I = V.shape[2] - (H if cfg.recurrent else 0)  # noqa: E741
    grad_b = GA.sum((0, 1)) if b is not None else None
    # W: the outer products gs ⊗ v (one GEMM), the norm terms c·G and, for post, -k·(W + C).
    grad_W = GS.reshape(-1, H).T @ V[:T].reshape(-1, D)
    if CN is not None:
        cn = CN.reshape(-1, H)
        grad_W += cn.sum(0).unsqueeze(-1) * W
        grad_W += torch.einsum("nh,nhd->hd", cn, Fs[:T].reshape(-1, H, D))
    if K is not None:
        kn = (K * (saved.R2 + NORM_EPS)).reshape(-1, H)
        grad_W -= K.reshape(-1, H).sum(0).unsqueeze(-1) * W
        grad_W -= torch.einsum("nh,nhd->hd", kn, Fs[1:].reshape(-1, H, D))
    grad_lam = torch.zeros(H, D, device=W.device, dtype=W.dtype)
    grad_hebb = torch.zeros(H, D, device=W.device, dtype=W.dtype)  # ∂L/∂Γe
    step = max(1, CHUNK_ELEMENTS // (B * H * D))
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        gP = gP_all[t0:t1]
        memory = Fs[t0:t1]
        if R is not None and not cfg.post:
            memory = memory / (R[t0:t1] + NORM_EPS).unsqueeze(-1)
        grad_lam += (gP * memory).sum((0, 1))
        if cfg.current and cfg.recurrent:
            u = torch.cat([V[t0:t1, :, :I], V[t0 + 1 : t1 + 1, :, I:]], dim=-1)
        else:
            u = V[t0:t1]
        grad_hebb += ((gP * out[t0:t1].unsqueeze(-1)) * u.unsqueeze(-2)).sum((0, 1))
    return grad_W, grad_b, *finish_plastic_grads(grad_lam, grad_hebb, lam, gam, cfg)


def finish_plastic_grads(
    g_lam: Tensor, g_hebb: Tensor, lam: Tensor, gam: Tensor, cfg: Config
) -> tuple[Tensor, Tensor]:
    """Map ``∂L/∂Λ`` (direct term) and ``∂L/∂Γe`` to the parameters' gradients and shapes."""
    if cfg.prompt_decay:  # Γe = Λ⊙Γ
        g_lam = g_lam + gam * g_hebb
        g_gam = lam * g_hebb
    else:
        g_gam = g_hebb
    if lam.dim() == 0:
        g_lam = g_lam.sum()
    if gam.dim() == 0:
        g_gam = g_gam.sum()
    return g_lam, g_gam
