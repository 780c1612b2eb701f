"""Actor memory against file length, and the codes of blocked decoding against whole-file decoding.

    python jobs/bench_memory.py                                  # 10 min, 1 h, 3 h (prints its own run time)
    python jobs/bench_memory.py --minutes 10 60 --whole-minutes 10 --agreement-seconds 180
    python jobs/bench_memory.py --hostile                        # only the small files that claim gigabytes
    python jobs/bench_memory.py --hf-cells 4 --hf-cell-mb 200    # only the HF reader on one row group of large cells

Memory: one 48 kHz stereo FLAC per WebDataset tar, processed by the `ShardProcessor` a CPU actor runs
(one torch thread, one decode thread, `random:tiny`, default 120 s windows), each length in a fresh
process, since peak RSS (`ru_maxrss`) only grows within one. "over loaded" is the peak minus the RSS
after the model loaded: what the shard cost. The `--whole-minutes` rows turn blocked decoding and
spilling off (the whole file's bytes and samples in memory, as before them) for contrast.

Agreement: synthetic stereo clips of `--agreement-seconds` (FLAC at 44.1 and 48 kHz; MP3 at 22.05 kHz,
whose MPEG-2 decoding in libsndfile depends on read sizes) decoded whole and in blocks
(pipeline.audio.decode.DECODE_METHOD), encoded with `random:tiny` (windowed past 120 s): the share of equal
tokens, and the largest difference between the two 24 kHz waveforms.

Hostile (`--hostile`): small files whose content, not their size, would set the memory, each in a fresh process
through the same ShardProcessor: a .tar.gz of under a MB holding a 512 MiB .txt (beside a short WAV), a tar
of a 119 s FLAC of 8-channel 384 kHz silence (under 120 s, so by length alone it would decode whole), and a
tar of four such FLACs decoded by four threads at once.

HF cells (`--hf-cells`): a Parquet file written by `datasets` (`Dataset.to_parquet`, an `Audio` column of
bytes), all its cells in one row group, read by the HF reader (`read_hf_shard`) in a fresh process, each
cell's audio taken and let go as the decoder would: the peak RSS over the process once pyarrow is loaded,
against the cell size and the row group's.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # demo/ is not installed

RATE, CHANNELS = 48000, 2


def write_shard(folder: str, minutes: float) -> tuple[str, int]:
    """A tar holding one `minutes`-long FLAC; returns its path and the FLAC's size in bytes."""
    from demo.synth import SynthSample, write_long_audio, write_tar

    flac = os.path.join(folder, f"long-{minutes:g}.flac")
    write_long_audio(flac, minutes * 60, RATE, CHANNELS, "flac", seed=int(minutes))
    tar = os.path.join(folder, f"long-{minutes:g}.tar")
    write_tar(tar, [SynthSample(f"long{minutes:g}", {"flac": pathlib.Path(flac)}, minutes * 60)])
    size = os.path.getsize(flac)
    os.remove(flac)
    return tar, size


def measure_shard(tar: str, out_dir: str, whole_file: bool, decode_threads: int = 1) -> dict:
    """Runs in a fresh process: one shard through the actor's ShardProcessor, as a 1-CPU actor runs it."""
    import torch

    import pipeline.audio.decode
    import pipeline.sources.webdataset
    from pipeline.config import load_config
    from pipeline.sources import list_shards
    from pipeline.actor.processor import ShardProcessor

    torch.set_num_threads(1)
    if whole_file:
        pipeline.audio.decode.BLOCKED_ABOVE_S = float("inf")
        pipeline.sources.webdataset.SPILL_ABOVE_BYTES = float("inf")
    config = load_config(None, ["source.kind=webdataset", f"source.urls=[{tar}]", "codec.model=random:tiny",
                                f"audio.decode_threads={decode_threads}",
                                f"output.dir={out_dir}"])
    processor = ShardProcessor(config, "bench", cpus=1)
    loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (shard,) = list_shards(config.source).shards
    result = processor.process(shard)
    assert result.status == "done" and result.rows >= 1, result
    return {"loaded_mb": loaded_mb, "peak_mb": result.peak_rss_mb, "seconds": result.seconds,
            "audio_seconds": result.audio_seconds, "errors": result.error_reasons}


def measure_in_fresh_process(tar: str, out_dir: str, whole_file: bool, decode_threads: int = 1) -> dict:
    command = [sys.executable, __file__, "--child", tar, out_dir, f"--decode-threads={decode_threads}"]
    command += ["--whole-file"] if whole_file else []
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_table(folder: str, minutes: list[float], whole_minutes: list[float]) -> None:
    print(f"peak RSS of the actor's ShardProcessor, one {RATE // 1000} kHz stereo FLAC per shard, random:tiny, 1 thread")
    print(f"{'file':>8} {'decoding':>10} {'FLAC MB':>8} {'loaded MB':>10} {'peak MB':>8} {'over loaded MB':>15} "
          f"{'seconds':>8} {'audio-s/s':>10}")
    runs = [(m, False) for m in minutes] + [(m, True) for m in whole_minutes]
    for minute, whole in runs:
        tar, flac_bytes = write_shard(folder, minute)
        row = measure_in_fresh_process(tar, os.path.join(folder, f"out-{minute:g}-{whole}"), whole)
        os.remove(tar)
        print(f"{_length(minute):>8} {'whole' if whole else 'blocked':>10} {flac_bytes / 1e6:8.0f} {row['loaded_mb']:10.0f} "
              f"{row['peak_mb']:8.0f} {row['peak_mb'] - row['loaded_mb']:15.0f} {row['seconds']:8.1f} "
              f"{row['audio_seconds'] / row['seconds']:10.0f}")


AGREEMENT_CLIPS = (("flac", 44100), ("flac", 48000), ("mp3", 22050))


def agreement(folder: str, seconds: float) -> None:
    from codec import load_codec
    from pipeline.audio.decode import DECODE_METHOD, SpilledFile, decode_audio
    from demo.synth import write_long_audio

    codec = load_codec("random:tiny", device="cpu")
    print(f"\ntoken agreement, blocked ({DECODE_METHOD}) vs whole-file decoding, {seconds:g} s stereo clips, random:tiny")
    for ext, rate in AGREEMENT_CLIPS:
        path = os.path.join(folder, f"agreement-{rate}.{ext}")
        write_long_audio(path, seconds, rate, CHANNELS, ext, seed=rate)
        with open(path, "rb") as f:
            whole = decode_audio(f.read(), codec.sample_rate, "HQ", 1e9, blocked_above_s=float("inf"))
            f.seek(0)
            blocked = decode_audio(SpilledFile(f), codec.sample_rate, "HQ", 1e9, blocked_above_s=0)
        os.remove(path)
        difference = float(np.abs(whole.wave - blocked.wave[:]).max())
        whole_codes, blocked_codes = codec.encode([whole.wave, blocked.wave], 2.0)
        print(f"  {ext} {rate} Hz: {whole.wave.size} vs {blocked.wave.size} samples at 24 kHz, "
              f"max |difference| {difference:.3g}; tokens equal {100 * (whole_codes == blocked_codes).mean():.3f}% "
              f"of {whole_codes.size}")


def write_hostile_shards(folder: str) -> list[tuple[str, str]]:
    """(what, tar path, decode threads) of the hostile shards (see the module's docstring)."""
    import gzip
    import tarfile

    import soundfile

    from demo.synth import SynthSample, encode_audio, synth_clip, write_tar

    text_tar = os.path.join(folder, "huge-text.tar.gz")
    wav = encode_audio(synth_clip(np.random.default_rng(0), 1.0, 16000), 16000, "wav")
    with gzip.open(text_tar, "wb", compresslevel=9) as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        for name, size, chunks in (("a.wav", len(wav), [wav]), ("b.txt", 512 << 20, (b"x" * (1 << 20) for _ in range(512)))):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, _Chunks(chunks))
    flac = os.path.join(folder, "wide.flac")
    with soundfile.SoundFile(flac, "w", 384000, 8, format="FLAC") as f:
        silence = np.zeros((384000, 8), np.float32)
        for _ in range(119):
            f.write(silence)
    flac_tar, four_tar = os.path.join(folder, "wide.tar"), os.path.join(folder, "wide-4.tar")
    write_tar(flac_tar, [SynthSample("wide", {"flac": pathlib.Path(flac)}, 119.0)])
    write_tar(four_tar, [SynthSample(f"wide{i}", {"flac": pathlib.Path(flac)}, 119.0) for i in range(4)])
    wide = f"{os.path.getsize(flac) / 1e6:.2f} MB FLAC: 119 s, 8 ch, 384 kHz"
    return [(f"{os.path.getsize(text_tar) / 1e6:.2f} MB .tar.gz: 512 MiB .txt + 1 s WAV", text_tar, 1),
            (wide, flac_tar, 1), (f"4 x {wide}, 4 decode threads", four_tar, 4)]


class _Chunks:
    """A file-like object over byte chunks, so a 512 MiB member is written without holding it."""

    def __init__(self, chunks):
        self.chunks, self.buffer = iter(chunks), b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buffer += chunk
        out, self.buffer = (self.buffer, b"") if size < 0 else (self.buffer[:size], self.buffer[size:])
        return out


def hostile_table(folder: str) -> None:
    from pipeline.driver.pool import CPU_ACTOR_MEMORY_GB

    print("\npeak RSS of the actor's ShardProcessor on small hostile files (random:tiny, 1 torch thread)")
    for what, tar, threads in write_hostile_shards(folder):
        row = measure_in_fresh_process(tar, os.path.join(folder, f"out-{os.path.basename(tar)}"), False, threads)
        print(f"  {what}: peak {row['peak_mb']:.0f} MB ({row['peak_mb'] - row['loaded_mb']:.0f} MB over the loaded actor; "
              f"a CPU actor reserves {CPU_ACTOR_MEMORY_GB:g} GB), error records {row['errors'] or 'none'}")


def write_hf_cells(path: str, cells: int, cell_mb: float) -> None:
    """A Parquet file of `cells` audio cells of `cell_mb` MB of incompressible bytes (as encoded audio is) in the
    `datasets` Audio layout (a struct of bytes and path), written by `datasets`' Parquet writer (its page and
    chunking options) in one row group. Run it in its own process: it holds the cells."""
    import pyarrow as pa
    from datasets.arrow_writer import ParquetWriter

    rng = np.random.default_rng(0)
    audio = pa.array([{"bytes": rng.bytes(int(cell_mb * 2**20)), "path": None} for _ in range(cells)],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({"id": [f"c{i}" for i in range(cells)], "audio": audio})
    with ParquetWriter(path=path, schema=table.schema) as writer:
        writer.write_table(table, writer_batch_size=cells)
        writer.finalize()


def read_hf_cells(path: str) -> dict:
    """Runs in a fresh process: every row of the file through the HF reader, each spilled cell closed once seen
    (as decoding closes it). Peak RSS (`ru_maxrss`) and the RSS once pyarrow and the reader are loaded."""
    import pyarrow.parquet as pq

    from pipeline.audio.decode import SpilledFile
    from pipeline.sources import source_of
    from pipeline.sources import Shard
    from pipeline.sources.hf import read_hf_shard

    metadata = pq.ParquetFile(path).metadata
    loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sizes, spilled = [], []
    for sample in read_hf_shard(Shard("cells", path, "hf-parquet"), source_of("hf", path=path)):
        assert sample.error is None, sample.error
        spilled.append(isinstance(sample.audio, SpilledFile))
        sizes.append(sample.audio.size if spilled[-1] else len(sample.audio))
        if spilled[-1]:
            sample.audio.close()
    return {"loaded_mb": loaded_mb, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cell_mb": [size / 2**20 for size in sizes], "row_groups": metadata.num_row_groups,
            "spilled": all(spilled)}


def hf_cells_table(folder: str, cells: int, cell_mb: float) -> None:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    path = os.path.join(folder, "cells.parquet")
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as fresh:
        fresh.submit(write_hf_cells, path, cells, cell_mb).result()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as fresh:
        row = fresh.submit(read_hf_cells, path).result()
    print(f"\npeak RSS of the HF reader on {cells} cells of {cell_mb:g} MB in {row['row_groups']} row group(s), "
          f"written by datasets: {row['peak_mb']:.0f} MB, {row['peak_mb'] - row['loaded_mb']:.0f} MB over the loaded "
          f"reader ({(row['peak_mb'] - row['loaded_mb']) / cell_mb:.1f} cells; the row group is {cells * cell_mb:g} MB)")
    os.remove(path)


def _length(minutes: float) -> str:
    return f"{minutes / 60:g} h" if minutes >= 60 else f"{minutes:g} min"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="*", default=[10, 60, 180], help="file lengths, blocked")
    parser.add_argument("--whole-minutes", type=float, nargs="*", default=[10, 60],
                        help="file lengths with blocked decoding and spilling off")
    parser.add_argument("--agreement-seconds", type=float, default=300.0)
    parser.add_argument("--hostile", action="store_true", help="only the hostile small files")
    parser.add_argument("--hf-cells", type=int, default=0, help="only the HF reader: this many cells in a row group")
    parser.add_argument("--hf-cell-mb", type=float, default=200.0, help="the size of each HF cell")
    parser.add_argument("--child", nargs=2, metavar=("TAR", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--whole-file", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--decode-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_shard(*args.child, args.whole_file, args.decode_threads)))
        return
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
        if args.hf_cells:
            hf_cells_table(folder, args.hf_cells, args.hf_cell_mb)
        else:
            if not args.hostile:
                memory_table(folder, args.minutes, args.whole_minutes)
                agreement(folder, args.agreement_seconds)
            hostile_table(folder)
    print(f"\nbenchmark run time: {(time.perf_counter() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
