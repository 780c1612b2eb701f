"""Logs kept with the output: the driver's in parts as the run goes, each shard's worker lines beside its commit
record, secrets redacted (no Ray: the processor runs in this process)."""

import dataclasses
import logging
import threading
import time
import warnings

from pipeline.runstate import ShardRecord
from pipeline.telemetry.logs import ActorLog, DriverLog, ShardLogs, shard_log_path
from pipeline.storage import Storage
from tests.corpus import mixed_tar
from tests.test_pipeline import config_for

SECRET_URL = "https://user:hunter2@store.example/a.tar?X-Amz-Signature=deadbeef"


def test_driver_log_is_written_in_parts_as_the_run_goes_and_holds_no_secret(tmp_path):
    storage = Storage(f"memory://logs-{time.time_ns()}/out")
    log = DriverLog(storage, started=0.0, flush_s=0.05, part_bytes=300)
    logging.getLogger().addHandler(log)
    try:
        log.write(f"reading {SECRET_URL}")
        logging.getLogger("some.library").warning("slow store %s", SECRET_URL)
        time.sleep(0.2)  # not an output yet (a run refused before creating one): nothing written, lines kept
        assert not storage.exists("_run/logs/driver-19700101T000000Z.log")
        storage.write_bytes("manifest.json", b"{}")
        time.sleep(0.3)  # no close: what a killed driver leaves is what the flushes wrote
        first = storage.read_bytes("_run/logs/driver-19700101T000000Z.log").decode()
        assert "reading https://REDACTED@store.example/a.tar?REDACTED" in first
        assert "WARNING some.library: slow store" in first and "hunter2" not in first and "deadbeef" not in first
        for i in range(10):
            log.write(f"line {i} " + "x" * 40)
            if i == 4:
                time.sleep(0.2)  # flushed: the part is past 300 bytes and sealed; the next lines start another
        log.close()
    finally:
        logging.getLogger().removeHandler(log)
    parts = storage.list("_run/logs")
    assert parts[0] == "driver-19700101T000000Z.log" and len(parts) >= 2  # sealed past 300 bytes, then the next
    text = "".join(storage.read_bytes(f"_run/logs/{p}").decode() for p in sorted(parts, key=lambda p: (len(p), p)))
    assert all(f"line {i} " in text for i in range(10))


def test_each_shards_log_holds_its_own_worker_lines_and_library_warnings_and_a_failed_ones_says_why(tmp_path):
    from pipeline.sources import list_shards
    from pipeline.actor.processor import ShardProcessor

    for name, seed in (("p", 70), ("q", 71)):
        mixed_tar(str(tmp_path / f"in/{name}.tar"), name, 2, seed=seed)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/*.tar")]}, "ray.pool_seconds=1")
    processor = ShardProcessor(config)
    decode = processor._decode

    def noisy_decode(raw):  # in a decode thread, as a library would: a warning and a logger's line
        warnings.warn(f"odd header in {raw.key} from {SECRET_URL}")
        logging.getLogger("soundfile").warning("resampling %s", raw.key)
        return decode(raw)

    processor._decode = noisy_decode
    shards = list_shards(config.source).shards
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        workers = [threading.Thread(target=lambda shard=shard: results.append(processor.process(shard)))
                   for shard in shards]  # two shards at once on one processor, as an actor runs them
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert all(r.status == "done" for r in results)
    storage = Storage(config.output.dir)
    for shard in shards:
        text = storage.read_bytes(shard_log_path(shard.id)).decode()
        mine, other = ("p", "q") if shard.source.endswith("p.tar") else ("q", "p")
        assert f"odd header in {mine}_000" in text and f"resampling {mine}_001" in text and "done: 2 rows" in text
        assert f"{other}_00" not in text and "hunter2" not in text and "deadbeef" not in text, text
    missing = dataclasses.replace(shards[0], id="gone", url=str(tmp_path / "in/gone.tar"))
    failed = processor.process(missing)
    assert failed.status == "failed"
    assert f"failed ({failed.failure}): {failed.reason}" in storage.read_bytes(shard_log_path("gone")).decode()


def test_report_links_a_failed_shards_log_and_says_when_an_older_output_has_none(tmp_path):
    from pipeline.reading.report import _failed_shards

    out = tmp_path / "out"
    (out / "_run" / "commits").mkdir(parents=True)
    (out / "_run" / "commits" / "bad.log").write_text("failed (permanent): corrupt_tar: cut\n")
    records = {"ok": {"status": "done"}, "bad": {"status": "failed", "reason": "corrupt_tar", "detail": "cut"},
               "old": {"status": "failed", "shard_error": "read_failed: 503"}}
    records = {k: ShardRecord.from_dict({"shard_id": k, "source": "", **r}) for k, r in records.items()}
    page = _failed_shards({"records": records, "output_dir": str(out)}, str(tmp_path))
    assert '<td>bad</td><td>corrupt_tar: cut</td><td><a href="out/_run/commits/bad.log">log</a>' in page
    assert "<td>old</td><td>read_failed: 503</td><td>no log</td>" in page and "<td>ok</td>" not in page


def test_a_shards_warnings_reach_its_log_after_a_catch_warnings_put_the_old_hook_back():
    """logging.captureWarnings(True) inside a warnings.catch_warnings() (pytest wraps each test in one; a library
    may too) is undone when the context ends, while logging believes it still captures."""
    logging.captureWarnings(False)
    with warnings.catch_warnings():
        logging.captureWarnings(True)
    logs = ShardLogs.install()
    logs.begin("s", "header")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("odd header in s_000")
    assert "odd header in s_000" in logs.end("s", "done")


def test_an_actors_warnings_no_shard_claims_reach_its_log_in_the_output_and_a_shards_stay_in_the_shards():
    storage = Storage(f"memory://logs-{time.time_ns()}/out")
    storage.write_bytes("manifest.json", b"{}")
    shards = ShardLogs.install()
    log = ActorLog(storage, started=0.0, flush_s=60, who="actor-7")
    logging.getLogger().addHandler(log)
    path = "_run/logs/actor-7-19700101T000000Z.log"
    try:
        logging.getLogger("pipeline.telemetry.metrics").warning("metrics: cannot export to %s", SECRET_URL)  # the actor's own
        for _ in range(100):  # written at once, not a minute later: an actor is killed when its run ends
            if storage.exists(path):
                break
            time.sleep(0.02)
        assert "metrics: cannot export" in storage.read_bytes(path).decode()
        shards.begin("s", "header")
        logging.getLogger("soundfile").warning("resampling s_000")  # on the shard's thread: the shard's
        shard_text = shards.end("s", "done")
        log.close()
    finally:
        logging.getLogger().removeHandler(log)
    text = storage.read_bytes(path).decode()
    assert "WARNING pipeline.telemetry.metrics: metrics: cannot export to https://REDACTED@store.example" in text, text
    assert "hunter2" not in text and "resampling" not in text and "resampling s_000" in shard_text


def test_a_log_part_whose_write_failed_is_written_at_a_later_flush_with_no_new_line(monkeypatch):
    storage = Storage(f"memory://logs-{time.time_ns()}/out")
    storage.write_bytes("manifest.json", b"{}")
    write_bytes, failures = Storage.write_bytes, []

    def fails_once(self, path, data):  # a store's 503
        if path.startswith("_run/logs/") and not failures:
            failures.append(path)
            raise OSError("503 Slow Down")
        write_bytes(self, path, data)

    monkeypatch.setattr(Storage, "write_bytes", fails_once)
    errors = []
    log = DriverLog(storage, started=0.0, flush_s=0.05, on_error=errors.append)
    log.write("the only line")
    time.sleep(0.5)  # no close: what a killed driver (or actor) leaves
    assert failures and errors and "the only line" in storage.read_bytes(failures[0]).decode()
    log.close()
