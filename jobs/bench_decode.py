"""Decode + downmix + resample to 24 kHz (soxr HQ), per CPU core: the pipeline's own `decode_audio` against each
candidate library at equal quality, and how many cores keep one GPU fed.

    python jobs/bench_decode.py                                  # 1-2 minutes here, with the machine loaded
    python jobs/bench_decode.py --seconds 60 --min-cpu-s 2       # longer files, steadier rates
    python jobs/bench_decode.py --gpu-bench gpu.json             # also at the rate the GPU check measured
    python jobs/bench_decode.py --formats Vorbis,Opus,AAC        # some formats only (label substrings)

Prints, for one --seconds file of each format (synthetic speech-like audio; wav, FLAC and Vorbis written with
soundfile, MP3, Opus and AAC with ffmpeg's encoders through PyAV):
  1. per format, x realtime per core (audio-s per CPU-second of one thread): the pipeline; soundfile + soxr HQ and
     PyAV + soxr HQ (each decoded, downmixed by the pipeline's downmix, resampled by the same soxr HQ: equal
     quality); the pipeline over the faster candidate; the pipeline's own share of its time beyond its decoder
     alone and resampling (soxr alone): for ffmpeg's formats beyond decoding with the samples handed over through
     ffmpeg's FIFO and, in brackets, beyond decoding frames never read; the cores one GPU needs at 10,000x and at
     --gpu-bench's rate;
  2. an equal-audio mix of the formats decoded by 1..N threads of one process (N: this machine's cores): audio-s
     per wall second, and the cores the process kept busy (its CPU time over wall time), the libsndfile and the
     ffmpeg formats apart, and by 1..N of the pipeline's decode processes (`audio.decode_processes`: a GIL each).
     N workers keep N cores busy where N are free; on a loaded machine the wall rate shows the load. Beside it a
     control, soxr alone in as many threads (C that releases the GIL, no Python between calls): where it does not
     scale either, the machine gave the process fewer cores (Linux's autogroup shares the cores per session, not
     per thread);
  3. whether decoding releases the GIL, whatever the load: the longest another Python thread waits for the GIL
     while one call decodes or resamples, against the call's own length (libsndfile through cffi, ffmpeg's
     decoders in PyAV and soxr run without the GIL; a C call that holds it makes the other thread wait all of it);
  4. what that means for a 112-core node of 8 GPUs, the arithmetic shown: at the one-thread rate, and at the
     scaling of threads and of processes measured in 2.
CPU time, not wall time, is measured for the rates: other work on the machine slows the wall clock, not them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import av
import numpy as np
import soundfile
import soxr

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.actor.decode_processes import DecodeProcesses  # noqa: E402
from pipeline.actor.sample_decoder import SampleDecoder  # noqa: E402
from pipeline.audio.decode import PYAV_BLOCK_S, decode_audio, decode_bytes, downmix  # noqa: E402
from pipeline.config import AudioConfig  # noqa: E402
from pipeline.sources import RawSample  # noqa: E402
from pipeline.audio.decoders import Decoder, decoder_for, sniff  # noqa: E402
from pipeline.audio.decoders import Format as Format_  # noqa: E402
from demo.synth import synth_clip  # noqa: E402

DEFAULT_ENCODE_RATE = 10_000.0  # issue 19's estimate for an H100 at a third of its bf16 peak (audio-s/s)
TARGET_RATE, QUALITY = 24000, "HQ"
NODE_CORES, NODE_GPUS = 112, 8


@dataclass(frozen=True)
class Format:
    label: str
    rate: int
    channels: int
    writer: str  # "soundfile" or "pyav"
    container: str  # soundfile's format or ffmpeg's muxer
    codec: str  # soundfile's subtype or ffmpeg's encoder
    bit_rate: int = 0


FORMATS = (
    Format("wav 16 kHz mono", 16000, 1, "soundfile", "WAV", "PCM_16"),
    Format("wav 48 kHz stereo", 48000, 2, "soundfile", "WAV", "PCM_16"),
    Format("FLAC 44.1 kHz stereo", 44100, 2, "soundfile", "FLAC", "PCM_16"),
    Format("MP3 44.1 kHz stereo 128k", 44100, 2, "pyav", "mp3", "libmp3lame", 128_000),
    Format("Vorbis 48 kHz stereo", 48000, 2, "soundfile", "OGG", "VORBIS"),
    Format("Opus 48 kHz stereo 64k", 48000, 2, "pyav", "ogg", "libopus", 64_000),
    Format("AAC 44.1 kHz stereo 128k (M4A)", 44100, 2, "pyav", "ipod", "aac", 128_000),
)


def make_file(fmt: Format, seconds: float, rng: np.random.Generator) -> bytes:
    clip = synth_clip(rng, seconds, fmt.rate, fmt.channels)
    buffer = io.BytesIO()
    if fmt.writer == "soundfile":
        with soundfile.SoundFile(buffer, "w", fmt.rate, fmt.channels, fmt.codec, format=fmt.container) as f:
            for start in range(0, len(clip), fmt.rate):  # a second at a time: libsndfile's Ogg writer crashes on long writes
                f.write(clip[start:start + fmt.rate])
        return buffer.getvalue()
    layout = "stereo" if fmt.channels == 2 else "mono"
    with av.open(buffer, "w", format=fmt.container) as container:
        stream = container.add_stream(fmt.codec, rate=fmt.rate, layout=layout)
        stream.bit_rate = fmt.bit_rate
        for start in range(0, len(clip), 4096):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(clip[start:start + 4096].T), format="fltp",
                                               layout=layout)
            frame.sample_rate, frame.pts = fmt.rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


# -- what is timed ---------------------------------------------------------------------------------------------


def pipeline(data: bytes) -> np.ndarray:
    return decode_audio(data, TARGET_RATE, QUALITY, 1e9).wave


def soundfile_decode(data: bytes) -> tuple[np.ndarray, int]:
    array, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return array, rate


def pyav_decode(data: bytes) -> tuple[np.ndarray, int]:
    """The plain way: every frame to an array, joined."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        stream.codec_context.thread_count = 1
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
        return np.concatenate(frames, axis=1).T, stream.codec_context.sample_rate


def pyav_decode_only(data: bytes) -> None:
    """Decoding alone: the frames ffmpeg gives, not turned into arrays."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        stream.codec_context.thread_count = 1
        for _ in container.decode(stream):
            pass


def pyav_decode_to_samples(data: bytes) -> None:
    """Decoding, its samples handed over the cheapest way PyAV has: each frame into ffmpeg's FIFO (one C call per
    frame), read out PYAV_BLOCK_S at a time (as the pipeline reads it)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        stream.codec_context.thread_count = 1
        block = round(PYAV_BLOCK_S * stream.codec_context.sample_rate)
        fifo = av.AudioFifo()
        for frame in container.decode(stream):
            frame.pts = None
            fifo.write(frame)
            if fifo.samples >= block:
                fifo.read(block)
        fifo.read()


def candidate(decode: Callable[[bytes], tuple[np.ndarray, int]]) -> Callable[[bytes], np.ndarray]:
    def run(data: bytes) -> np.ndarray:
        array, rate = decode(data)
        return soxr.resample(downmix(array), rate, TARGET_RATE, quality=QUALITY)
    return run


def per_core_rates(runs: dict[str, Callable], data, seconds: float, min_cpu_s: float) -> dict[str, float]:
    """Audio-s per CPU-second of this thread for each of `runs` on `data`: taken in turn (so that a change in the
    machine's load falls on all of them) until each has had `min_cpu_s` of CPU time and 3 runs; each one's fastest
    run counts (other work on the machine only ever slows a run: contention for caches and memory)."""
    times = {name: [] for name in runs}
    for run in runs.values():
        run(data)  # warm-up: libraries loaded, allocator primed
    while any(len(t) < 3 or sum(t) < min_cpu_s for t in times.values()):
        for name, run in runs.items():
            began = time.thread_time()
            run(data)
            times[name].append(time.thread_time() - began)
    return {name: seconds / min(t) for name, t in times.items()}


def own_share(data: bytes, seconds: float, min_cpu_s: float) -> tuple[float, float | None]:
    """The pipeline's share of its time beyond its decoder alone and soxr alone (on the mono clip at the source
    rate). Its decoder alone: for libsndfile's formats, the fastest whole-file decode to float32 here
    (`decode_bytes`: libsndfile's float32, or its int16 made float32 by numpy, faster than libsndfile's float32);
    the pipeline reads a whole clip in blocks, downmixed as they come, and makes no [frames, channels] array, so its
    share can come out below zero. For ffmpeg's, (1) decoding with its samples handed over through ffmpeg's FIFO,
    and (2) decoding with the frames never read (None for libsndfile's)."""
    by_soundfile = decoder_for(sniff(data[:64])) is Decoder.SOUNDFILE
    array, rate = decode_bytes(data)
    mono = np.ascontiguousarray(downmix(array))
    decoders = ({"decode": lambda d: decode_bytes(d)} if by_soundfile else
                {"decode": pyav_decode_to_samples, "frames": pyav_decode_only})
    # soxr alone in the same turns as the rest, so that a change in the machine's load falls on all the terms
    resample = {"soxr": lambda _: soxr.resample(mono, rate, TARGET_RATE, quality=QUALITY)} if rate != TARGET_RATE else {}
    rates = per_core_rates({"pipeline": pipeline, **decoders, **resample}, data, seconds, min_cpu_s)
    resample_s = 1 / rates["soxr"] if resample else 0.0
    shares = {name: 1 - (1 / rates[name] + resample_s) / (1 / rates["pipeline"]) for name in decoders}
    return shares["decode"], shares.get("frames")


def threaded(workers: int, run: Callable, items: list) -> tuple[float, float]:
    """The wall seconds `workers` threads of this process take to do `run` on each of `items`, and the cores the
    process kept busy (its CPU seconds over them)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, items[:workers]))  # threads started and warm
        wall, cpu = time.perf_counter(), time.process_time()
        for wave in pool.map(run, items):
            del wave
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu / wall


def resident_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def longest_gil_wait(run: Callable[[], object], repeats: int = 3) -> tuple[float, float]:
    """The longest a Python thread (waking every 0.5 ms) waited for the GIL while this thread ran `run`, and
    `run`'s own longest wall time: a call that holds the GIL makes the other thread wait all of it, one that
    releases it does not. Other work on the machine delays a wake-up too, but by the scheduler's slices, not by
    a whole call."""
    import threading

    stop, gaps = threading.Event(), [0.0]

    def ticker():
        while not stop.is_set():
            began = time.perf_counter()
            time.sleep(0.0005)
            gaps[0] = max(gaps[0], time.perf_counter() - began)

    thread = threading.Thread(target=ticker)
    run()
    thread.start()
    time.sleep(0.01)
    gaps[0], longest = 0.0, 0.0
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        longest = max(longest, time.perf_counter() - began)
    stop.set()
    thread.join()
    return gaps[0], longest


def gpu_rate(path: str) -> tuple[float, str]:
    """The float32 encode rate (audio-s/s) in a GPU check's JSON: jobs/gpu_check.py --json's
    `modes.float32.audio_hours_per_gpu_hour` (audio hours per GPU hour: audio-s/s), or bench_gpu.py --json's
    `best_audio_s_per_s` {dtype: rate}."""
    with open(path) as f:
        measured = json.load(f)
    device = measured.get("device", "the GPU")
    modes = measured.get("modes")
    if isinstance(modes, dict) and modes:
        label = "float32" if "float32" in modes else next(iter(modes))
        return float(modes[label]["audio_hours_per_gpu_hour"]), f"jobs/gpu_check's {label} rate on {device}"
    best = measured.get("best_audio_s_per_s")
    if isinstance(best, dict) and best:
        label = "float32" if "float32" in best else next(iter(best))
        return float(best[label]), f"bench_gpu.py's {label} rate on {device}"
    raise SystemExit(f"{path}: no encode rate (gpu_check's modes.float32.audio_hours_per_gpu_hour or bench_gpu.py's "
                     f"best_audio_s_per_s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each format's file")
    parser.add_argument("--min-cpu-s", type=float, default=0.4, help="CPU time per measurement")
    parser.add_argument("--mix-rounds", type=int, default=2, help="times the mix of formats is decoded per thread count")
    parser.add_argument("--thread-repeats", type=int, default=3, help="times each thread count is measured (its best "
                                                                      "counts)")
    parser.add_argument("--encode-rate", type=float, default=DEFAULT_ENCODE_RATE, help="one GPU's encode audio-s/s")
    parser.add_argument("--gpu-bench", help="a GPU check's JSON (jobs/gpu_check.py --json, jobs/bench_gpu.py --json): "
                                            "its float32 rate is used too")
    parser.add_argument("--formats", help="comma-separated substrings of the formats' labels to measure (default all)")
    args = parser.parse_args()
    formats = [fmt for fmt in FORMATS if not args.formats or any(part in fmt.label for part in args.formats.split(","))]
    if not formats:
        parser.error(f"--formats {args.formats!r} names none of: " + "; ".join(fmt.label for fmt in FORMATS))

    began = time.perf_counter()
    rng = np.random.default_rng(0)
    files = [make_file(fmt, args.seconds, rng) for fmt in formats]
    cores = os.cpu_count() or 1
    gpu = gpu_rate(args.gpu_bench) if args.gpu_bench else None
    print(f"decode + downmix + resample to 24 kHz (soxr HQ), {args.seconds:g} s files, x realtime per core (one "
          f"thread, CPU time); {cores} CPU cores here, load average {os.getloadavg()[0]:.1f} at the start")
    print(f"soundfile {soundfile.__version__} (libsndfile {soundfile.__libsndfile_version__}), av {av.__version__} "
          f"(FFmpeg {av.ffmpeg_version_info}), soxr {soxr.__version__}\n")
    gpu_column = f" | cores per GPU at {gpu[0]:,.0f}x" if gpu else ""
    print(f"| format | pipeline (decoder) | soundfile + soxr | PyAV + soxr | pipeline / faster | pipeline's own share "
          f"(ffmpeg's: beyond its samples handed over (frames never read)) "
          f"| cores per GPU at {args.encode_rate:,.0f}x{gpu_column} |")
    print("| --- " * (7 + bool(gpu)) + "|")
    rates = []
    for fmt, data in zip(formats, files):
        runs = {"pipeline": pipeline, "pyav": candidate(pyav_decode), "soundfile": candidate(soundfile_decode)}
        if sniff(data[:64]) is Format_.MP4:
            del runs["soundfile"]  # libsndfile cannot read AAC in MP4
        measured = per_core_rates(runs, data, args.seconds, args.min_cpu_s)
        rate, by_pyav, by_soundfile = measured["pipeline"], measured["pyav"], measured.get("soundfile")
        share, share_of_frames = own_share(data, args.seconds, args.min_cpu_s)
        rates.append(rate)
        faster = max(r for r in (by_soundfile, by_pyav) if r is not None)
        gpu_cell = f" | {gpu[0] / rate:.1f}" if gpu else ""
        print(f"| {fmt.label} | {rate:,.0f}x ({decoder_for(sniff(data[:64])).value}) | "
              f"{f'{by_soundfile:,.0f}x' if by_soundfile else 'cannot read it'} | {by_pyav:,.0f}x | "
              f"{rate / faster:.2f} | {share:.0%}{f' ({share_of_frames:.0%})' if share_of_frames is not None else ''} | "
              f"{args.encode_rate / rate:.1f}{gpu_cell} |")
    mix = len(rates) / sum(1 / r for r in rates)  # equal audio of each format
    gpu_cell = f" | {gpu[0] / mix:.1f}" if gpu else ""
    print(f"| equal-audio mix | {mix:,.0f}x | | | | | {args.encode_rate / mix:.1f}{gpu_cell} |")

    # the mix split by decoder library: libsndfile holds the GIL only around each read; PyAV takes it per packet and
    # per frame. Each decoded by threads of this process and by the pipeline's decode processes (a GIL each), and a
    # control: soxr alone in threads, C with the GIL released and no Python between calls: where it does not scale
    # either, the machine (its load, or a scheduler that shares the cores per session) left this process fewer cores
    families = {library: [data for data in files if decoder_for(sniff(data[:64])) is library] * args.mix_rounds
                for library in (Decoder.SOUNDFILE, Decoder.PYAV)}
    families = {library: items for library, items in families.items() if items}
    clip = synth_clip(np.random.default_rng(1), args.seconds, 44100, 1)[:, 0]
    control = lambda mono: soxr.resample(mono, 44100, TARGET_RATE, quality=QUALITY)
    processes = {workers: DecodeProcesses(SampleDecoder(AudioConfig(), TARGET_RATE, ceil_length=False), workers)
                 for workers in range(1, cores + 1)}
    for pool in processes.values():
        pool.start()  # started and warm before any clock
    runs = {**{("threads", library): (pipeline, items) for library, items in families.items()},
            **{("processes", library): (None, items) for library, items in families.items()},
            ("control", None): (control, [clip] * sum(len(items) for items in families.values()))}
    best, load_during = {}, os.getloadavg()[0]
    try:
        for _ in range(args.thread_repeats):  # worker counts taken in turn, each one's best: the load falls on all
            for workers in range(1, cores + 1):
                for (way, library), (run, items) in runs.items():
                    if way == "processes":
                        run = (lambda pool: lambda data: pool(RawSample("clip", data)))(processes[workers])
                    wall, busy = threaded(workers, run, items)
                    if (way, library, workers) not in best or wall < best[way, library, workers][0]:
                        best[way, library, workers] = (wall, busy, len(items) * args.seconds)
        resident = [resident_mb(pid) for pid in processes[cores].pids]
    finally:
        for pool in processes.values():
            pool.close()
    load_during = (load_during + os.getloadavg()[0]) / 2

    def audio_rate(way, libraries, workers):
        return (sum(best[way, library, workers][2] for library in libraries)
                / sum(best[way, library, workers][0] for library in libraries))

    threads = {workers: audio_rate("threads", families, workers) for workers in range(1, cores + 1)}
    in_processes = {workers: audio_rate("processes", families, workers) for workers in range(1, cores + 1)}
    names = {Decoder.SOUNDFILE: "libsndfile's formats", Decoder.PYAV: "ffmpeg's formats"}
    print("\n| workers | threads: the mix, audio-s per wall s (x one thread) | cores kept busy | "
          + " | ".join(f"threads: {names[library]}" for library in families)
          + " | decode processes: the mix (x one thread) | "
          + " | ".join(f"decode processes: {names[library]}" for library in families)
          + " | control: soxr alone in threads |")
    print("| --- " * (5 + 2 * len(families)) + "|")
    for workers in range(1, cores + 1):
        busy = sum(best["threads", library, workers][1] * best["threads", library, workers][0] for library in families
                   ) / sum(best["threads", library, workers][0] for library in families)
        cells = [f"{audio_rate(way, [library], workers) / audio_rate('threads', [library], 1):.2f}x"
                 for way in ("threads", "processes") for library in families]
        cells.insert(len(families), f"{in_processes[workers]:,.0f} ({in_processes[workers] / threads[1]:.2f}x)")
        control_x = audio_rate("control", [None], workers) / audio_rate("control", [None], 1)
        print(f"| {workers} | {threads[workers]:,.0f} ({threads[workers] / threads[1]:.2f}x) | {busy:.2f} | "
              + " | ".join(cells) + f" | {control_x:.2f}x |")
    print(f"(decode processes: {len(resident)} of them resident {', '.join(f'{mb:.0f}' for mb in resident)} MB after "
          f"decoding the mix, outside this process's memory)")
    print(f"(load average {load_during:.1f} on {cores} cores while measured: N workers have N cores only where the "
          f"load leaves them free)")
    print("\n| one call, in one thread | its longest wall time | another Python thread's longest wait for the GIL |")
    print("| --- | --- | --- |")
    made = {fmt: data for fmt, data in zip(formats, files)}
    flac, opus = (made.get(fmt) or make_file(fmt, args.seconds, rng) for fmt in (FORMATS[2], FORMATS[5]))
    array, rate = soundfile_decode(flac)
    mono = np.ascontiguousarray(downmix(array))
    numbers = list(range(3_000_000, 0, -1))
    for label, run in (("soundfile.read, FLAC", lambda: soundfile_decode(flac)),
                       ("PyAV decode, Opus", lambda: pyav_decode_only(opus)),
                       ("soxr.resample HQ, 44.1 -> 24 kHz", lambda: soxr.resample(mono, rate, TARGET_RATE, quality=QUALITY)),
                       ("the pipeline, FLAC", lambda: pipeline(flac)), ("the pipeline, Opus", lambda: pipeline(opus)),
                       ("control: sorted() of 3M ints (holds the GIL)", lambda: sorted(numbers))):
        wait, longest = longest_gil_wait(run)
        print(f"| {label} | {longest * 1e3:.0f} ms | {wait * 1e3:.1f} ms |")
    load = os.getloadavg()[0]
    print(f"\nload average {load:.1f} on {cores} cores at the end (other work shares them)")

    encode_rate = gpu[0] if gpu else args.encode_rate
    source = gpu[1] if gpu else ("issue 19's estimate" if args.encode_rate == DEFAULT_ENCODE_RATE else "--encode-rate")
    per_gpu = encode_rate / mix
    speedup, in_processes_x = threads[cores] / threads[1], in_processes[cores] / threads[1]
    control_x = audio_rate("control", [None], cores) / audio_rate("control", [None], 1)
    print(f"On paper, a {NODE_CORES}-core node of {NODE_GPUS} GPUs at {encode_rate:,.0f} audio-s/s per GPU ({source}): "
          f"{encode_rate:,.0f} / {mix:,.0f} (the mix per core) = {per_gpu:.1f} decode cores per GPU, x {NODE_GPUS} = "
          f"{NODE_GPUS * per_gpu:.0f} of its {NODE_CORES} cores, where decoding scales with cores. Here {cores} decode "
          f"processes gave {in_processes_x:.2f}x one thread and {cores} threads {speedup:.2f}x, where soxr alone gave "
          f"{control_x:.2f}x (load average {load_during:.1f}): the share of the cores' scaling kept, decode processes "
          f"{in_processes_x / control_x:.0%}, threads {speedup / control_x:.0%}")
    print(f"\ntotal {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
