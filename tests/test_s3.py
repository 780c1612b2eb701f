"""Object storage for real: WebDataset tars read from s3:// and the output written to s3://, on a local S3
server (moto) whose proxy fails requests with 503 while the S3 clients' own retries are off."""

import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.reading.dataset import TokenDataset
from pipeline.telemetry.events import StoreRetry
from pipeline.run import run_job
from pipeline.runstate import read_run
from pipeline.storage import Storage
from pipeline.reading.verify import verify
from tests.conftest import KEEP_IDLE_WORKERS
from tests.corpus import mixed_tar
from tests.s3server import FlakyS3
from tests.test_pipeline import config_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def s3_store(monkeypatch):
    """The local S3 with a bucket `audio`, this process's clients pointed at it (no Ray)."""
    import fsspec
    import s3fs

    with FlakyS3() as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)  # Ray workers (started by `s3`) and subprocesses inherit them
        monkeypatch.setitem(fsspec.config.conf, "s3", server.client_options())
        s3fs.S3FileSystem.clear_instance_cache()
        fsspec.filesystem("s3").mkdir("audio")
        yield server
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3(s3_store):
    import ray

    if ray.is_initialized():
        ray.shutdown()  # the shared runtime's workers lack the S3 settings; ray_local starts it again later
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             _system_config=KEEP_IDLE_WORKERS)
    yield s3_store
    ray.shutdown()


def upload_tars(tmp_path, count: int, per_tar: int = 3) -> list[str]:
    import fsspec

    keys = []
    for i in range(count):
        local = tmp_path / f"t-{i}.tar"
        keys += [s.key for s in mixed_tar(str(local), f"t{i}", per_tar, seed=200 + i)]
        fsspec.filesystem("s3").put(str(local), f"audio/in/t-{i}.tar")
    return keys


def test_s3_run_survives_503s_with_nothing_lost_duplicated_or_failed(tmp_path, s3):
    keys = upload_tars(tmp_path, 4)
    s3.fail_first = {"/audio/in/": 2, "PUT /audio/out/data/": 1}  # reads of every tar, the first write of every shard
    config = config_for(tmp_path, {"kind": "webdataset", "urls": "s3://audio/in/t-{0..3}.tar"},
                        "output.dir=s3://audio/out", "ray.retry_backoff_s=0.2", "ray.max_attempts=4")
    summary = run_job(config)
    assert summary.status == "complete" and summary.totals["shards_failed"] == 0
    assert any(p.startswith("/audio/in/") for p in s3.failed) and any(p.startswith("/audio/out/data/") for p in s3.failed)
    records = read_run(Storage("s3://audio/out")).records
    assert all(r.status == "done" for r in records.values()) and max(r.attempts for r in records.values()) > 1
    assert verify("s3://audio/out") == []
    rows = [row["key"] for row in TokenDataset("s3://audio/out")]
    assert sorted(rows) == sorted(keys)  # every sample once


def test_s3_killed_driver_rerun_holds_every_sample_once(tmp_path, s3, capsys):
    import fsspec
    import ray

    from pipeline.run import main as run_main

    keys = upload_tars(tmp_path, 6, per_tar=4)
    config_for(tmp_path, {"kind": "webdataset", "urls": "s3://audio/in/t-{0..5}.tar"})
    command = [sys.executable, "-m", "pipeline.run", str(tmp_path / "run.yaml"), "output.dir=s3://audio/out2",
               f"ray.address={ray.get_runtime_context().gcs_address}", "ray.num_actors=1"]
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fs = fsspec.filesystem("s3")
    deadline = time.time() + 300
    while time.time() < deadline:
        fs.invalidate_cache()
        if fs.exists("audio/out2/_run/commits") and 1 <= len(fs.ls("audio/out2/_run/commits")) < 6:
            break
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    fs.invalidate_cache()  # this process listed the commits while the driver wrote them
    done_before = len(read_run(Storage("s3://audio/out2")).done())
    assert 1 <= done_before < 6
    # the rerun in this process, as `python -m pipeline.run` runs it (the killed driver is the one that must be
    # a process of its own): its imports, its Ray connection and its device probe are this process's, warm
    capsys.readouterr()
    code = run_main(command[3:])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert f"{done_before} already done" in err and "taking over the lease" in err
    fs.invalidate_cache()
    assert sorted(row["key"] for row in TokenDataset("s3://audio/out2")) == sorted(keys)
    assert verify("s3://audio/out2") == []


def test_s3_driver_writes_through_503s_on_run_state_summary_lease_and_a_failed_shards_errors_are_retried(tmp_path, s3):
    keys = upload_tars(tmp_path, 2)
    # every driver-side write fails twice first: commit records, the shard list, the source plan, the lease, the
    # manifest, and the error file of a shard that fails (its tar is missing)
    s3.fail_first = {"PUT /audio/out/_run/": 2, "PUT /audio/out/manifest.json": 2, "PUT /audio/out/errors/gone": 2}
    config = config_for(tmp_path, {"kind": "webdataset", "urls": ["s3://audio/in/t-{0..1}.tar", "s3://audio/in/gone.tar"]},
                        "output.dir=s3://audio/out", "output.write_backoff_s=0.05")
    events = []
    summary = run_job(config, events.append)
    assert summary.totals["shards_done"] == 2 and summary.totals["shards_failed"] == 1  # gone.tar: missing
    failed = {path.split("/", 3)[-1].split("/")[-1].split("-")[0] for path in s3.failed}
    assert {"lease.json", "manifest.json", "shards.jsonl", "gone", "t"} <= failed, s3.failed
    retried = {e.what.split()[1] for e in events if isinstance(e, StoreRetry)}  # by the driver itself
    logs = {path for path in s3.failed if path.endswith(".log")}  # shard logs: retried by whoever writes them
    assert retried == {path.removeprefix("/audio/out/") for path in set(s3.failed) - logs}
    assert logs and all(Storage("s3://audio/out").read_bytes(p.removeprefix("/audio/out/")) for p in logs)
    records = read_run(Storage("s3://audio/out")).records
    assert sorted(r.status for r in records.values()) == ["done", "done", "failed"]
    assert [p for p in verify("s3://audio/out") if not p.startswith("shard gone-")] == []
    assert sorted(row["key"] for row in TokenDataset("s3://audio/out")) == sorted(keys)


def test_s3_driver_write_failing_past_its_retries_stops_the_run_with_exit_3_and_a_rerun_completes(tmp_path, s3, capsys):
    import fsspec

    from pipeline.run import main as run_main

    keys = upload_tars(tmp_path, 3)
    config_for(tmp_path, {"kind": "webdataset", "urls": "s3://audio/in/t-{0..2}.tar"})
    command = [str(tmp_path / "run.yaml"), "output.dir=s3://audio/out3", "output.write_attempts=3",
               "output.write_backoff_s=0.05"]
    s3.fail_first = {"PUT /audio/out3/_run/commits/": 10**9}  # the store refuses every commit record
    assert run_main(command) == 3
    err = capsys.readouterr().err
    assert "error: writing _run/commits/" in err and "failed 3 times (output.write_attempts=3)" in err, err
    assert "the store says: OSError: [Errno 16] injected by the test" in err, err  # the store's own error
    assert read_run(Storage("s3://audio/out3")).records == {}  # nothing counts as done that was not committed
    s3.fail_first = {}
    assert run_main(command) == 0
    fsspec.filesystem("s3").invalidate_cache()  # this process listed data/ before the workers wrote to it
    assert sorted(row["key"] for row in TokenDataset("s3://audio/out3")) == sorted(keys)  # every sample once
    assert verify("s3://audio/out3") == []


def test_s3_tar_read_through_503s_in_one_try_and_an_object_replaced_between_ranged_reads_fails_as_changed(
        tmp_path, s3_store):
    s3 = s3_store
    import fsspec

    from pipeline.reads import RANGE_BYTES, ReadRetry, Reads
    from pipeline.sources import Shard, ShardError
    from pipeline.sources.webdataset import read_tar_shard
    from tests.test_read_retries import big_tar

    keys = big_tar(tmp_path / "t.tar", 5.0)
    store = fsspec.filesystem("s3")
    store.put(str(tmp_path / "t.tar"), "audio/in/t.tar")
    s3.fail_first = {"/audio/in/": 2}  # every request for the tar: HEADs and ranged GETs alike
    reads = Reads(ReadRetry(attempts=5, backoff_s=0.01))
    samples = list(read_tar_shard(Shard("t", "s3://audio/in/t.tar", "webdataset"), reads=reads))
    assert [s.key for s in samples] == keys and all(s.error is None for s in samples)
    assert reads.retries == s3.failed["/audio/in/t.tar"] == 4  # two HEADs and two GETs answered 503: each retried
    s3.fail_first = {}
    blob = os.urandom(3 * RANGE_BYTES)
    store.pipe("audio/in/blob", blob)
    with reads.open("s3://audio/in/blob") as f:
        assert f.read(RANGE_BYTES // 4) == blob[:RANGE_BYTES // 4]  # the first ranged GETs (s3fs reads ahead a range)
        store.pipe("audio/in/blob", blob[::-1])  # same size, other bytes, another ETag
        with pytest.raises(ShardError) as changed:
            f.read()  # the next ranged GET asks If-Match the first one's ETag
    assert changed.value.reason == "changed", changed.value
