"""The run's metrics through Ray's metrics API, read as Prometheus reads them; and their failures, which never fail
a run."""

import socket
import time
import urllib.request

import numpy as np
import pytest

from demo.synth import SynthSample, random_sample, write_tar
from pipeline.telemetry.events import MetricsUnavailable, ShardDone
from pipeline.run import run_job
from pipeline.telemetry.metrics import RunMetrics, ray_init_options
from pipeline.runstate import ShardRecord
from tests.test_pipeline import config_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    """{(name, labels as a sorted tuple): value} of every audiotok series the endpoint shows."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) if "audiotok" in family.name for s in family.samples}


def summed(series: dict, name: str, by: str | None = None, **match) -> dict | float:
    """A metric's value summed over its series whose labels include `match` (per label `by` when given)."""
    out: dict = {}
    for (found, labels), value in series.items():
        labels = dict(labels)
        if found == name and all(labels.get(k) == v for k, v in match.items()):
            out[labels.get(by)] = out.get(labels.get(by), 0) + value
    return out if by else sum(out.values())


def test_metrics_scraped_from_the_ray_endpoint_agree_with_the_runs_summary(tmp_path, monkeypatch):
    import ray

    if ray.is_initialized():
        ray.shutdown()  # this test's runtime is the one the driver starts, with the export port named
    monkeypatch.delenv("RAY_metrics_report_interval_ms", raising=False)
    rng = np.random.default_rng(0)
    for i in range(2):
        samples = [random_sample(rng, f"s{i}_{j}", 0.4 + 0.3 * j, "flac") for j in range(3)]
        samples.append(SynthSample(f"bad{i}", {"flac": b"not audio at all"}, 0.0))  # one error record per shard
        write_tar(str(tmp_path / f"in-{i}.tar"), samples)
    port = free_port()
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in-{0..1}.tar")]},
                        f"ray.metrics_export_port={port}", "ray.metrics_report_interval_s=0.5", "ray.num_actors=1")
    events = []
    try:
        summary = run_job(config, events.append)
        t = summary.totals
        assert summary.status == "complete" and t["errors"] == 2
        assert not [e for e in events if isinstance(e, MetricsUnavailable)]
        deadline, series = time.time() + 30, {}
        while time.time() < deadline:  # the metrics agent exports what processes report every interval
            series = scrape(port)
            if summed(series, "ray_audiotok_shards_done_total", run="out") == 2:
                break
            time.sleep(0.5)
        assert summed(series, "ray_audiotok_audio_seconds_total", run="out") == pytest.approx(t["audio_seconds"])
        assert summed(series, "ray_audiotok_samples_written_total", run="out") == t["rows"] == 6
        assert summed(series, "ray_audiotok_error_records_total", "reason", run="out") == t["error_reasons"]
        assert summed(series, "ray_audiotok_frames_returned_total", run="out") == t["frames"]
        assert summed(series, "ray_audiotok_actor_starts_total", run="out") == 1
    finally:
        ray.shutdown()  # the other tests start their own runtime (conftest's ray_local)


def test_a_metrics_port_that_is_taken_is_one_warning_and_ray_starts_without_it(monkeypatch):
    from pipeline.config import load_config

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        config = load_config(None, ["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x",
                                    f"ray.metrics_export_port={taken.getsockname()[1]}"])
        options, warning = ray_init_options(config.ray)
    assert options == {} and "is taken" in warning and "ray.metrics_export_port" in warning


def test_metrics_that_cannot_be_recorded_are_one_warning_and_the_events_still_reach_the_job(monkeypatch):
    import ray.util.metrics

    def broken(*args, **kwargs):
        raise RuntimeError("no metrics agent")

    monkeypatch.setattr(ray.util.metrics, "Counter", broken)
    events = []
    metrics = RunMetrics("/out/run-7", events.append)
    record = ShardRecord("s", "/in/s.tar", "done", rows=3, audio_seconds=2.0, error_reasons={"decode_failed": 1})
    for _ in range(3):
        metrics.listen(ShardDone(record))
    assert [type(e) for e in events] == [ShardDone, MetricsUnavailable, ShardDone, ShardDone]
    assert "no metrics agent" in events[1].why


def test_read_retries_of_done_and_failed_shards_reach_the_read_retries_counter():
    recorded = []
    metrics = RunMetrics("/out/run-7", lambda event: None)
    metrics.recorder.record = lambda name, value, **tags: recorded.append((name, value))
    metrics.listen(ShardDone(ShardRecord("a", "/in/a.tar", "done", rows=1, read_retries=3)))
    metrics.listen(ShardDone(ShardRecord("b", "/in/b.tar", "failed", reason="transient_io", read_retries=5)))
    assert sum(value for name, value in recorded if name == "read_retries_total") == 8
