"""The driver: shards -> codec actors -> commit records, with resume, actor replacement and a failure guard.

Library code: it reports through `on_event(kind, info)` and never prints.
"""

from __future__ import annotations

import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError, RayTaskError

from codec import Checkpoint, CheckpointError, CodecInputError, codebooks_for_bandwidth, resolve_checkpoint

from .actors import SHARDS_IN_FLIGHT, CodecActor
from .config import Config, ConfigError, as_dict
from .runstate import RunState, library_versions
from .schema import describe, output_schema, schema_to_text
from .sources import Shard, SourceListing, largest_first, list_shards
from .storage import Storage
from .synth import ensure_demo_webdataset
from .worker import ShardResult, encoder_busy_share
from .writer import publish_shard_failure


class GuardTripped(RuntimeError):
    pass


class ActorStartFailed(RuntimeError):
    """Codec actors die in their constructor, and their replacements too: nothing can run."""


def start_error(error: RayActorError) -> str | None:
    """The constructor's error and traceback when an actor died starting; None when it died later."""
    if not getattr(error, "actor_init_failed", False):
        return None
    return re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()


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


def _ensure_demo_corpus(config: Config) -> None:
    if config.source.kind != "webdataset":
        raise ConfigError("source.demo_if_missing", "works for webdataset sources only")
    try:
        ensure_demo_webdataset(config.source.urls)
    except ValueError as error:
        raise ConfigError("source.urls", str(error), "e.g. ['demo_data/demo-{000..003}.tar']") from None


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
                      codec_config.sample_rate, codec_config.hop_length, per_bandwidth)


def _identity(config: Config, codec: CodecFacts, source_identity: dict) -> dict:
    """Everything that decides which samples a shard id denotes, their keys and their codes."""
    c = config.codec
    return {
        "codec": codec.identity, "bandwidth": c.bandwidth, "dtype": c.dtype, "allow_tf32": c.allow_tf32,
        "window_s": c.window_s, "context_s": c.context_s, "resampler": f"soxr-{config.audio.resampler_quality}",
        "source": source_identity, "versions": library_versions(),
    }


def open_run_state(config: Config, storage: Storage, codec: CodecFacts, listing: SourceListing, on_event) -> RunState:
    schema = output_schema(listing.fields)
    header = {
        "identity": _identity(config, codec, listing.identity), "codec": codec.identity,
        "bandwidth": config.codec.bandwidth, "num_codebooks": codec.num_codebooks, "frame_rate": codec.frame_rate,
        "codebook_size": codec.codebook_size, "config": as_dict(config),
        "output_schema": schema_to_text(schema), "output_columns": describe(schema),
    }
    try:
        return RunState.open(storage, header, config.output, on_event)
    except (PermissionError, NotADirectoryError, FileExistsError) as error:
        raise ConfigError("output.dir", f"cannot write there: {error}", "a writable folder or URL") from None


def ensure_ray(config: Config) -> None:
    if not ray.is_initialized():
        # address None: RAY_ADDRESS (set by `ray job submit`) if present, else a local runtime
        ray.init(address=config.ray.address, log_to_driver=False, include_dashboard=False, logging_level="ERROR")


CPU_ACTOR_MEMORY_GB = 4.5
GPU_ACTOR_MAX_CPUS = 8


def _actor_options(config: Config, nodes: list[dict]) -> tuple[int, dict]:
    """How many codec actors, and the Ray resources each one reserves (see RayConfig for the defaults).

    nodes: each live node's resources. Sizes are fitted to the nodes, not the cluster total: a
    reservation no single node can hold would leave an actor pending forever."""
    r = config.ray
    gpu_nodes = [n for n in nodes if int(n.get("GPU", 0)) >= 1] if config.codec.device != "cpu" else []
    if gpu_nodes:
        # the CPUs beside each GPU on the tightest GPU node, so every GPU can get its actor
        share = min(int(n.get("CPU", 1)) // int(n["GPU"]) for n in gpu_nodes)
        options = {"num_gpus": 1, "num_cpus": r.cpus_per_actor or max(1, min(GPU_ACTOR_MAX_CPUS, share))}
        if r.memory_per_actor_gb:
            options["memory"] = int(r.memory_per_actor_gb * 2**30)
        return r.num_actors or sum(int(n["GPU"]) for n in gpu_nodes), options
    biggest = max(int(n.get("CPU", 1)) for n in nodes)
    cpus = min(r.cpus_per_actor or 1, biggest)
    wanted = int((r.memory_per_actor_gb or CPU_ACTOR_MEMORY_GB) * 2**30)
    # a cluster whose nodes are all smaller than one actor's estimate still runs actors rather than none
    memory = min(wanted, max(int(n.get("memory", wanted)) for n in nodes))
    fits = sum(min(int(n.get("CPU", 0)) // cpus, int(n.get("memory", memory)) // memory) for n in nodes)
    return r.num_actors or max(1, fits), {"num_gpus": 0, "num_cpus": cpus, "memory": memory}


def _guard(config: Config, totals: dict) -> None:
    finished = totals["shards_done"] + totals["shards_failed"]
    if finished >= config.guard.min_shards and totals["shards_failed"] == finished:
        reasons = Counter(totals["shard_error_reasons"])
        raise GuardTripped(
            f"stopped: the first {finished} shards all failed (most common: {reasons.most_common(1)[0][0]}); "
            "check source.audio_column / source.urls. Failed shards are listed in manifest.json and errors/."
        )
    read, failed = totals["samples_read"], totals["errors"]
    if read >= config.guard.min_samples and failed > config.guard.max_error_fraction * read:
        top = ", ".join(f"{r} x{n}" for r, n in Counter(totals["error_reasons"]).most_common(3))
        raise GuardTripped(
            f"stopped: {failed} of {read} samples failed ({failed / read:.0%} > guard.max_error_fraction="
            f"{config.guard.max_error_fraction}); most common: {top}. Check source.audio_column and the audio "
            "format; see errors/ in the output folder."
        )


def run_job(config: Config, on_event=lambda kind, info: None) -> JobSummary:
    start = time.time()
    storage = Storage(config.output.dir)
    if config.source.demo_if_missing:
        _ensure_demo_corpus(config)
    listing = list_shards(config.source)
    shards = listing.shards
    if not shards:
        raise ConfigError("source", "no shards found", "check source.urls / source.path")
    codec = resolve_codec(config)
    on_event("codec", {"codec": codec})
    state = open_run_state(config, storage, codec, listing, on_event)
    try:
        pending = deque(largest_first(s for s in shards if not state.done(s.id)))
        skipped = len(shards) - len(pending)
        on_event("start", {"shards": len(shards), "pending": len(pending), "skipped": skipped})
        results: list[ShardResult] = []
        start_failures: list[str] = []
        if pending:
            setup = (codec.checkpoint, state.schema, state.header["identity"]["versions"])
            results = _dispatch(config, state, storage, pending, on_event, setup, start_failures)
        complete = all(state.done(s.id) for s in shards)
    finally:
        state.close()
    return JobSummary("complete" if complete else "incomplete", len(shards), skipped, len(shards) - skipped,
                      time.time() - start, sum(r.audio_seconds for r in results), encoder_busy_share(results),
                      state.totals(), config.output.dir, start_failures)


def _failed(storage: Storage, shard: Shard, reason: str, detail: str) -> ShardResult:
    """A shard the driver gives up on: its shard-level error record, no rows."""
    files = publish_shard_failure(storage, shard.id, shard.url, reason, detail)
    return ShardResult(shard.id, shard.url, "failed", shard_error=f"{reason}: {detail}", files=files)


def _in_flight_progress(actors, in_flight: dict) -> dict:
    """Audio encoded so far in the shards under way; actors that do not answer in time count as 0."""
    refs = [actors[index].progress.remote() for index in {index for index, _, _ in in_flight.values()}]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=2.0)
    done = []
    for ref in ready:
        try:
            done.append(ray.get(ref))
        except ray.exceptions.RayError:
            pass  # a dying actor: the shard's own result will say so
    return {"audio_seconds": sum(p["audio_seconds"] for p in done), "samples": sum(p["samples"] for p in done)}


def _dispatch(config: Config, state: RunState, storage: Storage, pending: deque, on_event, setup: tuple,
              start_failures: list[str]) -> list[ShardResult]:
    """setup: (checkpoint, schema, library versions) every actor is built with."""
    ensure_ray(config)
    count, options = _actor_options(config, [n["Resources"] for n in ray.nodes() if n["Alive"]])
    count = min(count, len(pending))

    def new_actor(index: int):
        return CodecActor.options(**options).remote(config, f"actor-{index}", *setup)

    actors = [new_actor(i) for i in range(count)]
    on_event("actors", {"count": count, "options": options, "actors": list(actors)})
    attempts: Counter = Counter()
    failed_starts: Counter = Counter()  # per actor slot, start failures since its last finished shard
    in_flight: dict = {}
    results: list[ShardResult] = []

    def submit(index: int) -> None:
        shard: Shard = pending.popleft()
        in_flight[actors[index].process.remote(shard)] = (index, shard, actors[index])

    for _ in range(SHARDS_IN_FLIGHT):
        for index in range(count):
            if pending:
                submit(index)
    try:
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=config.ray.progress_interval_s)
            state.check_lease()
            if not ready:
                on_event("heartbeat", {"in_flight": len(in_flight), **_in_flight_progress(actors, in_flight)})
                continue
            index, shard, actor = in_flight.pop(ready[0])
            try:
                result: ShardResult = ray.get(ready[0])
            except RayActorError as error:
                # replaced once for all its shards: a second replacement would start a surplus actor
                # (on a GPU cluster one that waits forever for a GPU, with a shard queued on it)
                replaced = actors[index] is actor
                message = start_error(error)
                if message is not None:
                    # the shard never ran: requeue it uncharged; a slot whose replacement fails to start
                    # too stops the run with the constructor's own message
                    if replaced:
                        failed_starts[index] += 1
                        start_failures.append(message)
                        on_event("actor_start_failed", {"actor": index, "error": message,
                                                        "replacing": failed_starts[index] < 2})
                        if failed_starts[index] >= 2:
                            raise ActorStartFailed(message)
                        actors[index] = new_actor(index)
                    pending.appendleft(shard)
                    submit(index)
                    continue
                attempts[shard.id] += 1
                if replaced:
                    actors[index] = new_actor(index)
                on_event("actor_lost", {"shard": shard.id, "attempt": attempts[shard.id], "replaced": replaced,
                                        "requeued": attempts[shard.id] < config.ray.max_attempts,
                                        "error": str(error)[:300]})
                if attempts[shard.id] < config.ray.max_attempts:
                    pending.appendleft(shard)
                    submit(index)
                    continue
                result = _failed(storage, shard, "actor_died", str(error)[:200])
            except RayTaskError as error:
                result = _failed(storage, shard, "worker_exception", str(error)[-300:])
            if actor is actors[index]:
                failed_starts[index] = 0  # this slot's actor started
            state.commit(result.as_dict())
            results.append(result)
            on_event("shard_done", {"result": result, "remaining": len(pending) + len(in_flight)})
            _guard(config, state.totals())
            if pending:
                submit(index)
    finally:
        for actor in actors:
            ray.kill(actor)
    return results
