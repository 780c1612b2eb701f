"""The GPU benchmark can only run where a GPU is lent; a smoke run on CPU keeps it from rotting meanwhile."""

import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_benchmark_runs_every_measurement_on_a_cpu_smoke_corpus(tmp_path):
    done = subprocess.run([sys.executable, "jobs/bench_gpu.py", "--device", "cpu", "--model", "random:tiny",
                           "--minutes", "0.1", "--json", str(tmp_path / "gpu.json")], cwd=REPO, capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    best = [line for line in lines if line.startswith(("| float32 | 960", "| tf32 |", "| bfloat16 |"))]
    assert len(best) >= 3, done.stdout
    summary = [line for line in lines if line.count("|") == 7 and line.split("|")[1].strip() in ("float32", "tf32", "bfloat16")]
    assert len(summary) == 3 and "100.000%" in summary[0], done.stdout  # float32 agrees with itself
    assert all(line.split("|")[6].strip() == "n/a" for line in summary), done.stdout  # device waiting: CUDA only
    assert "decode + resample" in done.stdout
    # each policy against each clip alone on the device and against float32 CPU codes: on CPU in float32 all equal
    sweep = [line.split("|") for line in lines if line.startswith("| float32 | ") and line.count("|") == 11]
    assert sweep and all(row[7].strip().startswith("100.000%") and row[8].strip().startswith("100.000%")
                         for row in sweep), done.stdout
    rates = json.loads((tmp_path / "gpu.json").read_text())  # what bench_decode.py --gpu-bench reads
    assert rates["device"] == "cpu" and set(rates["best_audio_s_per_s"]) == {"float32", "tf32", "bfloat16"}


def test_decode_benchmark_reads_the_float32_rate_from_gpu_checks_json_and_bench_gpus(tmp_path):
    """jobs/gpu_check.py --json writes its rates per math mode (audio hours per GPU hour: audio-s/s), bench_gpu.py
    --json as `best_audio_s_per_s`: --gpu-bench takes the float32 rate from either."""
    sys.path.insert(0, os.path.join(REPO, "jobs"))
    try:
        from bench_decode import gpu_rate
    finally:
        sys.path.pop(0)
    for name, written in (("gpu_check", {"device": "NVIDIA H100", "modes": {
                              "bfloat16": {"audio_hours_per_gpu_hour": 9000.0},
                              "float32": {"audio_hours_per_gpu_hour": 5000.0}}}),
                          ("bench_gpu", {"device": "NVIDIA H100", "best_audio_s_per_s": {"float32": 5000.0}})):
        (tmp_path / f"{name}.json").write_text(json.dumps(written))
        rate, source = gpu_rate(str(tmp_path / f"{name}.json"))
        assert rate == 5000.0 and "float32" in source and "NVIDIA H100" in source, (name, source)


def test_decode_benchmark_prints_each_format_against_each_library_threads_and_cores_per_gpu_at_the_gpu_rate(tmp_path):
    (tmp_path / "gpu.json").write_text(json.dumps({"device": "NVIDIA H100", "best_audio_s_per_s": {"float32": 5000.0}}))
    done = subprocess.run([sys.executable, "jobs/bench_decode.py", "--seconds", "1", "--min-cpu-s", "0.05",
                           "--mix-rounds", "1", "--thread-repeats", "1", "--gpu-bench", str(tmp_path / "gpu.json")],
                          cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for label in ("wav 16 kHz mono", "wav 48 kHz stereo", "FLAC 44.1 kHz stereo", "MP3 44.1 kHz stereo 128k",
                  "Vorbis 48 kHz stereo", "Opus 48 kHz stereo 64k", "AAC 44.1 kHz stereo 128k (M4A)"):
        row = next((line for line in out.splitlines() if line.startswith(f"| {label} | ")), None)
        assert row is not None and row.count("|") == 9, out  # every column, the GPU's rate's included
    assert "| equal-audio mix | " in out and "| 1 | " in out and "(1.00x) | " in out, out
    assert "| decode processes: the mix (x one thread) |" in out and "| threads: ffmpeg's formats |" in out, out
    assert re.search(r"\(decode processes: \d+ of them resident \d+", out), out
    assert "cores per GPU at 5,000x" in out and "at 5,000 audio-s/s per GPU" in out, out


def test_gpu_check_runs_every_section_on_cpu_without_ray(tmp_path):
    """The one-call GPU check (jobs/gpu_check.py), tiny and on CPU: every section lands in its JSON, and nothing
    it imports needs Ray or the audio and config libraries (the GPU machine it is for has none of them)."""
    out = tmp_path / "check.json"
    # the GPU machine's python lacks these: importing any of them fails here as it would there
    absent = ("ray", "soundfile", "soxr", "omegaconf", "webdataset", "datasets", "pyloudnorm")
    run_without = ("import runpy, sys\n"
                   f"sys.modules.update(dict.fromkeys({absent!r}))\n"  # None: import fails, find_spec says absent
                   "sys.argv = sys.argv[1:]\n"
                   "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", run_without, "jobs/gpu_check.py", "--device", "cpu", "--model",
                           "random:tiny", "--minutes", "0.1", "--quick", "--cpu-clips", "2", "--json", str(out)], cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["placement"]["ok"] and result["placement"]["per_batch"]["value_reads"] == 0
    assert set(result["batched_equals_alone"]) == {"model_card", "authors"}
    assert all(row["agreement"] == 1.0 for row in result["batched_equals_alone"].values())
    assert set(result["modes"]) == {"float32", "tf32", "bfloat16"} and result["sweep"]
    assert result["calibration"]["kept"] and result["ray_imported"] is False
    assert "calibration keeps" in done.stdout
