"""Pipeline benchmark on job shapes: the naive loop and the codec-only bound vs the pipeline, in one run.

    python jobs/bench_pipeline.py                 # 8 min of audio; shapes: 1 shard, 3 shards, 16 shards
    python jobs/bench_pipeline.py --minutes 4 --shapes 1 5

Generates one corpus (log-normal lengths 0.5-30 s plus a share of 60-90 s files; wav, flac, ogg and
mp3; 8-48 kHz; mono and stereo), saves the full-size random-weight tokenizer with `save_pretrained`
(speeds are the real architecture's, codes are meaningless) and measures, each as a user would run it:
  naive      `python <this file> --naive TARS...` in a fresh process: imports, model load, then per file
             soundfile, torchaudio resample, DacFeatureExtractor, `model.encode` one clip at a time, Parquet;
             the loop of the model card. Measured once for the corpus: every shape holds the same audio.
  codec-only the same audio already decoded at 24 kHz in memory through `Codec.encode` with the device's
             batch policy, in this process, model loaded beforehand: the bound (measured once).
  pipeline   `python -m pipeline.run CONFIG` in a fresh process, once per shape: the corpus written as
             1, 3 and 16 tars (one shard of all the audio; a count the actors do not divide; many shards).
Every time is wall clock of the whole command (interpreter start, imports, Ray start included) except
the bound's. The pipeline's start-up split is its own summary line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def make_corpus(minutes: float, long_share: float, seed: int):
    from demo.synth import lognormal_seconds, random_sample

    rng = np.random.default_rng(seed)
    target, samples = minutes * 60, []
    while sum(s.seconds for s in samples) < target:
        long = rng.random() < long_share
        seconds = float(rng.uniform(60, 90)) if long else float(lognormal_seconds(rng, 1, 4.0, 0.5, 30.0)[0])
        samples.append(random_sample(rng, f"clip{len(samples):05d}", seconds))
    return samples


def write_shards(folder: str, samples, shards: int) -> None:
    from demo.synth import write_tar

    for shard in range(shards):
        write_tar(os.path.join(folder, f"bench-{shard:03d}.tar"), samples[shard::shards])


def naive(checkpoint: str, tars: list[str], bandwidth: float, out_path: str) -> None:
    """The model card's loop, as a user's script runs it (timed from outside, process start included)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile
    import tarfile
    import torch
    import torchaudio
    from transformers import DacFeatureExtractor, HiggsAudioV2TokenizerModel

    from pipeline.schema import codes_array

    model = HiggsAudioV2TokenizerModel.from_pretrained(checkpoint).eval()
    extractor = DacFeatureExtractor(sampling_rate=24000, hop_length=model.config.hop_length)
    keys, codes = [], []
    for path in tars:
        with tarfile.open(path) as tar:
            for member in tar:
                stem, ext = os.path.splitext(member.name)
                if ext in (".txt", ".json"):
                    continue
                audio, rate = soundfile.read(io.BytesIO(tar.extractfile(member).read()), dtype="float32", always_2d=True)
                wave = torch.from_numpy(audio.mean(axis=1))
                if rate != 24000:
                    wave = torchaudio.functional.resample(wave, rate, 24000)
                inputs = extractor(raw_audio=wave.numpy(), sampling_rate=24000, return_tensors="pt")
                with torch.inference_mode():
                    out = model.encode(inputs["input_values"], bandwidth=bandwidth, return_dict=False)
                keys.append(stem)
                codes.append(out[0].reshape(-1, out[0].shape[-1]).to(torch.int16).numpy())  # [K, T]
    pq.write_table(pa.table({"key": keys, "codes": codes_array(codes)}), out_path, compression="zstd")


def codec_only(checkpoint: str, samples, bandwidth: float, device: str) -> tuple[float, str]:
    import torch

    from codec import load_codec
    from pipeline.audio.decode import decode_bytes, to_model_audio

    codec = load_codec(checkpoint, device=device)
    waves = [to_model_audio(*decode_bytes(audio_member(s)), 24000, "HQ", 1e9).wave for s in samples]
    codec.encode(waves[:2], bandwidth)  # warm-up
    start = time.perf_counter()
    codec.encode(waves, bandwidth)
    if codec.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, f"{codec.device}, policy {codec.policy}, {torch.get_num_threads()} threads"


def audio_member(sample) -> bytes:
    return next(v for k, v in sample.members.items() if k not in ("txt", "json"))


def timed_command(argv: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done.stderr


def shard_stats(out: str) -> dict:
    commits = os.path.join(out, "_run/commits")  # each shard's commit record beside its log (NAME.log)
    records = [json.load(open(os.path.join(commits, n))) for n in os.listdir(commits) if n.endswith(".json")]
    spans: dict[str, tuple[float, float]] = {}
    for r in records:
        begin, end = spans.get(r["worker"], (r["started_at"], r["started_at"] + r["seconds"]))
        spans[r["worker"]] = (min(begin, r["started_at"]), max(end, r["started_at"] + r["seconds"]))
    first = min(b for b, _ in spans.values())
    last = max(e for _, e in spans.values())
    return {"span": last - first, "threads": sorted({r["threads"] for r in records}),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in records),
            "encode_share": sum(r["encode_s"] for r in records) / sum(e - b for b, e in spans.values())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--shapes", type=int, nargs="+", default=[1, 3, 16], help="shard counts to run the pipeline on")
    parser.add_argument("--long-share", type=float, default=0.04)
    parser.add_argument("--bandwidth", type=float, default=2.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--keep", action="store_true", help="keep the corpus and outputs")
    parser.add_argument("--naive", nargs="+", metavar=("CHECKPOINT", "TAR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive:
        naive(args.naive[0], args.naive[1:-1], args.bandwidth, args.naive[-1])
        return

    from codec.presets import build_random_model

    work = tempfile.mkdtemp(prefix="audiotok-bench-")
    samples = make_corpus(args.minutes, args.long_share, seed=0)
    audio_s = sum(s.seconds for s in samples)
    categories = sorted({json.loads(s.members["json"])["category"] for s in samples if "json" in s.members})
    print(f"corpus: {len(samples)} files, {audio_s / 60:.1f} min ({', '.join(categories)}), "
          f"{sum(s.seconds > 60 for s in samples)} of 60-90 s; {os.cpu_count()} CPUs")
    checkpoint = os.path.join(work, "checkpoint")
    build_random_model("full", seed=0).save_pretrained(checkpoint)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": REPO}

    one = os.path.join(work, "shards-1")
    write_shards(one, samples, 1)
    naive_wall, _ = timed_command([sys.executable, os.path.abspath(__file__), "--bandwidth", str(args.bandwidth),
                                   "--naive", checkpoint, os.path.join(one, "bench-000.tar"),
                                   os.path.join(work, "naive.parquet")], env)
    bound_s, bound_how = codec_only(checkpoint, samples, args.bandwidth, args.device)
    naive_speed, bound_speed = audio_s / naive_wall, audio_s / bound_s
    print(f"naive loop     {naive_speed:6.2f} audio-s/s  ({naive_wall:.1f} s, fresh process, model load included)")
    print(f"codec-only     {bound_speed:6.2f} audio-s/s  ({bound_s:.1f} s encoding decoded audio in memory; {bound_how})")
    print("| shards | pipeline audio-s/s end to end | / naive | / codec-only | in shard processing: audio-s/s, / codec-only | actors encoding | torch threads per shard | start (command to first batch) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for shards in args.shapes:
        folder = os.path.join(work, f"shards-{shards}")
        if not os.path.exists(folder):
            write_shards(folder, samples, shards)
        out = os.path.join(work, f"out-{shards}")
        wall, log = timed_command([sys.executable, "-m", "pipeline.run", os.path.join(REPO, "configs/demo.yaml"),
                                   f"source.urls=[{folder}/bench-*.tar]",
                                   f"codec.model={checkpoint}", f"codec.bandwidth={args.bandwidth}",
                                   f"codec.device={args.device}", f"output.dir={out}"], env)
        stats = shard_stats(out)
        speed, steady = audio_s / wall, audio_s / stats["span"]
        start = re.search(r"^start: .*$", log, re.M)
        actors = re.search(r"^started .*$", log, re.M)
        print(f"| {shards} | {speed:.2f} | {speed / naive_speed:.2f}x | {speed / bound_speed:.2f}x | "
              f"{steady:.2f}, {steady / bound_speed:.2f}x | {stats['encode_share']:.1%} | {stats['threads']} | "
              f"{start.group(0).removeprefix('start: first batch encoded ') if start else '?'} |")
        print(f"    ({wall:.1f} s; {actors.group(0) if actors else ''}; peak RSS per actor {stats['peak_rss_mb']:.0f} MB)")
    if not args.keep:
        shutil.rmtree(work)
    else:
        print(f"kept {work}")


if __name__ == "__main__":
    main()
