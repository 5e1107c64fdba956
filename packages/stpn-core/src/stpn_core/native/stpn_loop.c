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
 * REAL is float or double (-DREAL=...). Arrays are contiguous and time-major: V (T+1,B,D) with
 * v_t = V[t] (the hidden part of V[t+1] is h_t when recurrent), out/R/S/R2 (T,B,H),
 * checkpoints (ceil(T/K),B,H,D). lam and gam are (H,D); gam is the effective gamma (Λ⊙Γ for
 * prompt_decay, since Λ⊙(M + Γ⊙Δ) = Λ⊙M + ΛΓ⊙Δ), so the loops need no branch on the update.
 */
#include <stdlib.h>
#include <string.h>
#include <tgmath.h> /* type-generic: tanh, exp, sqrt in REAL precision */

typedef struct {
    long T, B, NI, H, D, K;
    int recurrent, normalise, post, current, act, has_bias;
    double clamp, eps; /* clamp <= 0: none */
} Cfg;

/* h = act(a) in place over one sample's units, vectorised (exp from the vector math library). */
static void activate_all(REAL *h, long H, int act) {
    switch (act) {
    case 0:
#pragma omp simd
        for (long i = 0; i < H; i++) h[i] = 1 - 2 / (exp(2 * h[i]) + 1);
        break;
    case 1:
#pragma omp simd
        for (long i = 0; i < H; i++) h[i] = 1 / (1 + exp(-h[i]));
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
                  const REAL *lam, const REAL *gam, const REAL *F0, REAL *V, REAL *out, REAL *R,
                  REAL *S, REAL *R2, REAL *ckpt, REAL *F_final) {
    const long B = c->B, H = c->H, D = c->D, NI = c->NI, HD = c->H * c->D;
    REAL *Fa = malloc(sizeof(REAL) * HD), *Fb = malloc(sizeof(REAL) * HD);
    REAL *ubuf = malloc(sizeof(REAL) * D);
    for (long b = b0; b < b1; b++) {
        REAL *F = Fa, *Fn = Fb;
        memcpy(F, F0 + b * HD, sizeof(REAL) * HD);
        for (long t = 0; t < c->T; t++) {
            const long tb = t * B + b;
            if (t % c->K == 0) memcpy(ckpt + ((t / c->K) * B + b) * HD, F, sizeof(REAL) * HD);
            const REAL *v = V + tb * D;
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
            if (c->recurrent) memcpy(V + (tb + B) * D + NI, h, sizeof(REAL) * H);
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
}

/* The part of one step back for unit i that goes through its output and norm into row i of
 * dL/dF_t; g_hebb_i and pre_dot_i (= Σ_j Λ_ij dL/dP_ij F_ij) come from the first part. */
static inline void row_backward(const Cfg *c, long i, const REAL *W, const REAL *lam,
                                const REAL *F, const REAL *v, const REAL *h, const REAL *R,
                                const REAL *S, const REAL *grad_out, REAL *gF, const REAL *gh,
                                REAL *gW, REAL *gb, const REAL *gP, const REAL *gu, REAL *gv,
                                REAL g_hebb_i, REAL pre_dot_i) {
    const long D = c->D;
    REAL *restrict gFi = gF + i * D, *restrict gWi = gW + i * D;
    const REAL *restrict Fi = F + i * D, *restrict Wi = W + i * D;
    const REAL *restrict li = lam + i * D, *restrict gPi = gP + i * D;
    REAL g_total = grad_out[i] + gh[i] + g_hebb_i;
    if (c->current && c->recurrent) g_total += gu[c->NI + i];
    const REAL ga = g_total * activation_grad(h[i], c->act);
    gb[i] += ga;
    REAL gs = ga, coef = 0, inv = 1;
    if (c->normalise) {
        const REAL r = R[i], n = r + (REAL)c->eps;
        gs = ga / n;
        REAL gn = -ga * S[i] / (n * n);
        if (!c->post) {
            gn -= pre_dot_i / (n * n);
            inv = 1 / n;
        }
        coef = gn / r;
    }
#pragma omp simd
    for (long j = 0; j < D; j++) {
        const REAL G = Wi[j] + Fi[j];
        const REAL gG = gs * v[j] + coef * G;
        gWi[j] += gG;
        gv[j] += gs * G;
        gFi[j] = gG + li[j] * gPi[j] * inv;
    }
}

/* One step back for one sample. gF (H,D) holds dL/dF_{t+1} on entry and dL/dF_t on exit; gh (H)
 * likewise carries dL/dh_t -> dL/dh_{t-1}. gW, gb, glam, ghebb (dL/d effective gamma) accumulate.
 * Each row is finished while it is in cache, except with presynaptic="current", where every
 * row's output gradient also needs the Hebbian gradient of u_t = [x_t; h_t] from all rows. */
static void step_backward(const Cfg *c, const REAL *W, const REAL *lam, const REAL *gam,
                          const REAL *F, const REAL *Fn, const unsigned char *mask, const REAL *v,
                          const REAL *u, const REAL *h, const REAL *R, const REAL *S,
                          const REAL *R2, const REAL *grad_out, REAL *gF, REAL *gh, REAL *gx,
                          REAL *gW, REAL *gb, REAL *glam, REAL *ghebb, REAL *gP, REAL *gu,
                          REAL *gv, REAL *g_hebb, REAL *pre_dot) {
    const long H = c->H, D = c->D, NI = c->NI;
    const int pre_norm = c->normalise && !c->post, deferred = c->current && c->recurrent;
    memset(gu, 0, sizeof(REAL) * D);
    memset(gv, 0, sizeof(REAL) * D);
    for (long i = 0; i < H; i++) { /* dL/dP and everything that only needs it */
        const REAL *restrict gFi = gF + i * D, *restrict Fi = F + i * D, *restrict Fni = Fn + i * D;
        const REAL *restrict Wi = W + i * D, *restrict gi = gam + i * D, *restrict li = lam + i * D;
        REAL *restrict gPi = gP + i * D, *restrict gWi = gW + i * D;
        if (c->post) {
            const REAL r2 = R2[i], n2 = r2 + (REAL)c->eps;
            REAL dot = 0;
#pragma omp simd reduction(+ : dot)
            for (long j = 0; j < D; j++) dot += gFi[j] * Fni[j];
            const REAL k = dot / (n2 * r2), inv2 = 1 / n2;
#pragma omp simd
            for (long j = 0; j < D; j++) {
                const REAL wc = Wi[j] + n2 * Fni[j];
                gPi[j] = gFi[j] * inv2 - k * wc;
                gWi[j] -= k * wc;
            }
        } else {
            memcpy(gPi, gFi, sizeof(REAL) * D);
        }
        if (c->clamp > 0) {
            const unsigned char *restrict mi = mask + i * D;
#pragma omp simd
            for (long j = 0; j < D; j++) gPi[j] = mi[j] ? gPi[j] : 0;
        }
        const REAL hi = h[i], inv = pre_norm ? 1 / (R[i] + (REAL)c->eps) : 1;
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
        if (!deferred)
            row_backward(c, i, W, lam, F, v, h, R, S, grad_out, gF, gh, gW, gb, gP, gu, gv, acc,
                         dot);
    }
    if (deferred)
        for (long i = 0; i < H; i++)
            row_backward(c, i, W, lam, F, v, h, R, S, grad_out, gF, gh, gW, gb, gP, gu, gv,
                         g_hebb[i], pre_dot[i]);
    if (deferred) {
        for (long j = 0; j < NI; j++) gx[j] = gv[j] + gu[j];
        memcpy(gh, gv + NI, sizeof(REAL) * H);
    } else {
        for (long j = 0; j < D; j++) gv[j] += gu[j];
        memcpy(gx, gv, sizeof(REAL) * NI);
        if (c->recurrent) memcpy(gh, gv + NI, sizeof(REAL) * H);
    }
}

void stpn_backward(const Cfg *c, long b0, long b1, const REAL *W, const REAL *lam,
                   const REAL *gam, const REAL *ckpt, const REAL *V, const REAL *out,
                   const REAL *R, const REAL *S, const REAL *R2, const REAL *grad_out, REAL *gF,
                   REAL *gh, REAL *gx, REAL *gW, REAL *gb, REAL *glam, REAL *ghebb) {
    const long B = c->B, H = c->H, D = c->D, NI = c->NI, HD = c->H * c->D, K = c->K;
    REAL *ws = malloc(sizeof(REAL) * HD * (K + 1)), *gP = malloc(sizeof(REAL) * HD);
    unsigned char *mask = c->clamp > 0 ? malloc(HD * K) : NULL;
    REAL *gu = malloc(sizeof(REAL) * D), *gv = malloc(sizeof(REAL) * D);
    REAL *ubuf = malloc(sizeof(REAL) * D), *g_hebb = malloc(sizeof(REAL) * H);
    REAL *pre_dot = malloc(sizeof(REAL) * H);
    const REAL *noR = NULL;
    for (long b = b0; b < b1; b++) {
        for (long t0 = ((c->T - 1) / K) * K; t0 >= 0; t0 -= K) {
            const long t1 = t0 + K < c->T ? t0 + K : c->T;
            memcpy(ws, ckpt + ((t0 / K) * B + b) * HD, sizeof(REAL) * HD);
            for (long t = t0; t < t1; t++) { /* recompute F over the chunk, with the clamp mask */
                const long tb = t * B + b;
                update_memory(c, W, lam, gam, ws + (t - t0) * HD, ws + (t - t0 + 1) * HD,
                              presynaptic(c, V + tb * D, out + tb * H, ubuf), out + tb * H,
                              c->normalise ? R + tb * H : noR, c->post ? (REAL *)R2 + tb * H : NULL,
                              mask ? mask + (t - t0) * HD : NULL, 0);
            }
            for (long t = t1 - 1; t >= t0; t--) {
                const long tb = t * B + b;
                const REAL *v = V + tb * D, *h = out + tb * H;
                step_backward(c, W, lam, gam, ws + (t - t0) * HD, ws + (t - t0 + 1) * HD,
                              mask ? mask + (t - t0) * HD : NULL, v, presynaptic(c, v, h, ubuf), h,
                              c->normalise ? R + tb * H : noR, S + tb * H,
                              c->post ? R2 + tb * H : NULL, grad_out + tb * H, gF + b * HD,
                              gh + b * H, gx + tb * NI, gW, gb, glam, ghebb, gP, gu, gv, g_hebb,
                              pre_dot);
            }
        }
    }
    free(ws);
    free(gP);
    free(mask);
    free(gu);
    free(gv);
    free(ubuf);
    free(g_hebb);
    free(pre_dot);
}
