"""Decoding in processes of the actor's own: a decode thread hands a file ffmpeg decodes to a process and waits.

ffmpeg's decoders (PyAV: Vorbis, Opus, AAC) take and release the GIL several times per packet and per frame, so
threads of one process decoding them hand it to each other thousands of times a second and do not scale as
libsndfile's formats (one C call per read) do: jobs/bench_decode.py measures both, and these processes (README
"Decoding for a GPU"). Processes have a GIL each. With `audio.decode_processes` each of the actor's decode
threads (prefetch.DecodeAhead: order, lookahead and memory budget unchanged) sends such a file's bytes to one of
as many processes and waits on a pipe, without the GIL; what comes back is what the thread would have decoded,
with the same `SampleDecoder`: the same samples.

What stays in the thread: libsndfile's formats (they scale in threads, and a process would add the copies
through the pipe), samples known bad before decoding, decoded arrays (HF datasets), spilled members (an open
temporary file of this process), and clips longer than what decodes in memory (the process says so once it has
decoded past that limit, and drops the clip: it is decoded here, into a FileWave).

Each process is used by one thread at a time, over a pipe of its own: a call is one message each way plus the
file's bytes and the decoded wave, with no thread in between (a ProcessPoolExecutor's feeder and result threads
cost more than the decoding of a short clip). A process that dies (killed for memory, a crash in a decoder) costs
its clip's shard a transient failure (`decode_process_lost`: retried whole); another process takes its place.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading

import numpy as np

from ..audio.decode import Audio, SampleError
from ..audio.decoders import Decoder, decoder_for, sniff
from ..failures import TRANSIENT, Reason
from ..sources import RawSample, ShardError
from .sample_decoder import SampleDecoder

SNIFF_BYTES = 64  # what decoders.sniff reads of a file's head


class DecodeProcesses:
    """A SampleDecoder that sends ffmpeg's formats to `workers` processes (spawned: the actor's threads are not
    copied into them); called from the decode threads, one clip per call, as a SampleDecoder is."""

    def __init__(self, decode: SampleDecoder, workers: int):
        self.decode, self.workers = decode, workers
        self._idle: queue.Queue[_Process] = queue.Queue()
        self._lock = threading.Lock()
        self._alive = 0
        self.pids: list[int] = []  # the processes started (a lost one's successor added)
        self.sent = 0  # clips sent to a process (the rest went to the thread's SampleDecoder)

    def start(self) -> None:
        """Start every process now and wait until each has imported the decoders (what the first clips would
        wait for; an import that fails fails the actor's start-up, not a shard)."""
        with self._lock:
            started = [_Process(self.decode) for _ in range(self.workers - self._alive)]
            self._alive += len(started)
        for process in started:
            self._ready(process)

    def _ready(self, process: _Process) -> None:
        try:
            pid = process.wait_ready()
        except BaseException:  # it died before it was ready (an import failed): its place is free again
            self._drop(process)
            raise
        self.pids.append(pid)
        self._idle.put(process)

    def _take(self) -> _Process:
        with self._lock:
            spawn = self._idle.empty() and self._alive < self.workers
            if spawn:
                self._alive += 1
        if spawn:
            self._ready(_Process(self.decode))
        return self._idle.get()

    def __call__(self, raw: RawSample) -> Audio | SampleError | ShardError:
        if (raw.error is not None or not isinstance(raw.audio, (bytes, bytearray))
                or decoder_for(sniff(bytes(raw.audio[:SNIFF_BYTES]))) is not Decoder.PYAV):
            return self.decode(raw)
        process = self._take()
        with self._lock:
            self.sent += 1
        try:
            decoded = process.decode(raw.key, raw.audio)
        except Exception as error:
            self._drop(process)
            if isinstance(error, (EOFError, OSError)):  # its process died mid-clip
                return ShardError(Reason.DECODE_PROCESS_LOST, f"decoding {raw.key}: process {process.pid} "
                                  f"{process.exit_description()}: {type(error).__name__}"[:300], TRANSIENT)
            # what crossed the pipe was not what the protocol says: a bug, one sample's (the process is replaced)
            return SampleError(Reason.DECODE_FAILED, f"from a decode process: {error!r}"[:200])
        self._idle.put(process)
        # None: longer than what decodes in memory, decoded here into a FileWave
        return self.decode(raw) if decoded is None else decoded

    def _drop(self, process: _Process) -> None:
        process.close()
        with self._lock:
            self._alive -= 1

    def close(self) -> None:
        while True:
            try:
                self._drop(self._idle.get_nowait())
            except queue.Empty:
                return


class _Process:
    """One decode process and the pipe to it."""

    def __init__(self, decode: SampleDecoder):
        context = multiprocessing.get_context("spawn")
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(theirs, decode), name="audiotok-decode", daemon=True)
        self.process.start()
        theirs.close()
        self.pid = self.process.pid

    def wait_ready(self) -> int:
        return self.conn.recv()  # its pid, sent once its imports are done

    def decode(self, key: str, data: bytes) -> Audio | SampleError | ShardError | None:
        self.conn.send(key)
        self.conn.send_bytes(data)
        kind, value = self.conn.recv()
        if kind != "audio":
            return value
        source_rate, source_channels, duration_s, loudness, size = value
        wave = np.empty(size, np.float32)
        if size:
            self.conn.recv_bytes_into(wave)
        return Audio(wave, source_rate, source_channels, duration_s, loudness)

    def exit_description(self) -> str:
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        return "still running" if code is None else f"exited with code {code}"

    def close(self) -> None:
        self.conn.close()  # the process reads EOF and exits
        self.process.join(timeout=5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _serve(conn, decode: SampleDecoder) -> None:
    """A decode process: clips in, decoded waves out, until the actor closes the pipe."""
    conn.send(os.getpid())
    while True:
        try:
            key = conn.recv()
            data = conn.recv_bytes()
        except EOFError:
            return
        try:
            decoded = decode.in_memory(data, key)
        except Exception as error:  # in_memory returns a decoder's errors: this is a bug, one sample's
            decoded = SampleError(Reason.DECODE_FAILED, f"in a decode process: {error!r}"[:200])
        if isinstance(decoded, Audio):
            wave = np.ascontiguousarray(decoded.wave, np.float32)
            conn.send(("audio", (decoded.source_rate, decoded.source_channels, decoded.duration_s, decoded.loudness,
                                 wave.size)))
            if wave.size:
                conn.send_bytes(memoryview(wave).cast("B"))
        else:
            conn.send(("other", decoded))
