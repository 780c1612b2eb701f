"""One shard in, one Parquet file (plus error records) out, on whatever device the codec holds.

Decoding and resampling run in threads a pool ahead of the encoder (`prefetch.DecodeAhead`;
soundfile, soxr and torch all release the GIL), so the device is not left waiting on the CPU work
of the next clips.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import torch

from ..audio.decode import Audio, SampleError
from .batch_budget import BatchBudget
from ..config import AudioConfig, Config
from ..driver.protocol import ActorProgress, Startup
from .decode_tasks import DecodeInTask
from .decode_processes import DecodeProcesses
from .sample_decoder import SampleDecoder
from ..failures import TRANSIENT, UNEXPECTED, Reason, WrongDeviceError, traceback_summary, is_transient
from ..telemetry.logs import ShardLogs, write_shard_log
from ..audio.loudness import CLIPPED
from ..telemetry.metrics import Recorder, run_label
from .prefetch import DecodeAhead
from .process_memory import resident_mb
from ..reads import Reads
from ..runstate import DONE, FAILED, ShardRecord, library_versions
from ..runstate.retry import WriteRetry
from ..schema import output_schema
from ..sources import RawSample, Shard, read_shard
from ..storage import Storage
from ..tokenizer import CodecInputError, Resolved, Tokenizer, load_tokenizer, release_freed_heap
from ..urls import redact_text
from ..writer import ShardWriter

log = logging.getLogger(__name__)

# a pool this many batch budgets deep lets length bucketing find clips of similar length (the planned
# padding efficiency of the GPU policy at this depth is printed by jobs/bench_gpu.py)
POOL_BATCHES = 8


ENCODE_FAILED, OUT_OF_MEMORY = Reason.ENCODE_FAILED, Reason.OUT_OF_MEMORY  # reasons of a clip's error record


@dataclass
class ClipFailure:
    """A clip the codec could not encode: its error record's reason and detail."""

    reason: Reason
    detail: str


def decodes_in_processes(audio: AudioConfig, device_type: str, decode_threads: int) -> bool:
    """audio.decode_processes: on; or auto on an actor with an accelerator decoding in more than one thread (where
    the node's cores must keep a GPU fed: pipeline/actor/decode_processes.py). Decode tasks decode elsewhere."""
    if audio.decode_task_cpus:
        return False
    if audio.decode_processes == "auto":
        return device_type != "cpu" and decode_threads > 1
    return audio.decode_processes == "on"


def load_codec_for(config: Config, resolved: Resolved | None = None, device: str | None = None) -> Tokenizer:
    """The tokenizer of `config`; `resolved`: what the driver resolved (pins the commit for every actor);
    `device`: where this process may run it (default codec.device; see pipeline.actor.device.device_for_actor)."""
    c = config.codec
    codec = load_tokenizer(resolved or c.model, c, device)
    # limits the config fixes replace the device default's
    codec.policy = codec.policy_with(c.max_batch_seconds, c.max_clips)
    return codec


class ShardProcessor:
    def __init__(self, config: Config, name: str = "local", cpus: int | None = None,
                 resolved: Resolved | None = None, schema: pa.Schema | None = None, versions: dict | None = None,
                 device: dict | None = None):
        """resolved, schema, versions, device: what the driver resolved and recorded for the run (None: work them
        out here, for use outside a run). An actor whose libraries or device differ from the run's refuses to start:
        the run's device was probed on one node, and another node's GPU model would change codes without a word."""
        if versions is not None and versions != library_versions():
            raise RuntimeError(f"this worker's libraries {library_versions()} differ from the run's {versions}: "
                               "codes would differ; install the same versions on every node")
        from .device import device_facts, device_for_actor  # here: pipeline.actor.device imports the driver, which imports this module

        self.device = device_for_actor(config.codec.device)
        here = device_facts(self.device) if device is not None else None
        if here is not None and here != device:
            raise WrongDeviceError(f"this worker's device {here} differs from the run's {device}: codes would differ; keep "
                               "codec actors on one GPU model (ray.actor_resources, e.g. {'accelerator_type:H100': 0.001}) "
                               "or start a new output.dir for the other device")
        self.schema = schema if schema is not None else output_schema([])
        self.started = time.perf_counter()
        self.startup = Startup(init_at=time.time())  # wall clock, so the driver can line it up with its own
        self.first_encode_at: float | None = None
        self._reported_first = False
        # Shards may be processed two at a time (the next one decodes while this one encodes), but the
        # device encodes one pool at a time: the codec's masking hooks are per call, and the device is busy.
        self._encode_lock = threading.Lock()
        # samples and audio seconds encoded per shard under way; read by the driver's heartbeat
        self._progress: dict[str, dict] = {}
        self.config = config
        self.name = name
        self.decode_threads = config.audio.decode_threads or cpus or torch.get_num_threads()
        self.threads = torch.get_num_threads()  # for encoding; the driver lends idle actors' cores (set_threads)
        began = time.perf_counter()
        self.codec = load_codec_for(config, resolved, self.device)
        self.codec.num_codebooks(config.codec.bandwidth)  # a bandwidth the checkpoint lacks fails here, not mid-shard
        self.startup.load_s = time.perf_counter() - began
        self.calibration: list[dict] = []
        began = time.perf_counter()
        if self._should_calibrate():
            self.codec.policy, self.calibration = self.codec.calibrate(config.codec.bandwidth)
        self.startup.calibrate_s = time.perf_counter() - began
        self.storage = Storage(config.output.dir)
        self.metrics = Recorder()  # the bytes this actor writes (the driver records the rest from commit records)
        self.logs = ShardLogs.install()  # each shard's log records, written beside its commit record
        # pools deep enough to bucket by length; one clip per batch (the CPU policy) has nothing to bucket, and a
        # deep pool would only delay the first encode
        pool_batches = POOL_BATCHES if self.codec.policy.max_clips > 1 else 1
        self.pool_target = config.ray.pool_seconds or pool_batches * self.codec.policy.max_batch_seconds
        self.budget = BatchBudget(self.codec.policy)
        self._sample_decoder = SampleDecoder(config.audio, self.codec.sample_rate,
                                             self.codec.resamples_to_ceil(self.codec.convention))
        self._decode = self._sample_decoder
        if decodes_in_processes(config.audio, torch.device(self.codec.device).type, self.decode_threads):
            self._decode = DecodeProcesses(self._sample_decoder, self.decode_threads)
            self._decode.start()

    @property
    def decode_process_pids(self) -> list[int]:
        return self._decode.pids if isinstance(self._decode, DecodeProcesses) else []

    @property
    def in_shard(self) -> ActorProgress:
        under_way = dict(self._progress)
        return ActorProgress(len(under_way), sum(p["samples"] for p in under_way.values()),
                             sum(p["audio_seconds"] for p in under_way.values()),
                             {shard: p["started_at"] for shard, p in under_way.items()},
                             {shard: p["audio_seconds"] for shard, p in under_way.items()})

    def _should_calibrate(self) -> bool:
        c = self.config.codec
        if c.max_batch_seconds is not None or c.max_clips is not None:
            return False  # the config fixed the policy
        return c.calibrate == "on" or (c.calibrate == "auto" and self.codec.device.type == "cuda")

    def process(self, shard: Shard) -> ShardRecord:
        start = time.perf_counter()
        if self.startup.first_shard_at is None:
            self.startup.first_shard_at = time.time()
        writer = ShardWriter(self.storage, shard.id, shard.source, self.schema, self.config.output.compression)
        result = ShardRecord(shard.id, shard.source, DONE, worker=self.name)
        result.started_at = time.time()
        progress = self._progress[shard.id] = {"samples": 0, "audio_seconds": 0.0, "encoded_frames": 0, "encode_s": 0.0,
                                               "started_at": result.started_at, "threads": 0, "loudness_clipped": 0,
                                               "loudness_unmeasured": 0, "budget_halvings": 0,
                                               "batch_budget": self.budget.as_dict()}
        self.logs.begin(shard.id, f"shard {shard.id} ({shard.source}) on {self.name} ({socket.gethostname()} pid "
                                  f"{os.getpid()})")
        try:
            self._process(shard, writer, result, progress)
        except Exception as error:  # the store failing a write (transient), a bug or a device error (unexpected)
            result.status, result.failure = FAILED, TRANSIENT if is_transient(error) else UNEXPECTED
            result.reason, result.detail = Reason.WORKER_EXCEPTION, f"{type(error).__name__}: {str(error)[:200]}"
            result.traceback = traceback_summary(error)
            if result.failure == UNEXPECTED:  # Ray forwards actors' logs to the driver's: no URL's secret in them
                log.error("shard %s failed unexpectedly on %s: %s", shard.id, self.name, redact_text(result.traceback))
            result.files, result.rows = [], 0
        finally:
            self._progress.pop(shard.id, None)
            release_freed_heap()  # a shard's decoded audio is gone: give its freed heap back
        result.rss_after_mb = resident_mb()
        result.seconds = time.perf_counter() - start
        result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if self.first_encode_at is not None and not self._reported_first:
            result.first_encode_s = self.first_encode_at - self.started
            self._reported_first = True
        self._write_log(shard, result)
        return result

    def _write_log(self, shard: Shard, result: ShardRecord) -> None:
        if result.status == DONE:
            outcome = (f"done: {result.rows} rows, {result.errors} error records, {result.audio_seconds:.1f} s of audio "
                       f"in {result.seconds:.1f} s")
        else:
            outcome = f"failed ({result.failure}): {result.error}" + (f"\n{result.traceback}" if result.traceback else "")
        write_shard_log(self.storage, shard.id, self.logs.end(shard.id, outcome), WriteRetry.of(self.config.output))

    def _process(self, shard: Shard, writer: ShardWriter, result: ShardRecord, progress: dict) -> None:
        seen: set[str] = set()
        pool: list[tuple[RawSample, Audio]] = []
        pool_seconds = 0.0
        # one pool ahead: the next pool is decoded while this one encodes, here or in a decode task
        task_cpus = self.config.audio.decode_task_cpus
        reads = Reads.of(self.config.source)  # this shard's remote reads, retried where they fail and counted
        if task_cpus:
            decoded_ahead = DecodeInTask(shard, self.config, self._sample_decoder, task_cpus, self.pool_target)
        else:
            decoded_ahead = DecodeAhead(lambda: read_shard(shard, self.config.source, self.config.audio.max_file_bytes,
                                                           reads),
                                        self._decode, self.decode_threads, ahead_seconds=self.pool_target, name=shard.id)
        for raw, decoded in decoded_ahead:
            result.read_retries = getattr(decoded_ahead, "read_retries", reads.retries)
            if raw is None:  # the shard itself broke off: no rows; the driver retries it or records its failure
                result.status, result.reason, result.detail = FAILED, decoded.reason, decoded.detail
                result.failure = decoded.kind
                if decoded.kind == UNEXPECTED:
                    result.traceback = decoded.detail
                result.decode_wait_s = decoded_ahead.wait_seconds
                result.decode_nodes = sorted(getattr(decoded_ahead, "nodes", ()))
                return
            result.samples_read += 1
            if isinstance(decoded, SampleError):
                writer.add_error(raw.key, decoded.reason, decoded.detail)
                continue
            if raw.key in seen:
                writer.add_error(raw.key, Reason.DUPLICATE_KEY, "an earlier sample of this shard has the same key")
                continue
            seen.add(raw.key)
            pool.append((raw, decoded))
            pool_seconds += decoded.wave.size / self.codec.sample_rate
            if pool_seconds >= self.pool_target:
                self._encode(pool, writer, progress)
                pool, pool_seconds = [], 0.0
        result.read_retries = getattr(decoded_ahead, "read_retries", reads.retries)
        self._encode(pool, writer, progress)
        published = writer.publish()
        self.metrics.record("output_bytes_written_total", published.bytes, run=run_label(self.config.output.dir),
                            actor=self.name)
        result.files, result.sha256, result.row_groups = published.files, published.sha256, published.row_groups
        result.rows = len(writer.samples)
        result.errors = sum(1 for e in writer.errors if e.key is not None)
        result.error_reasons = dict(Counter(e.reason for e in writer.errors if e.key is not None))
        result.audio_seconds = float(sum(s.duration_s for s in writer.samples))
        result.frames = int(sum(s.codes.shape[1] for s in writer.samples))
        result.tokens = int(sum(s.codes.size for s in writer.samples))
        result.encoded_frames, result.encode_s = progress["encoded_frames"], progress["encode_s"]
        result.threads = progress["threads"]
        result.decode_wait_s = decoded_ahead.wait_seconds
        result.decode_nodes = sorted(getattr(decoded_ahead, "nodes", ()))
        result.loudness_clipped, result.loudness_unmeasured = progress["loudness_clipped"], progress["loudness_unmeasured"]
        result.batch_budget, result.budget_halvings = progress["batch_budget"], progress["budget_halvings"]

    def _encode(self, pool: list[tuple[RawSample, Audio]], writer: ShardWriter, progress: dict) -> None:
        if not pool:
            return
        with self._encode_lock:
            if self.first_encode_at is None:
                self.first_encode_at = time.perf_counter()
            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)  # per calling thread under OpenMP: set where the encode runs
            progress["threads"] = max(progress["threads"], self.threads)
            encoded_before, began = self.codec.encoded_frames, time.perf_counter()
            codes = self._encode_within_memory([audio.wave for _, audio in pool], progress)
            progress["encoded_frames"] += self.codec.encoded_frames - encoded_before
            progress["encode_s"] += time.perf_counter() - began
        for (raw, audio), clip_codes in zip(pool, codes):
            if isinstance(clip_codes, ClipFailure):
                writer.add_error(raw.key, clip_codes.reason, clip_codes.detail)
            else:
                writer.add(raw.key, clip_codes, audio.duration_s, raw.metadata, audio)
                if audio.loudness is not None:
                    progress["loudness_clipped"] += int(audio.loudness.status == CLIPPED)
                    progress["loudness_unmeasured"] += int(audio.loudness.unmeasured)
        progress["samples"] += len(pool)
        progress["audio_seconds"] += sum(a.duration_s for _, a in pool)

    def _encode_within_memory(self, waves: list, progress: dict) -> list:
        """Codes per wave, or a ClipFailure for a clip that cannot be encoded. Out of memory halves the actor's
        batch budget, for good (the next pool has the same shapes), and the pool is encoded again; once the budget
        is one clip, or one clip is bad input, clip by clip, so only the clips at fault become error records."""
        while True:
            codes = self._attempt(waves)
            if not isinstance(codes, ClipFailure):
                if self.budget.pool_done():
                    self.codec.policy = self.budget.policy
                progress["batch_budget"] = self.budget.as_dict()
                return codes
            if codes.reason != OUT_OF_MEMORY or not self.budget.halve():
                break
            log.warning("%s: out of memory encoding %d clips; batch budget halved to %s s x %d clips (%s)", self.name,
                        len(waves), self.budget.policy.max_batch_seconds, self.budget.policy.max_clips, codes.detail)
            self.codec.policy = self.budget.policy
            progress["budget_halvings"] += 1
            progress["batch_budget"] = self.budget.as_dict()
        out = []
        for wave in waves:
            alone = self._attempt([wave], max_clips=1)
            if isinstance(alone, ClipFailure) and alone.reason == OUT_OF_MEMORY:
                alone.detail = (f"{wave.size / self.codec.sample_rate:.2f} s of audio does not fit on "
                                f"{self.codec.device} alone: {alone.detail}")[:300]
            out.append(alone if isinstance(alone, ClipFailure) else alone[0])
        return out

    def _attempt(self, waves: list, max_clips: int | None = None) -> list | ClipFailure:
        try:
            return self.codec.encode(waves, self.config.codec.bandwidth, max_clips=max_clips)
        except CodecInputError as error:
            return ClipFailure(ENCODE_FAILED, str(error)[:200])
        except Exception as error:
            if not self.codec.is_out_of_memory(error):
                raise
            failure = ClipFailure(OUT_OF_MEMORY, str(error).strip().splitlines()[0][:200])
        # out of the except block: the traceback, and the failed pass's tensors its frames held, are gone
        self.codec.release_memory()
        return failure
