"""Every GPU measurement the codec needs, in one call on a bare GPU machine (torch, torchaudio, transformers,
numpy; no Ray, soundfile, soxr or omegaconf: nothing here imports them). Run it through jobs/gpu_check.sh.

    python jobs/gpu_check.py --json gpu_check.json                     # random:full on cuda
    python jobs/gpu_check.py --device cpu --model random:tiny --minutes 0.1 --quick --json out.json   # smoke

On synthetic noise clips (log-normal around 4 s, 0.5-30 s, plus a 4% share of 60-90 s), writes JSON and prints
a table of: placement (construction and encode on the device, no op mixing devices), batched == alone per
convention, float32 device codes against float32 CPU codes, TF32 and bf16 agreement with float32, the batch
policy sweep (audio-s/s, padding efficiency, peak memory), audio-hours per GPU-hour per math mode, FLOP
utilisation, the device's idle share while the host prepares batches, syncs and copies per batch, first-shape
cost against a warm shape, and the calibration an actor would keep.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_gpu import SWEEP, agreement, device_wait_share, timed_encode  # noqa: E402
from bench_traffic import count  # noqa: E402
from codec import calibrate, load_codec  # noqa: E402
from codec.batching import BatchPolicy  # noqa: E402
from codec.calibration import GPU_CANDIDATES  # noqa: E402
from codec.conventions import CONVENTIONS  # noqa: E402
from codec.memory import is_out_of_memory, release_device_memory  # noqa: E402
from demo.flops import flops_per_audio_second, peak_flops  # noqa: E402
from demo.traffic import DeviceTraffic  # noqa: E402

SR = 24000
MODES = (("float32", False), ("tf32", True), ("bfloat16", False))


def noise_corpus(minutes: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    waves, total = [], 0.0
    while total < minutes * 60:
        s = float(rng.uniform(60, 90)) if rng.random() < 0.04 else float(np.clip(rng.lognormal(np.log(4.0), 0.8), 0.5, 30))
        waves.append((0.1 * rng.standard_normal(int(s * SR))).astype(np.float32))
        total += s
    return waves


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def placement(model: str, device: str, waves: list, bandwidth: float) -> dict:
    """Construction and an encode under the mixed-device check; copies and value reads (syncs) per batch."""
    try:
        with DeviceTraffic(torch.device(device).type, placeholders=False):
            codec = load_codec(model, device=device)
        return {"ok": True, "per_batch": count(codec, waves, bandwidth)}
    except Exception as error:
        return {"ok": False, "error": str(error)[:300]}


def first_shape_cost(codec, bandwidth: float, seconds: float = 7.3) -> dict:
    """Seconds of an encode at a shape the device has not seen against the same encode again (warm)."""
    wave = np.zeros(int(seconds * SR) + 123, np.float32)
    times = []
    for _ in range(2):
        synchronize(codec.device)
        start = time.perf_counter()
        codec.encode([wave, wave[: wave.size * 2 // 3]], bandwidth, max_clips=2)
        synchronize(codec.device)
        times.append(time.perf_counter() - start)
    return {"first_s": round(times[0], 4), "warm_s": round(times[1], 4)}


def run(args) -> dict:
    """The measurements, written to --json after each section (a run cut short keeps what it measured)."""
    began = time.perf_counter()
    waves = noise_corpus(args.minutes)
    audio_s = sum(w.size for w in waves) / SR
    device = torch.device(args.device)
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "model": args.model, "clips": len(waves), "audio_s": round(audio_s, 1)}
    out["placement"] = placement(args.model, args.device, waves[:8], args.bandwidth)
    save(args.json, out)

    out["batched_equals_alone"] = {}
    for convention in CONVENTIONS:
        codec = load_codec(args.model, device=args.device, convention=convention)
        batched = codec.encode(waves[:16], args.bandwidth, max_clips=16)
        alone = [codec.encode([w], args.bandwidth, max_clips=1)[0] for w in waves[:16]]
        overall, worst = agreement(batched, alone)
        out["batched_equals_alone"][convention] = {"agreement": overall, "worst_clip": worst}
        del codec
    save(args.json, out)

    cpu_clips = waves[: max(1, args.cpu_clips)]
    cpu = load_codec(args.model, device="cpu")
    cpu_codes = [cpu.encode([w], args.bandwidth)[0] for w in cpu_clips]
    del cpu

    sweep = (GPU_CANDIDATES[:1] if args.quick else SWEEP)
    reference, out["modes"], out["sweep"] = None, {}, []
    for label, tf32 in MODES:
        codec = load_codec(args.model, device=args.device, dtype="bfloat16" if label == "bfloat16" else "float32",
                           allow_tf32=tf32)
        best = None
        for policy in sweep:
            try:
                codes, seconds, efficiency, peak = timed_encode(codec, waves, args.bandwidth, policy)
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                codes = None
            if codes is None:
                release_device_memory(codec.device)
                out["sweep"].append({"math": label, "policy": policy.__dict__, "out_of_memory": True})
                continue
            reference = reference if reference is not None else codes
            speed = audio_s / seconds
            row = {"math": label, "policy": policy.__dict__, "audio_s_per_s": round(speed, 2),
                   "padding_efficiency": round(efficiency, 4), "peak_memory_gb": None if np.isnan(peak) else round(peak, 2),
                   "agreement_with_float32": agreement(codes, reference)[0]}
            out["sweep"].append(row)
            if best is None or speed > best[0]:
                best = (speed, policy, codes)
        if best is None:
            continue
        speed, policy, codes = best
        flops, peak_flop = flops_per_audio_second(codec, args.bandwidth), peak_flops(codec.device, label)
        mode = {"best_policy": policy.__dict__, "audio_hours_per_gpu_hour": round(speed, 2),
                "agreement_with_float32": agreement(codes, reference)[0],
                "agreement_with_float32_cpu": agreement(codes[: len(cpu_codes)], cpu_codes)[0],
                "flop_utilisation": round(speed * flops / peak_flop, 4) if peak_flop else None,
                "device_idle_share": device_wait_share(codec, waves, args.bandwidth, policy),
                "first_shape": first_shape_cost(codec, args.bandwidth)}
        out["modes"][label] = mode
        save(args.json, out)
        del codec
        release_device_memory(device)

    codec = load_codec(args.model, device=args.device)
    candidates = (BatchPolicy(30, 4), BatchPolicy(60, 8)) if args.quick else None
    kept, table = calibrate(codec, args.bandwidth, candidates=candidates, seconds=30 if args.quick else None)
    out["calibration"] = {"kept": kept.__dict__, "table": table}
    out["ray_imported"] = sys.modules.get("ray") is not None  # None: a name the caller made absent
    out["seconds"] = round(time.perf_counter() - began, 1)
    save(args.json, out)
    return out


def save(path: str | None, out: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1, default=str)


def print_table(out: dict) -> None:
    p = out["placement"]
    print(f"device {out['device']}, torch {out['torch']}, {out['model']}, {out['clips']} clips / {out['audio_s']} s")
    print(f"placement: {'ok' if p['ok'] else 'FAILED: ' + p['error']}" + (f"; per batch {p['per_batch']}" if p["ok"] else ""))
    for convention, row in out["batched_equals_alone"].items():
        print(f"batched == alone ({convention}): {row['agreement']:.4%} (worst clip {row['worst_clip']:.2%})")
    print("| math | policy | audio-s/s | padding efficiency | peak GB | agreement with float32 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in out["sweep"]:
        policy = f"{row['policy']['max_batch_seconds']:g} x {row['policy']['max_clips']}"
        if row.get("out_of_memory"):
            print(f"| {row['math']} | {policy} | out of memory | | | |")
        else:
            print(f"| {row['math']} | {policy} | {row['audio_s_per_s']} | {row['padding_efficiency']} | "
                  f"{row['peak_memory_gb']} | {row['agreement_with_float32']:.4%} |")
    print("| math | audio-h per GPU-h | with float32 | with float32 CPU | FLOP use | idle share | first shape s | warm s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, m in out["modes"].items():
        idle = "n/a" if m["device_idle_share"] is None else f"{m['device_idle_share']:.1%}"
        flop = "n/a" if m["flop_utilisation"] is None else f"{m['flop_utilisation']:.1%}"
        print(f"| {label} | {m['audio_hours_per_gpu_hour']} | {m['agreement_with_float32']:.4%} | "
              f"{m['agreement_with_float32_cpu']:.4%} | {flop} | {idle} | {m['first_shape']['first_s']} | "
              f"{m['first_shape']['warm_s']} |")
    kept = out["calibration"]["kept"]
    print(f"calibration keeps {kept['max_batch_seconds']:g} s x {kept['max_clips']} clips; total {out['seconds']} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="random:full")
    parser.add_argument("--minutes", type=float, default=10.0, help="audio in the corpus")
    parser.add_argument("--bandwidth", type=float, default=2.0)
    parser.add_argument("--cpu-clips", type=int, default=6, help="clips also encoded on CPU in float32")
    parser.add_argument("--quick", action="store_true", help="one sweep policy and two small calibration candidates")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    print_table(run(args))


if __name__ == "__main__":
    main()
