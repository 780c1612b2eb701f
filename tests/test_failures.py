"""Failures a month-long run meets, with real components: a misbehaving HTTP server, real actors."""

import time

import pytest

from pipeline.failures import UNEXPECTED, is_transient
from pipeline.run import main as run_main
from tests.corpus import mixed_tar
from tests.httpserver import TroubleServer
from tests.test_pipeline import config_for, read_rows, records_of


def serve_tars(tmp_path, names, count=3):
    keys = []
    for i, name in enumerate(names):
        keys += [s.key for s in mixed_tar(str(tmp_path / "served" / name), f"s{i}", count, seed=80 + i)]
    return keys


def test_transient_http_errors_are_retried_where_they_happen_and_no_shard_is_retried(tmp_path, ray_local, capsys):
    names = ["ok-0.tar", "flaky-1.tar", "drop-2.tar"]
    keys = serve_tars(tmp_path, names)
    with TroubleServer(str(tmp_path / "served"), flaky_failures=2) as server:
        config_for(tmp_path, {"kind": "webdataset", "urls": [f"{server.url}/{n}" for n in names]})
        assert run_main([str(tmp_path / "run.yaml"), "ray.retry_backoff_s=0.2", "source.read_backoff_s=0.01"]) == 0
    err = capsys.readouterr().err
    records = {r.source.rsplit("/", 1)[-1]: r for r in records_of(tmp_path / "out").values()}
    assert all(r.status == "done" and r.attempts == 1 for r in records.values())
    assert [records[n].read_retries for n in names] == [0, 2, 1]  # two 503s; a body cut once, resumed
    assert server.ranges["drop-2.tar"][0] == 0 and server.ranges["drop-2.tar"][1] > 0  # from the byte reached
    assert "transient failure" not in err, err
    assert sorted(r["key"] for r in read_rows(tmp_path / "out")) == sorted(keys)  # each sample once


def test_stalled_read_is_bounded_by_the_shard_time_limit(tmp_path, ray_local, capsys):
    names = ["ok-0.tar", "ok-1.tar", "stall-2.tar"]
    serve_tars(tmp_path, names)
    start = time.time()
    with TroubleServer(str(tmp_path / "served")) as server:
        config_for(tmp_path, {"kind": "webdataset", "urls": [f"{server.url}/{n}" for n in names]})
        assert run_main([str(tmp_path / "run.yaml"), "ray.shard_timeout_s=4", "ray.max_attempts=2",
                         "ray.retry_backoff_s=0.2"]) == 1
    assert time.time() - start < 60  # each try stalls 90 s unless the time limit ends it
    err = capsys.readouterr().err
    records = {r.source.rsplit("/", 1)[-1]: r for r in records_of(tmp_path / "out").values()}
    assert records["stall-2.tar"].status == "failed" and records["stall-2.tar"].reason == "timeout"
    assert records["ok-0.tar"].status == records["ok-1.tar"].status == "done"
    assert "over its time limit" in err and f"failed shard {records['stall-2.tar'].shard_id}: timeout" in err


def test_unexpected_worker_exception_is_reported_with_its_traceback(tmp_path, tiny_codec, monkeypatch):
    from pipeline.sources import list_shards
    from pipeline.actor.processor import ShardProcessor

    mixed_tar(str(tmp_path / "in/a.tar"), "a", 2, seed=1)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/a.tar")]})
    processor = ShardProcessor(config)
    monkeypatch.setattr(processor, "_encode", lambda *a: {}["a device that lost its mind"])
    result = processor.process(list_shards(config.source).shards[0])
    assert result.status == "failed" and result.failure == UNEXPECTED and result.files == []
    assert result.reason == "worker_exception" and "KeyError" in result.detail and 'File "' in result.traceback and "_process" in result.traceback


def test_unexpected_worker_exception_logged_to_the_driver_holds_no_url_secret(tmp_path, tiny_codec, monkeypatch, caplog):
    from pipeline.sources import list_shards
    from pipeline.actor.processor import ShardProcessor

    mixed_tar(str(tmp_path / "in/a.tar"), "a", 2, seed=1)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/a.tar")]})
    processor = ShardProcessor(config)

    def fail(*args):
        raise RuntimeError("GET https://store.example/a.tar?X-Amz-Signature=SECRET123 failed oddly")

    monkeypatch.setattr(processor, "_encode", fail)
    with caplog.at_level("ERROR", logger="pipeline.actor.processor"):
        result = processor.process(list_shards(config.source).shards[0])
    assert result.failure == UNEXPECTED
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "failed oddly" in logged and "SECRET123" not in logged  # Ray forwards actors' logs to the driver's


@pytest.mark.parametrize("error, transient", [
    (ConnectionResetError("reset by peer"), True),
    (TimeoutError("read timed out"), True),
    (FileNotFoundError("s3://b/k.tar"), False),
    (OSError("tar: bad header"), False),
])
def test_transient_errors_are_told_from_broken_data(error, transient):
    assert is_transient(error) == transient


def test_a_503_behind_a_not_found_is_transient():
    # fsspec's HTTP filesystem reports any failed open as FileNotFoundError, raised from the real cause
    class ClientResponseError(Exception):
        status = 503

    try:
        try:
            raise ClientResponseError()
        except ClientResponseError as cause:
            raise FileNotFoundError("http://host/a.tar") from cause
    except FileNotFoundError as error:
        assert is_transient(error)
    throttled = OSError("slow down")
    throttled.__cause__ = type("ClientError", (Exception,), {"response": {"Error": {"Code": "SlowDown"},
                                                                          "ResponseMetadata": {"HTTPStatusCode": 503}}})()
    assert is_transient(throttled)
