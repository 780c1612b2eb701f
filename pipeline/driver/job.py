"""The driver: list the source, resolve the codec, open the run state, let the scheduler run the shards.

Library code: it reports through `on_event(event)` (pipeline.telemetry.events) and never prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray

from ..config import Config, ConfigError, as_dict
from ..telemetry.events import CodecResolved, RunStarted
from ..telemetry.metrics import RunMetrics
from ..runstate import DONE, RunState, ShardRecord, StoreWriteFailed, library_versions
from . import Scheduler, actor_options, ensure_ray
from .protocol import ActorSetup, ActorSide
from ..schema import column_lines, output_schema, schema_to_text
from ..sources import SourceListing, distinct_shards, largest_first, list_shards
from ..storage import Storage
from ..tokenizer import Resolved, TokenizerSpecError, resolve_tokenizer, tokenizer_class


@dataclass
class JobSummary:
    status: str  # complete | incomplete
    shards_total: int
    shards_skipped: int
    shards_run: int
    wall_seconds: float
    run_audio_seconds: float
    encoder_busy_share: float | None  # this run: see encoder_busy_share below
    totals: dict
    output_dir: str
    actor_start_failures: list = field(default_factory=list)  # constructor errors of actors that were replaced
    failed_shards: list = field(default_factory=list)  # (shard id, reason) of every failed shard of the output
    startup: dict | None = None  # seconds from the job's start to its first encoded batch, by part (see Scheduler.startup)
    loudness_lufs: float | None = None  # audio.loudness_lufs of the run (None: off)


@dataclass
class CodecFacts:
    """The tokenizer as the driver resolved it, at the run's bandwidth and convention: every actor loads
    `resolved` (the same commit)."""

    resolved: Resolved
    num_codebooks: int
    convention: str  # codec.convention: which codes a clip has
    convention_meaning: str


def resolve_codec(config: Config) -> CodecFacts:
    """Check `codec.model` and `codec.bandwidth` before any actor starts: a ConfigError says what was found."""
    c = config.codec
    try:
        resolved = resolve_tokenizer(c.model, c.revision, c.seed)
    except TokenizerSpecError as error:
        raise ConfigError("codec.model", str(error), "a hub repo id (ORG/NAME), a folder in transformers' or the "
                          "original release's format, or random:tiny|full") from None
    if c.bandwidth not in resolved.codebooks_per_bandwidth:
        raise ConfigError("codec.bandwidth", f"bandwidth {c.bandwidth} kbps is not in this checkpoint's list "
                          f"{resolved.bandwidths} ({c.model})", f"choose one of {resolved.bandwidths}")
    return CodecFacts(resolved, resolved.codebooks_per_bandwidth[c.bandwidth], c.convention,
                      tokenizer_class(c.model).CONVENTIONS[c.convention])


def _identity(config: Config, codec: CodecFacts, source_identity: dict, actor: dict, device: dict | None = None
              ) -> dict:
    """Everything that decides which samples a shard id denotes, their keys and their codes. `actor`: the actor
    side's part (ActorSide.identity: its decoders, its loudness method).
    device: where the codes come from (the actor side's probe); outputs written before it was recorded have none."""
    c = config.codec
    return ({"device": device} if device is not None else {}) | {
        "codec": codec.resolved.identity, "bandwidth": c.bandwidth, "convention": c.convention, "dtype": c.dtype,
        "allow_tf32": c.allow_tf32,
        "window_s": c.window_s, "context_s": c.context_s, "resampler": f"soxr-{config.audio.resampler_quality}",
        "decode": actor["decode"], "audio": actor["audio"],
        "source": source_identity, "versions": library_versions(),
    }


def open_run_state(config: Config, storage: Storage, codec: CodecFacts, listing: SourceListing, on_event,
                   actor: dict, device: dict | None = None) -> RunState:
    schema = output_schema(listing.fields)
    header = {
        "identity": _identity(config, codec, listing.identity, actor, device), "codec": codec.resolved.identity,
        "bandwidth": config.codec.bandwidth, "num_codebooks": codec.num_codebooks,
        "frame_rate": codec.resolved.frame_rate, "codebook_size": codec.resolved.codebook_size, "config": as_dict(config),
        "output_schema": schema_to_text(schema), "output_columns": column_lines(schema),
    }
    try:
        return RunState.open(storage, header, config.output, on_event)
    except (PermissionError, NotADirectoryError, FileExistsError, StoreWriteFailed) as error:
        cause = error.__cause__ if isinstance(error, StoreWriteFailed) else error
        if not isinstance(cause, (PermissionError, NotADirectoryError, FileExistsError)):
            raise  # the store failing, not the folder refusing: exit 3 with the store's error
        raise ConfigError("output.dir", f"cannot write there: {cause}", "a writable folder or URL") from None


def probe_device(config: Config, side: ActorSide) -> dict:
    """The device facts where an actor of this run would run (on the Ray of `ensure_ray`): a task holding an
    actor's own resources (GPU, CPUs, memory, ray.actor_resources), so it lands on the kind of node they will.
    ConfigError when codec.device asks for a GPU that no node offers: no actor could start."""
    _, options = actor_options(config, [n["Resources"] for n in ray.nodes() if n["Alive"]])
    if config.codec.device == "cuda" and not options["num_gpus"]:
        wanted = f" with ray.actor_resources {config.ray.actor_resources}" if config.ray.actor_resources else ""
        raise ConfigError("codec.device", f"cuda asked for, but no node of this Ray cluster{wanted} offers a GPU",
                          "set codec.device: cpu (or auto), or add GPU nodes")
    return side.probe_device(config, options)


def actor_spans(results: list[ShardRecord]) -> dict[str, float]:
    """Per actor, the time it had shards: first start to last end (its shards overlap)."""
    spans: dict[str, tuple[float, float]] = {}
    for r in results:
        if r.started_at:
            begin, end = spans.get(r.worker, (r.started_at, r.started_at + r.seconds))
            spans[r.worker] = (min(begin, r.started_at), max(end, r.started_at + r.seconds))
    return {worker: end - begin for worker, (begin, end) in spans.items()}


def encoder_busy_share(results: list[ShardRecord]) -> float | None:
    """Of the time each actor had shards, the share its device spent encoding. Below ~0.95 something
    else (decoding, reading, writing) is on the critical path."""
    total = sum(actor_spans(results).values())
    return sum(r.encode_s for r in results) / total if total else None


def drive(config: Config, side: ActorSide, on_event=lambda event: None) -> JobSummary:
    """A run: list the shards, resolve the codec, open the run state, and schedule the pending shards on the
    actors of `side` (pipeline/run.py's run_job hands it the codec actor's)."""
    start = time.time()
    on_event = RunMetrics(config.output.dir, on_event).listen  # every event also feeds the run's metrics
    storage = Storage(config.output.dir)
    listing = list_shards(config.source)
    if not listing.shards and listing.plan is None:
        raise ConfigError("source", "no shards found", "check source.urls / source.path")
    codec = resolve_codec(config)
    on_event(CodecResolved(codec))
    ray_start_s = ensure_ray(config, on_event)  # the device probe runs where an actor would
    device = probe_device(config, side)
    state = open_run_state(config, storage, codec, listing, on_event, side.identity(config), device)
    try:
        shards = listing.settle(state.storage)  # recorded shards are read (and new ones recorded) under the lease
        distinct_shards(shards)
        pending = largest_first(s for s in shards if not state.done(s.id))
        skipped = len(shards) - len(pending)
        state.announce(len(shards), len(pending))
        on_event(RunStarted(len(shards), len(pending), skipped))
        results: list[ShardRecord] = []
        start_failures: list[str] = []
        startup = None
        if pending:
            identity = state.header["identity"]
            setup = ActorSetup(codec.resolved, state.schema, identity["versions"], identity.get("device"))
            scheduler = Scheduler(config, state, state.storage, pending, on_event, setup, start_failures,
                                  side.actor_class)
            prepared = time.time() - start - ray_start_s  # listing, codec resolution, device probe, run state
            results = scheduler.run()
            startup = scheduler.startup()
            if startup:
                startup = {"prepare_s": prepared, **startup, "ray_start_s": ray_start_s,
                           "to_first_batch_s": startup.pop("first_batch_at") - start}
        complete = all(state.done(s.id) for s in shards)
        failed = sorted((k, r.error) for k, r in state.records.items() if r.status != DONE)
    finally:
        state.close()
    return JobSummary("complete" if complete else "incomplete", len(shards), skipped, len(shards) - skipped,
                      time.time() - start, sum(r.audio_seconds for r in results), encoder_busy_share(results),
                      state.totals(), config.output.dir, start_failures, failed, startup,
                      config.audio.loudness_lufs)
