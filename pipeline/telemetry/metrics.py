"""The run's metrics through Ray's own metrics API (`ray.util.metrics`): they reach the Ray dashboard's metrics view and
Prometheus through each node's metrics agent, with no server of ours. Ray prefixes every name with `ray_`
(`ray_audiotok_audio_seconds_total`) and adds the recording process's labels (NodeAddress, WorkerId, ...).

Nearly everything is recorded by the driver from the job's events (a shard's commit record holds its audio, samples,
errors, encode and decode-wait seconds, halvings and frames), so the series agree with the run's summary; bytes
written are counted by the actor that wrote them. Recording that fails is one warning, then nothing: never a
failed run.

`ray.metrics_export_port` and `ray.metrics_report_interval_s` apply to a local Ray runtime that the driver starts
(`ray_init_options`); on a cluster, Ray's own settings apply.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from dataclasses import dataclass

from .events import (ActorLost, ActorSick, ActorsStarted, ActorStartFailure, ActorStartRetry, Event, Heartbeat,
                     MetricsUnavailable, ShardDone, ShardRetry)
from ..failures import Reason
from ..runstate.records import DONE

log = logging.getLogger(__name__)

PREFIX = "audiotok_"
SHARD_SECONDS_BOUNDARIES = [1, 5, 15, 60, 300, 900, 1800, 3600, 7200]


@dataclass(frozen=True)
class Metric:
    kind: str  # counter | gauge | histogram
    description: str
    tags: tuple = ("run",)


METRICS = {
    "audio_seconds_total": Metric("counter", "Seconds of audio encoded (done shards)", ("run", "actor")),
    "samples_written_total": Metric("counter", "Samples written as rows (done shards)", ("run", "actor")),
    "error_records_total": Metric("counter", "Sample error records, by reason (done shards)", ("run", "reason")),
    "shards_done_total": Metric("counter", "Shards committed done", ("run",)),
    "shards_failed_total": Metric("counter", "Shards committed failed, by reason", ("run", "reason")),
    "shard_retries_total": Metric("counter", "Shard tries run again, by failure kind", ("run", "failure")),
    "shards_in_flight": Metric("gauge", "Shards on codec actors now", ("run",)),
    "shard_duration_seconds": Metric("histogram", "Seconds a shard took on its actor (done shards)", ("run",)),
    "actors": Metric("gauge", "Codec actor places of the run", ("run",)),
    "actor_starts_total": Metric("counter", "Codec actors started, replacements included", ("run",)),
    "actor_restarts_total": Metric("counter", "Codec actors replaced, by cause", ("run", "cause")),
    "encode_seconds_total": Metric("counter", "Seconds actors' devices spent encoding", ("run", "actor")),
    "decode_wait_seconds_total": Metric("counter", "Seconds encoders waited for decoded audio", ("run", "actor")),
    "oom_halvings_total": Metric("counter", "Out-of-memory errors that halved an actor's batch budget", ("run", "actor")),
    "batch_budget_seconds": Metric("gauge", "An actor's batch budget: audio seconds per batch", ("run", "actor")),
    "batch_budget_clips": Metric("gauge", "An actor's batch budget: clips per batch", ("run", "actor")),
    "frames_encoded_total": Metric("counter", "Frames the codec ran, padding included", ("run",)),
    "frames_returned_total": Metric("counter", "Frames of codes returned (padding efficiency: returned / encoded)",
                                    ("run",)),
    "source_bytes_read_total": Metric("counter", "Bytes of the source shards finished (as listed)", ("run",)),
    "output_bytes_written_total": Metric("counter", "Bytes of data and error files written", ("run", "actor")),
    "read_retries_total": Metric("counter", "Remote reads tried again after a transient error (done and failed tries)",
                                 ("run",)),
}


def run_label(output_dir: str) -> str:
    """The `run` label: the output folder's name."""
    return output_dir.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or output_dir


class Recorder:
    """Records METRICS in this process, creating each on first use; the first failure warns (through `warn`, else
    the log) and turns recording off."""

    def __init__(self, warn=None):
        self.warn = warn
        self._made: dict = {}
        self.off = False

    def _metric(self, name: str):
        if name not in self._made:
            from ray.util import metrics

            m = METRICS[name]
            if m.kind == "counter":
                made = metrics.Counter(PREFIX + name, m.description, tag_keys=m.tags)
            elif m.kind == "gauge":
                made = metrics.Gauge(PREFIX + name, m.description, tag_keys=m.tags)
            else:
                made = metrics.Histogram(PREFIX + name, m.description, SHARD_SECONDS_BOUNDARIES, tag_keys=m.tags)
            self._made[name] = made
        return self._made[name]

    def record(self, name: str, value: float, **tags: str) -> None:
        if self.off or (METRICS[name].kind == "counter" and value <= 0):
            return
        try:
            metric = self._metric(name)
            tags = {k: str(v) for k, v in tags.items()}
            if METRICS[name].kind == "counter":
                metric.inc(value, tags=tags)
            elif METRICS[name].kind == "gauge":
                metric.set(value, tags=tags)
            else:
                metric.observe(value, tags=tags)
        except Exception as error:  # metrics are for watching: never a reason to fail a run
            self.off = True
            why = f"recording {PREFIX}{name} failed ({type(error).__name__}: {str(error)[:200]}); no more metrics"
            if self.warn is not None:
                self.warn(why)
            else:
                log.warning("metrics: %s", why)


class RunMetrics:
    """The driver's metrics, from the job's events: `listen` is the on_event to give the job; `record` has a
    handler per event type that moves a metric."""

    def __init__(self, output_dir: str, on_event):
        self.run = run_label(output_dir)
        self.on_event = on_event
        self.recorder = Recorder(lambda why: on_event(MetricsUnavailable(why)))

    def listen(self, event: Event) -> None:
        self.on_event(event)
        self.record(event)

    @functools.singledispatchmethod
    def record(self, event: Event) -> None:
        """An event no metric follows."""

    def _add(self, name: str, value: float, **tags) -> None:
        self.recorder.record(name, value, run=self.run, **tags)

    @record.register(ShardDone)
    def _shard_done(self, event: ShardDone) -> None:
        r = event.result
        self._add("shards_in_flight", event.in_flight)
        if r.read_retries:
            self._add("read_retries_total", r.read_retries)
        if r.status != DONE:
            self._add("shards_failed_total", 1, reason=r.reason or Reason.FAILED)
            return
        actor = r.worker or "?"
        self._add("shards_done_total", 1)
        self._add("audio_seconds_total", r.audio_seconds, actor=actor)
        self._add("samples_written_total", r.rows, actor=actor)
        for reason, count in r.error_reasons.items():
            self._add("error_records_total", count, reason=reason)
        self._add("encode_seconds_total", r.encode_s, actor=actor)
        self._add("decode_wait_seconds_total", r.decode_wait_s, actor=actor)
        self._add("oom_halvings_total", r.budget_halvings, actor=actor)
        if r.batch_budget:
            self._add("batch_budget_seconds", r.batch_budget["max_batch_seconds"], actor=actor)
            self._add("batch_budget_clips", r.batch_budget["max_clips"], actor=actor)
        self._add("frames_encoded_total", r.encoded_frames)
        self._add("frames_returned_total", r.frames)
        self._add("source_bytes_read_total", event.shard_size or 0)
        self._add("shard_duration_seconds", r.seconds)

    @record.register(ShardRetry)
    def _shard_retry(self, event: ShardRetry) -> None:
        self._add("shard_retries_total", 1, failure=event.failure)

    @record.register(Heartbeat)
    def _heartbeat(self, event: Heartbeat) -> None:
        self._add("shards_in_flight", event.in_flight)

    @record.register(ActorsStarted)
    def _actors(self, event: ActorsStarted) -> None:
        self._add("actors", event.count)
        self._add("actor_starts_total", event.count)

    def _restart(self, cause: str) -> None:
        self._add("actor_starts_total", 1)
        self._add("actor_restarts_total", 1, cause=cause)

    @record.register(ActorLost)
    def _actor_lost(self, event: ActorLost) -> None:
        self._restart(event.failure)
        self._add("shard_retries_total", len(event.lost) - bool(event.charged), failure="requeued")

    @record.register(ActorSick)
    def _actor_sick(self, event: ActorSick) -> None:
        self._restart("sick")

    @record.register(ActorStartFailure)
    def _actor_start_failed(self, event: ActorStartFailure) -> None:
        if event.replacing:
            self._restart("start_failed")

    @record.register(ActorStartRetry)
    def _actor_start_retry(self, event: ActorStartRetry) -> None:
        self._restart(f"start_{event.cause}")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("", port))
            return True
        except OSError:
            return False


def starts_local_runtime(address: str | None) -> bool:
    return address in (None, "local") and not os.environ.get("RAY_ADDRESS")


def ray_init_options(ray_config) -> tuple[dict, str | None]:
    """ray.init keyword arguments for the metrics of a local runtime the driver starts, and a warning when the named
    port cannot be used (Ray would fail to start on a port that is taken: the run goes on without the export)."""
    if not starts_local_runtime(ray_config.address):
        return {}, None
    # read by the runtime's processes when they start: set before ray.init
    os.environ.setdefault("RAY_metrics_report_interval_ms", str(int(ray_config.metrics_report_interval_s * 1000)))
    port = ray_config.metrics_export_port
    if not port:
        return {}, None
    if not _port_free(port):
        return {}, (f"ray.metrics_export_port={port} is taken by another process: metrics are not exported on it "
                    "(choose a free port); the run goes on")
    return {"_metrics_export_port": port}, None
