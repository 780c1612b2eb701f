"""Run-state benchmark: the cost of committing a shard, finding what is done, and compacting the summary,
at 1k, 10k and 100k shards; then a real run of thousands of tiny shards.

    python jobs/bench_runstate.py                          # 100,000 synthetic commits, local disk and memory://
    python jobs/bench_runstate.py --shards 10000 --stores local
    python jobs/bench_runstate.py --e2e 5000 --commits 0    # only the end-to-end run: 5,000 tiny shards, random:tiny

Synthetic commits go through the real code path (`RunState.commit`: the record file, the in-memory totals
the guard reads) with records shaped like a real shard's. The rerun is `RunState.open` on that output:
with the summary current (a finished run) and with no summary at all (a driver killed before its first
compaction: every record is read); `pipeline.status` is timed on the finished output (on local disk as the command):
a first call (the summary's digest), again (its local cache), and a first call on an output written before the
digest (the whole shard list).
The end-to-end run is `run_job` over that many one-clip tars.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import shutil
import subprocess
import tempfile
import time

import fsspec
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # demo/ is not installed

from pipeline.config import load_config  # noqa: E402
from pipeline.telemetry.events import ShardDone  # noqa: E402
from pipeline.runstate import RunState, ShardRecord  # noqa: E402
from pipeline.runstate.digest import DIGEST  # noqa: E402
from pipeline.runstate.summary import SHARD_LIST  # noqa: E402
from pipeline.schema import column_lines, output_schema, row_group_summary, schema_to_text  # noqa: E402
from pipeline.status import read_status  # noqa: E402
from pipeline.storage import Storage  # noqa: E402


def fake_result(i: int) -> ShardRecord:
    """A done shard of 400 clips (one hour, log-normal lengths) as the worker reports it: every field a real
    record has, with its row groups' length bins."""
    shard = f"train-{i:06d}-{i * 2654435761 % 16**10:010x}"
    frames = np.clip(np.random.default_rng(i).lognormal(np.log(225), 0.6, 398), 10, 3000).astype(np.int64)
    result = ShardRecord(
        shard, f"s3://bucket/audio/train-{i:06d}.tar", "done", samples_read=400, rows=398, errors=2,
        error_reasons={"decode_failed": 2}, audio_seconds=3600.0, frames=int(frames.sum()), encoded_frames=94000,
        tokens=int(frames.sum()) * 8, files=[f"data/{shard}.parquet", f"errors/{shard}.jsonl"],
        sha256={f"data/{shard}.parquet": "0" * 64}, seconds=41.0, decode_wait_s=0.2, encode_s=40.1, started_at=1.7e9,
        worker="actor-3", peak_rss_mb=3400.0, rss_after_mb=3100.0, threads=1)
    result.row_groups = {f"data/{shard}.parquet": [row_group_summary(frames)]}
    return result


def header() -> dict:
    schema = output_schema([])
    return {"identity": {"bench": True}, "codec": {}, "bandwidth": 2.0, "num_codebooks": 8, "frame_rate": 25.0,
            "codebook_size": 1024, "config": {}, "output_schema": schema_to_text(schema), "output_columns": column_lines(schema)}


def settings(**output):
    overrides = ["source.kind=webdataset", "source.urls=[x.tar]", "output.dir=x"] + [f"output.{k}={v}" for k, v in output.items()]
    return load_config(None, overrides).output


def status_done(url: str) -> int:
    """Shards done as `pipeline.status` finds them: on local disk the command itself (a process of its own, its
    imports included); memory:// is this process's only, so there `read_status` in it."""
    if url.startswith("memory://"):
        return read_status(url).shards_done
    printed = subprocess.run([sys.executable, "-m", "pipeline.status", url, "--json"], check=True, cwd=ROOT,
                             capture_output=True).stdout
    return json.loads(printed)["shards_done"]


def bench_commits(url: str, count: int) -> None:
    storage = Storage(url)
    # the interval is far beyond the run: commits are timed alone, the compaction on its own below
    state = RunState.open(storage, header(), settings(summary_interval_s=10**9))
    seconds = np.zeros(count)
    for i in range(count):
        record = fake_result(i)
        begin = time.perf_counter()
        state.commit(record)
        state.totals()  # what the guard reads after every shard
        seconds[i] = time.perf_counter() - begin
    for upto in (1_000, 10_000, 100_000):
        if upto <= count:
            window = seconds[max(0, upto - 1000):upto] * 1000
            print(f"  commits {upto - len(window) + 1:>6}-{upto:<6}  p50 {np.percentile(window, 50):6.2f} ms   "
                  f"p99 {np.percentile(window, 99):6.2f} ms   max {window.max():7.2f} ms")
    begin = time.perf_counter()
    state.close()  # the final compaction: manifest.json, the shard list and its digest
    print(f"  summary compaction of {count} shards: {time.perf_counter() - begin:.2f} s "
          f"({len(storage.read_bytes(SHARD_LIST)) / 1e6:.1f} MB shard list, "
          f"{len(storage.read_bytes(DIGEST)) / 1e6:.1f} MB digest)")
    begin = time.perf_counter()
    rerun = RunState.open(storage, header(), settings())
    found = sum(rerun.done(fake_result(i).shard_id) for i in range(count))
    rerun.lease.release()
    print(f"  rerun finds {found} of {count} done, summary current: {time.perf_counter() - begin:.2f} s")
    del state, rerun  # the command runs in a process of its own, without two run states for its collector to walk
    gc.collect()
    caches = tempfile.mkdtemp(prefix="status-cache-")
    for call, cache in (("first call (a LIST, the digest read)", "a"), ("again (a LIST, its cache read)", "a"),
                        ("first call, output written before the digest (a LIST, the shard list read)", "b")):
        os.environ["AUDIOTOK_CACHE"] = os.path.join(caches, cache)  # "b": a fresh status cache again
        if "before the digest" in call:
            storage.remove(DIGEST)
        begin = time.perf_counter()
        done = status_done(url)
        print(f"  python -m pipeline.status finds {done} done, {call}: {time.perf_counter() - begin:.2f} s")
    del os.environ["AUDIOTOK_CACHE"]
    shutil.rmtree(caches)
    storage.remove(SHARD_LIST)
    begin = time.perf_counter()
    rerun = RunState.open(storage, header(), settings())
    found = sum(rerun.done(fake_result(i).shard_id) for i in range(count))
    elapsed = time.perf_counter() - begin
    rerun.close()
    print(f"  rerun finds {found} of {count} done, no summary (every record read, summary rebuilt): {elapsed:.2f} s")


def bench_e2e(shards: int, work: str) -> None:
    from pipeline.run import run_job
    from demo.synth import random_sample, write_tar

    rng = np.random.default_rng(0)
    folder = os.path.join(work, "tiny")
    os.makedirs(folder)
    for i in range(shards):
        write_tar(os.path.join(folder, f"t-{i:05d}.tar"), [random_sample(rng, f"k{i:05d}", 0.2, "flac")])
    config = load_config(None, ["source.kind=webdataset", f"source.urls={folder}/t-{{00000..{shards - 1:05d}}}.tar",
                                f"output.dir={work}/out", "codec.model=random:tiny"])
    finished: list[float] = []
    start = time.perf_counter()
    summary = run_job(config, lambda event: finished.append(time.perf_counter()) if isinstance(event, ShardDone) else None)
    wall = time.perf_counter() - start
    tenth = max(1, len(finished) // 10)
    first = tenth / (finished[tenth] - finished[0])  # from the first completion, not from start-up
    last = tenth / (finished[-1] - finished[-tenth - 1])
    print(f"  {summary.shards_run} shards ({summary.status}) in {wall:.1f} s, first completion at "
          f"{finished[0] - start:.1f} s")
    print(f"  completion rate: first 10% {first:.1f} shards/s, last 10% {last:.1f} shards/s "
          f"(last/first {last / first:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=100_000, help="synthetic shard commits (0: skip)")
    parser.add_argument("--stores", nargs="+", default=["local", "memory"], choices=["local", "memory"])
    parser.add_argument("--e2e", type=int, default=0, help="also run this many one-clip tars end to end")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench_runstate_")
    try:
        for store in args.stores if args.commits else []:
            url = os.path.join(work, "local") if store == "local" else f"memory://bench-{time.time_ns()}/out"
            print(f"{store} ({url}): {args.commits} commits")
            bench_commits(url, args.commits)
            if store == "local":
                Storage(url).remove("")
            else:  # fsspec's memory store deletes 100k files one path match at a time: drop it whole
                fsspec.filesystem("memory").store.clear()
        if args.e2e:
            print(f"end to end: {args.e2e} tiny shards, random:tiny")
            bench_e2e(args.e2e, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
