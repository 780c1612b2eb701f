"""Host-device traffic per batch of an encode, counted op by op (demo.traffic.DeviceTraffic).

    python jobs/bench_traffic.py                  # on `meta`: any machine, no GPU needed (what the README shows)
    python jobs/bench_traffic.py --device cuda    # the same counts on a GPU

For each convention, a batch of 8 clips of unequal lengths and a 30 s clip encoded in 10 s windows: per batch,
device-to-host copies (blocking or not), host-to-device copies (from pinned or pageable memory) and value reads
of device tensors (`.item()`, `bool(t)`, `nonzero`, boolean-mask indexing), each of which makes the host wait
for the device. On `meta` no memory is pinned (pinning needs CUDA): the staged copies that CUDA pins count as
pageable there.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from codec import load_codec  # noqa: E402
from codec.conventions import CONVENTIONS  # noqa: E402
from demo.traffic import DeviceTraffic  # noqa: E402

SR = 24000


def workloads(seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    seconds = [1.3, 2.7, 4.1, 3.3, 0.9, 5.2, 2.2, 3.8]
    return {"8 clips of 0.9-5.2 s": [(0.1 * rng.standard_normal(int(s * SR) + 11 * i)).astype(np.float32)
                                   for i, s in enumerate(seconds)],
            "30 s clip in 10 s windows": [(0.1 * rng.standard_normal(30 * SR + 7)).astype(np.float32)]}


def count(codec, waves: list[np.ndarray], bandwidth: float = 2.0) -> dict:
    """Traffic per batch of encoding `waves` in one call, and the batches it took."""
    batches = [0]
    plan = codec._plan

    def counted(*args, **kwargs):
        batches[0] += 1
        return plan(*args, **kwargs)

    codec._plan = counted
    mode = DeviceTraffic(codec.device)
    try:
        with mode:
            codec.encode(waves, bandwidth, max_clips=len(waves) * 4)
    finally:
        del codec._plan
    return {"batches": batches[0], **mode.traffic.per(batches[0]), "reads": dict(mode.reads)}


def traffic_table(device: str, model: str = "random:tiny") -> list[dict]:
    rows = []
    for convention in CONVENTIONS:
        codec = load_codec(model, device=device, convention=convention, window_s=10.0, context_s=2.0)
        for name, waves in workloads().items():
            rows.append({"convention": convention, "workload": name, **count(codec, waves)})
    return rows


COLUMNS = ("d2h_blocking", "d2h_non_blocking", "h2d_pinned", "h2d_pageable", "value_reads")


def print_table(rows: list[dict], device: str) -> None:
    print(f"per batch, on {device}: " + ", ".join(COLUMNS))
    print(f"{'convention':11} {'workload':27} {'batches':>7} " + " ".join(f"{c:>16}" for c in COLUMNS))
    for row in rows:
        print(f"{row['convention']:11} {row['workload']:27} {row['batches']:>7} "
              + " ".join(f"{row[c]:>16}" for c in COLUMNS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="meta")
    parser.add_argument("--model", default="random:tiny")
    args = parser.parse_args()
    torch.manual_seed(0)
    print_table(traffic_table(args.device, args.model), args.device)


if __name__ == "__main__":
    main()
