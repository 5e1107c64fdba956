"""Speed of the STPN (reference loop vs fast path) against a parameter-matched nn.LSTM.

Rows: a training step (forward over the sequence, a loss on every output, backward, Adam step)
at the associative-retrieval size (``art``), the maze sizes (``maze_b64``, ``maze_b512``) and the
familiarity size (``familiarity``: one long sequence); and a rollout step (``rollout_b64``: one
time step of 64 maze agents under ``torch.no_grad``, the state carried from step to step, as in
RL rollouts; each timed call runs :data:`ROLLOUT_STEPS` consecutive steps and the figures are per
step, since a single 0.1–0.5 ms call is at the mercy of the scheduler). Medians over the timed
repetitions, after warm-up.

Each model runs alone in its own subprocess for the table, so the peak resident memory it
reports belongs to it alone (``peak MiB``: the child's peak RSS minus its RSS after importing
torch); ``first call`` is the wall time of the very first call (what a user waits for; for
``rollout_b64``, of its first :data:`ROLLOUT_STEPS` steps). Each
fast/LSTM ratio comes from one further subprocess that holds both models and alternates them
call by call, so that both see the same moments of a machine shared with other jobs, for at least
``--reps`` calls each and until the timed calls add up to ``--min-seconds`` (so that a stall of
the machine is a small part of even the shortest step's run). The thread
count is torch's default unless ``--threads`` is given; it is printed. Every child keeps freed
memory in the process, as the project's commands do (:mod:`stpn_core.allocator`), unless
``--default-malloc`` is given.

    python benchmarks/stpn_speed.py                # the table and the ratio lines
    python benchmarks/stpn_speed.py --json         # the same figures as one JSON document
    python benchmarks/stpn_speed.py --reps 5       # quicker, noisier
    python benchmarks/stpn_speed.py --default-malloc   # with glibc's malloc defaults
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

# name: (batch, steps, input, STPN hidden, LSTM hidden at about the same parameters, kind)
SIZES = {
    "art": (128, 9, 37, 11, 9, "train"),
    "maze_b64": (64, 200, 17, 55, 47, "train"),
    "maze_b512": (512, 200, 17, 55, 47, "train"),
    "rollout_b64": (64, 1, 17, 55, 47, "rollout"),
    "familiarity": (1, 5000, 100, 27, 21, "train"),
}
NO_REFERENCE = {"familiarity"}
"""Sizes whose reference loop is not timed: 5000 steps of autograd take minutes per step."""
MODELS = ("reference", "fast", "lstm")
ROLLOUT_STEPS = 50


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _make_call(size: str, model_name: str) -> tuple[Callable[[], None], int, int]:
    """One call of ``model_name`` at ``size`` (a training step or :data:`ROLLOUT_STEPS` rollout
    steps), the model's parameter count and the steps one call runs."""
    import torch
    from stpn_core import STPN

    batch, steps, inputs, hidden, lstm_hidden, kind = SIZES[size]
    torch.manual_seed(0)
    if model_name == "lstm":
        model: torch.nn.Module = torch.nn.LSTM(inputs, lstm_hidden, batch_first=True)
    else:
        model = STPN(inputs, hidden, implementation=model_name)
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(batch, steps, inputs)
    if kind == "rollout":
        state: list[Any] = [None]

        def rollout() -> None:
            with torch.no_grad():
                for _ in range(ROLLOUT_STEPS):
                    _, state[0] = model(x, state[0])

        return rollout, params, ROLLOUT_STEPS
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    target = torch.randn(batch, steps, lstm_hidden if model_name == "lstm" else hidden)

    def train_step() -> None:
        optimiser.zero_grad()
        output, _ = model(x)
        torch.nn.functional.mse_loss(output, target).backward()
        optimiser.step()

    return train_step, params, 1


def measure(size: str, model_name: str, reps: int, warmup: int) -> dict[str, float]:
    """Time calls of one model at one size (run inside its own child process)."""
    import torch

    baseline = _rss_mib()
    call, params, steps = _make_call(size, model_name)
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    for _ in range(warmup):
        call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {
        "ms": 1000 * statistics.median(times) / steps,
        "first_s": first,
        "peak_mib": _rss_mib() - baseline,
        "reps": reps,
        "params": params,
        "threads": torch.get_num_threads(),
    }


def measure_pair(size: str, reps: int, warmup: int, min_seconds: float) -> dict[str, float]:
    """Fast path and LSTM in one process, alternating call by call: their medians and ratio.

    At least ``reps`` timed calls of each and at least ``min_seconds`` of timed calls in all:
    20 calls of a 1 ms step last 40 ms, and one stall of the shared machine in them moved the
    median by a tenth.
    """
    made = {name: _make_call(size, name) for name in ("fast", "lstm")}
    calls, steps = {name: call for name, (call, _, _) in made.items()}, made["fast"][2]
    times: dict[str, list[float]] = {name: [] for name in calls}
    rep = 0
    while rep <= warmup + reps or sum(map(sum, times.values())) < min_seconds:
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if rep > warmup:
                times[name].append(time.perf_counter() - start)
        rep += 1
    fast, lstm = (1000 * statistics.median(times[name]) / steps for name in ("fast", "lstm"))
    return {"fast_ms": fast, "lstm_ms": lstm, "ratio": fast / lstm, "calls": len(times["fast"])}


def _child(args: list[str], reps: int, warmup: int, threads: int | None, **env: str) -> dict:
    command = [sys.executable, __file__, *args, "--reps", str(reps), "--warmup", str(warmup)]
    command += ["--threads", str(threads)] if threads else []
    result = subprocess.run(
        command, capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def cold_start() -> float:
    """Wall time of a first training step in a fresh process with an empty build cache."""
    with tempfile.TemporaryDirectory() as cache:
        result = _child(["--child", "art", "fast"], 1, 0, None, STPN_CACHE_DIR=cache)
    return result["first_s"]


def _reps_for(size: str, reps: int) -> int:
    """The familiarity step takes seconds: a quarter of the repetitions (at least 3)."""
    return max(3, reps // 4) if size == "familiarity" else reps


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, dict[str, dict]] = {}
    ratios: dict[str, list[dict]] = {}
    malloc = ["--default-malloc"] if args.default_malloc else []
    for size in args.sizes:
        reps = _reps_for(size, args.reps)
        models = [m for m in MODELS if not (m == "reference" and size in NO_REFERENCE)]
        rows[size] = {
            m: _child(["--child", size, m, *malloc], reps, args.warmup, args.threads)
            for m in models
        }
        ratios[size] = [
            _child(["--pair", size, "--min-seconds", str(args.min_seconds), *malloc], reps,
                   args.warmup, args.threads)
            for _ in range(args.rounds)
        ]
        if not args.json:
            _print_size(size, rows[size], ratios[size])
    peak = {s: rows[s]["fast"]["peak_mib"] / rows[s]["lstm"]["peak_mib"] for s in rows}
    return {
        "threads": next(iter(next(iter(rows.values())).values()))["threads"],
        "rows": rows,
        "ratio_fast_lstm": ratios,
        "peak_ratio_fast_lstm": peak,
        "cold_start_s": cold_start(),
    }


def _print_size(size: str, rows: dict[str, dict], ratios: list[dict]) -> None:
    for model, r in rows.items():
        print(
            f"{size:<12} {model:<10} {r['params']:>7} {r['ms']:>9.2f} {r['first_s']:>12.2f}"
            f" {r['peak_mib']:>9.0f} {r['reps']:>5}",
            flush=True,
        )
    for r in ratios:
        print(
            f"ratio fast/lstm {size}={r['ratio']:.2f} (one run, alternating {r['calls']} calls"
            f" each: fast {r['fast_ms']:.2f} ms, lstm {r['lstm_ms']:.2f} ms)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls after the first")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs per ratio")
    parser.add_argument("--min-seconds", type=float, default=4.0,
                        help="each ratio: keep alternating until the timed calls of both models "
                             "add up to this many seconds (and --reps calls each)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--pair", metavar="SIZE", help=argparse.SUPPRESS)
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's malloc defaults (otherwise freed memory is retained, "
                             "as the project's commands do: stpn_core.allocator)")
    args = parser.parse_args()
    if args.child or args.pair:
        import torch
        from stpn_core.allocator import retain_freed_memory

        if not args.default_malloc:
            retain_freed_memory()

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.child:
            print(json.dumps(measure(*args.child, args.reps, args.warmup)))
        else:
            print(json.dumps(measure_pair(args.pair, args.reps, args.warmup, args.min_seconds)))
        return

    if not args.json:
        header = f"{'size':<12} {'model':<10} {'params':>7} {'ms/step':>9} {'first call s':>12}"
        print(header + f" {'peak MiB':>9} {'reps':>5}")
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"threads {results['threads']}; freed memory retained (stpn_core.allocator, every"
          f" model alike): {'no, glibc defaults' if args.default_malloc else 'yes'}")
    cold = results["cold_start_s"]
    print(f"fast first call, empty build cache (C builds + one ART step) s={cold:.2f}")
    print(
        "no recompilation: two C builds per dtype (groups of samples in the lanes, and one sample),"
        " reused for every batch size and length"
    )
    for size, ratio in results["peak_ratio_fast_lstm"].items():
        print(f"peak memory fast/lstm {size}={ratio:.2f}")
    for size, rows in results["rows"].items():
        if "reference" in rows:
            print(f"ratio fast/reference {size}={rows['fast']['ms'] / rows['reference']['ms']:.2f}")


if __name__ == "__main__":
    main()
