"""Decoding in processes of the actor's own: each decode thread hands its clip to a process of a pool and waits.

ffmpeg's decoders (PyAV) take and release the GIL several times per packet and per frame, so threads of one
process decoding Vorbis, Opus or AAC contend for it: on 2 cores, 2 threads gave about one thread's rate
(jobs/bench_decode.py, "threads, pyav's formats"). Processes have a GIL each. With `audio.decode_processes`
the actor's decode threads (prefetch.DecodeAhead: order, lookahead and memory budget unchanged) each send a
file's bytes to one of as many processes and wait without the GIL; what comes back is what the thread would
have decoded, with the same `SampleDecoder`, so the same samples.

What stays in the thread: samples known bad before decoding, decoded arrays (HF datasets), spilled members (an
open temporary file of this process), and clips longer than what decodes in memory (a worker says so and drops
it: where the header declares the length, before decoding; the clip is then decoded here into a FileWave).

A worker that dies (killed for memory, a crash in a decoder) breaks the pool: the shard fails as transient
(`decode_process_lost`) and is retried whole, and a new pool is started for the next clip.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..audio.decode import Audio, SampleError
from ..failures import TRANSIENT, Reason
from ..sources import RawSample, ShardError
from .sample_decoder import SampleDecoder

WARM_HOLD_S = 0.2


class DecodeProcesses:
    """A SampleDecoder whose decoding runs in `workers` processes (spawned: the actor's threads are not
    copied into them); called from the decode threads, one clip per call, as a SampleDecoder is."""

    def __init__(self, decode: SampleDecoder, workers: int):
        self.decode, self.workers = decode, workers
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self.pids: list[int] = []  # as started (a broken pool's successor starts new ones)

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            return self._pool

    def _broken(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def start(self) -> None:
        """Start every process and wait until each has imported the decoders (what the first clips would wait for;
        an import that fails there fails the actor's start-up, not a shard)."""
        pool = self._current()
        self.pids = sorted(set(pool.map(_ready, [self.decode] * self.workers)))

    def __call__(self, raw: RawSample) -> Audio | SampleError | ShardError:
        if raw.error is not None or not isinstance(raw.audio, (bytes, bytearray)):
            return self.decode(raw)
        pool = self._current()
        try:
            decoded = pool.submit(self.decode.in_memory, raw.audio, raw.key).result()
        except BrokenProcessPool as error:
            self._broken(pool)
            return ShardError(Reason.DECODE_PROCESS_LOST, f"decoding {raw.key}: {error}"[:300], TRANSIENT)
        except Exception as error:  # what crosses failed (a result that cannot be pickled): one sample, as a bug
            return SampleError(Reason.DECODE_FAILED, f"in a decode process: {error!r}"[:200])
        return self.decode(raw) if decoded is None else decoded

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _ready(decode: SampleDecoder) -> int:
    time.sleep(WARM_HOLD_S)  # held a moment, so that each of the pool's processes takes one of these calls
    return os.getpid()
