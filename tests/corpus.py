"""Test corpora written by the tests themselves: WebDataset tars and HF datasets of mixed audio."""

from __future__ import annotations

import io
import os

import numpy as np
import soundfile

from demo.synth import SynthSample, random_sample, synth_clip, write_tar


def mixed_tar(path: str, prefix: str, count: int, seed: int, max_seconds: float = 2.5) -> list[SynthSample]:
    rng = np.random.default_rng(seed)
    exts = ["wav", "flac", "ogg", "mp3"]
    samples = [
        random_sample(rng, f"{prefix}_{i:03d}", float(rng.uniform(0.05, max_seconds)), exts[i % len(exts)])
        for i in range(count)
    ]
    write_tar(path, samples)
    return samples


def wav_bytes(array: np.ndarray, rate: int, subtype: str = "FLOAT") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, array, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def hf_dataset(rows: int, seed: int, with_id: bool = True):
    import datasets

    rng = np.random.default_rng(seed)
    audio, ids, texts, speakers = [], [], [], []
    for i in range(rows):
        rate = int(rng.choice([16000, 22050, 44100]))
        clip = synth_clip(rng, float(rng.uniform(0.2, 2.0)), rate, int(rng.choice([1, 2])))
        buffer = io.BytesIO()
        soundfile.write(buffer, clip, rate, format="FLAC")
        audio.append({"bytes": buffer.getvalue(), "path": None})
        ids.append(f"utt-{seed}-{i:03d}")
        texts.append(f"text {i}")
        speakers.append(int(i % 3))
    columns = {"audio": audio, "text": texts, "speaker": speakers}
    if with_id:
        columns["id"] = ids
    return datasets.Dataset.from_dict(columns).cast_column("audio", datasets.Audio())


def tar_paths(folder: str, names: list[str]) -> list[str]:
    return [os.path.join(folder, n) for n in names]
