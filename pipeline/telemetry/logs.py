"""Logs kept with the output, so they outlive the cluster: the driver's, and each shard's lines from its actor.

- `DriverLog`: the driver's lines in `_run/logs/driver-<start time>.log`, written through `Storage` (object stores
  too) in parts as the run goes: the current part is rewritten when it has new lines, at once after a quiet spell,
  else at most every `flush_s`; a part past `part_bytes` is sealed and the next goes to `driver-<start time>.log.N`.
  A crash loses at most the lines of the last `flush_s`. Nothing is written to a folder that is not yet an output
  (no `manifest.json`): a run refused before it creates one (a config error) leaves no folder behind; its lines are
  on the terminal.
- `ShardLogs`: in a codec actor, the log records of each shard under way (library warnings included, through
  `logging.captureWarnings`), told apart by thread: the thread that processes the shard and its reader and decode
  threads (named after the shard). Written to `_run/commits/SHARD.log`, beside its commit record, with how the
  attempt ended; a failed shard's log says why it failed.
- `ActorLog`: a codec actor's warnings that no shard claims (loading its codec, threads of its own) in
  `_run/logs/actor-N-<start time>.log`, in parts like the driver's. Ray forwards an actor's stderr to the driver's
  terminal only (not to the driver's log), and keeps it in its session folder, which goes with the cluster. An actor
  is killed at the end of a run: it loses at most the lines of its last `flush_s`.
Every line passes through `redact_text`: no URL's secret reaches a log.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings

from ..runstate.records import shard_log_path
from ..runstate.summary import MANIFEST
from ..runstate.retry import WriteRetry
from ..storage import Storage
from ..urls import redact_text

LOGS = "_run/logs"
PART_BYTES = 4 << 20
FLUSH_S = 10.0


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


class DriverLog(logging.Handler):
    """The driver's lines (`write`, and the driver process's log records as a logging handler) in the output;
    `who`: whose log it is, its file's name."""

    def __init__(self, storage: Storage, started: float | None = None, flush_s: float = FLUSH_S,
                 part_bytes: int = PART_BYTES, on_error=None, who: str = "driver"):
        super().__init__(logging.WARNING)
        self.storage, self.flush_s, self.part_bytes, self.on_error = storage, flush_s, part_bytes, on_error
        started = time.time() if started is None else started
        self.name_ = f"{LOGS}/{who}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}.log"
        self.part, self.lines, self.size, self.dirty = 0, [], 0, False
        self.failed = False
        self.armed = False  # the folder is an output (a run created it), so its log may be written there
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._new = threading.Event()  # a line since the last flush
        self._thread = threading.Thread(target=self._flushing, name=f"{who}-log", daemon=True)
        self._thread.start()

    @property
    def path(self) -> str:
        """The part being written now."""
        return self.name_ if self.part == 0 else f"{self.name_}.{self.part}"

    def write(self, text: str) -> None:
        line = f"{_stamp(time.time())} {redact_text(text)}\n"
        with self._lock:
            self.lines.append(line)
            self.size += len(line.encode())
            self.dirty = True
        self._new.set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(f"{record.levelname} {record.name}: {record.getMessage()}")
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        if not self.armed:
            try:
                self.armed = self.storage.exists(MANIFEST)
            except Exception:
                pass  # asked again at the next flush
            if not self.armed:
                return
        with self._lock:
            if not self.dirty:
                return
            body, path = "".join(self.lines).encode(), self.path
            self.dirty = False
            if self.size >= self.part_bytes:  # sealed once written below; the next lines start the next part
                self.part, self.lines, self.size = self.part + 1, [], 0
        try:
            self.storage.write_bytes(path, body)
        except Exception as error:  # a log that cannot be written is one warning, never a failed run
            if not self.failed and self.on_error is not None:
                self.on_error(f"cannot write the driver's log to {redact_text(self.storage.url)}/{path}: "
                              f"{type(error).__name__}: {str(error)[:200]}")
            self.failed = True
            with self._lock:
                self.dirty = self.dirty or path == self.path  # tried again at the next flush (a sealed part: lost)

    def _flushing(self) -> None:
        """A line after a quiet spell is written at once (an actor is killed at the end of a run, however short);
        then at most one write every flush_s, so a crash loses at most the last flush_s of lines."""
        while True:
            self._new.wait(self.flush_s)
            self._new.clear()
            if self._stop.is_set():
                return
            self.flush()
            if self._stop.wait(self.flush_s):
                return

    def close(self) -> None:
        self._stop.set()
        self._new.set()
        self._thread.join()
        self.flush()
        super().close()


class ShardLogs(logging.Handler):
    """Installed once per actor process on the root logger; `begin`/`end` bracket one shard on its thread."""

    def __init__(self):
        super().__init__(logging.INFO)
        self._lines: dict[str, list[str]] = {}
        self._threads: dict[int, str] = {}  # thread id -> the shard it processes
        self._lock = threading.Lock()

    @classmethod
    def install(cls) -> "ShardLogs":
        handler = cls.installed()
        if handler is not None:
            return handler
        handler = cls()
        logging.getLogger().addHandler(handler)
        logging.captureWarnings(True)  # warnings.warn of the libraries a shard calls: records of `py.warnings`
        return handler

    def begin(self, shard_id: str, header: str) -> None:
        if getattr(warnings.showwarning, "__module__", None) != logging.__name__:
            # a warnings.catch_warnings() that ended since (pytest wraps each test in one) put the old hook back
            # while logging still thinks it captures: capture again, or the shard's warnings reach stderr only
            logging.captureWarnings(False)
            logging.captureWarnings(True)
        with self._lock:
            self._threads[threading.get_ident()] = shard_id
            self._lines[shard_id] = [f"{_stamp(time.time())} {redact_text(header)}\n"]

    @classmethod
    def installed(cls) -> "ShardLogs | None":
        return next((h for h in logging.getLogger().handlers if isinstance(h, cls)), None)

    def claims(self, record: logging.LogRecord) -> bool:
        """Whether the record goes to a shard's log."""
        with self._lock:
            return self._shard_of(record) is not None

    def _shard_of(self, record: logging.LogRecord) -> str | None:
        shard = self._threads.get(record.thread)
        if shard is None:  # its reader (read-SHARD) or a decode thread (decode-SHARD_N)
            name = record.threadName or ""
            for candidate in self._lines:
                if name == f"read-{candidate}" or name.startswith(f"decode-{candidate}_"):
                    return candidate
        return shard

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with self._lock:
                shard = self._shard_of(record)
                if shard is not None:
                    self._lines[shard].append(f"{_stamp(record.created)} {record.levelname} {record.name}: "
                                              f"{redact_text(record.getMessage())}\n")
        except Exception:
            self.handleError(record)

    def end(self, shard_id: str, outcome: str) -> str:
        """The shard's log, ended with `outcome`."""
        with self._lock:
            self._threads = {t: s for t, s in self._threads.items() if s != shard_id}
            lines = self._lines.pop(shard_id, [])
        return "".join(lines) + f"{_stamp(time.time())} {redact_text(outcome)}\n"


class ActorLog(DriverLog):
    """Installed once per codec actor on the root logger, before its codec loads: its warnings no shard claims."""

    @classmethod
    def install(cls, output_dir: str, name: str) -> "ActorLog":
        handler = cls(Storage(output_dir), who=name)
        logging.getLogger().addHandler(handler)
        logging.captureWarnings(True)  # the libraries' warnings.warn as it loads its codec: records of `py.warnings`
        return handler

    def emit(self, record: logging.LogRecord) -> None:
        shards = ShardLogs.installed()
        if shards is None or not shards.claims(record):
            super().emit(record)


def write_shard_log(storage: Storage, shard_id: str, text: str, retry: WriteRetry) -> None:
    """A shard's log, written with the run's write retries (output.write_attempts); a store that still fails costs
    the log, never the shard nor the run."""
    path = shard_log_path(shard_id)
    try:
        retry.run(f"writing {path}", lambda: storage.write_bytes(path, text.encode()))
    except Exception as error:
        logging.getLogger(__name__).warning("cannot write %s: %s", redact_text(f"{storage.url}/{path}"),
                                            redact_text(str(error))[:300])


def append_shard_log(storage: Storage, shard_id: str, line: str, retry: WriteRetry) -> None:
    """Add a line to a shard's log: the driver's word on a shard that failed for good (its actor may never have
    reported: a timeout, a lost actor)."""
    try:
        before = storage.read_bytes(shard_log_path(shard_id)).decode(errors="replace")
    except Exception:  # none yet, or unreadable: the line alone
        before = ""
    write_shard_log(storage, shard_id, before + f"{_stamp(time.time())} {redact_text(line)}\n", retry)
