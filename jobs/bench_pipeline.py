"""Pipeline benchmark: the naive per-file loop vs the codec-only bound vs the whole pipeline, in one run.

    python jobs/bench_pipeline.py                       # ~8 minutes of audio, whatever device torch sees
    python jobs/bench_pipeline.py --minutes 60 --shards 64

Generates its own corpus (log-normal lengths 0.5-30 s plus a share of 60-90 s files; wav, flac,
ogg and mp3; 8-48 kHz; mono and stereo) as WebDataset tars, then measures on the full-size
random-weight tokenizer (`random:full`, saved with `save_pretrained` and loaded from that folder as
a real checkpoint would be; speeds are the real model's, codes are meaningless):
  naive      load each file, resample (torchaudio), feature-extract (DacFeatureExtractor),
             `model.encode` one clip at a time, write Parquet: the loop from the model card;
  codec-only the same audio already decoded at 24 kHz in memory through `Codec.encode` with the
             device's batch policy: the bound for the pipeline;
  pipeline   `run_job` end to end: tars, Ray actors, decode threads, writer, manifest.
Model loading is outside the naive and codec-only timings and inside the pipeline's.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile
import torch
import torchaudio
from omegaconf import OmegaConf

from codec import load_codec
from codec.batching import GPU_POLICY, plan_batches
from codec.flops import flops_per_audio_second, math_of, peak_flops
from codec.presets import build_random_model
from pipeline.audio import decode_bytes, to_model_audio
from pipeline.config import load_config
from pipeline.job import run_job
from pipeline.worker import POOL_BATCHES, actor_spans
from pipeline.synth import SynthSample, lognormal_seconds, random_sample, write_tar
from pipeline.schema import codes_array


def make_corpus(folder: str, minutes: float, shards: int, long_share: float, seed: int) -> list[SynthSample]:
    rng = np.random.default_rng(seed)
    target, samples = minutes * 60, []
    while sum(s.seconds for s in samples) < target:
        long = rng.random() < long_share
        seconds = float(rng.uniform(60, 90)) if long else float(lognormal_seconds(rng, 1, 4.0, 0.5, 30.0)[0])
        samples.append(random_sample(rng, f"clip{len(samples):05d}", seconds))
    for shard in range(shards):
        write_tar(os.path.join(folder, f"bench-{shard:03d}.tar"), samples[shard::shards])
    return samples


def simulated_padding_efficiency(policy, long_share: float, hours: float = 20.0, seed: int = 1) -> float:
    """Real / encoded frames when the actor's pools (POOL_BATCHES x the batch budget) of this benchmark's length
    mix are bucketed under `policy`: a property of the plan, computed without running the model."""
    rng = np.random.default_rng(seed)
    hop, frames, encoded, pool, pool_s = 960, 0, 0, [], 0.0
    target = POOL_BATCHES * policy.max_batch_seconds
    for _ in range(int(hours * 3600 / 5)):
        seconds = float(rng.uniform(60, 90)) if rng.random() < long_share else float(lognormal_seconds(rng, 1, 4.0, 0.5, 30.0)[0])
        pool.append(int(np.ceil(seconds * 24000 / hop)) * hop)
        pool_s += seconds
        if pool_s >= target:
            for batch in plan_batches(pool, 24000, policy):
                frames += sum(pool[i] for i in batch) // hop
                encoded += len(batch) * max(pool[i] for i in batch) // hop
            pool, pool_s = [], 0.0
    return frames / encoded


def audio_member(sample: SynthSample) -> bytes:
    return next(v for k, v in sample.members.items() if k not in ("txt", "json"))


def naive_loop(samples, model, bandwidth: float, out_path: str) -> float:
    from transformers import DacFeatureExtractor

    extractor = DacFeatureExtractor(sampling_rate=24000, hop_length=model.config.hop_length)
    device = next(model.parameters()).device
    keys, codes = [], []
    start = time.perf_counter()
    for sample in samples:
        audio, rate = soundfile.read(io.BytesIO(audio_member(sample)), dtype="float32", always_2d=True)
        wave = torch.from_numpy(audio.mean(axis=1))
        if rate != 24000:
            wave = torchaudio.functional.resample(wave, rate, 24000)
        inputs = extractor(raw_audio=wave.numpy(), sampling_rate=24000, return_tensors="pt")
        with torch.inference_mode():
            out = model.encode(inputs["input_values"].to(device), bandwidth=bandwidth, return_dict=False)
        keys.append(sample.key)
        codes.append(out[0].to(torch.int16).cpu().numpy())
    pq.write_table(pa.table({"key": keys, "codes": codes_array(codes)}), out_path, compression="zstd")
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--long-share", type=float, default=0.04)
    parser.add_argument("--bandwidth", type=float, default=2.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--keep", action="store_true", help="keep the corpus and outputs")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="audiotok-bench-")
    samples = make_corpus(os.path.join(work, "corpus"), args.minutes, args.shards, args.long_share, seed=0)
    audio_s = sum(s.seconds for s in samples)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} "
          f"corpus={len(samples)} files, {audio_s / 60:.1f} min, {args.shards} shards, "
          f"{sum(s.seconds > 60 for s in samples)} of 60-90 s")

    checkpoint = os.path.join(work, "checkpoint")
    build_random_model("full", seed=0).save_pretrained(checkpoint)
    config_path = os.path.join(work, "bench.yaml")
    OmegaConf.save(OmegaConf.create({
        "source": {"kind": "webdataset", "urls": [os.path.join(work, "corpus", "bench-*.tar")]},
        "codec": {"model": checkpoint, "bandwidth": args.bandwidth, "device": args.device},
        "output": {"dir": os.path.join(work, "out")},
    }), config_path)
    config = load_config(config_path)
    results, first_done, layout, devices = [], [], [], []
    start = time.perf_counter()

    def on_event(kind, info):
        if kind == "actors":
            layout.append(f"{info['count']} actor(s) x {info['options']}")
            devices.append(info["count"] if info["options"]["num_gpus"] else 1)  # GPUs, or the one CPU node
        if kind == "shard_done":
            results.append(info["result"])
            if not first_done:
                first_done.append(time.perf_counter() - start)

    summary = run_job(config, on_event)
    wall = time.perf_counter() - start
    pipeline = audio_s / wall
    steady = audio_s / max(actor_spans(results).values())  # shard processing: the busiest actor's span
    encoding = summary.encoder_busy_share
    decode_wait = sum(r.decode_wait_s for r in results) / sum(r.seconds for r in results)
    # in-process measurements after the pipeline (which starts from a fresh process), Ray stopped
    import ray

    ray.shutdown()
    codec = load_codec(checkpoint, device=args.device)
    naive_s = naive_loop(samples, codec.model, args.bandwidth, os.path.join(work, "naive.parquet"))
    naive = audio_s / naive_s
    print(f"naive loop        {naive:8.2f} audio-s/s  ({naive_s:.1f} s)")

    decode_start = time.perf_counter()
    waves = [to_model_audio(*decode_bytes(audio_member(s)), 24000, "HQ", 1e9).wave for s in samples]
    decode_speed = audio_s / (time.perf_counter() - decode_start)
    codec.encode(waves[:2], args.bandwidth)
    start = time.perf_counter()
    codec_codes = codec.encode(waves, args.bandwidth)
    if codec.device.type == "cuda":
        torch.cuda.synchronize()
    bound_s = time.perf_counter() - start
    bound = audio_s / bound_s
    print(f"codec-only bound  {bound:8.2f} audio-s/s  ({bound_s:.1f} s, policy {codec.policy})")
    codec_device, codec_dtype = str(codec.device), math_of(codec)
    flops = flops_per_audio_second(codec, args.bandwidth)
    peak = peak_flops(codec.device, codec_dtype)
    del codec

    rows = pq.read_table(os.path.join(config.output.dir, "data")).to_pydict()
    by_key = dict(zip(rows["key"], rows["codes"]))
    agree = np.mean([(np.array(by_key[s.key], np.int16) == c).mean() for s, c in zip(samples, codec_codes)])
    efficiency = summary.totals["padding_efficiency"]
    first_encode = min(r.first_encode_s for r in results if r.first_encode_s is not None)
    print(f"pipeline          {pipeline:8.2f} audio-s/s end to end ({wall:.1f} s, model load and Ray start "
          f"included); {steady:.2f} audio-s/s in shard processing")
    print(f"pipeline / naive       {pipeline / naive:5.2f}x end to end, {steady / naive:5.2f}x in shard processing")
    print(f"pipeline / codec-only  {pipeline / bound:5.2f}x end to end, {steady / bound:5.2f}x in shard processing")
    print(f"padding efficiency {efficiency:.3f} (real frames / frames encoded, window context included); peak RSS per actor {max(r.peak_rss_mb for r in results):.0f} MB; "
          f"time to first batch {first_encode:.1f} s after actor start, first shard done {first_done[0]:.1f} s "
          f"after job start; codes equal to codec-only: {agree * 100:.3f}%")
    # per device: the whole run's audio per wall second, divided by the GPUs it used (a CPU node counts as one)
    print(f"audio-hours per device-hour: {pipeline / devices[0]:.2f} end to end ({devices[0]} {codec_device} "
          f"device(s), {layout[0]})")
    print(f"actors spent {encoding:.1%} of their shard-processing time encoding; shards waited on decoding for "
          f"{decode_wait:.1%} of their time")
    print(f"FLOPs: {flops / 1e9:.1f} GFLOP per audio second; the pipeline ran {pipeline * flops / 1e12:.2f} TFLOP/s end to end"
          + (f" = {pipeline * flops / peak * 100:.1f}% of this GPU's {codec_dtype} peak" if peak else ""))
    print(f"decode + resample (soundfile, soxr HQ): {decode_speed:.0f} audio-s/s on one thread; an actor encoding at "
          f"R audio-s/s needs about R / {decode_speed:.0f} decode threads to keep them off the critical path")
    gpu_efficiency = simulated_padding_efficiency(GPU_POLICY, args.long_share)
    print(f"GPU default policy ({GPU_POLICY.max_batch_seconds:g} s x {GPU_POLICY.max_clips} clips, pools of {POOL_BATCHES}x that): "
          f"padding efficiency {gpu_efficiency:.3f} on 20 h of this length mix (planned, not run)")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
