"""TokenDataset benchmark: building the dataset over many row groups, and how planned batch counts fare.

    python jobs/bench_dataset.py                        # 10,000 one-row shards on local disk and memory://; batch plan
    python jobs/bench_dataset.py --groups 2000 --stores memory

Build: an output of `--groups` one-row shards (so as many files and row groups), written without the codec
(`demo.synth_tokens`: ShardWriter + RunState commits, as a run writes them). For each store it times
`TokenDataset(...)` and counts the Parquet footers opened while building (every `pyarrow.parquet.ParquetFile`
made), then the time to the first row and to the first batch (the batcher fills its 2,000-row buffer
first). The same output with commit records lacking `row_groups` (as written before they carried them)
shows the fallback, and `min_frames=` a filter, which reads the `num_frames` column of every file.

Batch plan: `--ranks` ranks of one worker each read an output of log-normal row lengths with random crops
and the README's batcher; it prints the batches per rank (equal by construction), and the rows that
the planned count left out (dropped) or had read by two ranks (filled from another rank), over `--epochs` epochs.
"""

from __future__ import annotations

import argparse
import os
import sys
import shutil
import tempfile
import time
from collections import Counter

import numpy as np
import pyarrow.parquet

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # demo/ is not installed

from pipeline.reading.batching import Batcher  # noqa: E402
from pipeline.reading.dataset import TokenDataset  # noqa: E402
from pipeline.storage import Storage  # noqa: E402
from demo.synth_tokens import write_token_output  # noqa: E402


class CountingParquetFile(pyarrow.parquet.ParquetFile):
    opened = 0

    def __init__(self, *args, **kwargs):
        type(self).opened += 1
        super().__init__(*args, **kwargs)


def timed_build(url: str, **kwargs) -> tuple[TokenDataset, float, int]:
    original = pyarrow.parquet.ParquetFile
    pyarrow.parquet.ParquetFile, CountingParquetFile.opened = CountingParquetFile, 0
    try:
        begin = time.perf_counter()
        dataset = TokenDataset(url, **kwargs)
        return dataset, time.perf_counter() - begin, CountingParquetFile.opened
    finally:
        pyarrow.parquet.ParquetFile = original


def first_item(dataset: TokenDataset) -> float:
    begin = time.perf_counter()
    next(iter(dataset))
    return time.perf_counter() - begin


def bench_build(store: str, groups: int) -> None:
    for legacy in (False, True):
        url = (tempfile.mkdtemp(prefix="bench-dataset-") + "/out" if store == "local"
               else f"memory://bench-dataset-{time.time_ns()}/out")
        begin = time.perf_counter()
        write_token_output(url, [1] * groups, num_codebooks=8, legacy=legacy)
        written = time.perf_counter() - begin
        records = "records without row_groups" if legacy else "records with row_groups"
        print(f"{store}, {groups} one-row shards, {records} (written in {written:.1f} s):")
        dataset, seconds, footers = timed_build(url)
        print(f"  build: {seconds:.3f} s, {footers} footers opened, {len(dataset.units)} row groups planned")
        print(f"  first row: {first_item(dataset):.3f} s")
        batched, _, _ = timed_build(url, batcher=Batcher(max_tokens=64_000, pad_id=1024, delay_pattern=True))
        print(f"  first batch (buffer of 2,000 rows): {first_item(batched):.3f} s")
        if not legacy:
            _, seconds, footers = timed_build(url, min_frames=5)
            print(f"  build with min_frames=5 (reads num_frames of every file): {seconds:.3f} s, {footers} footers opened")
        if store == "local":
            shutil.rmtree(url.rsplit("/", 1)[0])
        else:
            Storage(url).remove("")


def bench_plan(ranks: int, epochs: int) -> None:
    url = tempfile.mkdtemp(prefix="bench-dataset-plan-") + "/out"
    shards = [int(n) for n in np.random.default_rng(1).integers(20, 1500, 48)]

    def lognormal(rng, n, shard):  # median 10 s (250 frames), clipped to 0.2 s .. 5 min
        return np.clip(rng.lognormal(np.log(250), 0.9, n), 5, 7500).astype(int)

    write_token_output(url, shards, num_codebooks=8, lengths=lognormal)
    total = sum(shards)
    print(f"batch plan: {total} rows in {len(shards)} shards of 20-1500 rows, log-normal lengths (median 250 frames), "
          f"crop_frames=750 random, Batcher(max_tokens=64,000, delay_pattern=True), {ranks} ranks x 1 worker:")
    for epoch in range(epochs):
        counts, seen = [], Counter()
        padded = real = 0
        for rank in range(ranks):
            dataset = TokenDataset(url, rank=rank, world_size=ranks, shuffle_buffer=1000, seed=0, crop_frames=750,
                                   batcher=Batcher(max_tokens=64_000, pad_id=1024, delay_pattern=True))
            dataset.set_epoch(epoch)
            batches = list(dataset)
            counts.append(len(batches))
            for batch in batches:
                seen.update(batch["key"])
                padded += batch["codes"].numel()
                real += int(batch["codebook_mask"].sum())
        twice = sum(seen.values()) - len(seen)
        print(f"  epoch {epoch}: batches per rank {sorted(set(counts))} (planned {dataset.per_rank}); rows left out "
              f"{total - len(seen)} ({(total - len(seen)) / total:.1%}); rows read by two ranks (filling, and the "
              f"last slice's wrap of up to {ranks - 1}) {twice} ({twice / total:.1%}); real codes {real / padded:.1%} "
              "of the batch tensors")
    shutil.rmtree(url.rsplit("/", 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument("--stores", nargs="+", default=["local", "memory"], choices=["local", "memory"])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    for store in args.stores:
        bench_build(store, args.groups)
    if args.ranks:
        bench_plan(args.ranks, args.epochs)


if __name__ == "__main__":
    main()
