"""Synthetic audio corpora (no downloads): the offline demo, the tests and the benchmarks use these.

Clips are speech-like (a gliding harmonic source under a syllable-rate envelope, plus breath
noise) in the formats, rates and channel counts a real corpus mixes.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tarfile
from dataclasses import dataclass

import numpy as np
import soundfile

FORMATS = {  # extension -> (soundfile format, subtype)
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
RATES = (8000, 16000, 22050, 24000, 44100, 48000)


def synth_clip(rng: np.random.Generator, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    n = max(1, int(seconds * rate))
    t = np.arange(n) / rate
    pitch = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)), 0, None) ** 2
    mono = 0.25 * envelope * voiced + 0.01 * rng.standard_normal(n)
    out = np.stack([mono * rng.uniform(0.6, 1.0) for _ in range(channels)], axis=1)
    return out.astype(np.float32)


def encode_audio(array: np.ndarray, rate: int, ext: str) -> bytes:
    fmt, subtype = FORMATS[ext]
    buffer = io.BytesIO()
    soundfile.write(buffer, array, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@dataclass
class SynthSample:
    key: str
    members: dict  # extension -> bytes, or a path (os.PathLike) of a file to copy in
    seconds: float


def random_sample(rng: np.random.Generator, key: str, seconds: float, ext: str | None = None) -> SynthSample:
    ext = ext or str(rng.choice(list(FORMATS)))
    rate = int(rng.choice(RATES)) if ext != "mp3" else int(rng.choice((16000, 22050, 24000, 44100, 48000)))
    channels = int(rng.choice((1, 2)))
    audio = encode_audio(synth_clip(rng, seconds, rate, channels), rate, ext)
    meta = {"category": str(rng.choice(["speech", "music", "sfx"])), "rate": rate, "channels": channels}
    return SynthSample(key, {ext: audio, "txt": f"sample {key}".encode(), "json": json.dumps(meta).encode()}, seconds)


def write_long_audio(path: str, seconds: float, rate: int, channels: int, ext: str = "flac", seed: int = 0,
                     block_seconds: float = 10.0, distinct_blocks: int = 6) -> None:
    """A long synthetic file, written a block at a time (never held whole); the content cycles through
    `distinct_blocks` blocks, as synthesising every block anew would cost more than encoding it."""
    rng = np.random.default_rng(seed)
    blocks = [synth_clip(rng, block_seconds, rate, channels) for _ in range(distinct_blocks)]
    fmt, subtype = FORMATS[ext]
    remaining = int(seconds * rate)
    with soundfile.SoundFile(path, "w", rate, channels, subtype, format=fmt) as f:
        for block in itertools.cycle(blocks):
            if remaining <= 0:
                break
            part = block[:remaining]
            f.write(part)
            remaining -= len(part)


def write_tar(path: str, samples: list[SynthSample]) -> None:
    """Members are bytes, or paths of files to copy in (streamed: a long file is not read into memory)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for ext, data in sample.members.items():
                info = tarfile.TarInfo(f"{sample.key}.{ext}")
                info.mtime = 0  # reproducible tars
                if isinstance(data, os.PathLike):
                    info.size = os.path.getsize(data)
                    with open(data, "rb") as f:
                        tar.addfile(info, f)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def lognormal_seconds(rng: np.random.Generator, count: int, median: float, low: float, high: float) -> np.ndarray:
    return np.clip(rng.lognormal(np.log(median), 0.8, count), low, high)


def make_demo_webdataset(folder: str, shards: int = 4, total_seconds: float = 60.0, seed: int = 0) -> list[str]:
    """About `total_seconds` of mixed audio in `shards` tars; returns their paths."""
    rng = np.random.default_rng(seed)
    seconds = lognormal_seconds(rng, 24, 2.5, 0.3, 8.0)
    seconds *= total_seconds / seconds.sum()
    paths = []
    for shard in range(shards):
        samples = [
            random_sample(rng, f"demo{shard:03d}_{i:04d}", float(s))
            for i, s in enumerate(seconds[shard::shards])
        ]
        path = os.path.join(folder, f"demo-{shard:03d}.tar")
        write_tar(path, samples)
        paths.append(path)
    return paths


def ensure_demo_webdataset(urls: list[str]) -> list[str]:
    """Write the demo corpus where `urls` (brace patterns of local paths) expect it, unless it is there;
    returns the paths written (none when it was there)."""
    from braceexpand import braceexpand

    paths = [os.path.abspath(p) for url in urls for p in braceexpand(url)]
    if any("://" in p for p in paths):
        raise ValueError("the demo corpus is written to local paths only")
    if all(os.path.exists(p) for p in paths):
        return []
    folder = os.path.dirname(paths[0])
    expected = [os.path.join(folder, f"demo-{i:03d}.tar") for i in range(len(paths))]
    if sorted(paths) != expected:
        raise ValueError(f"the demo corpus is demo-000.tar ... demo-{len(paths) - 1:03d}.tar in one folder, not {urls}")
    return make_demo_webdataset(folder, shards=len(paths))
