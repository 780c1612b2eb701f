"""Every GPU measurement in one call (about 10 minutes on one GPU), printed as tables.

    python jobs/bench_gpu.py                      # random:full on cuda: what the README's GPU section reports
    python jobs/bench_gpu.py --device cpu --model random:tiny --minutes 0.3   # a smoke run anywhere

On one corpus of decoded 24 kHz audio (the demo's synthetic WebDataset, scaled to --minutes, lengths
log-normal around 4 s up to 30 s plus a share of 60-90 s clips), with the full-size random-weight
tokenizer (the real architecture's speed; codes meaningless):
  1. token agreement (per token, and the worst clip) of every policy and math mode with (a) float32 codes on
     the device, (b) each clip encoded alone on the same device in the same math (what the padding masks
     promise: cuBLAS and cuDNN pick kernels by shape), (c) float32 CPU codes of the first --cpu-seconds;
  2. a batch-size sweep over the calibration candidates and larger ones: audio-s/s, padding efficiency
     (real frames / frames encoded), peak device memory;
  3. audio-hours per GPU-hour of each math mode at its best policy (one device: audio-s/s);
  4. FLOP utilisation against the device's datasheet peak for that math;
  5. decode + resample speed on one CPU thread, and the decode threads that keep the best encode speed fed;
  6. the padding efficiency the default GPU policy plans for an actor's pools of this length mix;
  7. the share of an encode's wall time the device waits on the host (no kernel running), per math mode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from codec import BatchPolicy, load_codec  # noqa: E402
from codec.batching import GPU_POLICY, plan_batches  # noqa: E402
from codec.calibration import GPU_CANDIDATES  # noqa: E402
from codec.memory import is_out_of_memory, release_device_memory  # noqa: E402
from demo.flops import flops_per_audio_second, peak_flops  # noqa: E402

# pipeline.audio.decode (soundfile, soxr), demo.synth (soundfile) and pipeline.actor.processor (Ray) are imported where used:
# jobs/gpu_check.py reuses this module's measurements on a machine without them

SWEEP = (*GPU_CANDIDATES, BatchPolicy(1920, 256))


def corpus(minutes: float, seed: int = 0) -> tuple[list[bytes], list[np.ndarray], float]:
    """Encoded files (wav/flac/ogg/mp3, 8-48 kHz) and their decoded 24 kHz waves; returns decode audio-s/s too."""
    from demo.synth import lognormal_seconds, random_sample
    from pipeline.audio.decode import decode_bytes, to_model_audio

    rng = np.random.default_rng(seed)
    files, total = [], 0.0
    while total < minutes * 60:
        seconds = float(rng.uniform(60, 90)) if rng.random() < 0.04 else float(lognormal_seconds(rng, 1, 4.0, 0.5, 30.0)[0])
        sample = random_sample(rng, f"c{len(files)}", seconds)
        files.append(next(v for k, v in sample.members.items() if k not in ("txt", "json")))
        total += seconds
    start = time.perf_counter()
    waves = [to_model_audio(*decode_bytes(f), 24000, "HQ", 1e9).wave for f in files]
    decode_speed = sum(w.size for w in waves) / 24000 / (time.perf_counter() - start)
    return files, waves, decode_speed


def planned_padding_efficiency(policy: BatchPolicy, hours: float = 20.0, seed: int = 1) -> float:
    """Real / encoded frames when an actor's pools (POOL_BATCHES x the batch budget) of this corpus's length mix
    are bucketed under `policy`: a property of the plan, computed without running the model."""
    from demo.synth import lognormal_seconds
    from pipeline.actor.processor import POOL_BATCHES

    rng = np.random.default_rng(seed)
    hop, frames, encoded, pool, pool_s = 960, 0, 0, [], 0.0
    for _ in range(int(hours * 3600 / 5)):
        seconds = float(rng.uniform(60, 90)) if rng.random() < 0.04 else float(lognormal_seconds(rng, 1, 4.0, 0.5, 30.0)[0])
        pool.append(int(np.ceil(seconds * 24000 / hop)) * hop)
        pool_s += seconds
        if pool_s >= POOL_BATCHES * policy.max_batch_seconds:
            for batch in plan_batches(pool, 24000, policy):
                frames += sum(pool[i] for i in batch) // hop
                encoded += len(batch) * max(pool[i] for i in batch) // hop
            pool, pool_s = [], 0.0
    return frames / encoded


def timed_encode(codec, waves, bandwidth: float, policy: BatchPolicy) -> tuple[list, float, float, float]:
    """codes, seconds, padding efficiency, peak device memory (GB) of one encode of `waves` under `policy`."""
    codec.encode(waves[:2], bandwidth, policy.max_batch_seconds, policy.max_clips)  # warm-up
    if codec.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    encoded_before = codec.encoded_frames
    start = time.perf_counter()
    codes = codec.encode(waves, bandwidth, policy.max_batch_seconds, policy.max_clips)
    if codec.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    real = sum(c.shape[1] for c in codes)
    efficiency = real / max(1, codec.encoded_frames - encoded_before)
    peak = torch.cuda.max_memory_allocated() / 2**30 if codec.device.type == "cuda" else float("nan")
    return codes, seconds, efficiency, peak


def device_wait_share(codec, waves, bandwidth: float, policy: BatchPolicy) -> float | None:
    """Of one encode's wall time, the share the device had no kernel running: waiting on the host (staging,
    Python between kernels, codes copied back). Kernel time from torch.profiler's CUDA activity; None on CPU."""
    if codec.device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        codec.encode(waves, bandwidth, policy.max_batch_seconds, policy.max_clips)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    busy = sum(event.self_device_time_total for event in prof.key_averages()) / 1e6  # microseconds
    return max(0.0, 1.0 - busy / wall)


def agreement(codes, reference) -> tuple[float, float]:
    equal = sum(int((a == b).sum()) for a, b in zip(codes, reference))
    return equal / sum(r.size for r in reference), min(float((a == b).mean()) for a, b in zip(codes, reference))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="random:full")
    parser.add_argument("--minutes", type=float, default=30.0, help="audio in the corpus")
    parser.add_argument("--bandwidth", type=float, default=2.0)
    parser.add_argument("--cpu-seconds", type=float, default=60.0,
                        help="audio encoded on CPU in float32 as the device-independent reference")
    parser.add_argument("--json", help="also write the best audio-s/s per math mode here (jobs/bench_decode.py --gpu-bench reads it)")
    args = parser.parse_args()

    began = time.perf_counter()
    _, waves, decode_speed = corpus(args.minutes)
    audio_s = sum(w.size for w in waves) / 24000
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}; torch {torch.__version__}; model {args.model}; corpus {len(waves)} clips, "
          f"{audio_s / 60:.1f} min; bandwidth {args.bandwidth} kbps")

    modes = [("float32", False), ("float32", True), ("bfloat16", False)]
    reference = None
    on_cpu = 0  # the first clips, --cpu-seconds of audio, also encoded on CPU in float32
    while on_cpu < len(waves) and sum(w.size for w in waves[:on_cpu]) < args.cpu_seconds * 24000:
        on_cpu += 1
    cpu_codec = load_codec(args.model, device="cpu")
    cpu_codes = [cpu_codec.encode([w], args.bandwidth)[0] for w in waves[:on_cpu]]
    del cpu_codec
    best: dict[str, tuple] = {}
    print("\n| math | policy (s x clips) | audio-s/s | padding efficiency | peak memory GB | agreement with float32 (worst clip) | with each clip alone, same math (worst) | with float32 CPU (worst) | TFLOP/s | of peak |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for dtype, tf32 in modes:
        label = "tf32" if tf32 else dtype
        codec = load_codec(args.model, device=args.device, dtype=dtype, allow_tf32=tf32)
        flops = flops_per_audio_second(codec, args.bandwidth)
        peak_flop = peak_flops(codec.device, label)
        alone = [codec.encode([w], args.bandwidth, max_clips=1)[0] for w in waves]
        for policy in SWEEP:
            codes = None
            try:
                codes, seconds, efficiency, memory = timed_encode(codec, waves, args.bandwidth, policy)
            except Exception as error:  # cuBLAS/cuDNN allocation failures are RuntimeErrors
                if not is_out_of_memory(error):
                    raise
            if codes is None:
                release_device_memory(codec.device)  # out of the except block: the failed pass's tensors are gone
                print(f"| {label} | {policy.max_batch_seconds:g} x {policy.max_clips} | out of memory | | | | | | | |")
                continue
            if reference is None:
                reference = codes  # float32 at the first policy: every policy gives the same codes
            overall, worst = agreement(codes, reference)
            alone_overall, alone_worst = agreement(codes, alone)
            cpu_overall, cpu_worst = agreement(codes[:on_cpu], cpu_codes)
            speed = audio_s / seconds
            tflops = speed * flops / 1e12
            print(f"| {label} | {policy.max_batch_seconds:g} x {policy.max_clips} | {speed:.1f} | {efficiency:.3f} | "
                  f"{memory:.1f} | {overall * 100:.3f}% ({worst * 100:.2f}%) | {alone_overall * 100:.3f}% "
                  f"({alone_worst * 100:.2f}%) | {cpu_overall * 100:.3f}% ({cpu_worst * 100:.2f}%) | {tflops:.2f} | "
                  + (f"{speed * flops / peak_flop * 100:.1f}% |" if peak_flop else "n/a |"))
            if label not in best or speed > best[label][0]:
                best[label] = (speed, policy, overall)
        del codec
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()

    print("\n| math | best policy | audio-hours per GPU-hour | agreement with float32 | decode threads to keep it fed | "
          "device waiting on the host (profiled encode) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, (speed, policy, overall) in best.items():
        dtype = "bfloat16" if label == "bfloat16" else "float32"
        codec = load_codec(args.model, device=args.device, dtype=dtype, allow_tf32=label == "tf32")
        waiting = device_wait_share(codec, waves, args.bandwidth, policy)
        del codec
        print(f"| {label} | {policy.max_batch_seconds:g} x {policy.max_clips} | {speed:.0f} | {overall * 100:.3f}% | "
              f"{int(np.ceil(speed / decode_speed))} | {'n/a' if waiting is None else f'{waiting:.1%}'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "model": args.model,
                       "best_audio_s_per_s": {label: speed for label, (speed, _, _) in best.items()}}, f, indent=1)
    from pipeline.actor.processor import POOL_BATCHES

    print(f"\nplanned padding efficiency of the default GPU policy ({GPU_POLICY.max_batch_seconds:g} s x "
          f"{GPU_POLICY.max_clips} clips) in pools of {POOL_BATCHES} budgets, 20 h of this length mix (no model run): "
          f"{planned_padding_efficiency(GPU_POLICY):.3f}")
    print(f"\ndecode + resample (soundfile, soxr HQ): {decode_speed:.0f} audio-s/s on one CPU thread; "
          f"audio-hours per GPU-hour = audio-s/s on one device; total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
