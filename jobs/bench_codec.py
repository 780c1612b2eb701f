"""Codec benchmark: per-clip reference loop vs `Codec.encode`, with token agreement.

    python jobs/bench_codec.py                   # CPU or GPU, whichever torch sees
    python jobs/bench_codec.py --device cuda --dtypes float32 bfloat16 --tf32

Uses the full-size architecture with random weights (`random:full`): speeds are those of the
real model; codes are meaningless. Prints audio-seconds per second of (a) the loop a user would
write (each clip alone through `model.encode`) and (b) `Codec.encode` under several batch
policies, the agreement of each with the canonical codes, and the windowed-encode agreement
on a long clip.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # demo/ is not installed

from codec import BatchPolicy, load_codec, reference_encode  # noqa: E402
from codec.calibration import CPU_CANDIDATES, GPU_CANDIDATES  # noqa: E402
from demo.flops import flops_per_audio_second, peak_flops  # noqa: E402


def corpus(seed: int, clips: int, max_s: float) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(4.0), 0.8, clips), 0.3, max_s)
    waves = []
    for seconds in lengths:
        n = int(seconds * 24000)
        envelope = 0.05 + 0.3 * np.abs(np.sin(np.linspace(0, rng.uniform(2, 40), n)))
        waves.append((envelope * rng.standard_normal(n)).astype(np.float32))
    return waves


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def agreement(codes, reference) -> tuple[float, float]:
    per_clip = [float((a == b).mean()) for a, b in zip(codes, reference)]
    frames = sum(r.size for r in reference)
    overall = sum(float((a == b).sum()) for a, b in zip(codes, reference)) / frames
    return overall, min(per_clip)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=12.0)
    parser.add_argument("--bandwidth", type=float, default=2.0)
    parser.add_argument("--dtypes", nargs="+", default=["float32"])
    parser.add_argument("--tf32", action="store_true", help="also run float32 with TF32 matmuls (GPU)")
    parser.add_argument("--policies", nargs="+", default=None, help="SECONDSxCLIPS, e.g. 60x1 120x4")
    parser.add_argument("--long-seconds", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=45.0, help="window for the long-clip test (s)")
    parser.add_argument("--context", type=float, default=10.0, help="context for the long-clip test (s)")
    args = parser.parse_args()

    codec = load_codec("random:full", device=args.device)
    device = codec.device
    waves = corpus(0, args.clips, args.max_seconds)
    audio_s = sum(w.size for w in waves) / 24000
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"clips={len(waves)} audio={audio_s:.1f}s bandwidth={args.bandwidth}")

    flops = flops_per_audio_second(codec, args.bandwidth)
    print(f"encode cost: {flops / 1e9:.1f} GFLOP per audio second (convolutions, linears, attention; 10 s clip)")

    def utilisation(speed: float, math: str) -> str:
        peak = peak_flops(device, math)
        achieved = f"{speed * flops / 1e12:6.2f} TFLOP/s"
        return achieved + (f" = {speed * flops / peak * 100:4.1f}% of {math} peak" if peak else "")

    reference_encode(codec.model, waves[0][:24000], args.bandwidth)  # warm-up
    reference, ref_t = timed(lambda: [reference_encode(codec.model, w, args.bandwidth) for w in waves], device)
    ref_speed = audio_s / ref_t
    print(f"(a) per-clip reference loop      {ref_speed:8.2f} audio-s/s  {utilisation(ref_speed, 'float32')}")

    if args.policies:
        policies = [BatchPolicy(float(p.split("x")[0]), int(p.split("x")[1])) for p in args.policies]
    else:  # the candidates the actors calibrate over
        policies = list(CPU_CANDIDATES if device.type == "cpu" else GPU_CANDIDATES)
    variants = [(dtype, False) for dtype in args.dtypes] + ([("float32", True)] if args.tf32 else [])
    best = None
    for dtype, tf32 in variants:
        variant = load_codec("random:full", device=args.device, dtype=dtype, allow_tf32=tf32)
        for policy in policies:
            variant.encode(waves[:2], args.bandwidth, policy.max_batch_seconds, policy.max_clips)  # warm-up
            codes, t = timed(
                lambda: variant.encode(waves, args.bandwidth, policy.max_batch_seconds, policy.max_clips), device
            )
            overall, worst = agreement(codes, reference)
            speed = audio_s / t
            label = f"{dtype}{'+tf32' if tf32 else ''} {policy.max_batch_seconds:g}s x {policy.max_clips}"
            print(f"(b) Codec.encode {label:<22}{speed:8.2f} audio-s/s  {speed / ref_speed:5.2f}x loop  "
                  f"agreement {overall * 100:.3f}% (worst clip {worst * 100:.3f}%)  "
                  f"{utilisation(speed, 'tf32' if tf32 else dtype)}")
            if dtype == "float32" and not tf32 and (best is None or speed > best[0]):
                best = (speed, label, overall, worst)
    print(f"best float32 policy: {best[1]}: {best[0] / ref_speed:.2f}x the per-clip loop, "
          f"agreement {best[2] * 100:.3f}% (worst clip {best[3] * 100:.3f}%)")

    # for contrast: the same clips zero-padded into one batch through the unmasked model
    few = waves[:4]
    hop = codec.hop_length
    total = max(-(-w.size // hop) * hop for w in few)
    batch = torch.zeros(len(few), 1, total)
    for i, w in enumerate(few):
        batch[i, 0, : w.size] = torch.from_numpy(w)
    with torch.inference_mode():
        plain = codec.model.encode(batch.to(device), bandwidth=args.bandwidth, return_dict=False).cpu().numpy()
    plain_codes = [plain[i, :, : r.shape[1]] for i, r in enumerate(reference[:4])]
    overall, worst = agreement(plain_codes, reference[:4])
    print(f"plain zero-padded batch of {len(few)} (no masks): agreement {overall * 100:.1f}% (worst clip {worst * 100:.1f}%)")

    long_wave = corpus(1, 1, args.long_seconds)[0]
    long_wave = np.resize(long_wave, int(args.long_seconds * 24000))
    single = reference_encode(codec.model, long_wave, args.bandwidth)
    codec = load_codec("random:full", device=args.device, window_s=args.window, context_s=args.context)
    (windowed,), t = timed(lambda: codec.encode([long_wave], args.bandwidth), device)
    seams = [k * codec.window_frames + d for k in range(1, single.shape[1] // codec.window_frames + 1) for d in (-1, 0)]
    seams = [s for s in seams if s < single.shape[1]]
    print(f"windowed {args.long_seconds:g}s clip (window {codec.window_frames / 25:g}s, context "
          f"{codec.context_frames / 25:g}s): agreement {(windowed == single).mean() * 100:.3f}%, "
          f"at seams {(windowed[:, seams] == single[:, seams]).mean() * 100:.3f}%")


if __name__ == "__main__":
    main()
