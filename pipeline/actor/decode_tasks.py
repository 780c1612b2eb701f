"""Decoding in Ray tasks: a shard read and decoded in its own process, on any node with free CPUs.

A GPU encodes thousands of times realtime and one core decodes a few hundred (jobs/bench_decode.py), so a
GPU actor's own node may not hold the cores that keep it fed, and threads in one process share the GIL for
the numpy steps. With `audio.decode_task_cpus` > 0 each shard an actor takes is read and decoded by a
streaming-generator task of that many CPUs (`decode_shard`): a process of its own, placed by Ray on the
actor's node while it has free CPUs, else on any other (CPU-only nodes are cheap). It yields the shard's
decoded samples in input order, in chunks, through the object store; at most `CHUNKS_AHEAD` chunks wait
unconsumed (Ray's generator backpressure), so memory in flight is bounded per shard in flight.

The shard stays the unit of work: the actor encodes and writes it and the driver commits, retries and times
it out as before. A decode task lost mid-shard (its process killed, its node gone) fails the shard as
transient, so it is retried whole and no sample is lost: nothing of a failed shard is published.

This is what Ray Data's own streaming operators run on (tasks with streaming generators and backpressure),
without handing the shard to a dataset pipeline, where it would stop being the unit that is committed,
retried and timed out (README "Decoding on other nodes").
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import ray

from ..audio.decode import Audio, SampleError
from ..config import Config
from ..failures import TRANSIENT, UNEXPECTED
from .prefetch import DecodeAhead
from ..reads import Reads
from ..sources import RawSample, Shard, ShardError, read_shard

CHUNKS_AHEAD = 4  # chunks a decode task may have ready before the actor takes them (then it waits)
CHUNK_MAX_SAMPLES = 256  # a chunk ends at this many samples however short they are


@dataclass
class DecodedChunk:
    items: list  # (RawSample without its audio bytes, Audio with an array wave | SampleError), or (None, ShardError)
    node_id: str  # where it was decoded
    pid: int
    read_retries: int = 0  # the shard's remote reads retried so far (pipeline/reads.py)


def _portable(raw: RawSample, decoded) -> tuple:
    """What crosses the object store: the sample's key and metadata (not its encoded bytes, already decoded)
    and the decoded wave as an array (a FileWave is a temporary file of the decoding process)."""
    stub = RawSample(raw.key, None, raw.metadata)
    if isinstance(decoded, Audio) and not isinstance(decoded.wave, np.ndarray):
        wave = decoded.wave
        decoded = Audio(wave[0:wave.size], decoded.source_rate, decoded.source_channels, decoded.duration_s,
                        decoded.loudness)
        wave.close()
    return stub, decoded


@ray.remote(num_returns="streaming", max_retries=0)
def decode_shard(shard: Shard, config: Config, decode, threads: int, chunk_seconds: float) -> Iterator[DecodedChunk]:
    """The shard's samples decoded by `decode` in `threads` threads, in chunks of about `chunk_seconds` of audio."""
    node, pid = ray.get_runtime_context().get_node_id(), os.getpid()
    reads = Reads.of(config.source)
    ahead = DecodeAhead(lambda: read_shard(shard, config.source, config.audio.max_file_bytes, reads), decode, threads,
                        ahead_seconds=chunk_seconds, name=shard.id)
    chunk, seconds = [], 0.0
    for raw, decoded in ahead:
        if raw is None:  # the shard broke off: its error ends the stream
            chunk.append((None, decoded))
            break
        chunk.append(_portable(raw, decoded))
        seconds += decoded.duration_s if isinstance(decoded, Audio) else 0.0
        if seconds >= chunk_seconds or len(chunk) >= CHUNK_MAX_SAMPLES:
            yield DecodedChunk(chunk, node, pid, reads.retries)
            chunk, seconds = [], 0.0
    if chunk:
        yield DecodedChunk(chunk, node, pid, reads.retries)


class DecodeInTask:
    """The actor's side: iterate (raw, decoded) in input order as `DecodeAhead` does, decoded by a `decode_shard`
    task; (None, ShardError) last if reading breaks off or the task is lost. `wait_seconds`: time the encoder
    waited for decoded audio; `nodes`: the nodes that decoded."""

    def __init__(self, shard: Shard, config: Config, decode, cpus: int, ahead_seconds: float):
        self.shard, self.config, self.decode, self.cpus = shard, config, decode, cpus
        self.chunk_seconds = max(1.0, ahead_seconds / CHUNKS_AHEAD)
        self.wait_seconds = 0.0
        self.nodes: set[str] = set()
        self.read_retries = 0  # the task's count, as of the last chunk taken

    def __iter__(self) -> Iterator[tuple[RawSample | None, Audio | SampleError | ShardError]]:
        stream = decode_shard.options(num_cpus=self.cpus, _generator_backpressure_num_objects=CHUNKS_AHEAD).remote(
            self.shard, self.config, self.decode, self.cpus, self.chunk_seconds)
        try:
            while True:
                waited = time.perf_counter()
                try:
                    chunk: DecodedChunk = ray.get(next(stream))
                except StopIteration:
                    return
                except ray.exceptions.RayTaskError as error:  # the task's own code raised: a bug, not the data
                    yield None, ShardError("decode_task_failed", str(error)[-2000:], UNEXPECTED)
                    return
                except ray.exceptions.RayError as error:  # its process or node died: the shard is retried whole
                    yield None, ShardError("decode_task_lost", f"{type(error).__name__}: {str(error)[:300]}", TRANSIENT)
                    return
                finally:
                    self.wait_seconds += time.perf_counter() - waited
                self.nodes.add(chunk.node_id)
                self.read_retries = chunk.read_retries
                yield from chunk.items
        finally:
            ray.cancel(stream)  # an encode that failed mid-shard: the task stops decoding what nobody will take
