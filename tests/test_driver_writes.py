"""The driver's own writes to output.dir: a lease heartbeat that fails, a shard that fails for good after an
earlier attempt published its rows. (Writes through a store that answers 503: tests/test_s3.py.)"""

import json
import os
import shutil
import time

import pytest

from pipeline.run import run_job
from pipeline.reading.verify import verify
from pipeline.runstate import LeaseHeld, LeaseLost, RunState, StoreWriteFailed
from pipeline.runstate.lease import LEASE
from pipeline.storage import Storage
from tests.corpus import mixed_tar
from tests.test_pipeline import config_for, read_rows, records_of
from tests.test_runstate import header, output_settings, result, storage  # noqa: F401 (storage: a fixture)


def test_heartbeat_raising_a_non_oserror_gives_up_the_lease_before_it_expires_and_the_driver_stops(storage, monkeypatch):
    timeout = 8.0
    state = RunState.open(storage, header(), output_settings(lease_timeout_s=timeout))
    real = Storage.write_bytes

    def client_bug(self, relative, data):
        if relative == LEASE:
            raise RuntimeError("a store client's bug, not an OSError")
        real(self, relative, data)

    monkeypatch.setattr(Storage, "write_bytes", client_bug)
    deadline = time.time() + 4 * timeout
    while not state.lease.lost and time.time() < deadline:
        time.sleep(0.02)
    assert state.lease.lost and "could not renew" in state.lease.lost and "RuntimeError" in state.lease.lost
    # given up while its last heartbeat is still fresh: no second driver could have taken the lease over yet
    with pytest.raises(LeaseHeld):
        RunState.open(storage, header(), output_settings(lease_timeout_s=timeout))
    with pytest.raises(LeaseLost, match="could not renew"):
        state.commit(result("a"))  # the driver stops instead of writing on
    assert storage.list("_run/commits") == []
    monkeypatch.undo()
    state.close()


def test_shard_failing_for_good_after_an_earlier_attempt_published_leaves_no_rows(tmp_path, ray_local, monkeypatch):
    good = [s.key for s in mixed_tar(str(tmp_path / "in/a.tar"), "a", 3, seed=31)]
    mixed_tar(str(tmp_path / "in/b.tar"), "b", 3, seed=32)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / f"in/{n}.tar") for n in "ab"]},
                        "output.write_attempts=1")
    real = Storage.write_bytes

    def refuse_b_commit(self, relative, data):
        if relative.startswith("_run/commits/b-"):
            raise ConnectionResetError("the store went away")
        real(self, relative, data)

    # b's rows are published by its worker, then the store refuses its commit record: the run stops
    monkeypatch.setattr(Storage, "write_bytes", refuse_b_commit)
    with pytest.raises(StoreWriteFailed, match="_run/commits/b-.*ConnectionResetError"):
        run_job(config)
    monkeypatch.undo()
    out = tmp_path / "out"
    b_data = [n for n in os.listdir(out / "data") if n.startswith("b-")]
    assert len(b_data) == 1
    # the rerun finds b broken for good (a corrupt tar): its failure is committed, and its earlier rows are gone
    (tmp_path / "in/b.tar").write_bytes(b"not a tar" * 100)
    summary = run_job(config)
    records = {r.shard_id[0]: r for r in records_of(out).values()}
    assert records["b"].status == "failed" and records["a"].status == "done"
    assert not os.path.exists(out / "data" / b_data[0])
    assert sorted(r["key"] for r in read_rows(out)) == sorted(good)  # readers of data/*.parquet: a's rows only
    assert summary.status == "incomplete"
    assert [p for p in verify(str(out)) if not p.startswith("shard b-")] == []

    # verify names a data file that no done record stands for
    shutil.copy(out / "data" / records["a"].files[0].split("/")[-1], out / "data" / b_data[0])
    assert any(p.startswith(f"data file without a done record: data/{b_data[0]}") for p in verify(str(out)))


@pytest.mark.parametrize("key, value", [("write_attempts", 0), ("write_backoff_s", -1)])
def test_driver_write_retry_settings_out_of_range_name_their_key(key, value):
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=f"output.{key}"):
        load_config(None, ["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x", f"output.{key}={value}"])
