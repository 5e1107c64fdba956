"""Training speed of the STPN (reference loop vs fast path) against a parameter-matched nn.LSTM.

One training step = forward over the sequence, a loss on every output, backward, Adam step. Each
(size, model) pair runs in its own subprocess, so the peak resident memory it reports belongs to
that model alone (``peak MiB`` is the child's peak RSS minus its RSS after importing torch).
Timings are medians over the timed repetitions, after warm-up; ``first call`` is the wall time
of the very first training step (what a user waits for before anything runs). The thread count
is torch's default unless ``--threads`` is given; it is printed.

The fast path and the LSTM are measured in ``--rounds`` alternating children each (fast, LSTM,
LSTM, fast, ...) and the lowest median is kept, for both alike: on a machine shared with other
jobs, one child's median can be inflated by a burst of foreign load, and the ratio of two
children timed at different moments then says little.

    python benchmarks/stpn_speed.py                # the table and the ratio lines
    python benchmarks/stpn_speed.py --reps 5       # quicker, noisier
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

SIZES = {  # name: (batch, steps, input, STPN hidden, LSTM hidden at about the same parameters)
    "art": (128, 9, 37, 11, 9),
    "maze_b64": (64, 200, 17, 55, 47),
    "maze_b512": (512, 200, 17, 55, 47),
}
MODELS = ("reference", "fast", "lstm")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(size: str, model_name: str, reps: int, warmup: int) -> dict[str, float]:
    """Time training steps of one model at one size (run inside the child process)."""
    import torch
    from stpn_core import STPN

    baseline = _rss_mib()
    batch, steps, inputs, hidden, lstm_hidden = SIZES[size]
    torch.manual_seed(0)
    if model_name == "lstm":
        model: torch.nn.Module = torch.nn.LSTM(inputs, lstm_hidden, batch_first=True)
    else:
        model = STPN(inputs, hidden, implementation=model_name)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, steps, inputs)
    target = torch.randn(batch, steps, lstm_hidden if model_name == "lstm" else hidden)

    def train_step() -> None:
        optimiser.zero_grad()
        output, _ = model(x)
        torch.nn.functional.mse_loss(output, target).backward()
        optimiser.step()

    start = time.perf_counter()
    train_step()
    first = time.perf_counter() - start
    for _ in range(warmup):
        train_step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        train_step()
        times.append(time.perf_counter() - start)
    return {
        "ms": 1000 * statistics.median(times),
        "first_s": first,
        "peak_mib": _rss_mib() - baseline,
        "reps": reps,
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
    }


def run_child(size: str, model: str, reps: int, warmup: int, threads: int | None) -> dict:
    command = [sys.executable, __file__, "--child", size, model, "--reps", str(reps)]
    command += ["--warmup", str(warmup)] + (["--threads", str(threads)] if threads else [])
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def cold_start() -> float:
    """Wall time of a first training step in a fresh process with an empty build cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "STPN_CACHE_DIR": cache}
        command = [sys.executable, __file__, "--child", "art", "fast", "--reps", "1"]
        command += ["--warmup", "0"]
        result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])["first_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=3, help="children of fast and LSTM (min)")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(measure(*args.child, args.reps, args.warmup)))
        return

    results: dict[tuple[str, str], dict] = {}
    header = f"{'size':<10} {'model':<10} {'params':>7} {'ms/step':>9} {'first call s':>12}"
    print(header + f" {'peak MiB':>9} {'reps':>5} {'rounds':>6}")
    for size in args.sizes:
        # The reference once (it is 5-20x slower, far from any target), then fast and LSTM
        # alternating, so that each gets early and late moments alike.
        pairs = (("fast", "lstm"), ("lstm", "fast"))
        for model in ["reference"] + [m for k in range(args.rounds) for m in pairs[k % 2]]:
            r = run_child(size, model, args.reps, args.warmup, args.threads)
            best = results.setdefault((size, model), {**r, "rounds": 0})
            best["rounds"] += 1
            best["peak_mib"] = max(best["peak_mib"], r["peak_mib"])
            best["first_s"] = max(best["first_s"], r["first_s"])
            best["ms"] = min(best["ms"], r["ms"])
        for model in MODELS:
            r = results[size, model]
            print(
                f"{size:<10} {model:<10} {r['params']:>7} {r['ms']:>9.1f} {r['first_s']:>12.2f}"
                f" {r['peak_mib']:>9.0f} {r['reps']:>5} {r['rounds']:>6}",
                flush=True,
            )
    threads = next(iter(results.values()))["threads"]
    print(f"threads {threads}")
    print(f"fast first call, empty build cache (C build + one ART step) s={cold_start():.2f}")
    print(
        "no recompilation: one C build per dtype (and 256- or 512-bit rows), reused for every"
        " batch size and length"
    )
    for size in args.sizes:
        fast, lstm, ref = (results[size, m]["ms"] for m in ("fast", "lstm", "reference"))
        print(f"ratio fast/lstm {size}={fast / lstm:.2f}")
        print(f"ratio fast/reference {size}={fast / ref:.2f}")


if __name__ == "__main__":
    main()
