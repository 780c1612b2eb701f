"""Actor memory against file length, and the codes of blocked decoding against whole-file decoding.

    python jobs/bench_memory.py                                  # 10 min, 1 h, 3 h (prints its own run time)
    python jobs/bench_memory.py --minutes 10 60 --whole-minutes 10 --agreement-seconds 180

Memory: one 48 kHz stereo FLAC per WebDataset tar, processed by the `ShardProcessor` a CPU actor runs
(one torch thread, one decode thread, `random:tiny`, default 120 s windows), each length in a fresh
process, since peak RSS (`ru_maxrss`) only grows within one. "over loaded" is the peak minus the RSS
after the model loaded: what the shard cost. The `--whole-minutes` rows turn blocked decoding and
spilling off (the whole file's bytes and samples in memory, as before them) for contrast.

Agreement: synthetic stereo clips of `--agreement-seconds` (FLAC at 44.1 and 48 kHz; MP3 at 22.05 kHz,
whose MPEG-2 decoding in libsndfile depends on read sizes) decoded whole and in blocks
(pipeline.audio.DECODE_METHOD), encoded with `random:tiny` (windowed past 120 s): the share of equal
tokens, and the largest difference between the two 24 kHz waveforms.
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

RATE, CHANNELS = 48000, 2


def write_shard(folder: str, minutes: float) -> tuple[str, int]:
    """A tar holding one `minutes`-long FLAC; returns its path and the FLAC's size in bytes."""
    from pipeline.synth import SynthSample, write_long_audio, write_tar

    flac = os.path.join(folder, f"long-{minutes:g}.flac")
    write_long_audio(flac, minutes * 60, RATE, CHANNELS, "flac", seed=int(minutes))
    tar = os.path.join(folder, f"long-{minutes:g}.tar")
    write_tar(tar, [SynthSample(f"long{minutes:g}", {"flac": pathlib.Path(flac)}, minutes * 60)])
    size = os.path.getsize(flac)
    os.remove(flac)
    return tar, size


def measure_shard(tar: str, out_dir: str, whole_file: bool) -> dict:
    """Runs in a fresh process: one shard through the actor's ShardProcessor, as a 1-CPU actor runs it."""
    import torch

    import pipeline.audio
    import pipeline.sources.webdataset
    from pipeline.config import load_config
    from pipeline.sources import list_shards
    from pipeline.worker import ShardProcessor

    torch.set_num_threads(1)
    if whole_file:
        pipeline.audio.BLOCKED_ABOVE_S = float("inf")
        pipeline.sources.webdataset.SPILL_ABOVE_BYTES = float("inf")
    config = load_config(None, ["source.kind=webdataset", f"source.urls=[{tar}]", "codec.model=random:tiny",
                                f"output.dir={out_dir}"])
    processor = ShardProcessor(config, "bench", cpus=1)
    loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (shard,) = list_shards(config.source).shards
    result = processor.process(shard)
    assert result.status == "done" and result.rows == 1, result
    return {"loaded_mb": loaded_mb, "peak_mb": result.peak_rss_mb, "seconds": result.seconds,
            "audio_seconds": result.audio_seconds}


def measure_in_fresh_process(tar: str, out_dir: str, whole_file: bool) -> dict:
    command = [sys.executable, __file__, "--child", tar, out_dir] + (["--whole-file"] if whole_file else [])
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
    from pipeline.audio import DECODE_METHOD, SpilledFile, decode_audio
    from pipeline.synth import write_long_audio

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


def _length(minutes: float) -> str:
    return f"{minutes / 60:g} h" if minutes >= 60 else f"{minutes:g} min"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="*", default=[10, 60, 180], help="file lengths, blocked")
    parser.add_argument("--whole-minutes", type=float, nargs="*", default=[10, 60],
                        help="file lengths with blocked decoding and spilling off")
    parser.add_argument("--agreement-seconds", type=float, default=300.0)
    parser.add_argument("--child", nargs=2, metavar=("TAR", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--whole-file", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_shard(*args.child, args.whole_file)))
        return
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
        memory_table(folder, args.minutes, args.whole_minutes)
        agreement(folder, args.agreement_seconds)
    print(f"\nbenchmark run time: {(time.perf_counter() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
