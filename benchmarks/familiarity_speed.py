"""Time per training iteration of the six familiarity models (B = 1, T = 5000, d = 100).

One iteration is what the familiarity runs do: forward over the whole sequence, BCE at every step,
backward through all 5000 steps (full BPTT), Adam step, on ``FamiliarityClassifier`` built from
``paper_preset("familiarity", model)``. Medians over the timed repetitions after one warm-up; the
STPNr and the LSTM are measured in ``--rounds`` alternating rounds and the lowest median is kept
for both alike (on a shared machine a burst of foreign load inflates one round's median).

    python benchmarks/familiarity_speed.py             # all six, one thread
    python benchmarks/familiarity_speed.py --models stpnr lstm --reps 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as nnf
from stpn_core import paper_preset
from stpn_supervised.familiarity import FamiliarityDataModule
from stpn_supervised.familiarity_module import FamiliarityClassifier

MODELS = ("stpnr", "lstm", "stpnf", "ustpnr", "ustpnf", "hebbff")


def median_ms(model: str, reps: int, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    torch.manual_seed(0)
    preset = paper_preset("familiarity", model)
    module = FamiliarityClassifier(preset.model, preset.hidden_size, dict(preset.options))
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-3)
    x, y = batch

    def iteration() -> None:
        optimiser.zero_grad()
        nnf.binary_cross_entropy_with_logits(module(x), y).backward()
        optimiser.step()

    iteration()  # warm-up (and, for the STPN, the C loop's first-use build)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--reps", type=int, default=10, help="timed iterations (median)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating STPNr/LSTM rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = FamiliarityDataModule(seq_len=5000, repeat_distance=3)
    batch = next(iter(data.train_dataloader()))
    results: dict[str, float] = {}
    for round_ in range(args.rounds):
        for model in (("stpnr", "lstm") if round_ % 2 == 0 else ("lstm", "stpnr")):
            if model in args.models:
                results[model] = min(results.get(model, float("inf")),
                                     median_ms(model, args.reps, batch))
    for model in args.models:
        if model not in results:
            results[model] = median_ms(model, max(1, args.reps // 5 if model == "hebbff"
                                                   else args.reps), batch)
    print(f"threads {args.threads}, B = 1, T = 5000, d = 100; ms per training iteration")
    for model in args.models:
        print(f"{model:<8} {results[model]:>9.1f}")
    if {"stpnr", "lstm"} <= set(results):
        print(f"ratio stpnr/lstm={results['stpnr'] / results['lstm']:.2f}")


if __name__ == "__main__":
    main()
