"""The GPU benchmark can only run where a GPU is lent; a smoke run on CPU keeps it from rotting meanwhile."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_benchmark_runs_every_measurement_on_a_cpu_smoke_corpus():
    done = subprocess.run([sys.executable, "jobs/bench_gpu.py", "--device", "cpu", "--model", "random:tiny",
                           "--minutes", "0.1"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    best = [line for line in lines if line.startswith(("| float32 | 960", "| tf32 |", "| bfloat16 |"))]
    assert len(best) >= 3, done.stdout
    summary = [line for line in lines if line.count("|") == 6 and line.split("|")[1].strip() in ("float32", "tf32", "bfloat16")]
    assert len(summary) == 3 and "100.000%" in summary[0], done.stdout  # float32 agrees with itself
    assert "decode + resample" in done.stdout
