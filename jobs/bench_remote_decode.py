"""Where a shard's decoding runs, measured at small scale on this machine: the codec actor's own threads, the
project's decode tasks (`pipeline/actor/decode_tasks.py`: a streaming Ray task per shard, audio through the object
store), or a Ray Data pipeline (`from_items(...).map(decode)`, rows streamed back).

    python jobs/bench_remote_decode.py                 # 4 tars of 16 clips of 2-12 s mixed formats; about a minute here

Prints, for each way, the audio-s/s the consumer received (all shards, wall time, Ray's start excluded; the
second of two rounds, the first one's too: it pays for starting worker processes and their imports) and its
ratio to the actor's threads, and what each way keeps per shard (the unit of commit and retry). All three use
the same workers' worth of CPUs (this machine's cores) and the pipeline's own reader and decoder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.audio.decode import Audio  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.actor.decode_tasks import DecodeInTask  # noqa: E402
from pipeline.actor.prefetch import DecodeAhead  # noqa: E402
from pipeline.sources import RawSample, list_shards, read_shard  # noqa: E402
from demo.synth import random_sample, write_tar  # noqa: E402
from pipeline.actor.sample_decoder import SampleDecoder  # noqa: E402


def write_corpus(folder: str, shards: int, clips: int) -> float:
    rng, total = np.random.default_rng(0), 0.0
    for i in range(shards):
        samples = [random_sample(rng, f"s{i}_{j:03d}", float(rng.uniform(2.0, 12.0)), ("wav", "flac", "ogg", "mp3")[j % 4])
                   for j in range(clips)]
        write_tar(f"{folder}/b-{i:03d}.tar", samples)
        total += sum(s.seconds for s in samples)
    return total


def received(iterable) -> float:
    return sum(decoded.duration_s for raw, decoded in iterable if raw is not None and hasattr(decoded, "duration_s"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--clips", type=int, default=16)
    args = parser.parse_args()
    import ray

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as folder:
        audio = write_corpus(folder, args.shards, args.clips)
        config = load_config(None, ["source.kind=webdataset", f"source.urls=['{folder}/b-{{000..{args.shards - 1:03d}}}.tar']",
                                    f"output.dir={folder}/out", "codec.model=random:tiny"])
        shards = list_shards(config.source).shards
        decode = SampleDecoder(config.audio, 24000, False)
        ahead = 60.0
        ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False

        def decode_row(row: dict) -> dict:  # the same decoder; the wave comes back as the rows' payload
            decoded = decode(RawSample(row["key"], row["audio"]))
            ok = isinstance(decoded, Audio)
            return {"key": row["key"], "seconds": decoded.duration_s if ok else 0.0,
                    "wave": decoded.wave if ok else np.zeros(0, np.float32)}

        ways = {
            "actor threads": lambda: sum(received(DecodeAhead(lambda s=s: read_shard(s, config.source), decode, cores,
                                                               ahead)) for s in shards),
            # one task per shard, each stream consumed by its own thread as an actor's shards are
            "decode tasks": lambda: sum(ThreadPoolExecutor(len(shards)).map(
                lambda s: received(DecodeInTask(s, config, decode, 1, ahead)), shards)),
            "Ray Data map": lambda: sum(row["seconds"] for row in ray.data.from_items(
                [{"key": raw.key, "audio": raw.audio} for s in shards for raw in read_shard(s, config.source)]
            ).map(decode_row).iter_rows()),
        }
        rates, cold = {}, {}
        for name, way in ways.items():
            for round in ("cold", "warm"):  # cold: worker processes started and their imports paid
                began = time.perf_counter()
                got = way()
                (cold if round == "cold" else rates)[name] = got / (time.perf_counter() - began)
        ray.shutdown()

    print(f"{args.shards} shards, {audio:.0f} s of audio, {cores} cores here; decoded audio-s/s received:")
    print("\n| where decoding runs | audio-s/s, warm | x actor threads | first round (worker start-up) | per shard |")
    print("| --- | --- | --- | --- | --- |")
    keeps = {"actor threads": "the actor's node only; one process (GIL)",
             "decode tasks": "any node; its own process; the shard stays the unit of commit, retry and time limit",
             "Ray Data map": "any node; rows of all shards in one stream: the shard is no longer a unit"}
    base = rates["actor threads"]
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x | {cold[name]:,.0f} | {keeps[name]} |")


if __name__ == "__main__":
    main()
