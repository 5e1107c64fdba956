/* The STPN time loop, forward and hand-derived backward, fused per (sample, step).
 *
 * Why C: per step the STPN touches its B x H x D memory F a dozen times; as separate torch ops
 * each touch is a pass through main memory. Here the loops run sample by sample, so one sample's
 * H x D block (and its gradient) stays in cache for the whole sequence. The forward keeps F only
 * every K steps (checkpoints); the backward recomputes each K-step chunk of one sample into a
 * small cache-resident workspace and walks it backwards. Compiled once (about a second, no torch
 * headers) and called through ctypes; the math is that of stpn_core/fast_kernels.py, which
 * documents the notation. Samples [b0, b1) only, so callers can split the batch across threads.
 *
 * REAL is float or double (-DREAL=...). Arrays are contiguous and batch-major, so one sample's
 * sequence is one contiguous block and the torch side needs no transposes: x and its gradient
 * (B,T,NI), h0 (B,H), out/R/S/R2 and the output gradient (B,T,H), F0 (B,H,D), checkpoints
 * (B,ceil(T/K)-1,H,D) (F at t = K, 2K, ...; F0 is the one at t = 0). The presynaptic vector
 * v_t = [x_t; h_{t-1}] is assembled per step from x, h0 and out, instead of being stored. lam and
 * gam are (H,D); gam is the effective gamma (Λ⊙Γ for prompt_decay, since Λ⊙(M + Γ⊙Δ) =
 * Λ⊙M + ΛΓ⊙Δ), so the loops need no branch on the update. Freshly allocated output memory costs
 * a page fault per 4 KiB on first touch, so nothing is stored that can be rebuilt cheaply.
 */
#include <stdlib.h>
#include <string.h>
#include <tgmath.h> /* type-generic: tanh, exp, sqrt in REAL precision */

typedef struct {
    long T, B, NI, H, D, K;
    int recurrent, normalise, post, current, act, has_bias;
    double clamp, eps; /* clamp <= 0: none */
} Cfg;

/* Scratch aligned to whole cache lines: with rows of a multiple of 8 floats no vector load
 * straddles two lines (malloc only guarantees 16 bytes). */
static REAL *scratch(long n) {
    const size_t bytes = ((sizeof(REAL) * (size_t)n + 63) / 64 + 1) * 64;
    return aligned_alloc(64, bytes);
}

/* h = act(a) in place over one sample's units, vectorised (exp from the vector math library).
 * Both activations take exp of -|a| only, so its value lies in (0, 1] for any finite a: under
 * -ffast-math a vector division becomes a reciprocal estimate refined by a Newton step, which
 * turns a zero or infinite divisor into NaN, so no divisor may overflow (the former
 * 1 - 2/(exp(2a) + 1) gave NaN in float32 from a = 44 on). The divisors here lie in [1, 2], and
 * the results saturate to exactly +-1, 0 or 1 as torch.tanh and torch.sigmoid do. */
static void activate_all(REAL *h, long H, int act) {
    switch (act) {
    case 0:
#pragma omp simd
        for (long i = 0; i < H; i++) {
            const REAL e = exp(-2 * fabs(h[i])), t = (1 - e) / (1 + e);
            h[i] = h[i] < 0 ? -t : t;
        }
        break;
    case 1:
#pragma omp simd
        for (long i = 0; i < H; i++) {
            const REAL e = exp(-fabs(h[i])), p = 1 / (1 + e);
            h[i] = h[i] < 0 ? e * p : p;
        }
        break;
    case 2:
#pragma omp simd
        for (long i = 0; i < H; i++) h[i] = h[i] > 0 ? h[i] : 0;
        break;
    default:
        break;
    }
}

static inline REAL activation_grad(REAL h, int act) {
    switch (act) {
    case 0: return 1 - h * h;
    case 1: return h * (1 - h);
    case 2: return h > 0 ? 1 : 0;
    default: return 1;
    }
}

/* v_t = [x_t; h_{t-1}] of sample b (x_t alone for a feed-forward layer), in buf if needed. */
static const REAL *presynaptic_prev(const Cfg *c, const REAL *x, const REAL *h0, const REAL *out,
                                    long b, long t, REAL *buf) {
    const REAL *xt = x + (b * c->T + t) * c->NI;
    if (!c->recurrent) return xt;
    memcpy(buf, xt, sizeof(REAL) * c->NI);
    memcpy(buf + c->NI, t ? out + (b * c->T + t - 1) * c->H : h0 + b * c->H, sizeof(REAL) * c->H);
    return buf;
}

/* u_t: v_t, or [x_t; h_t] for presynaptic="current" (written into buf). */
static const REAL *presynaptic(const Cfg *c, const REAL *v, const REAL *h, REAL *buf) {
    if (!(c->current && c->recurrent)) return v;
    memcpy(buf, v, sizeof(REAL) * c->NI);
    memcpy(buf + c->NI, h, sizeof(REAL) * c->H);
    return buf;
}

/* F_{t+1} of one sample from F_t, h_t, u_t and the stored norms. With store_r2 the post norm is
 * computed and stored; otherwise the stored one is used, so a recomputation is bit-identical. */
static void update_memory(const Cfg *c, const REAL *W, const REAL *lam, const REAL *gam,
                          const REAL *F, REAL *Fn, const REAL *u, const REAL *h, const REAL *R,
                          REAL *R2, unsigned char *mask, int store_r2) {
    const long H = c->H, D = c->D;
    for (long i = 0; i < H; i++) {
        const REAL *restrict Fi = F + i * D, *restrict li = lam + i * D, *restrict gi = gam + i * D;
        REAL *restrict Pi = Fn + i * D;
        const REAL inv = (c->normalise && !c->post) ? 1 / (R[i] + (REAL)c->eps) : 1, hi = h[i];
#pragma omp simd
        for (long j = 0; j < D; j++) Pi[j] = li[j] * (Fi[j] * inv) + gi[j] * (hi * u[j]);
        if (c->clamp > 0) {
            const REAL cl = (REAL)c->clamp;
            if (mask) {
                unsigned char *restrict mi = mask + i * D;
#pragma omp simd
                for (long j = 0; j < D; j++) mi[j] = (Pi[j] >= -cl) && (Pi[j] <= cl);
            }
#pragma omp simd
            for (long j = 0; j < D; j++) Pi[j] = Pi[j] > cl ? cl : (Pi[j] < -cl ? -cl : Pi[j]);
        }
        if (c->post) {
            if (store_r2) {
                const REAL *restrict Wi = W + i * D;
                REAL ss = 0;
#pragma omp simd reduction(+ : ss)
                for (long j = 0; j < D; j++) ss += (Wi[j] + Pi[j]) * (Wi[j] + Pi[j]);
                R2[i] = sqrt(ss);
            }
            const REAL inv2 = 1 / (R2[i] + (REAL)c->eps);
#pragma omp simd
            for (long j = 0; j < D; j++) Pi[j] *= inv2;
        }
    }
}

void stpn_forward(const Cfg *c, long b0, long b1, const REAL *W, const REAL *bias,
                  const REAL *lam, const REAL *gam, const REAL *F0, const REAL *x, const REAL *h0,
                  REAL *out, REAL *R, REAL *S, REAL *R2, REAL *ckpt, REAL *F_final) {
    const long T = c->T, H = c->H, D = c->D, HD = c->H * c->D;
    const long n_ckpt = (T + c->K - 1) / c->K - 1;
    REAL *Fa = scratch(HD), *Fb = scratch(HD), *ubuf = scratch(D), *vbuf = scratch(D);
    for (long b = b0; b < b1; b++) {
        REAL *F = Fa, *Fn = Fb;
        memcpy(F, F0 + b * HD, sizeof(REAL) * HD);
        for (long t = 0; t < T; t++) {
            const long tb = b * T + t; /* (b, t) in the (B,T,.) arrays */
            if (t > 0 && t % c->K == 0)
                memcpy(ckpt + (b * n_ckpt + t / c->K - 1) * HD, F, sizeof(REAL) * HD);
            const REAL *v = presynaptic_prev(c, x, h0, out, b, t, vbuf);
            REAL *h = out + tb * H;
            for (long i = 0; i < H; i++) {
                const REAL *restrict Wi = W + i * D, *restrict Fi = F + i * D;
                REAL ss = 0, s = 0;
#pragma omp simd reduction(+ : ss, s)
                for (long j = 0; j < D; j++) {
                    const REAL g = Wi[j] + Fi[j];
                    ss += g * g;
                    s += g * v[j];
                }
                REAL a = s;
                if (c->normalise) {
                    const REAL r = sqrt(ss);
                    R[tb * H + i] = r;
                    a = s / (r + (REAL)c->eps);
                }
                S[tb * H + i] = s;
                h[i] = c->has_bias ? a + bias[i] : a;
            }
            activate_all(h, H, c->act);
            update_memory(c, W, lam, gam, F, Fn, presynaptic(c, v, h, ubuf), h,
                          c->normalise ? R + tb * H : NULL, c->post ? R2 + tb * H : NULL, NULL, 1);
            REAL *tmp = F;
            F = Fn;
            Fn = tmp;
        }
        memcpy(F_final + b * HD, F, sizeof(REAL) * HD);
    }
    free(Fa);
    free(Fb);
    free(ubuf);
    free(vbuf);
}

/* Rows are walked back in blocks of ROW_BLOCK: first the part of every row that needs only
 * dL/dP (its sums over the row), then the per-unit scalars for the whole block at once (a
 * vectorised loop, instead of a chain of divisions per row), then the part that needs those
 * scalars. A block's rows stay in L1 between the passes. */
#define ROW_BLOCK 8

/* One step back for one sample. gF (H,D) holds dL/dF_{t+1} on entry and dL/dF_t on exit; gh (H)
 * likewise carries dL/dh_t -> dL/dh_{t-1}. gW, gb, glam, ghebb (dL/d effective gamma) accumulate.
 * With presynaptic="current" every unit's output gradient also needs the Hebbian gradient of
 * u_t = [x_t; h_t] from all rows, so the block is the whole layer. gP is a (block, D) buffer;
 * g_hebb, pre_dot, gs, coef and pinv are (H) scratch. */
static void step_backward(const Cfg *c, const REAL *W, const REAL *lam, const REAL *gam,
                          const REAL *F, const REAL *Fn, const unsigned char *mask, const REAL *v,
                          const REAL *u, const REAL *h, const REAL *R, const REAL *S,
                          const REAL *R2, const REAL *grad_out, REAL *gF, REAL *gh, REAL *gx,
                          REAL *gW, REAL *gb, REAL *glam, REAL *ghebb, REAL *gP, REAL *gu,
                          REAL *gv, REAL *g_hebb, REAL *pre_dot, REAL *gs, REAL *coef,
                          REAL *pinv) {
    const long H = c->H, D = c->D, NI = c->NI;
    const int pre_norm = c->normalise && !c->post, deferred = c->current && c->recurrent;
    const int alias = !c->post && !(c->clamp > 0); /* dL/dP = dL/dF_{t+1}: read gF in place */
    const long RB = deferred ? H : ROW_BLOCK;
    const REAL eps = (REAL)c->eps;
    memset(gu, 0, sizeof(REAL) * D);
    memset(gv, 0, sizeof(REAL) * D);
    for (long i0 = 0; i0 < H; i0 += RB) {
        const long i1 = i0 + RB < H ? i0 + RB : H;
        for (long i = i0; i < i1; i++) { /* dL/dP and everything that only needs it */
            const REAL *restrict gFi = gF + i * D, *restrict Fi = F + i * D;
            const REAL *restrict Wi = W + i * D, *restrict gi = gam + i * D;
            const REAL *restrict li = lam + i * D;
            REAL *restrict gWi = gW + i * D;
            REAL *restrict gPw = gP + (i - i0) * D;
            if (c->post) {
                const REAL *restrict Fni = Fn + i * D;
                const REAL r2 = R2[i], n2 = r2 + eps;
                REAL dot = 0;
#pragma omp simd reduction(+ : dot)
                for (long j = 0; j < D; j++) dot += gFi[j] * Fni[j];
                const REAL k = r2 > 0 ? dot / (n2 * r2) : 0, inv2 = 1 / n2; /* 0 at a zero row, as torch */
#pragma omp simd
                for (long j = 0; j < D; j++) {
                    const REAL wc = Wi[j] + n2 * Fni[j];
                    gPw[j] = gFi[j] * inv2 - k * wc;
                    gWi[j] -= k * wc;
                }
                if (c->clamp > 0) {
                    const unsigned char *restrict mi = mask + i * D;
#pragma omp simd
                    for (long j = 0; j < D; j++) gPw[j] = mi[j] ? gPw[j] : 0;
                }
            } else if (c->clamp > 0) {
                const unsigned char *restrict mi = mask + i * D;
#pragma omp simd
                for (long j = 0; j < D; j++) gPw[j] = mi[j] ? gFi[j] : 0;
            }
            const REAL *restrict gPi = alias ? gFi : gPw;
            const REAL hi = h[i], inv = pre_norm ? 1 / (R[i] + eps) : 1;
            REAL *restrict glami = glam + i * D, *restrict ghebbi = ghebb + i * D;
            REAL acc = 0, dot = 0;
            if (pre_norm) {
#pragma omp simd reduction(+ : acc, dot)
                for (long j = 0; j < D; j++) {
                    const REAL gp = gPi[j], gpg = gp * gi[j], gpF = gp * Fi[j];
                    acc += gpg * u[j];
                    dot += li[j] * gpF;
                    gu[j] += gpg * hi;
                    ghebbi[j] += gp * (hi * u[j]);
                    glami[j] += gpF * inv;
                }
            } else {
#pragma omp simd reduction(+ : acc)
                for (long j = 0; j < D; j++) {
                    const REAL gp = gPi[j], gpg = gp * gi[j];
                    acc += gpg * u[j];
                    gu[j] += gpg * hi;
                    ghebbi[j] += gp * (hi * u[j]);
                    glami[j] += gp * Fi[j];
                }
            }
            g_hebb[i] = acc;
            pre_dot[i] = dot;
        }
        /* Per unit: dL/da through the activation, then dL/ds and the norm's coefficient. */
        const REAL *restrict gx_h = deferred ? gu + NI : NULL;
#pragma omp simd
        for (long i = i0; i < i1; i++) {
            REAL g_total = grad_out[i] + gh[i] + g_hebb[i];
            if (gx_h) g_total += gx_h[i];
            const REAL ga = g_total * activation_grad(h[i], c->act);
            gb[i] += ga;
            if (c->normalise) {
                const REAL r = R[i], n = r + eps, in = 1 / n;
                gs[i] = ga * in;
                REAL gn = -ga * S[i] * in * in;
                if (!c->post) gn -= pre_dot[i] * in * in;
                coef[i] = r > 0 ? gn / r : 0; /* a zero row: vector_norm's gradient is 0 */
                pinv[i] = c->post ? 1 : in;
            } else {
                gs[i] = ga;
                coef[i] = 0;
                pinv[i] = 1;
            }
        }
        for (long i = i0; i < i1; i++) { /* the part through the output and the norm */
            REAL *gFi = gF + i * D; /* may alias gPi: each element is read before written */
            const REAL *gPi = alias ? gFi : gP + (i - i0) * D;
            REAL *restrict gWi = gW + i * D;
            const REAL *restrict Fi = F + i * D, *restrict Wi = W + i * D;
            const REAL *restrict li = lam + i * D;
            const REAL gsi = gs[i], ci = coef[i], pi = pinv[i];
#pragma omp simd
            for (long j = 0; j < D; j++) {
                const REAL G = Wi[j] + Fi[j];
                const REAL gG = gsi * v[j] + ci * G;
                gWi[j] += gG;
                gv[j] += gsi * G;
                gFi[j] = gG + li[j] * gPi[j] * pi;
            }
        }
    }
    if (deferred) {
        if (gx)
            for (long j = 0; j < NI; j++) gx[j] = gv[j] + gu[j];
        memcpy(gh, gv + NI, sizeof(REAL) * H);
    } else {
        for (long j = 0; j < D; j++) gv[j] += gu[j];
        if (gx) memcpy(gx, gv, sizeof(REAL) * NI);
        if (c->recurrent) memcpy(gh, gv + NI, sizeof(REAL) * H);
    }
}

/* grad_F (B,H,D) is dL/dF_T, or NULL for zero; gF receives dL/dF_0 and gh dL/dh_{-1}, gx
 * dL/dx. gF and gx may be NULL when those gradients are not wanted. */
void stpn_backward(const Cfg *c, long b0, long b1, const REAL *W, const REAL *lam,
                   const REAL *gam, const REAL *F0, const REAL *ckpt, const REAL *x,
                   const REAL *h0, const REAL *out, const REAL *R, const REAL *S,
                   const REAL *R2, const REAL *grad_out, const REAL *grad_F, REAL *gF, REAL *gh,
                   REAL *gx, REAL *gW, REAL *gb, REAL *glam, REAL *ghebb) {
    const long T = c->T, H = c->H, D = c->D, NI = c->NI, HD = c->H * c->D, K = c->K;
    const long n_ckpt = (T + K - 1) / K - 1;
    const int deferred = c->current && c->recurrent;
    REAL *ws = scratch(HD * (K + 1)), *gP = scratch(deferred ? HD : ROW_BLOCK * D);
    unsigned char *mask = c->clamp > 0 ? malloc(HD * K) : NULL;
    REAL *gu = scratch(D), *gv = scratch(D), *ubuf = scratch(D), *vbuf = scratch(D);
    REAL *g_hebb = scratch(H), *gF_own = gF ? NULL : scratch(HD);
    REAL *pre_dot = scratch(H), *gs = scratch(H), *coef = scratch(H), *pinv = scratch(H);
    const REAL *noR = NULL;
    for (long b = b0; b < b1; b++) {
        REAL *gFb = gF ? gF + b * HD : gF_own;
        if (grad_F) memcpy(gFb, grad_F + b * HD, sizeof(REAL) * HD);
        else memset(gFb, 0, sizeof(REAL) * HD);
        memset(gh + b * H, 0, sizeof(REAL) * H);
        for (long t0 = ((T - 1) / K) * K; t0 >= 0; t0 -= K) {
            const long t1 = t0 + K < T ? t0 + K : T;
            const REAL *start = t0 ? ckpt + (b * n_ckpt + t0 / K - 1) * HD : F0 + b * HD;
            memcpy(ws, start, sizeof(REAL) * HD);
            for (long t = t0; t < t1; t++) { /* recompute F over the chunk, with the clamp mask */
                const long tb = b * T + t;
                const REAL *v = presynaptic_prev(c, x, h0, out, b, t, vbuf);
                update_memory(c, W, lam, gam, ws + (t - t0) * HD, ws + (t - t0 + 1) * HD,
                              presynaptic(c, v, out + tb * H, ubuf), out + tb * H,
                              c->normalise ? R + tb * H : noR, c->post ? (REAL *)R2 + tb * H : NULL,
                              mask ? mask + (t - t0) * HD : NULL, 0);
            }
            for (long t = t1 - 1; t >= t0; t--) {
                const long tb = b * T + t;
                const REAL *v = presynaptic_prev(c, x, h0, out, b, t, vbuf), *h = out + tb * H;
                step_backward(c, W, lam, gam, ws + (t - t0) * HD, ws + (t - t0 + 1) * HD,
                              mask ? mask + (t - t0) * HD : NULL, v, presynaptic(c, v, h, ubuf), h,
                              c->normalise ? R + tb * H : noR, S + tb * H,
                              c->post ? R2 + tb * H : NULL, grad_out + tb * H, gFb, gh + b * H,
                              gx ? gx + tb * NI : NULL, gW, gb, glam, ghebb, gP, gu, gv, g_hebb,
                              pre_dot, gs, coef, pinv);
            }
        }
    }
    free(ws);
    free(gP);
    free(mask);
    free(gu);
    free(gv);
    free(ubuf);
    free(vbuf);
    free(gF_own);
    free(g_hebb);
    free(pre_dot);
    free(gs);
    free(coef);
    free(pinv);
}
