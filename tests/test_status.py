"""`python -m pipeline.status`: how far a run is, from its run state alone (no Ray)."""

import dataclasses
import json
import time

import pytest

from pipeline.runstate import RunState
from pipeline.runstate.lease import LEASE
from pipeline.runstate.digest import DIGEST
from pipeline.runstate.records import COMMITS, record_path
from pipeline.runstate.summary import SHARD_LIST
import pipeline.status
from pipeline.status import main as status_main, read_status, status_text
from pipeline.storage import Storage
from tests.test_runstate import header, output_settings, result


def finished(shard_id, end, seconds=10.0, audio=100.0, status="done", reasons=None):
    record = result(shard_id, status)
    record.started_at, record.finished_at, record.seconds = end - seconds, end, seconds
    record.audio_seconds = audio if status == "done" else 0.0
    record.error_reasons = reasons or {}
    record.errors = sum(record.error_reasons.values())
    record.worker = "actor-0"
    return record


def commit_at(state, record, monkeypatch):
    """Commit `record` as if at its own finish time (RunState stamps finished_at from its clock; the lease's
    heartbeat keeps the real one)."""
    import types

    import pipeline.runstate.state as state_module

    with monkeypatch.context() as patch:
        patch.setattr(state_module, "time", types.SimpleNamespace(time=lambda: record.finished_at))
        state.commit(record)


def test_status_of_a_live_run_counts_done_failed_to_do_throughput_eta_errors_and_slowest(tmp_path, monkeypatch,
                                                                                         capsys):
    storage = Storage(str(tmp_path / "out"))
    state = RunState.open(storage, header(), output_settings(lease_timeout_s=2, summary_interval_s=3600))
    now = time.time()
    # two hours ago one shard (1000 s of audio), in the last hour three (100 s each, one slow) and one failed
    commit_at(state, finished("old", now - 7200, audio=1000.0), monkeypatch)
    commit_at(state, finished("a", now - 1800, reasons={"decode_failed": 2}), monkeypatch)
    commit_at(state, finished("b", now - 1200, seconds=600.0), monkeypatch)
    state.compact()  # the summary holds three; two more records land after it
    state.announce(10, 10)  # as a run does once its source is listed, after manifest.json was first written
    commit_at(state, finished("c", now - 600, reasons={"decode_failed": 1, "too_long": 1}), monkeypatch)
    commit_at(state, finished("bad", now - 300, status="failed"), monkeypatch)
    time.sleep(1.2)  # a heartbeat carries the shard count (lease_timeout_s=2: a beat every 0.5 s)
    reads = []
    read_many = Storage.read_many
    monkeypatch.setattr(Storage, "read_many", lambda self, paths: reads.extend(paths) or read_many(self, paths))
    monkeypatch.setenv("AUDIOTOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pipeline.status, "READ_EACH_UP_TO", 0)  # as with thousands unseen: the summary is read
    s = read_status(storage.url, now=now)
    # the done records the summary does not hold are the only ones read one by one (failed ones may change)
    assert sorted(reads) == [record_path("bad", "failed"), record_path("c", "done")]
    reads.clear()
    again = read_status(storage.url, now=now)  # again: the done records it has seen come from its cache
    assert dataclasses.replace(again, driver=s.driver) == s  # the same (but for the lease's newer heartbeat)
    assert reads == [record_path("bad", "failed")]
    assert s.driver is not None and s.driver.alive and s.driver.heartbeat_age_s < 2
    assert (s.shards_listed, s.shards_done, s.shards_failed, s.shards_to_do) == (10, 4, 1, 5)
    assert s.audio_hours_done == pytest.approx(1300 / 3600)
    assert s.audio_hours_to_do == pytest.approx(5 * 1300 / 4 / 3600)
    assert s.realtime_last_hour == pytest.approx(300 / 3600)  # a, b, c finished within the hour before now
    assert s.realtime_run == pytest.approx(1300 / (now - 300 - (now - 7210)))
    assert s.shards_per_hour == pytest.approx(3.0) and s.eta_s == pytest.approx(5 / 3 * 3600)
    assert s.error_reasons == {"decode_failed": 3, "too_long": 1} and s.shard_error_reasons == {"corrupt_tar": 1}
    assert s.slowest[0]["shard_id"] == "b" and s.slowest[0]["seconds"] == 600.0
    assert status_main([storage.url, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["shards_to_do"] == 5 and printed["driver"]["pid"] == state.lease.mine["pid"]
    assert status_main([storage.url]) == 0
    text = capsys.readouterr().out
    assert "4 done, 1 failed, 5 to do (of 10 listed)" in text and "decode_failed: 3" in text and "slowest shards: b" in text
    state.close()
    ended = read_status(storage.url)
    # ended: no driver, no ETA; the shard count kept by the summary
    assert ended.driver is None and ended.eta_s is None and (ended.shards_listed, ended.shards_to_do) == (10, 5)
    assert "no driver running" in status_text(ended)


def test_status_reads_the_digest_written_at_compaction_not_the_shard_list_and_counts_records_newer_than_it(
        tmp_path, monkeypatch):
    storage = Storage(str(tmp_path / "out"))
    state = RunState.open(storage, header(), output_settings(summary_interval_s=3600))
    now = time.time()
    commit_at(state, finished("a", now - 900, reasons={"decode_failed": 2}), monkeypatch)
    commit_at(state, finished("b", now - 600, seconds=300.0), monkeypatch)
    commit_at(state, finished("bad", now - 500, status="failed"), monkeypatch)
    state.compact()  # the shard list and its digest hold a, b and bad
    commit_at(state, finished("c", now - 60, audio=50.0, reasons={"too_long": 1}), monkeypatch)  # newer than both
    state.lease.release()
    reads = []
    read_bytes = Storage.read_bytes
    monkeypatch.setattr(Storage, "read_bytes", lambda self, path: reads.append(path) or read_bytes(self, path))
    read_many = Storage.read_many
    monkeypatch.setattr(Storage, "read_many", lambda self, paths: reads.extend(paths) or read_many(self, paths))
    monkeypatch.setattr(pipeline.status, "READ_EACH_UP_TO", 0)  # as with thousands unseen: the summary is read

    def status(cache):
        monkeypatch.setenv("AUDIOTOK_CACHE", str(tmp_path / cache))  # a fresh status cache: nothing seen yet
        reads.clear()
        return read_status(storage.url, now=now)

    s = status("first")
    # of the commit records, only the one newer than the digest and the failed one (which may be rewritten)
    assert DIGEST in reads and SHARD_LIST not in reads
    assert sorted(p for p in reads if p.startswith(COMMITS)) == [record_path("bad", "failed"), record_path("c", "done")]
    assert (s.shards_done, s.shards_failed, s.samples) == (3, 1, 6)
    assert s.audio_hours_done == pytest.approx(250 / 3600)
    assert s.error_reasons == {"decode_failed": 2, "too_long": 1} and s.shard_error_reasons == {"corrupt_tar": 1}
    assert s.slowest[0]["shard_id"] == "b" and s.slowest[0]["worker"] == "actor-0"
    # the same from the whole shard list: an output written before the digest, or one whose digest was cut short
    storage.write_bytes(DIGEST, storage.read_bytes(DIGEST)[:-20])
    assert status("cut") == s and SHARD_LIST in reads
    storage.remove(DIGEST)
    assert status("old") == s and SHARD_LIST in reads


def test_status_of_an_output_written_before_the_shard_count_was_recorded_shows_what_it_has(tmp_path):
    storage = Storage(str(tmp_path / "out"))
    state = RunState.open(storage, header(), output_settings())
    state.commit(result("s0"))
    state.commit(result("s1", "failed"))
    state.close()
    manifest = json.loads(storage.read_bytes("manifest.json"))
    manifest.pop("shards_listed", None)
    storage.write_bytes("manifest.json", json.dumps(manifest).encode())
    for name in storage.list(COMMITS):  # records written before finished_at and started_at were fields
        record = json.loads(storage.read_bytes(f"{COMMITS}/{name}"))
        for key in ("finished_at", "started_at"):
            record.pop(key, None)
        storage.write_bytes(f"{COMMITS}/{name}", json.dumps(record).encode())
    storage.remove("_run/shards.jsonl")
    s = read_status(storage.url)
    assert (s.shards_done, s.shards_failed, s.shards_to_do, s.realtime_run, s.eta_s) == (1, 1, None, None, None)
    assert not storage.exists(LEASE)  # read only: nothing written, no lease taken


def test_status_of_a_folder_that_is_not_an_output_exits_2_saying_what_it_expected(tmp_path, capsys):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.txt").write_text("x")
    assert status_main([str(tmp_path / "stuff")]) == 2
    assert "expected manifest.json" in capsys.readouterr().err
    (tmp_path / "stuff" / "manifest.json").write_text("{not json")
    assert status_main([str(tmp_path / "stuff")]) == 2
    assert "not JSON" in capsys.readouterr().err
