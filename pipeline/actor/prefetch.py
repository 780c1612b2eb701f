"""Decode ahead of the encoder: a shard's samples in order, decoded in threads, up to a budget of audio.

The encoder takes audio in pools (several batch budgets at once). A lookahead counted in samples
leaves the device idle while most of the next pool decodes after the last one was encoded; counting
decoded audio seconds lets a whole pool be ready when the encoder comes back for it, on GPUs
(large pools) and CPUs alike, with host memory bounded by that budget, not by clip lengths.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

from ..audio.decode import Audio, SampleError
from ..failures import TRANSIENT, UNEXPECTED, traceback_summary, is_transient
from ..sources import RawSample, ShardError

MAX_SAMPLES_AHEAD = 4096  # decoded clips waiting, however short (3840 s of 1 s clips fills a GPU pool)
IN_FLIGHT_PER_THREAD = 2  # undecoded clips handed to the threads: bounds the overshoot past the budget


class DecodeAhead:
    """Iterate (raw, decoded) in input order, with (None, ShardError) last if reading breaks off, or if decoding
    one sample returns a ShardError (a cause another attempt could change: the shard is retried whole).

    Decoded audio waiting for the consumer stays under `ahead_seconds` plus the clips in flight
    (2 per thread). `wait_seconds` is the time the consumer spent blocked on decoding: near 0 means
    decoding is off the critical path."""

    def __init__(self, read: Callable[[], Iterable[RawSample]], decode: Callable[[RawSample], Audio | SampleError | ShardError],
                 threads: int, ahead_seconds: float, name: str = "shard"):
        self._read = read
        self._decode = decode
        self._threads = threads
        self._ahead_limit = ahead_seconds
        self._name = name
        self._ahead = 0.0  # seconds decoded and not yet taken by the consumer
        self._room = threading.Condition()
        self._stop = threading.Event()
        self._in_flight = threading.Semaphore(IN_FLIGHT_PER_THREAD * threads)
        self.wait_seconds = 0.0
        self.most_ahead_seconds = 0.0  # the most decoded audio that waited at once

    def _decode_counted(self, raw: RawSample):
        try:
            decoded = self._decode(raw)
        finally:
            self._in_flight.release()
        if isinstance(decoded, Audio):
            with self._room:
                self._ahead += decoded.duration_s
                self.most_ahead_seconds = max(self.most_ahead_seconds, self._ahead)
        return decoded

    def _take(self, decoded) -> None:
        if isinstance(decoded, Audio):
            with self._room:
                self._ahead -= decoded.duration_s
                self._room.notify_all()

    def __iter__(self) -> Iterator[tuple[RawSample | None, Audio | SampleError | ShardError]]:
        pending: queue.Queue = queue.Queue(maxsize=MAX_SAMPLES_AHEAD)
        executor = ThreadPoolExecutor(self._threads, thread_name_prefix=f"decode-{self._name}")  # shard logs: by thread

        def produce():
            try:
                for raw in self._read():
                    with self._room:
                        self._room.wait_for(lambda: self._ahead < self._ahead_limit or self._stop.is_set())
                    while not self._in_flight.acquire(timeout=0.1):
                        if self._stop.is_set():
                            return
                    if self._stop.is_set():
                        return
                    pending.put((raw, executor.submit(self._decode_counted, raw)))
            except ShardError as error:
                pending.put((None, error))
            except Exception as error:  # an unexpected reader failure is a shard error, not a crash
                kind = TRANSIENT if is_transient(error) else UNEXPECTED
                pending.put((None, ShardError("read_failed", traceback_summary(error), kind)))
            finally:
                pending.put(None)

        producer = threading.Thread(target=produce, name=f"read-{self._name}", daemon=True)
        producer.start()
        try:
            while True:
                waited = time.perf_counter()
                item = pending.get()
                if item is None:
                    break
                raw, work = item
                decoded = work.result() if raw is not None else work
                self.wait_seconds += time.perf_counter() - waited
                self._take(decoded)
                if isinstance(decoded, ShardError):
                    yield None, decoded
                    return
                yield raw, decoded
        finally:
            self._stop.set()
            with self._room:
                self._room.notify_all()
            while producer.is_alive():  # unblock a producer stuck on a full queue
                try:
                    pending.get(timeout=0.1)
                except queue.Empty:
                    pass
            executor.shutdown(wait=True)
