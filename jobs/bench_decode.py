"""Decode + downmix + resample to 24 kHz (the pipeline's own `decode_audio`, soxr HQ): how many CPU cores keep
one GPU fed.

    python jobs/bench_decode.py                                  # about a minute here
    python jobs/bench_decode.py --encode-rate 25000              # the arithmetic at another encode rate
    python jobs/bench_decode.py --gpu-bench bench_gpu.json       # at the rate `bench_gpu.py --json` measured

Prints, for one --seconds file of each format (written here with soundfile: synthetic speech-like audio):
  1. audio-s per CPU-second on one thread (x realtime per core), and over an equal-audio mix of the formats;
  2. the mix decoded by 1..N workers as threads in one process and as processes (N: this machine's cores):
     audio-s/s and the scaling against one worker (threads share the GIL for the numpy steps; processes pay
     for shipping the file in and the 24 kHz audio back);
  3. the decode cores one GPU needs at the encode rate (audio-s/s): per format, over the mix, and with the
     thread scaling this machine measured.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import soundfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.audio import decode_audio  # noqa: E402
from demo.synth import synth_clip  # noqa: E402

# (label, rate, channels, soundfile format, subtype): the formats issue 19 names
FORMATS = (
    ("16 kHz mono wav", 16000, 1, "WAV", "PCM_16"),
    ("48 kHz stereo wav", 48000, 2, "WAV", "PCM_16"),
    ("44.1 kHz stereo FLAC", 44100, 2, "FLAC", "PCM_16"),
    ("44.1 kHz stereo MP3", 44100, 2, "MP3", "MPEG_LAYER_III"),
    ("48 kHz stereo Vorbis", 48000, 2, "OGG", "VORBIS"),
    ("48 kHz stereo Opus", 48000, 2, "OGG", "OPUS"),
)
DEFAULT_ENCODE_RATE = 10_000.0  # issue 19's estimate for an H100 at a third of its bf16 peak (audio-s/s)


def make_files(seconds: float) -> list[bytes]:
    rng = np.random.default_rng(0)
    files = []
    for _, rate, channels, fmt, subtype in FORMATS:
        buffer, clip = io.BytesIO(), synth_clip(rng, seconds, rate, channels)
        with soundfile.SoundFile(buffer, "w", rate, channels, subtype, format=fmt) as f:
            for start in range(0, len(clip), rate):  # a second at a time: libsndfile's Ogg writer crashes on long writes
                f.write(clip[start:start + rate])
        files.append(buffer.getvalue())
    return files


def decode(data: bytes) -> np.ndarray:
    return decode_audio(data, 24000, "HQ", 1e9).wave


def per_core_rate(data: bytes, seconds: float, min_cpu_s: float) -> float:
    """Audio-s per CPU-second of this thread (repeated until `min_cpu_s` of CPU time)."""
    decode(data)  # warm-up: libraries loaded, allocator primed
    began, runs = time.thread_time(), 0
    while runs < 2 or time.thread_time() - began < min_cpu_s:
        decode(data)
        runs += 1
    return runs * seconds / (time.thread_time() - began)


def pooled_rate(pool_class, workers: int, files: list[bytes], seconds: float) -> float:
    """Audio-s/s (wall) of `workers` decoding every file of `files`, pool start-up excluded."""
    with pool_class(max_workers=workers) as pool:
        list(pool.map(decode, files[:workers]))  # workers started and warm
        began = time.perf_counter()
        for wave in pool.map(decode, files):
            del wave
        return len(files) * seconds / (time.perf_counter() - began)


def encode_rate_of(args) -> tuple[float, str]:
    if args.gpu_bench:
        with open(args.gpu_bench) as f:
            measured = json.load(f)
        label = "float32" if "float32" in measured["best_audio_s_per_s"] else next(iter(measured["best_audio_s_per_s"]))
        return measured["best_audio_s_per_s"][label], f"bench_gpu's best {label} rate on {measured['device']}"
    source = "issue 19's estimate" if args.encode_rate == DEFAULT_ENCODE_RATE else "--encode-rate"
    return args.encode_rate, source


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each format's file")
    parser.add_argument("--min-cpu-s", type=float, default=2.0, help="CPU time per format for the per-core rate")
    parser.add_argument("--mix-rounds", type=int, default=4, help="times the mix of formats is decoded per pool size")
    parser.add_argument("--encode-rate", type=float, default=DEFAULT_ENCODE_RATE, help="one GPU's encode audio-s/s")
    parser.add_argument("--gpu-bench", help="JSON written by jobs/bench_gpu.py --json: its measured rate is used")
    args = parser.parse_args()

    began = time.perf_counter()
    files = make_files(args.seconds)
    cores = os.cpu_count() or 1
    print(f"decode + downmix + resample to 24 kHz (pipeline.audio.decode_audio, soxr HQ), {args.seconds:g} s files; "
          f"{cores} CPU cores here")
    print("\n| format | file | x realtime per core (one thread, CPU time) |")
    print("| --- | --- | --- |")
    rates = []
    for (label, *_), data in zip(FORMATS, files):
        rates.append(per_core_rate(data, args.seconds, args.min_cpu_s))
        print(f"| {label} | {len(data) / 1e6:.2f} MB | {rates[-1]:,.0f}x |")
    mix = len(rates) / sum(1 / r for r in rates)  # equal audio of each format
    print(f"| equal-audio mix | | {mix:,.0f}x |")

    mixed = files * args.mix_rounds
    audio = args.seconds
    print(f"\n| workers | threads: audio-s/s (x one thread) | processes: audio-s/s (x one process) |")
    print("| --- | --- | --- |")
    scaling = {}
    for workers in range(1, cores + 1):
        threads = pooled_rate(ThreadPoolExecutor, workers, mixed, audio)
        processes = pooled_rate(ProcessPoolExecutor, workers, mixed, audio)
        scaling[workers] = (threads, processes)
        t1, p1 = scaling[1]
        print(f"| {workers} | {threads:,.0f} ({threads / t1:.2f}x) | {processes:,.0f} ({processes / p1:.2f}x) |")

    encode_rate, source = encode_rate_of(args)
    threads_eff = scaling[cores][0] / (cores * scaling[1][0])
    processes_eff = scaling[cores][1] / (cores * scaling[1][1])
    print(f"\ndecode cores per GPU at {encode_rate:,.0f} audio-s/s ({source}):")
    for (label, *_), rate in zip(FORMATS, rates):
        print(f"  {label}: {encode_rate / rate:.0f}")
    print(f"  equal-audio mix: {encode_rate / mix:.0f} at the one-thread rate; with the scaling measured here at "
          f"{cores} workers ({threads_eff:.0%} per thread, {processes_eff:.0%} per process): "
          f"{encode_rate / (mix * threads_eff):.0f} as threads, {encode_rate / (mix * processes_eff):.0f} as processes")
    print(f"\ntotal {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
