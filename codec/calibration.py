"""Pick a batch policy by measuring it on this device, at start-up, within memory.

Throughput of a batch policy depends on the device (on CPU batching is slower than one clip at a
time; on a GPU it is the whole game) and on the GPU model and its memory, so it is measured, not
assumed: a few candidate budgets encode the same synthetic clips, and the fastest whose peak device memory
(on its worst-case batch) leaves `HEADROOM_SHARE` of the device free wins.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .batching import BatchPolicy
from .memory import is_out_of_memory, release_device_memory

GPU_CANDIDATES = (BatchPolicy(120, 16), BatchPolicy(240, 32), BatchPolicy(480, 64), BatchPolicy(960, 128))
CPU_CANDIDATES = (BatchPolicy(60, 1), BatchPolicy(60, 4))
# of the device's memory the kept policy leaves free, for what the peak allocated does not count (the CUDA
# context, the caching allocator's fragments) and for pools of other shapes than the calibration's
HEADROOM_SHARE = 0.15


def calibration_clips(seconds: float, seed: int = 0, sample_rate: int = 24000) -> list[np.ndarray]:
    """Speech-length clips (log-normal around 4 s) adding up to about `seconds`."""
    rng = np.random.default_rng(seed)
    clips, total = [], 0.0
    while total < seconds:
        length = float(np.clip(rng.lognormal(np.log(4.0), 0.7), 0.5, 20.0))
        clips.append((0.1 * rng.standard_normal(int(length * sample_rate))).astype(np.float32))
        total += length
    return clips


def worst_case_clips(codec, policy: BatchPolicy) -> list[np.ndarray]:
    """The largest batch this policy can form: as many window-long clips as the budget admits, of unequal
    lengths (each up to 1% shorter than the window, not whole hops), so the batch runs the padding masks as a
    real mixed batch does, yet stays one batch (splitting it would save less padding than a batch costs).
    Speech-length calibration clips alone would not show that a policy runs out of memory on long ones."""
    window = int(codec.window_frames / codec.frame_rate * codec.sample_rate)
    count = max(1, min(policy.max_clips, int(policy.max_batch_seconds * codec.sample_rate // window)))
    return [np.zeros(window - (window // 100) * i // count - (i > 0), np.float32) for i in range(count)]


def _worst_case(codec, bandwidth: float, policy: BatchPolicy) -> None:
    codec.encode(worst_case_clips(codec, policy), bandwidth, policy.max_batch_seconds, policy.max_clips)


def calibrate(codec, bandwidth: float, candidates=None, seconds: float | None = None, memory: "DeviceMemory | None" = None,
              headroom: float = HEADROOM_SHARE) -> tuple[BatchPolicy, list[dict]]:
    """Fastest policy among `candidates` that leaves `headroom` of the device's memory free, and the table of
    what each measured: audio-s/s, peak device memory on its worst-case batch and the timed run, kept or why not.
    memory: what reads the device's memory (injectable: the tests exercise the headroom rule on CPU)."""
    on_gpu = codec.device.type == "cuda"
    memory = memory or DeviceMemory(codec.device)
    total = memory.total()
    candidates = candidates or (GPU_CANDIDATES if on_gpu else CPU_CANDIDATES)
    clips = calibration_clips(seconds or (2 * max(c.max_batch_seconds for c in candidates) if on_gpu else 20.0))
    audio_s = sum(c.size for c in clips) / codec.sample_rate
    table, best = [], None

    def measure(policy: BatchPolicy) -> None:
        nonlocal best
        memory.reset()
        speed = _measure(codec, bandwidth, policy, clips, audio_s, worst_case=total is not None)
        peak = memory.peak()
        row = {"policy": policy.__dict__, "audio_s_per_s": speed if isinstance(speed, float) else None,
               "peak_memory_mb": None if peak is None else round(peak / 2**20), "kept": False}
        table.append(row)
        if not isinstance(speed, float):
            row["note"] = f"out of memory ({speed})"
        elif total is not None and peak is not None and peak > (1 - headroom) * total:
            row["note"] = f"leaves less than {headroom:.0%} of the device's {total / 2**20:.0f} MB free"
        elif best is None or speed > best[0]:
            best = (speed, policy, row)

    for policy in candidates:
        measure(policy)
    # none fits (a smaller GPU than the candidates assume): halve the smallest until one does, down to one clip,
    # so running out of memory lowers the budget and does not end the actor
    policy = min(candidates, key=lambda c: (c.max_clips, c.max_batch_seconds))
    while best is None and policy.max_clips > 1:
        policy = BatchPolicy(policy.max_batch_seconds / 2, policy.max_clips // 2)
        measure(policy)
    if best is None:
        raise RuntimeError(f"no candidate batch policy fits in memory with {headroom:.0%} of it free: {table}; "
                           "set codec.max_batch_seconds and codec.max_clips to a smaller budget")
    best[2]["kept"] = True
    for row in table:
        if "note" not in row and not row["kept"]:
            row["note"] = "slower"
    return best[1], table


def _measure(codec, bandwidth: float, policy: BatchPolicy, clips: list, audio_s: float, worst_case: bool) -> float | str:
    """Audio-s/s of `policy` on `clips`, or the message of the allocation failure that stopped it."""
    synchronize = torch.cuda.synchronize if codec.device.type == "cuda" else (lambda: None)
    try:
        if worst_case:
            _worst_case(codec, bandwidth, policy)
        codec.encode(clips[:2], bandwidth, policy.max_batch_seconds, policy.max_clips)  # warm-up
        synchronize()
        start = time.perf_counter()
        codec.encode(clips, bandwidth, policy.max_batch_seconds, policy.max_clips)
        synchronize()
        return audio_s / (time.perf_counter() - start)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        message = str(error).strip().splitlines()[0][:160]
    # out of the except block: the failed pass's tensors went with its traceback
    release_device_memory(codec.device)
    return message


class DeviceMemory:
    """The device's memory as calibration reads it: its size and the peak allocated since `reset`.
    None on CPU, where there is no device memory to budget."""

    def __init__(self, device: torch.device):
        self.device = device

    def total(self) -> int | None:
        return torch.cuda.get_device_properties(self.device).total_memory if self.device.type == "cuda" else None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
