"""Keep freed memory in the process, for programs that allocate the same large tensors every step.

glibc's ``malloc`` serves a large request (above 128 KiB at start, a threshold it raises as such
blocks are freed) with a fresh mapping, and returns memory freed at the top of its heap to the
kernel once more than a trim threshold lies there. Either way the next allocation of that size
gets untouched pages, and each 4 KiB page costs a page fault when first written. An STPN step
returns a new synaptic memory ``F`` (1 MiB for 64 agents at the maze size), so a rollout pays
for it at every step: in one process alternating 50-step blocks of the STPN and of ``nn.LSTM``
(64 agents, no grad), the STPN took 6–149 page faults and 0.18–0.43 ms a step with glibc's
defaults, and 0 faults and 0.15–0.16 ms after :func:`retain_freed_memory`.

The setting is the whole process's, so importing the library never changes it: the commands of
this project call it at start (:func:`stpn_core.cli.run_command`), as do the benchmarks, for every
model alike. Programs of your own may call it too; allocators such as jemalloc or tcmalloc
(``LD_PRELOAD``), which PyTorch's performance guide suggests for CPU work, serve the same end.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
"""glibc's ``mallopt`` parameters (``<malloc.h>``)."""
MMAP_THRESHOLD = 16 << 20
"""Blocks below this many bytes come from the heap (glibc accepts at most 32 MiB on 64 bits)."""
RETAINED = 32 << 20
"""Bytes of freed memory glibc keeps at the top of its heap instead of returning them."""


def retain_freed_memory() -> bool:
    """Make glibc's ``malloc`` serve blocks below :data:`MMAP_THRESHOLD` from its heap and keep
    up to :data:`RETAINED` freed bytes for reuse (a few tens of MB at most stay with the process).

    Returns whether the settings took effect: ``False`` where the C library is not glibc (musl,
    macOS, Windows), which is left as it is.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, RETAINED),
                (M_TOP_PAD, RETAINED // 2))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
