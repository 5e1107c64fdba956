"""The fused loop in C: build ``native/stpn_loop.c``, load it and call it on torch tensors (ctypes).

The C file includes no torch header, so building it takes about a second with the system C
compiler. It is built twice per dtype: with a group of samples in the vector lanes (whole groups
of the batch) and with one sample per "vector" (the samples left over, or a batch smaller than a
group). Each library is cached per source, compiler flags and CPU (``$STPN_CACHE_DIR`` or
``~/.cache/stpn_core``), so later processes only load it. Without a working compiler,
:func:`library` returns ``None`` and the fast path runs on batched torch ops instead
(:mod:`.backend_torch`), which gives the same results, more slowly.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
import weakref
from functools import cache, lru_cache
from pathlib import Path

import torch
from torch import Tensor

from stpn_core.cli import env_flag
from stpn_core.stpn.loop import LoopConfig, Record, hebbian_rate, raise_nonfinite, rate_grads
from stpn_core.stpn.reference import ACTIVATIONS, NORM_EPS

SOURCE = Path(__file__).parent.parent / "native" / "stpn_loop.c"
# -ffast-math lets the row reductions vectorise and tanh/sigmoid use the vector exp of libm; the
# results differ from the reference only by rounding (the tests hold them to 1e-10 in float64).
# -mrecip=none keeps float32 divisions and square roots exact: their 12-bit estimates refined by
# one Newton step made float32 gradients up to 1000x less accurate than the reference's where the
# norm's gradient cancels (inputs of 1e4); the divisions are per unit, not per synapse.
FLAGS = ("-O3", "-march=native", "-ffast-math", "-mrecip=none", "-shared", "-fPIC", "-std=c11")
OPENMP_FLAGS = ("-fopenmp", "-fopenmp-simd")
"""Tried in turn: with OpenMP the C loop splits a batch across torch's threads (it links the
``libgomp.so.1`` that torch has loaded); a compiler without OpenMP's runtime gets the SIMD
pragmas alone, and the loop runs on the calling thread."""
WIDE_ROWS = 16
"""Rows of ``D`` a multiple of this many values get builds with 512-bit vectors, other rows
256-bit ones. The width matters for the one-sample build, whose compiler-vectorised loops run
along the row (a row of D = 72 as 4.5 512-bit vectors ran 30% slower than as 9 256-bit ones); in
whole groups (16 or 8 float32 samples per vector) both widths ran within a few percent of each
other at the ART and maze sizes."""
REAL_TYPES = {torch.float32: "float", torch.float64: "double"}
WORKSPACE_BYTES = 1 << 19
"""Budget per sample of the backward's workspace: it recomputes ``K`` steps of one group of
samples at a time into ``K + 1`` memories of ``H·D`` values per sample. ``K`` (the recompute
interval) is as large as the budget allows (between 8 and 64): fewer stored memories mean less
memory written by the forward (at the maze size, B 64, K = 16 and K = 33 ran within 3 % of each
other per training step, K = 8 13 % and K = 4 66 % slower; with the allocator's defaults, which
fault every fresh page in, K = 32 had run 5-15 % faster than K = 16)."""
MIN_WORK_PER_THREAD = 1 << 16
"""Synapse-steps (``B·H·D·T``) a thread must get before the batch is split across threads: for a
smaller job the hand-off costs more than it saves. On torch's awake OpenMP threads the hand-off
is cheap: a rollout step of 64 maze agents (2.5·10⁵ synapse-steps) ran 0.91-0.97 of
``nn.LSTM``'s time split in two, 0.97-1.23 on one thread (2 cores, 2026-12-02)."""


SPARE_MIN_BYTES = 1 << 22
"""Buffers that only the C loop reads (``S``, ``R``, ``R2``, the checkpoints) of at least this
size come from blocks of memory kept in the process (:func:`_internal`). The C library serves
a large request with a fresh mapping, each page of which faults in on its first write: at the
maze size with B 512 a training step took 39 000 page faults, and 15 % less time with 22 900
fewer when these buffers were reused (2026-12-02). Smaller ones come from ``torch.empty``."""
MAX_BLOCKS = 16
"""Blocks kept at most: a new one replaces the oldest that no tensor uses (four per run)."""

_blocks: list[tuple[bytearray, list[weakref.ref[memoryview]]]] = []
"""The kept blocks, each with a weak reference to the view lent out last (in a list, so that
it can be replaced): while a tensor uses the block, the view is alive."""
_blocks_lock = threading.Lock()  # a block is found free and lent out in one step


def _internal(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised tensor for one of the C loop's own buffers: a large one on a kept block
    that no tensor uses any more (the smallest that fits, at most twice the size), else on a
    new block. The tensor's storage holds the block's view, so the block stays taken for as
    long as any tensor (or autograd, for the backward) holds the buffer; a run freed, or its
    graph freed after the backward, frees it for the next run, in any order."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0 or nbytes < SPARE_MIN_BYTES:  # torch.frombuffer refuses an empty buffer
        return torch.empty(shape, dtype=dtype)
    with _blocks_lock:
        free = [b for b in _blocks if not b[1] or b[1][0]() is None]
        fits = [b for b in free if nbytes <= len(b[0]) <= 2 * nbytes]
        if fits:
            block = min(fits, key=lambda b: len(b[0]))
        else:
            if len(_blocks) >= MAX_BLOCKS:
                if not free:
                    return torch.empty(shape, dtype=dtype)
                _blocks.remove(free[0])
            block = (bytearray(nbytes), [])
            _blocks.append(block)
        view = memoryview(block[0])[:nbytes]
        block[1][:] = [weakref.ref(view)]
    return torch.frombuffer(view, dtype=dtype).view(shape)


class _CArgs(ctypes.Structure):
    """The C loop's ``Cfg`` struct: sizes, ``K`` and the options as ints."""

    _fields_ = [(name, ctypes.c_long) for name in ("T", "B", "I", "H", "D", "K")]
    _fields_ += [
        (name, ctypes.c_int)
        for name in ("recurrent", "normalise", "post", "current", "act", "has_bias")
    ]
    _fields_ += [("clamp", ctypes.c_double), ("eps", ctypes.c_double)]


def _cpu_signature() -> str:
    """The CPU's feature flags, since ``-march=native`` code may not run on another CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(real: str, width: int, lanes: int) -> Path | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not SOURCE.exists():
        return None
    errors = []
    for openmp in OPENMP_FLAGS:
        flags = (*FLAGS, openmp, f"-mprefer-vector-width={width}", f"-DLANES={lanes}",
                 f"-DREAL={real}")
        built = _compile(compiler, flags, f"stpn_loop_{real}{width}x{lanes}")
        if isinstance(built, Path):
            return built
        errors.append(built)
    warnings.warn(
        f"STPN: building the C loop failed ({errors[-1][-300:]}); the fast path runs on batched "
        "torch ops instead (same results, slower)",
        stacklevel=4,
    )
    return None


def _compile(compiler: str, flags: tuple[str, ...], stem: str) -> Path | str:
    """The library built with ``flags`` (cached), or the compiler's error message."""
    key = hashlib.sha256(
        SOURCE.read_bytes() + " ".join((compiler, *flags, _cpu_signature())).encode()
    ).hexdigest()[:16]
    cache_dir = Path(os.environ.get("STPN_CACHE_DIR", Path.home() / ".cache" / "stpn_core"))
    target = cache_dir / f"{stem}_{key}.so"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run(
            [compiler, *flags, str(SOURCE), "-o", str(built), "-lm"],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            return result.stderr.strip()
        os.replace(built, target)  # atomic: concurrent builders never see a partial file
    return target


@cache
def library(dtype: torch.dtype, width: int = 256, grouped: bool = True) -> ctypes.CDLL | None:
    """The loop compiled for ``dtype`` (float32 or float64) with ``width``-bit vectors, holding a
    group of samples each (``grouped``) or one sample (then the compiler vectorises the loops
    along the row); ``None`` when unavailable."""
    if env_flag("STPN_DISABLE_NATIVE") or dtype not in REAL_TYPES:
        return None
    lanes = width // (8 * dtype.itemsize) if grouped else 1
    try:
        path = _build(REAL_TYPES[dtype], width, lanes)
        lib = None if path is None else ctypes.CDLL(str(path))
    except OSError:
        return None
    if lib is not None:  # declared once, so calls pass plain ints without wrapper objects
        head = [ctypes.POINTER(_CArgs), ctypes.c_long, ctypes.c_long, ctypes.c_long]
        lib.stpn_forward.argtypes = head + [ctypes.c_int] + [ctypes.c_void_p] * 13
        lib.stpn_backward.argtypes = head + [ctypes.c_void_p] * 17
        lib.stpn_forward.restype = lib.stpn_lanes.restype = ctypes.c_long
        lib.stpn_backward.restype = None
    return lib


def libraries(dtype: torch.dtype, row: int) -> tuple[ctypes.CDLL, ctypes.CDLL] | None:
    """The group build and the one-sample build for rows of ``row`` values (see
    :data:`WIDE_ROWS`), or ``None`` when either is unavailable."""
    width = 512 if row % WIDE_ROWS == 0 else 256
    group, single = library(dtype, width), library(dtype, width, grouped=False)
    return None if group is None or single is None else (group, single)


def usable(x: Tensor, W: Tensor) -> bool:
    """Whether the C loop can take these tensors (CPU, float32/float64, and compiled)."""
    on_cpu = x.device.type == "cpu" and W.device.type == "cpu"
    return on_cpu and libraries(x.dtype, W.shape[1]) is not None


def _ptr(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _full(rate: Tensor, W: Tensor) -> Tensor:
    """``rate`` (per synapse or a scalar) as a contiguous ``W``-shaped tensor; a per-synapse
    one as it is (``expand`` took 2.5 µs a call, the shape test 0.3 µs)."""
    return (rate if rate.shape == W.shape else rate.expand(W.shape)).contiguous()


def _c_args(config: LoopConfig, shape: tuple[int, ...], has_bias: bool) -> _CArgs:
    return _CArgs(
        *shape, config.recurrent, config.normalise, config.post, config.current,
        ACTIVATIONS[config.activation].code, has_bias, config.clamp or 0.0, NORM_EPS,
    )


def recompute_interval(steps: int, H: int, D: int, itemsize: int) -> int:
    """``K``: the forward stores the memory every ``K`` steps and the backward recomputes the
    steps between (see :data:`WORKSPACE_BYTES`)."""
    return max(1, min(steps, 64, max(8, WORKSPACE_BYTES // (H * D * itemsize))))


Segment = tuple[ctypes.CDLL, int, int, int]
"""``(library, b0, b1, threads)``: one C call over the samples ``[b0, b1)`` on ``threads``
threads."""


def _segments(
    batch: int, sample_work: int, group: ctypes.CDLL, single: ctypes.CDLL
) -> tuple[Segment, ...]:
    """The group build over the batch's whole groups of samples, then the one-sample build over
    the samples left over, each on as many torch threads as its work allows (``sample_work``:
    synapse-steps per sample; see :data:`MIN_WORK_PER_THREAD`)."""
    lanes = group.stpn_lanes()
    whole = batch // lanes * lanes
    segments = []
    for lib, b0, b1, units in ((group, 0, whole, whole // lanes),
                               (single, whole, batch, batch - whole)):
        if b0 < b1:
            by_work = (b1 - b0) * sample_work // MIN_WORK_PER_THREAD
            segments.append((lib, b0, b1, max(1, min(torch.get_num_threads(), units, by_work))))
    return tuple(segments)


@lru_cache(maxsize=256)
def _plan(
    config: LoopConfig, shape: tuple[int, ...], dtype: torch.dtype, has_bias: bool,
    threads: int, min_work: int,
) -> tuple[_CArgs, tuple[Segment, ...]]:
    """The C arguments and the calls (:data:`Segment`) of a forward at ``shape`` ``(T, B, I, H,
    D, K)``, built once per shape and options: at a rollout step (``T = 1``) building them took
    as long as the loop itself. ``threads`` and ``min_work`` (the torch threads and
    :data:`MIN_WORK_PER_THREAD`, which :func:`_segments` reads) only key the cache. The C loop
    reads the struct (``const``), so records and threads share it."""
    T, B, _, H, D, _ = shape
    group, single = libraries(dtype, D)
    return _c_args(config, shape, has_bias), _segments(B, H * D * T, group, single)


def forward(
    x: Tensor, h0: Tensor | None, F0: Tensor | None, W: Tensor, b: Tensor | None, lam: Tensor,
    gam: Tensor, config: LoopConfig, check: int = 0,
) -> Record:
    """The sequence forward in C over ``x`` ``(B, T, I)``: outputs ``(B, T, H)``, final memory
    and what :func:`backward` needs. Buffers are left uninitialised: C writes all of them.
    ``h0``, ``F0``: ``None`` for zeros. ``check``: the inputs to test for NaN and infinity
    (:data:`.loop.CHECKED`); the C loop tests each group's values just before it reads them,
    instead of a torch reduction per input and call."""
    B, T, I = x.shape  # noqa: E741
    H, D = W.shape
    every = recompute_interval(T, H, D, x.element_size())
    opts = {"device": x.device, "dtype": x.dtype}
    out, F_final = torch.empty(B, T, H, **opts), torch.empty(B, H, D, **opts)
    S = _internal((B, T, H), x.dtype)
    R = _internal((B, T, H), x.dtype) if config.normalise else None
    R2 = _internal((B, T, H), x.dtype) if config.post else None
    memories = _internal((B, -(-T // every) - 1, H, D), x.dtype)
    x, W = x.contiguous(), W.contiguous()
    h0 = None if h0 is None else h0.contiguous()
    F0 = None if F0 is None else F0.contiguous()
    lam, rate = _full(lam, W), _full(hebbian_rate(lam, gam, config), W)
    b = None if b is None else b.contiguous()
    args, segments = _plan(
        config, (T, B, I, H, D, every), x.dtype, b is not None, torch.get_num_threads(),
        MIN_WORK_PER_THREAD,
    )
    found = 0
    for lib, b0, b1, threads in segments:
        found |= lib.stpn_forward(
            ctypes.byref(args), threads, b0, b1, check, _ptr(W), _ptr(b), _ptr(lam),
            _ptr(rate), _ptr(F0), _ptr(x), _ptr(h0), _ptr(out), _ptr(R), _ptr(S), _ptr(R2),
            _ptr(memories), _ptr(F_final),
        )
    raise_nonfinite(found)
    return Record(
        config, x, h0, F0, W, lam, rate, b is not None, out, S, R, R2, memories, F_final,
        native=(args, segments),
    )


def backward(
    record: Record, grad_out: Tensor, grad_F: Tensor | None, lam: Tensor, gam: Tensor,
    need_x: bool = True, need_F: bool = True,
) -> tuple[Tensor | None, Tensor, Tensor | None, Tensor, Tensor | None, Tensor, Tensor]:
    """Gradients of ``x`` ``(B, T, I)``, ``h0``, ``F0``, ``W``, ``b``, ``Λ``, ``Γ``, in C, from
    ``grad_out`` ``(B, T, H)`` and ``grad_F`` (``None``: zero). Those of ``x`` and ``F0`` are
    ``None`` unless ``need_x`` / ``need_F`` (nothing is allocated or written for them).
    ``lam`` and ``gam`` are the parameters (for the shapes of their gradients)."""
    r = record
    B, T, H = r.out.shape
    D, HD, (args, segments) = r.W.shape[1], r.W.numel(), r.native
    opts = {"device": r.W.device, "dtype": r.W.dtype}
    gh = torch.empty(B, H, **opts)  # C initialises it (and gF)
    gF = torch.empty(B, H, D, **opts) if need_F else None
    gx = torch.empty(B, T, r.x.shape[2], **opts) if need_x else None
    # A row per thread for dL/d(W, Λ, Γe) (H·D each), then dL/db: C sums a call's into its first.
    acc = torch.empty(sum(threads for *_, threads in segments), 3 * HD + H, **opts)
    grad_out = grad_out.contiguous()  # kept in a variable: C reads its memory
    grad_F = None if grad_F is None else grad_F.contiguous()
    row, firsts = 0, []
    for lib, b0, b1, threads in segments:
        lib.stpn_backward(
            ctypes.byref(args), threads, b0, b1, _ptr(r.W), _ptr(r.lam), _ptr(r.rate),
            _ptr(r.F0), _ptr(r.memories), _ptr(r.x), _ptr(r.h0), _ptr(r.out), _ptr(r.R),
            _ptr(r.S), _ptr(r.R2), _ptr(grad_out), _ptr(grad_F), _ptr(gF), _ptr(gh), _ptr(gx),
            _ptr(acc[row]),
        )
        firsts.append(acc[row])
        row += threads
    total = sum(firsts[1:], firsts[0])  # one segment: its row itself, no copy
    gW, g_lam, g_rate = (total[k * HD : (k + 1) * HD].view(H, D) for k in range(3))
    g_lam, g_gam = rate_grads(g_lam, g_rate, lam, gam, r.config)
    return gx, gh, gF, gW, total[3 * HD :] if r.has_bias else None, g_lam, g_gam
