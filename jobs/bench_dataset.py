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

Higgs batches: `--higgs-clips` clips of 2-6 s (random noise) are tokenized once with `random:full` weights on CPU
and written as an output; batches of `--higgs-batch` rows are then built twice, by `HiggsAudioV2Collator` from
the output's rows and by transformers' `HiggsAudioV2Processor` from the raw audio (it encodes every clip), and
the two rates are printed with their ratio.
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
from demo.synth_tokens import write_rows, write_token_output  # noqa: E402


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


def bench_higgs(clips: int, batch: int) -> None:
    import pyarrow as pa
    import torch
    from transformers import DacFeatureExtractor, HiggsAudioV2Processor

    from codec import load_codec
    from demo.higgs_tiny import text_tokenizer
    from pipeline.reading.higgs import HiggsAudioV2Collator

    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(rng.uniform(2, 6) * 24000))).astype(np.float32) for _ in range(clips)]
    texts = [" ".join(rng.choice(list("abcdefgh"), int(rng.integers(3, 30)))) for _ in range(clips)]
    codec = load_codec("random:full", device="cpu")
    url = tempfile.mkdtemp(prefix="bench-dataset-higgs-") + "/out"
    codes = codec.encode(waves, 2.0)
    write_rows(url, [[(f"c{i}", c, {"text": t}) for i, (c, t) in enumerate(zip(codes, texts))]], num_codebooks=8,
               fields=[pa.field("text", pa.string())], identity={"convention": "model_card"})
    rows = list(TokenDataset(url))
    tokenizer = text_tokenizer(texts)
    collator = HiggsAudioV2Collator(tokenizer)
    processor = HiggsAudioV2Processor(DacFeatureExtractor(sampling_rate=24000, hop_length=codec.hop_length), tokenizer,
                                      codec.model)
    starts = range(0, clips - batch + 1, batch)
    begin = time.perf_counter()
    for start in starts:
        collator(rows[start : start + batch])
    collated = len(starts) / (time.perf_counter() - begin)
    begin = time.perf_counter()
    with torch.inference_mode():
        for start in starts:
            processor(text=[t + "<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|>" for t in texts[start : start + batch]],
                      audio=waves[start : start + batch], output_labels=True, return_tensors="pt", padding=True,
                      sampling_rate=24000)
    processed = len(starts) / (time.perf_counter() - begin)
    print(f"Higgs batches of {batch} rows (2-6 s clips, random:full on CPU, {torch.get_num_threads()} threads), "
          f"{len(starts)} batches: collator {collated:.1f}/s from stored codes, processor {processed:.2f}/s from raw "
          f"audio: {collated / processed:.0f}x")
    shutil.rmtree(url.rsplit("/", 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=10_000, help="0: skip the build benchmark")
    parser.add_argument("--stores", nargs="+", default=["local", "memory"], choices=["local", "memory"])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--higgs-clips", type=int, default=8, help="0: skip the Higgs batches")
    parser.add_argument("--higgs-batch", type=int, default=4)
    args = parser.parse_args()
    for store in args.stores if args.groups else []:
        bench_build(store, args.groups)
    if args.ranks:
        bench_plan(args.ranks, args.epochs)
    if args.higgs_clips:
        bench_higgs(args.higgs_clips, args.higgs_batch)


if __name__ == "__main__":
    main()
