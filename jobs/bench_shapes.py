"""Batch shapes an actor meets, with and without the shape grid (codec.batching), and the padding the grid costs.

    python jobs/bench_shapes.py              # planning only: any machine, a few seconds

An actor's pools (POOL_BATCHES = 8 batches' worth of audio at the default GPU policy, 480 s x 64 clips) are drawn
from a realistic length mix: log-normal around 4 s (0.5-30 s), plus a 4% share of 60-90 s clips, as
jobs/bench_gpu.py's corpus. Each pool is planned as `Codec.encode` plans it (25 frames/s, 960-sample hop); per
1,000 batches (and over a longer run) it prints the distinct [clips, frames] shapes and the padding (frames run /
frames of audio - 1).
The first-seen-shape cost against a warm shape is a GPU measurement (jobs/gpu_check.py).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from codec.batching import GPU_POLICY, padded_samples, plan_batches  # noqa: E402
from demo.synth import lognormal_seconds  # noqa: E402

HOP, SR = 960, 24000
POOL_BATCHES = 8  # pipeline.actor.processor.POOL_BATCHES (not imported: that module needs Ray)


def pool_lengths(rng: np.random.Generator, seconds: float) -> list[int]:
    lengths, total = [], 0.0
    while total < seconds:
        s = float(rng.uniform(60, 90)) if rng.random() < 0.04 else float(lognormal_seconds(rng, 1, 4.0, 0.5, 30.0)[0])
        lengths.append(-(-int(s * SR) // HOP) * HOP)
        total += s
    return lengths


def shapes(batches: int, grid: bool, seed: int = 0) -> dict:
    """Distinct shapes per 1,000 batches and padding, over pools planned until `batches` batches ran."""
    rng = np.random.default_rng(seed)
    seen, run, real, count = set(), 0, 0, 0
    while count < batches:
        lengths = pool_lengths(rng, POOL_BATCHES * GPU_POLICY.max_batch_seconds)
        for batch in plan_batches(lengths, SR, GPU_POLICY, HOP if grid else None):
            longest = max(lengths[i] for i in batch)
            total = padded_samples(longest, HOP) if grid else longest
            seen.add((len(batch), total // HOP))
            run += len(batch) * total
            real += sum(lengths[i] for i in batch)
            count += 1
    return {"grid": grid, "batches": count, "distinct_shapes": len(seen),
            "distinct_shapes_per_1000": round(1000 * len(seen) / count),
            "padding": round(run / real - 1, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10000, help="a longer run, to show the grid's bound")
    args = parser.parse_args()
    print(f"{'grid':5} {'batches':>8} {'distinct shapes':>16} {'per 1,000 batches':>18} {'padding':>8}")
    for batches in (1000, args.batches):
        for grid in (False, True):
            row = shapes(batches, grid)
            print(f"{'on' if grid else 'off':5} {row['batches']:>8} {row['distinct_shapes']:>16} "
                  f"{row['distinct_shapes_per_1000']:>18} {row['padding']:>8.2%}")


if __name__ == "__main__":
    main()
