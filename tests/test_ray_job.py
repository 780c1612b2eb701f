"""`ray job submit` of the demo config against a real Ray head started on 127.0.0.1."""

import os
import socket
import subprocess
import sys

import pyarrow.dataset as pads
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    import ray

    if ray.is_initialized():  # `ray stop` below ends every Ray process of this user, this one too
        ray.shutdown()
    bin_dir = os.path.dirname(sys.executable)
    # the job's entrypoint shell finds `python` on the head's PATH: this interpreter's, also when pytest
    # was started without the venv on PATH
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0", PATH=f"{bin_dir}:{os.environ['PATH']}")
    dashboard = free_port()
    subprocess.run(
        [f"{bin_dir}/ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2",
         "--disable-usage-stats"],
        check=True, env=env, capture_output=True, timeout=120,
    )
    try:
        yield env, f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([f"{bin_dir}/ray", "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_ray_job_submit_runs_the_demo(tmp_path, ray_head):
    env, address = ray_head
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "jobs/submit_demo.sh", "codec.model=random:tiny", f"output.dir={out}"],
        cwd=ROOT, env=dict(env, RAY_ADDRESS=address, DEMO_DATA=str(tmp_path / "demo")),
        capture_output=True, text=True, timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "succeeded" in log and "status: COMPLETE" in log and "padding efficiency" in log
    table = pads.dataset(str(out / "data"), format="parquet").to_table()
    assert table.num_rows == 24 and len(os.listdir(tmp_path / "demo")) == 4
    assert (out / "manifest.json").exists()
