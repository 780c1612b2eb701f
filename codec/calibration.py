"""Pick a batch policy by measuring it on this device, at start-up, within memory.

Throughput of a batch policy depends on the device (on CPU batching is slower than one clip at a
time; on a GPU it is the whole game) and on the GPU model and its memory, so it is measured, not
assumed: a few candidate budgets encode the same synthetic clips and the fastest that fits wins.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .batching import BatchPolicy

GPU_CANDIDATES = (BatchPolicy(120, 16), BatchPolicy(240, 32), BatchPolicy(480, 64), BatchPolicy(960, 128))
CPU_CANDIDATES = (BatchPolicy(60, 1), BatchPolicy(60, 4))


def calibration_clips(seconds: float, seed: int = 0, sample_rate: int = 24000) -> list[np.ndarray]:
    """Speech-length clips (log-normal around 4 s) adding up to about `seconds`."""
    rng = np.random.default_rng(seed)
    clips, total = [], 0.0
    while total < seconds:
        length = float(np.clip(rng.lognormal(np.log(4.0), 0.7), 0.5, 20.0))
        clips.append((0.1 * rng.standard_normal(int(length * sample_rate))).astype(np.float32))
        total += length
    return clips


def _worst_case(codec, bandwidth: float, policy: BatchPolicy) -> None:
    """The largest batch this policy can form: as many window-long clips as the budget admits.
    Speech-length calibration clips alone would not show that a policy runs out of memory on long ones."""
    window_s = codec.window_frames / codec.frame_rate
    count = max(1, min(policy.max_clips, int(policy.max_batch_seconds // window_s)))
    clips = [np.zeros(int(window_s * codec.sample_rate), np.float32) for _ in range(count)]
    codec.encode(clips, bandwidth, policy.max_batch_seconds, policy.max_clips)


def calibrate(codec, bandwidth: float, candidates=None, seconds: float | None = None) -> tuple[BatchPolicy, list[dict]]:
    """Fastest policy among `candidates` on this device, and what each measured (audio-s/s or OOM)."""
    on_gpu = codec.device.type == "cuda"
    candidates = candidates or (GPU_CANDIDATES if on_gpu else CPU_CANDIDATES)
    clips = calibration_clips(seconds or (2 * max(c.max_batch_seconds for c in candidates) if on_gpu else 20.0))
    audio_s = sum(c.size for c in clips) / codec.sample_rate
    table, best = [], None
    for policy in candidates:
        try:
            if on_gpu:
                _worst_case(codec, bandwidth, policy)
            codec.encode(clips[:2], bandwidth, policy.max_batch_seconds, policy.max_clips)  # warm-up
            if on_gpu:
                torch.cuda.synchronize()
            start = time.perf_counter()
            codec.encode(clips, bandwidth, policy.max_batch_seconds, policy.max_clips)
            if on_gpu:
                torch.cuda.synchronize()
            speed = audio_s / (time.perf_counter() - start)
        except torch.OutOfMemoryError:
            if on_gpu:
                torch.cuda.empty_cache()
            table.append({"policy": policy.__dict__, "audio_s_per_s": None, "note": "out of memory"})
            continue
        table.append({"policy": policy.__dict__, "audio_s_per_s": speed})
        if best is None or speed > best[0]:
            best = (speed, policy)
    if best is None:
        raise RuntimeError(f"every candidate batch policy ran out of memory: {table}")
    return best[1], table
