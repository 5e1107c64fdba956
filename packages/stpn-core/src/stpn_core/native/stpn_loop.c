/* The STPN time loop, forward and hand-derived backward, fused per (group of samples, step).
 *
 * Why C: per step the STPN touches its B x H x D memory F a dozen times; as separate torch ops
 * each touch is a pass through main memory. Here the loops run one group of samples at a time, so
 * the group's H x D block (and its gradient) stays in cache for the whole sequence. The forward
 * keeps F only every K steps (checkpoints); the backward recomputes each K-step chunk into a
 * small cache-resident workspace and walks it backwards. Compiled once per build (about a
 * second, no torch headers) and called through ctypes; the math is that of
 * stpn_core/stpn/loop.py, which documents the notation. A call runs samples [b0, b1) (a
 * multiple of LANES of them) on `threads` OpenMP threads, each taking a contiguous run of whole
 * groups. Built with -fopenmp, the library shares the OpenMP runtime that torch loaded (same
 * soname), so the threads are torch's own, already awake after its last operation: a pool of
 * our own (Python threads) had to wake a sleeping thread per call, which cost more than it
 * saved below about 4M synapse-steps, and competed with torch's threads that were still spinning.
 *
 * A group is LANES samples with the samples in the vector lanes: a vector holds one synapse
 * (i, j) of LANES samples, W, Λ and Γe (the same for every sample) are broadcast, and every
 * per-sample quantity (sums, norms, divisions, activations, gradient accumulators) is a whole
 * vector, so nothing is reduced across lanes until the batch is done. The same source is built
 * with LANES = 1 for the samples left over after the last whole group (and for a batch smaller
 * than a group, such as a single long sequence): a "vector" is then one REAL, and the compiler
 * vectorises along the row j instead.
 *
 * REAL is float or double (-DREAL=...), LANES the samples per vector (-DLANES=...). Arrays are
 * contiguous and batch-major, so one sample's sequence is one contiguous block and the torch
 * side needs no transposes: x and its gradient (B,T,NI), h0 (B,H), out and the output gradient
 * (B,T,H), F0 (B,H,D). Only C reads S, R, R2 (B,T,H) and the checkpoints (B,ceil(T/K)-1,H,D) (F at
 * t = K, 2K, ...; F0 is the one at t = 0): a group stores its blocks of them lane-interleaved
 * ([.][lane]); x, h0, F0, out and the gradients are gathered or scattered once per call, into
 * or out of lane-interleaved copies. h0 and F0 may be NULL: the state starts at zero. The
 * presynaptic vector v_t = [x_t; h_{t-1}] is assembled per step from those of x, h0 and out,
 * instead of being stored. lam and gam are (H,D); gam is the effective gamma (Λ⊙Γ for
 * prompt_decay, since Λ⊙(M + Γ⊙Δ) = Λ⊙M + ΛΓ⊙Δ), so the loops need no branch on the update. Freshly allocated
 * output memory costs a page fault per 4 KiB on first touch, so nothing is stored that can be
 * rebuilt cheaply.
 */
#include <stdlib.h>
#include <string.h>
#include <tgmath.h> /* type-generic: tanh, exp, sqrt in REAL precision */
#ifdef __AVX__ /* x86 with 256-bit vectors or wider: vclamp's max and min (X86 below) */
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#else /* built without OpenMP (no libgomp): every call runs on the calling thread */
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

typedef struct {
    long T, B, NI, H, D, K;
    int recurrent, normalise, post, current, act, has_bias;
    double clamp, eps; /* clamp <= 0: none */
} Cfg;

/* Scratch aligned to whole cache lines, so that no aligned vector load straddles two lines
 * (malloc only guarantees 16 bytes). */
static REAL *scratch(long n) {
    const size_t bytes = ((sizeof(REAL) * (size_t)n + 63) / 64 + 1) * 64;
    return aligned_alloc(64, bytes);
}

/* h = act(a) in place over n values (a group's units), vectorised (exp from the vector math library).
 * Both activations take exp of -|a| only, so its value lies in (0, 1] for any finite a and
 * no divisor can overflow (the former 1 - 2/(exp(2a) + 1) gave NaN in float32 from a = 44 on:
 * under -ffast-math a division may become a reciprocal estimate refined by a Newton step, which
 * turns an infinite divisor into NaN). The quotient is the small term (q = e/(1+e)), so even an
 * estimated division leaves the saturated values exactly ±1, 0 and 1, as torch's. */
static void activate_all(REAL *h, long n, int act) {
    switch (act) {
    case 0:
#pragma omp simd
        for (long i = 0; i < n; i++) {
            const REAL e = exp(-2 * fabs(h[i])), t = 1 - 2 * e / (1 + e);
            h[i] = h[i] < 0 ? -t : t;
        }
        break;
    case 1:
#pragma omp simd
        for (long i = 0; i < n; i++) {
            const REAL e = exp(-fabs(h[i])), q = e / (1 + e);
            h[i] = h[i] < 0 ? q : 1 - q;
        }
        break;
    case 2:
#pragma omp simd
        for (long i = 0; i < n; i++) h[i] = h[i] > 0 ? h[i] : 0;
        break;
    default:
        break;
    }
}

/* Rows are walked back in blocks of ROW_BLOCK: first the part of every row that needs only
 * dL/dP (its sums over the row), then the per-unit scalars for the whole block at once (a
 * vectorised loop, instead of a chain of divisions per row), then the part that needs those
 * scalars. A block's rows stay in L1 between the passes. */
#define ROW_BLOCK 8

#ifndef LANES /* no default: a caller that assumed another layout would get unwritten outputs */
#error "build with -DLANES=<samples per vector> (backend_c.py does)"
#endif

/* Integers of REAL's width, through which the values' bits are read (may_alias: the same memory
 * is read as REAL elsewhere). */
typedef REAL real_1 __attribute__((vector_size(sizeof(REAL))));
typedef __typeof__(((real_1){0} < (real_1){0})[0]) real_bits __attribute__((may_alias));
/* A value's exponent bits (all ones: NaN or infinity) and magnitude bits (above EXPONENT: NaN). */
#define EXPONENT ((real_bits)(sizeof(REAL) == 4 ? 0x7f800000 : 0x7ff0000000000000))
#define MAGNITUDE ((real_bits)(sizeof(REAL) == 4 ? 0x7fffffff : 0x7fffffffffffffff))

#if LANES == 1
typedef REAL vec;

static inline vec bc(REAL s) { return s; }
static inline vec vsqrt(vec a) { return sqrt(a); }
/* a where c > 0, else 0: the norm's gradient at a zero row (as torch's vector_norm). */
static inline vec vpositive(vec c, vec a) { return c > 0 ? a : 0; }
/* p clamped to [-cl, cl], NaN kept. -ffast-math lets the compiler assume there is no NaN and
 * turn the selections into max and min instructions whose operand order drops one (a NaN Λ
 * would then give a memory of finite values), so a NaN is put back by its bits, about which the
 * compiler assumes nothing. */
static inline vec vclamp(vec p, REAL cl) {
    real_bits bits;
    memcpy(&bits, &p, sizeof bits);
    return (bits & MAGNITUDE) > EXPONENT ? p : (p > cl ? cl : (p < -cl ? -cl : p));
}
/* g where the clamp let p through, else 0. */
static inline vec vinside(vec p, REAL cl, vec g) { return (p >= -cl) & (p <= cl) ? g : 0; }
static inline vec relu_grad(vec h) { return h > 0 ? 1 : 0; }
#else
/* Aligned to REAL only: the stored S, R, R2 and checkpoints start where the caller's batch split
 * puts them (unaligned vector loads cost the same as aligned ones on data that is aligned). */
typedef REAL vec __attribute__((vector_size(LANES * sizeof(REAL)), aligned(sizeof(REAL))));

static inline vec bc(REAL s) { return (vec){0} + s; }

/* Lane-wise selections as bit masks (a comparison of vectors gives 0 or all ones per lane), so
 * they compile to vector compares and logic, not to one lane at a time. */
typedef __typeof__((vec){0} < (vec){0}) vmask;

static inline vec vselect(vmask m, vec a, vec b) { return (vec)(((vmask)a & m) | ((vmask)b & ~m)); }

static inline vec vsqrt(vec a) {
    vec r;
    for (long l = 0; l < LANES; l++) r[l] = sqrt(a[l]);
    return r;
}

static inline vec vpositive(vec c, vec a) { return (vec)((vmask)a & (c > bc(0))); }

/* The x86 intrinsics that take a whole vector of the build, X86(op) (e.g. _mm256_max_ps), where
 * there are some: the suffix from REAL, the width from LANES. */
#define SUFFIX_float ps
#define SUFFIX_double pd
#define BITS_float 32
#define BITS_double 64
#define PASTE_(a, b) a##b
#define PASTE(a, b) PASTE_(a, b)
#define VEC_BITS (LANES * PASTE(BITS_, REAL))
#if VEC_BITS == 512 && defined(__AVX512F__)
#define X86(op) PASTE(PASTE(_mm512_, op), PASTE(_, PASTE(SUFFIX_, REAL)))
#elif VEC_BITS == 256 && defined(__AVX__)
#define X86(op) PASTE(PASTE(_mm256_, op), PASTE(_, PASTE(SUFFIX_, REAL)))
#endif

/* p clamped to [-cl, cl], NaN kept (see the one-sample build's). With x86 vectors, one max and
 * one min instruction, which give their second operand when either is NaN, so p goes second.
 * The memory update clamps every synapse at every step: with the instructions instead of the
 * selections (two compares and three logic operations, and a NaN put back by its bits), the
 * maze policy's forward (B 16, T 200, post norm, clamp 1) ran 15-17 % shorter, same values. */
static inline vec vclamp(vec p, REAL cl) {
#ifdef X86
    typedef __typeof__(X86(setzero)()) x86_vec;
    return (vec)X86(min)((x86_vec)bc(cl), X86(max)((x86_vec)bc(-cl), (x86_vec)p));
#else
    const vmask nan = ((vmask)p & MAGNITUDE) > EXPONENT;
    return vselect(nan, p, vselect(p > bc(cl), bc(cl), vselect(p < bc(-cl), bc(-cl), p)));
#endif
}

static inline vec vinside(vec p, REAL cl, vec g) {
    return (vec)((vmask)g & ((p >= bc(-cl)) & (p <= bc(cl))));
}

static inline vec relu_grad(vec h) { return (vec)((vmask)bc(1) & (h > bc(0))); }
#endif

long stpn_lanes(void) { return LANES; }

/* Whether n values hold a NaN or an infinity: a value whose exponent bits are all ones. Read as
 * integers, since under -ffast-math the compiler may take every value as finite and fold
 * isfinite() to true. */
static int nonfinite(const REAL *values, long n) {
    const real_bits *bits = (const real_bits *)values;
    real_bits top = 0;
#pragma omp simd reduction(max : top)
    for (long k = 0; k < n; k++) {
        const real_bits e = bits[k] & EXPONENT;
        top = e > top ? e : top;
    }
    return top == EXPONENT;
}

/* In the one-sample build, asks the compiler to vectorise the loop that follows (along a row, or
 * over units; the clauses name its sums); the group build's loops are vector code already. */
#if LANES == 1
#define PRAGMA(text) _Pragma(#text)
#define VECTORISE(clauses) PRAGMA(omp simd clauses)
#else
#define VECTORISE(clauses)
#endif

/* A group's row sum runs in CHAINS interleaved partial sums, so the adds do not wait on each
 * other; the one-sample build needs one, which the compiler splits across a vector's values. */
#define CHAINS (LANES == 1 ? 1 : 4)

static inline vec sum_chains(const vec *s) {
    vec total = s[0];
    for (int k = 1; k < CHAINS; k++) total += s[k];
    return total;
}

static inline vec vactivation_grad(vec h, int act) {
    switch (act) {
    case 0: return 1 - h * h;
    case 1: return h * (1 - h);
    case 2: return relu_grad(h);
    default: return bc(1);
    }
}

/* P = Λ⊙M + Γe⊙(h u) for one synapse of the group: one expression for the forward and the
 * backward's recomputation of the clamp mask, so both round alike. */
static inline vec plastic(REAL lam, vec M, REAL gam, vec hu) { return lam * M + gam * hu; }

/* u_t: v_t, or [x_t; h_t] for presynaptic="current" (written into buf). */
static const vec *group_u(const Cfg *c, const vec *v, const vec *h, vec *buf) {
    if (!(c->current && c->recurrent)) return v;
    memcpy(buf, v, sizeof(vec) * c->NI);
    memcpy(buf + c->NI, h, sizeof(vec) * c->H);
    return buf;
}

/* A group's workspace (a few memories of LANES samples: hundreds of KiB to MiB) kept per thread
 * between calls in one of two slots: allocated afresh, its pages would be faulted in on every
 * call, which cost more than a whole single-step call computes. Never freed (the callers'
 * threads live as long as the process). */
static vec *kept(int slot, long n) {
    static _Thread_local vec *buffers[2];
    static _Thread_local long sizes[2];
    if (n > sizes[slot]) {
        free(buffers[slot]);
        buffers[slot] = (vec *)scratch(n * LANES);
        sizes[slot] = n;
    }
    return buffers[slot];
}

#if LANES == 1
/* dst[k] = src[k]: one sample's values need no transposing. */
static void gather(vec *restrict dst, const REAL *restrict src, long stride, long n) {
    (void)stride;
    memcpy(dst, src, sizeof(REAL) * n);
}

static void scatter(REAL *restrict dst, long stride, const vec *restrict src, long n) {
    (void)stride;
    memcpy(dst, src, sizeof(REAL) * n);
}

static void reduce_lanes(REAL *restrict dst, const vec *restrict src, long n) {
    memcpy(dst, src, sizeof(REAL) * n);
}
#else
/* Transposing LANES x LANES tiles in registers: at each scale d (1, 2, 4, ...) the off-diagonal
 * d x d blocks of every 2d x 2d block swap, with two two-source shuffles per pair of rows. Every
 * loop has a constant trip count and is unrolled, so the shuffle patterns are constants and the
 * tile never leaves the registers (with the patterns built at run time and the loops left
 * rolled, a transpose spilled the tile and branched per row: a T = 1 call spent 4x longer moving
 * the memory in and out than updating it). */
#define SWAP_LO(k, d) (((k) & (d)) ? LANES + (k) - (d) : (k)) /* lane k of the lower row */
#define SWAP_HI(k, d) (((k) & (d)) ? LANES + (k) : (k) + (d))  /* lane k of the upper row */
#if LANES == 4
#define PATTERN(f, d) {f(0, d), f(1, d), f(2, d), f(3, d)}
#elif LANES == 8
#define PATTERN(f, d) {f(0, d), f(1, d), f(2, d), f(3, d), f(4, d), f(5, d), f(6, d), f(7, d)}
#elif LANES == 16
#define PATTERN(f, d)                                                                          \
    {f(0, d),  f(1, d),  f(2, d),  f(3, d),  f(4, d),  f(5, d),  f(6, d),  f(7, d),             \
     f(8, d),  f(9, d),  f(10, d), f(11, d), f(12, d), f(13, d), f(14, d), f(15, d)}
#else
#error "group builds take 4, 8 or 16 lanes"
#endif

/* Integer lanes of REAL's width: shuffle patterns as constant vectors. */
typedef __typeof__(((vec){0} < (vec){0})[0]) lane_int;
typedef lane_int pattern __attribute__((vector_size(LANES * sizeof(REAL))));

static inline __attribute__((always_inline)) void swap_blocks(vec *t, const long d) {
    const pattern lo = PATTERN(SWAP_LO, d), hi = PATTERN(SWAP_HI, d);
#pragma GCC unroll 16
    for (long r = 0; r < LANES; r++)
        if (!(r & d)) {
            const vec a = t[r], b = t[r + d];
            t[r] = __builtin_shuffle(a, b, lo);
            t[r + d] = __builtin_shuffle(a, b, hi);
        }
}

static inline __attribute__((always_inline)) void transpose_tile(vec *t) {
    swap_blocks(t, 1);
    swap_blocks(t, 2);
#if LANES > 4
    swap_blocks(t, 4);
#endif
#if LANES > 8
    swap_blocks(t, 8);
#endif
}

/* dst[k] = the values src[k] of the LANES samples, sample l at src + l * stride. */
static void gather(vec *restrict dst, const REAL *restrict src, long stride, long n) {
    long k0 = 0;
    for (; k0 + LANES <= n; k0 += LANES) {
        vec tile[LANES];
#pragma GCC unroll 16
        for (long l = 0; l < LANES; l++) tile[l] = *(const vec *)(src + l * stride + k0);
        transpose_tile(tile);
#pragma GCC unroll 16
        for (long k = 0; k < LANES; k++) dst[k0 + k] = tile[k];
    }
    for (long k = k0; k < n; k++)
        for (long l = 0; l < LANES; l++) dst[k][l] = src[l * stride + k];
}

static void scatter(REAL *restrict dst, long stride, const vec *restrict src, long n) {
    long k0 = 0;
    for (; k0 + LANES <= n; k0 += LANES) {
        vec tile[LANES];
#pragma GCC unroll 16
        for (long k = 0; k < LANES; k++) tile[k] = src[k0 + k];
        transpose_tile(tile);
#pragma GCC unroll 16
        for (long l = 0; l < LANES; l++) *(vec *)(dst + l * stride + k0) = tile[l];
    }
    for (long k = k0; k < n; k++)
        for (long l = 0; l < LANES; l++) dst[l * stride + k] = src[k][l];
}

static void reduce_lanes(REAL *restrict dst, const vec *restrict src, long n) {
    for (long k = 0; k < n; k++) {
        REAL sum = 0;
        for (long l = 0; l < LANES; l++) sum += src[k][l];
        dst[k] = sum;
    }
}
#endif

/* A group's sequences (x, out and their gradients, (B, T, n) tensors) are moved in and out
 * lane-interleaved once per call: one transpose of LANES rows of T·n values, whose tiles
 * straddle the steps, instead of one per step of n values with a remainder moved value by value
 * (at the ART size, with n = 11 or 37, those remainders were most of the moving). The one-sample
 * build uses the tensors in place. Values of the group's sequence buffers, per call: */
static long sequence_values(const Cfg *c, int inputs, int outputs) {
    return LANES == 1 ? 0 : c->T * (inputs * c->NI + outputs * c->H);
}

/* The group's (T, n) block of src (B, T, n) from sample b0 on, lane-interleaved. */
static const vec *sequence_in(const REAL *src, long b0, long T, long n, vec *buf) {
#if LANES == 1
    (void)buf;
    return (const vec *)(src + b0 * T * n);
#else
    gather(buf, src + b0 * T * n, T * n, T * n);
    return buf;
#endif
}

/* Where the group writes its (T, n) block of dst: buf, moved to dst by sequence_out_done. */
static vec *sequence_out(REAL *dst, long b0, long T, long n, vec *buf) {
#if LANES == 1
    (void)buf;
    return (vec *)(dst + b0 * T * n);
#else
    (void)dst, (void)b0, (void)T, (void)n;
    return buf;
#endif
}

static void sequence_out_done(REAL *dst, long b0, long T, long n, const vec *buf) {
#if LANES == 1
    (void)dst, (void)b0, (void)T, (void)n, (void)buf;
#else
    scatter(dst + b0 * T * n, T * n, buf, T * n);
#endif
}

/* v_t of the group: x_t, then h_{t-1} (h0 at t = 0) for a recurrent layer. */
static void group_presynaptic(const Cfg *c, const vec *xs, const vec *hs, const vec *h0, long t,
                              vec *v) {
    memcpy(v, xs + t * c->NI, sizeof(vec) * c->NI);
    if (c->recurrent) memcpy(v + c->NI, t ? hs + (t - 1) * c->H : h0, sizeof(vec) * c->H);
}

/* h_t = act(G v / n + b) of the group, storing S and R. */
static void group_outputs(const Cfg *c, const REAL *W, const REAL *bias, const vec *F,
                          const vec *v, vec *h, vec *S, vec *R) {
    const long H = c->H, D = c->D;
    for (long i = 0; i < H; i++) {
        const REAL *restrict Wi = W + i * D;
        const vec *restrict Fi = F + i * D;
        vec ss[CHAINS], s[CHAINS];
        for (int k = 0; k < CHAINS; k++) ss[k] = s[k] = bc(0);
        long j = 0;
        for (; j + CHAINS <= D; j += CHAINS)
            for (int k = 0; k < CHAINS; k++) {
                const vec g = Fi[j + k] + Wi[j + k];
                ss[k] += g * g;
                s[k] += g * v[j + k];
            }
        for (; j < D; j++) {
            const vec g = Fi[j] + Wi[j];
            ss[0] += g * g;
            s[0] += g * v[j];
        }
        const vec sum = sum_chains(s);
        vec a = sum;
        if (c->normalise) {
            const vec r = vsqrt(sum_chains(ss));
            R[i] = r;
            a = sum / (r + (REAL)c->eps);
        }
        S[i] = sum;
        h[i] = c->has_bias ? a + bias[i] : a;
    }
    activate_all((REAL *)h, H * LANES, c->act);
}

/* F_{t+1} of the group from F_t, h_t, u_t and the stored norms. With store_r2 the post norm is
 * computed and stored; otherwise the stored one is used, so a recomputation is bit-identical. */
static void group_update(const Cfg *c, const REAL *W, const REAL *lam, const REAL *gam,
                         const vec *F, vec *Fn, const vec *u, const vec *h, const vec *R,
                         vec *R2, int store_r2) {
    const long H = c->H, D = c->D;
    const int pre_norm = c->normalise && !c->post;
    const REAL cl = (REAL)c->clamp, eps = (REAL)c->eps;
    for (long i = 0; i < H; i++) {
        const REAL *restrict Wi = W + i * D, *restrict li = lam + i * D, *restrict gi = gam + i * D;
        const vec *restrict Fi = F + i * D;
        vec *restrict Pi = Fn + i * D;
        const vec inv = pre_norm ? 1 / (R[i] + eps) : bc(1), hi = h[i];
        if (c->post && !store_r2) { /* the stored norm scales each value as it is made */
            const vec inv2 = 1 / (R2[i] + eps);
            for (long j = 0; j < D; j++) {
                vec P = plastic(li[j], Fi[j], gi[j], hi * u[j]);
                if (cl > 0) P = vclamp(P, cl);
                Pi[j] = P * inv2;
            }
            continue;
        }
        if (!c->post) {
            for (long j = 0; j < D; j++) {
                const vec P = plastic(li[j], pre_norm ? Fi[j] * inv : Fi[j], gi[j], hi * u[j]);
                Pi[j] = cl > 0 ? vclamp(P, cl) : P;
            }
            continue;
        }
        /* The post norm's sum of squares in CHAINS interleaved partial sums. */
        vec ss[CHAINS];
        for (int k = 0; k < CHAINS; k++) ss[k] = bc(0);
        long j = 0;
        for (; j + CHAINS <= D; j += CHAINS)
            for (int k = 0; k < CHAINS; k++) {
                vec P = plastic(li[j + k], Fi[j + k], gi[j + k], hi * u[j + k]);
                if (cl > 0) P = vclamp(P, cl);
                const vec g = P + Wi[j + k];
                ss[k] += g * g;
                Pi[j + k] = P;
            }
        for (; j < D; j++) {
            vec P = plastic(li[j], Fi[j], gi[j], hi * u[j]);
            if (cl > 0) P = vclamp(P, cl);
            const vec g = P + Wi[j];
            ss[0] += g * g;
            Pi[j] = P;
        }
        if (store_r2) R2[i] = vsqrt(sum_chains(ss));
        const vec inv2 = 1 / (R2[i] + eps);
        for (j = 0; j < D; j++) Pi[j] *= inv2;
    }
}

/* The group's memory (or h) at t = 0 into dst: src's, or zeros where src is NULL (no state
 * given: the caller need not build one). */
static void group_start(vec *dst, const REAL *src, long b0, long n) {
    if (src) gather(dst, src + b0 * n, n, n);
    else memset(dst, 0, sizeof(vec) * n);
}

/* Of the inputs named by `check` (bit 0: x, 1: h0, 2: F0), those where the group's samples hold
 * a NaN or an infinity, as the same bits. Each group's block of an input is contiguous. */
static int group_nonfinite(const Cfg *c, long b0, int check, const REAL *x, const REAL *h0,
                           const REAL *F0) {
    const long T = c->T, H = c->H, HD = c->H * c->D, NI = c->NI;
    int found = 0;
    if (check & 1) found |= nonfinite(x + b0 * T * NI, LANES * T * NI);
    if ((check & 2) && h0) found |= nonfinite(h0 + b0 * H, LANES * H) << 1;
    if ((check & 4) && F0) found |= nonfinite(F0 + b0 * HD, LANES * HD) << 2;
    return found;
}

static void group_forward(const Cfg *c, long b0, const REAL *W, const REAL *bias,
                          const REAL *lam, const REAL *gam, const REAL *F0, const REAL *x,
                          const REAL *h0, REAL *out, REAL *R, REAL *S, REAL *R2, REAL *ckpt,
                          REAL *F_final, vec *work) {
    const long T = c->T, H = c->H, D = c->D, HD = c->H * c->D, NI = c->NI, K = c->K;
    const long n_ckpt = (T + K - 1) / K - 1;
    vec *F = work, *Fn = F + HD, *v = Fn + HD, *ubuf = v + D, *hg0 = ubuf + D, *seq = hg0 + H;
    vec *Sg = (vec *)(S + b0 * T * H), *ck = (vec *)(ckpt + b0 * n_ckpt * HD);
    vec *Rg = R ? (vec *)(R + b0 * T * H) : NULL, *R2g = R2 ? (vec *)(R2 + b0 * T * H) : NULL;
    const vec *xs = sequence_in(x, b0, T, NI, seq);
    vec *hs = sequence_out(out, b0, T, H, seq + T * NI);
    group_start(F, F0, b0, HD);
    if (c->recurrent) group_start(hg0, h0, b0, H);
    for (long t = 0; t < T; t++) {
        vec *h = hs + t * H;
        if (t > 0 && t % K == 0) memcpy(ck + (t / K - 1) * HD, F, sizeof(vec) * HD);
        group_presynaptic(c, xs, hs, hg0, t, v);
        group_outputs(c, W, bias, F, v, h, Sg + t * H, Rg ? Rg + t * H : NULL);
        group_update(c, W, lam, gam, F, Fn, group_u(c, v, h, ubuf), h, Rg ? Rg + t * H : NULL,
                     R2g ? R2g + t * H : NULL, 1);
        vec *tmp = F;
        F = Fn;
        Fn = tmp;
    }
    sequence_out_done(out, b0, T, H, hs);
    scatter(F_final + b0 * HD, HD, F, HD);
}

/* The calling team member's share of the groups in [b0, b1): [*g0, *g1), in samples. */
static void share(long b0, long b1, long *g0, long *g1) {
    const long groups = (b1 - b0) / LANES, k = omp_get_thread_num(), n = omp_get_num_threads();
    *g0 = b0 + LANES * (groups * k / n);
    *g1 = b0 + LANES * (groups * (k + 1) / n);
}

/* Runs the sequence of samples [b0, b1); h0 and F0 may be NULL (zeros). Returns which of the
 * inputs named by `check` (see group_nonfinite) hold a NaN or an infinity: the caller raises,
 * having had the check at the cost of one more read of memory the loop reads anyway. */
long stpn_forward(const Cfg *c, long threads, long b0, long b1, int check, const REAL *W,
                  const REAL *bias, const REAL *lam, const REAL *gam, const REAL *F0,
                  const REAL *x, const REAL *h0, REAL *out, REAL *R, REAL *S, REAL *R2,
                  REAL *ckpt, REAL *F_final) {
    long found = 0;
#pragma omp parallel num_threads(threads) if (threads > 1) reduction(| : found)
    {
        vec *work = kept(0, 2 * c->H * c->D + 2 * c->D + c->H + sequence_values(c, 1, 1));
        long g0, g1;
        share(b0, b1, &g0, &g1);
        for (; g0 < g1; g0 += LANES) {
            if (check) found |= group_nonfinite(c, g0, check, x, h0, F0);
            group_forward(c, g0, W, bias, lam, gam, F0, x, h0, out, R, S, R2, ckpt, F_final,
                          work);
        }
    }
    return found;
}

/* Per-lane sums of the parameter gradients over the groups, reduced across lanes at the end. */
typedef struct {
    vec *gW, *glam, *ghebb, *gb;
} LaneGrads;

/* One row's inputs to its first pass back: its parameters, memories, gradients and scalars. */
typedef struct {
    const REAL *restrict W, *restrict lam, *restrict gam;
    const vec *restrict F, *restrict Fn, *restrict u, *restrict gF;
    vec *restrict gP, *restrict gu, *restrict glam, *restrict ghebb;
    vec h, inv, k, n2, inv2;
    REAL cl;
    long D;
} Row;

/* Element j of the first pass back along a row: dL/dP from dL/dF_{t+1} (through the post norm
 * and the clamp, stored in gP for the last pass unless it is dL/dF_{t+1} itself), then what
 * needs only dL/dP (gu, the Λ and Γe gradients); returns the element's share of the Hebbian
 * term's gradient, and adds its share of the pre norm's dot product to *dot. Called with
 * constant flags, so each mix of options compiles to its own loop without branches. */
static inline __attribute__((always_inline)) vec row_back_at(const Row *r, long j,
                                                             const int post, const int clamped,
                                                             const int pre_norm, vec *dot) {
    vec gp = r->gF[j];
    const vec Fj = r->F[j], hu = r->h * r->u[j];
    if (post) gp = gp * r->inv2 - r->k * (r->W[j] + r->n2 * r->Fn[j]); /* gW's share: last pass */
    if (clamped)
        gp = vinside(plastic(r->lam[j], pre_norm ? Fj * r->inv : Fj, r->gam[j], hu), r->cl, gp);
    if (post || clamped) r->gP[j] = gp;
    const vec gpg = gp * r->gam[j], gpF = gp * Fj;
    r->gu[j] += gpg * r->h;
    r->ghebb[j] += gp * hu;
    if (pre_norm) {
        *dot += r->lam[j] * gpF;
        r->glam[j] += gpF * r->inv;
    } else {
        r->glam[j] += gpF;
    }
    return gpg * r->u[j];
}

/* The first pass back along a row (row_back_at), its sums in CHAINS interleaved partials:
 * returns the Hebbian term's gradient, the pre norm's dot product in *dot. */
static inline __attribute__((always_inline)) vec row_back(const Row *r, const int post,
                                                          const int clamped, const int pre_norm,
                                                          vec *dot) {
#if LANES == 1
    vec a = 0, dt = 0;
    VECTORISE(reduction(+ : a, dt))
    for (long j = 0; j < r->D; j++) a += row_back_at(r, j, post, clamped, pre_norm, &dt);
    *dot = dt;
    return a;
#else
    vec a[CHAINS], dt[CHAINS];
    for (int k = 0; k < CHAINS; k++) a[k] = dt[k] = bc(0);
    long j = 0;
    for (; j + CHAINS <= r->D; j += CHAINS)
        for (int k = 0; k < CHAINS; k++)
            a[k] += row_back_at(r, j + k, post, clamped, pre_norm, &dt[k]);
    for (; j < r->D; j++) a[0] += row_back_at(r, j, post, clamped, pre_norm, &dt[0]);
    *dot = sum_chains(dt);
    return sum_chains(a);
#endif
}

/* One step back for the group. gF (H,D) holds dL/dF_{t+1} on entry and dL/dF_t on exit; gh (H)
 * likewise carries dL/dh_t -> dL/dh_{t-1}; go holds dL/dh_t from the output; on exit gv[0:NI]
 * holds dL/dx_t. The parameter gradients accumulate in acc (dL/d(W, Λ, Γe, b), per lane). With
 * presynaptic="current" every unit's output gradient also needs the Hebbian gradient of
 * u_t = [x_t; h_t] from all rows, so the block is the whole layer. gP is a (block, D) buffer,
 * unit seven (H) buffers. With the post norm, the last of them carries each row's
 * dL/dF_t . F_t to the step before (have_d: it holds dL/dF_{t+1} . F_{t+1} on entry). */
static void group_step_back(const Cfg *c, const REAL *W, const REAL *lam, const REAL *gam,
                            const vec *F, const vec *Fn, const vec *v, const vec *u,
                            const vec *h, const vec *R, const vec *S, const vec *R2,
                            const vec *go, vec *gF, vec *gh, const LaneGrads *acc, vec *gP,
                            vec *gu, vec *gv, vec *unit, int have_d) {
    const long H = c->H, D = c->D, NI = c->NI;
    const int pre_norm = c->normalise && !c->post, deferred = c->current && c->recurrent;
    const int alias = !c->post && !(c->clamp > 0);
    const long RB = deferred ? H : ROW_BLOCK;
    const REAL eps = (REAL)c->eps, cl = (REAL)c->clamp;
    vec *g_hebb = unit, *pre_dot = unit + H, *gs = unit + 2 * H, *coef = unit + 3 * H;
    vec *pinv = unit + 4 * H, *kpost = unit + 5 * H, *gF_dot_F = unit + 6 * H;
    memset(gu, 0, sizeof(vec) * D);
    memset(gv, 0, sizeof(vec) * D);
    for (long i0 = 0; i0 < H; i0 += RB) {
        const long i1 = i0 + RB < H ? i0 + RB : H;
        for (long i = i0; i < i1; i++) {
            const REAL *restrict Wi = W + i * D, *restrict gi = gam + i * D;
            const REAL *restrict li = lam + i * D;
            vec *restrict gFi = gF + i * D, *restrict gPw = gP + (i - i0) * D;
            const vec *restrict Fi = F + i * D;
            vec *restrict glami = acc->glam + i * D, *restrict ghebbi = acc->ghebb + i * D;
            const vec hi = h[i], inv = pre_norm ? 1 / (R[i] + eps) : bc(1);
            vec k = bc(0), n2 = bc(1), inv2 = bc(1);
            if (c->post) {
                const vec *restrict Fni = Fn + i * D;
                const vec r2 = R2[i];
                vec d[CHAINS];
                for (int m = 0; m < CHAINS; m++) d[m] = bc(0);
                if (have_d) d[0] = gF_dot_F[i];
                else {
                    long j = 0;
                    for (; j + CHAINS <= D; j += CHAINS)
                        for (int m = 0; m < CHAINS; m++) d[m] += gFi[j + m] * Fni[j + m];
                    for (; j < D; j++) d[0] += gFi[j] * Fni[j];
                }
                n2 = r2 + eps;
                k = vpositive(r2, sum_chains(d) / (n2 * r2));
                inv2 = 1 / n2;
            }
            const Row row = {Wi, li, gi, Fi, Fn + i * D, u, gFi, gPw, gu, glami, ghebbi,
                             hi, inv, k, n2, inv2, cl, D};
            vec a, dot = bc(0);
            if (c->post) a = cl > 0 ? row_back(&row, 1, 1, 0, &dot) : row_back(&row, 1, 0, 0, &dot);
            else if (pre_norm)
                a = cl > 0 ? row_back(&row, 0, 1, 1, &dot) : row_back(&row, 0, 0, 1, &dot);
            else a = cl > 0 ? row_back(&row, 0, 1, 0, &dot) : row_back(&row, 0, 0, 0, &dot);
            g_hebb[i] = a;
            pre_dot[i] = dot;
            kpost[i] = k;
        }
        /* Per unit: dL/da through the activation, then dL/ds and the norm's coefficient. */
        VECTORISE()
        for (long i = i0; i < i1; i++) {
            vec g_total = go[i] + gh[i] + g_hebb[i];
            if (deferred) g_total += gu[NI + i];
            const vec ga = g_total * vactivation_grad(h[i], c->act);
            acc->gb[i] += ga;
            if (c->normalise) {
                const vec r = R[i], in = 1 / (r + eps);
                gs[i] = ga * in;
                vec gn = -ga * S[i] * in * in;
                if (!c->post) gn -= pre_dot[i] * in * in;
                coef[i] = vpositive(r, gn / r);
                pinv[i] = c->post ? bc(1) : in;
            } else {
                gs[i] = ga;
                coef[i] = bc(0);
                pinv[i] = bc(1);
            }
        }
        for (long i = i0; i < i1; i++) {
            vec *gFi = gF + i * D; /* may alias gPi: each element is read before written */
            const vec *gPi = alias ? gFi : gP + (i - i0) * D;
            vec *restrict gWi = acc->gW + i * D;
            const vec *restrict Fi = F + i * D;
            const REAL *restrict Wi = W + i * D, *restrict li = lam + i * D;
            const vec gsi = gs[i], ci = coef[i], pi = pinv[i];
            if (c->post) {
                /* dL/dW also takes the post norm's share, -k (W + n2 F_{t+1}); and the row's
                 * dL/dF_t . F_t, which the step before needs first, is summed here, where
                 * both are at hand. */
                const vec *restrict Fni = Fn + i * D;
                const vec ki = kpost[i], n2i = R2[i] + eps;
                vec dot = bc(0);
                VECTORISE(reduction(+ : dot))
                for (long j = 0; j < D; j++) {
                    const vec G = Fi[j] + Wi[j];
                    const vec gG = gsi * v[j] + ci * G;
                    gWi[j] += gG - ki * (Wi[j] + n2i * Fni[j]);
                    gv[j] += gsi * G;
                    const vec gf = gG + li[j] * gPi[j] * pi;
                    gFi[j] = gf;
                    dot += gf * Fi[j];
                }
                gF_dot_F[i] = dot;
                continue;
            }
            VECTORISE()
            for (long j = 0; j < D; j++) {
                const vec G = Fi[j] + Wi[j];
                const vec gG = gsi * v[j] + ci * G;
                gWi[j] += gG;
                gv[j] += gsi * G;
                gFi[j] = gG + li[j] * gPi[j] * pi;
            }
        }
    }
    for (long j = 0; j < (deferred ? NI : D); j++) gv[j] += gu[j];
    if (c->recurrent) memcpy(gh, gv + NI, sizeof(vec) * H);
}

static void group_backward(const Cfg *c, long b0, const REAL *W, const REAL *lam,
                           const REAL *gam, const REAL *F0, const REAL *ckpt, const REAL *x,
                           const REAL *h0, const REAL *out, const REAL *R, const REAL *S,
                           const REAL *R2, const REAL *grad_out, const REAL *grad_F, REAL *gF_out,
                           REAL *gh_out, REAL *gx, const LaneGrads *acc, vec *work) {
    const long T = c->T, H = c->H, D = c->D, NI = c->NI, HD = c->H * c->D, K = c->K;
    const long n_ckpt = (T + K - 1) / K - 1, RB = c->current && c->recurrent ? H : ROW_BLOCK;
    vec *ws = work, *gF = ws + (K + 1) * HD, *gP = gF + HD, *gu = gP + RB * D, *gv = gu + D;
    vec *v = gv + D, *ubuf = v + D, *hg0 = ubuf + D, *gh = hg0 + H, *unit = gh + H;
    vec *seq = unit + 7 * H;
    const vec *xs = sequence_in(x, b0, T, NI, seq), *hs = sequence_in(out, b0, T, H, seq + T * NI);
    const vec *gos = sequence_in(grad_out, b0, T, H, seq + T * (NI + H));
    vec *gxs = gx ? sequence_out(gx, b0, T, NI, seq + T * (NI + 2 * H)) : NULL;
    const vec *Sg = (const vec *)(S + b0 * T * H);
    const vec *ck = (const vec *)(ckpt + b0 * n_ckpt * HD);
    const vec *Rg = R ? (const vec *)(R + b0 * T * H) : NULL;
    vec *R2g = R2 ? (vec *)(R2 + b0 * T * H) : NULL;
    if (grad_F) gather(gF, grad_F + b0 * HD, HD, HD);
    else memset(gF, 0, sizeof(vec) * HD);
    memset(gh, 0, sizeof(vec) * H);
    if (c->recurrent) group_start(hg0, h0, b0, H);
    for (long t0 = ((T - 1) / K) * K; t0 >= 0; t0 -= K) {
        const long t1 = t0 + K < T ? t0 + K : T;
        if (t0) memcpy(ws, ck + (t0 / K - 1) * HD, sizeof(vec) * HD);
        else group_start(ws, F0, b0, HD);
        for (long t = t0; t < t1; t++) { /* recompute F over the chunk */
            const vec *h = hs + t * H;
            group_presynaptic(c, xs, hs, hg0, t, v);
            group_update(c, W, lam, gam, ws + (t - t0) * HD, ws + (t - t0 + 1) * HD,
                         group_u(c, v, h, ubuf), h, Rg ? Rg + t * H : NULL,
                         R2g ? R2g + t * H : NULL, 0);
        }
        for (long t = t1 - 1; t >= t0; t--) {
            const vec *h = hs + t * H;
            group_presynaptic(c, xs, hs, hg0, t, v);
            group_step_back(c, W, lam, gam, ws + (t - t0) * HD, ws + (t - t0 + 1) * HD, v,
                            group_u(c, v, h, ubuf), h, Rg ? Rg + t * H : NULL, Sg + t * H,
                            R2g ? R2g + t * H : NULL, gos + t * H, gF, gh, acc, gP, gu, gv,
                            unit, t < T - 1);
            if (gxs) memcpy(gxs + t * NI, gv, sizeof(vec) * NI);
        }
    }
    if (gxs) sequence_out_done(gx, b0, T, NI, gxs);
    if (gF_out) scatter(gF_out + b0 * HD, HD, gF, HD);
    scatter(gh_out + b0 * H, H, gh, H);
}

/* The parameter gradients of samples [b0, b1) go to the first row of `grads`, 3 H·D + H values:
 * dL/dW, dL/dΛ, dL/dΓe (H·D each), then dL/db. `grads` has a row per thread asked for (team
 * member k writes its share to row k, and the rows are summed into the first after the team is
 * done): nothing in it needs zeroing, and nothing is left to sum outside. */
void stpn_backward(const Cfg *c, long threads, long b0, long b1, const REAL *W, const REAL *lam,
                   const REAL *gam, const REAL *F0, const REAL *ckpt, const REAL *x,
                   const REAL *h0, const REAL *out, const REAL *R, const REAL *S,
                   const REAL *R2, const REAL *grad_out, const REAL *grad_F, REAL *gF, REAL *gh,
                   REAL *gx, REAL *grads) {
    const long H = c->H, D = c->D, HD = c->H * c->D, K = c->K, n = 3 * HD + H;
    const long RB = c->current && c->recurrent ? H : ROW_BLOCK;
    long team = 1; /* the runtime may give fewer threads than asked for */
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        if (omp_get_thread_num() == 0) team = omp_get_num_threads();
        vec *work = kept(0, (K + 2) * HD + RB * D + 4 * D + 9 * H + sequence_values(c, 2, 2));
        vec *sums = kept(1, n);
        memset(sums, 0, sizeof(vec) * n);
        const LaneGrads acc = {sums, sums + HD, sums + 2 * HD, sums + 3 * HD};
        long g0, g1;
        share(b0, b1, &g0, &g1);
        for (; g0 < g1; g0 += LANES)
            group_backward(c, g0, W, lam, gam, F0, ckpt, x, h0, out, R, S, R2, grad_out, grad_F,
                           gF, gh, gx, &acc, work);
        REAL *row = grads + omp_get_thread_num() * n;
        reduce_lanes(row, acc.gW, HD);
        reduce_lanes(row + HD, acc.glam, HD);
        reduce_lanes(row + 2 * HD, acc.ghebb, HD);
        reduce_lanes(row + 3 * HD, acc.gb, H);
    }
    for (long k = 1; k < team; k++)
        for (long j = 0; j < n; j++) grads[j] += grads[k * n + j];
}
