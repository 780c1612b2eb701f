"""Driver memory of the recorded sources: what listing and planning a files source of many objects, or a NeMo
manifest of many lines, holds, against the listing itself.

    python jobs/bench_sources.py                       # 100,000 files (1,000 per shard), 1,000,000 manifest lines
    python jobs/bench_sources.py --files 20000 --lines 100000

Files: empty `.flac` names in nested folders on local disk (half with a `.txt` sidecar), listed by the real
`list_shards(...).settle(storage)`, first run (plan recorded) and rerun (plan read back, nothing new). The
reference is the listing alone: `glob_with_sizes` over the same pattern, as fsspec returns it. Manifest: a NeMo
JSONL of that many lines, planned in 1,000-line ranges. Peaks are tracemalloc's (Python allocations), measured
around each call in this process; what stays held is the size of the returned shards.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
import tracemalloc

import fsspec

import pipeline.sources.files  # noqa: F401  imported here, so that no measurement counts the imports (torch, ...)
import pipeline.sources.nemo  # noqa: F401
from pipeline.config import load_config
from pipeline.sources import glob_with_sizes, list_shards
from pipeline.storage import Storage


def _measured(call):
    gc.collect()
    tracemalloc.start()
    began = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - began
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, held / 2**20, peak / 2**20, seconds


def _write_files(root: str, count: int) -> None:
    for i in range(count):
        folder = f"{root}/d{i // 10000:03d}/e{i // 100 % 100:02d}"
        if i % 100 == 0:
            os.makedirs(folder, exist_ok=True)
        open(f"{folder}/clip{i:07d}.flac", "wb").close()
        if i % 2 == 0:
            open(f"{folder}/clip{i:07d}.txt", "wb").close()


def bench_files(folder: str, count: int) -> None:
    root = f"{folder}/files"
    _write_files(root, count)
    pattern = f"{root}/**/*.{{flac,txt}}"
    config = load_config(None, ["source.kind=files", f"source.urls=['{pattern}']", "output.dir=x"])
    fs = fsspec.filesystem("file")
    (_, held, listing_peak, listing_s) = _measured(lambda: [glob_with_sizes(fs, p) for p in (f"{root}/**/*.flac",
                                                                                               f"{root}/**/*.txt")])
    storage = Storage(f"{folder}/out-files")
    shards, first_held, first_peak, first_s = _measured(lambda: list_shards(config.source).settle(storage))
    again, _, rerun_peak, rerun_s = _measured(lambda: list_shards(config.source).settle(storage))
    assert again == shards
    print(f"files: {count:,} audio files + {count // 2:,} sidecars -> {len(shards):,} shards")
    print(f"  the listing alone (glob_with_sizes): peak {listing_peak:.1f} MB, {listing_s:.1f} s")
    print(f"  list + plan, first run (plan recorded): peak {first_peak:.1f} MB ({first_peak / listing_peak:.2f}x the "
          f"listing), {first_s:.1f} s; shards held after: {first_held:.1f} MB")
    print(f"  list + plan, rerun (plan read back): peak {rerun_peak:.1f} MB ({rerun_peak / listing_peak:.2f}x), "
          f"{rerun_s:.1f} s")


def bench_manifest(folder: str, lines: int) -> None:
    manifest = f"{folder}/manifest.json"
    with open(manifest, "w") as f:
        for i in range(lines):
            f.write(json.dumps({"audio_filepath": f"audio/rec{i // 1000:05d}.flac", "offset": (i % 1000) * 3.0,
                                "duration": 2.5, "text": f"segment {i}"}) + "\n")
    size_mb = os.path.getsize(manifest) / 2**20
    config = load_config(None, ["source.kind=nemo", f"source.path={manifest}", "output.dir=x"])
    storage = Storage(f"{folder}/out-nemo")
    shards, held, peak, seconds = _measured(lambda: list_shards(config.source).settle(storage))
    _, _, rerun_peak, rerun_s = _measured(lambda: list_shards(config.source).settle(storage))
    print(f"nemo: {lines:,} lines ({size_mb:.0f} MB) -> {len(shards):,} shards")
    print(f"  list + plan, first run: peak {peak:.1f} MB, {seconds:.1f} s; shards held after: {held:.2f} MB")
    print(f"  list + plan, rerun (ranges checked against their hashes): peak {rerun_peak:.1f} MB, {rerun_s:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sources-") as folder:
        if args.files:
            bench_files(folder, args.files)
        if args.lines:
            bench_manifest(folder, args.lines)


if __name__ == "__main__":
    main()
