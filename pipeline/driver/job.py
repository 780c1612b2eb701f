"""The driver: list the source, resolve the codec, open the run state, let the scheduler run the shards.

Library code: it reports through `on_event(event)` (pipeline.events) and never prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from codec import Checkpoint, CheckpointError, CodecInputError, codebooks_for_bandwidth, resolve_checkpoint

from ..audio.decode import DECODE_METHOD
from ..config import Config, ConfigError, as_dict
from ..events import CodecResolved, RunStarted
from ..actor.device import probe_device
from ..audio.loudness import METHOD as LOUDNESS_METHOD
from ..metrics import RunMetrics
from ..runstate import DONE, RunState, ShardRecord, StoreWriteFailed, library_versions
from . import ActorSetup, Scheduler, ensure_ray
from ..schema import column_lines, output_schema, schema_to_text
from ..sources import SourceListing, distinct_shards, largest_first, list_shards
from ..storage import Storage
from ..actor.processor import encoder_busy_share


@dataclass
class JobSummary:
    status: str  # complete | incomplete
    shards_total: int
    shards_skipped: int
    shards_run: int
    wall_seconds: float
    run_audio_seconds: float
    encoder_busy_share: float | None  # this run: see worker.encoder_busy_share
    totals: dict
    output_dir: str
    actor_start_failures: list = field(default_factory=list)  # constructor errors of actors that were replaced
    failed_shards: list = field(default_factory=list)  # (shard id, reason) of every failed shard of the output
    startup: dict | None = None  # seconds from the job's start to its first encoded batch, by part (see Scheduler.startup)
    loudness_lufs: float | None = None  # audio.loudness_lufs of the run (None: off)


@dataclass
class CodecFacts:
    """The codec as the driver resolved it: every actor loads `checkpoint` (the same commit)."""

    checkpoint: Checkpoint
    identity: dict
    num_codebooks: int
    frame_rate: float
    codebook_size: int
    sample_rate: int
    hop_length: int
    codebooks_per_bandwidth: dict
    convention: str = "model_card"  # codec.convention: which codes a clip has


def resolve_codec(config: Config) -> CodecFacts:
    """Check `codec.model` and `codec.bandwidth` before any actor starts: a ConfigError says what was found."""
    c = config.codec
    try:
        checkpoint, codec_config = resolve_checkpoint(c.model, c.revision, c.seed)
    except CheckpointError as error:
        raise ConfigError("codec.model", str(error), "a hub repo id (ORG/NAME), a folder in transformers' or the "
                          "original release's format, or random:tiny|full") from None
    try:
        num_codebooks = codebooks_for_bandwidth(codec_config, c.bandwidth)
    except CodecInputError as error:
        raise ConfigError("codec.bandwidth", f"{error} ({c.model})",
                          f"choose one of {list(codec_config.target_bandwidths)}") from None
    per_bandwidth = {float(b): codebooks_for_bandwidth(codec_config, b) for b in codec_config.target_bandwidths}
    return CodecFacts(checkpoint, checkpoint.identity().as_dict(), num_codebooks,
                      codec_config.sample_rate / codec_config.hop_length, codec_config.codebook_size,
                      codec_config.sample_rate, codec_config.hop_length, per_bandwidth, c.convention)


def _identity(config: Config, codec: CodecFacts, source_identity: dict, device: dict | None = None) -> dict:
    """Everything that decides which samples a shard id denotes, their keys and their codes.
    device: where the codes come from (pipeline.actor.device); outputs written before it was recorded have none."""
    c, loud = config.codec, config.audio.loudness_lufs
    return ({"device": device} if device is not None else {}) | {
        "codec": codec.identity, "bandwidth": c.bandwidth, "convention": c.convention, "dtype": c.dtype,
        "allow_tf32": c.allow_tf32,
        "window_s": c.window_s, "context_s": c.context_s, "resampler": f"soxr-{config.audio.resampler_quality}",
        "decode": DECODE_METHOD,
        # None when off, which is also what an output written before the option reads as: it goes on unchanged
        "audio": {"loudness_lufs": loud, "loudness_method": LOUDNESS_METHOD if loud is not None else None},
        "source": source_identity, "versions": library_versions(),
    }


def open_run_state(config: Config, storage: Storage, codec: CodecFacts, listing: SourceListing, on_event,
                   device: dict | None = None) -> RunState:
    schema = output_schema(listing.fields)
    header = {
        "identity": _identity(config, codec, listing.identity, device), "codec": codec.identity,
        "bandwidth": config.codec.bandwidth, "num_codebooks": codec.num_codebooks, "frame_rate": codec.frame_rate,
        "codebook_size": codec.codebook_size, "config": as_dict(config),
        "output_schema": schema_to_text(schema), "output_columns": column_lines(schema),
    }
    try:
        return RunState.open(storage, header, config.output, on_event)
    except (PermissionError, NotADirectoryError, FileExistsError, StoreWriteFailed) as error:
        cause = error.__cause__ if isinstance(error, StoreWriteFailed) else error
        if not isinstance(cause, (PermissionError, NotADirectoryError, FileExistsError)):
            raise  # the store failing, not the folder refusing: exit 3 with the store's error
        raise ConfigError("output.dir", f"cannot write there: {cause}", "a writable folder or URL") from None


def run_job(config: Config, on_event=lambda event: None) -> JobSummary:
    start = time.time()
    on_event = RunMetrics(config.output.dir, on_event).listen  # every event also feeds the run's metrics
    storage = Storage(config.output.dir)
    listing = list_shards(config.source)
    if not listing.shards and listing.plan is None:
        raise ConfigError("source", "no shards found", "check source.urls / source.path")
    codec = resolve_codec(config)
    on_event(CodecResolved(codec))
    ray_start_s = ensure_ray(config, on_event)  # the device probe runs where an actor would
    device = probe_device(config)
    state = open_run_state(config, storage, codec, listing, on_event, device)
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
            setup = ActorSetup(codec.checkpoint, state.schema, identity["versions"], identity.get("device"))
            scheduler = Scheduler(config, state, state.storage, pending, on_event, setup, start_failures)
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
