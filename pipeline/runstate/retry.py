"""The driver's writes to output.dir (commit records, a failed shard's error file, the summary, the lease),
retried on transient store errors and loud when they still fail.

A worker's failed write fails its shard, which is retried elsewhere; a driver's failed write has no one to retry
it. `RetriedStorage` retries each write with doubling, jittered delays up to `output.write_attempts` tries
(`output.write_backoff_s` first); a write that still fails, or fails with an error a retry cannot change, raises
`StoreWriteFailed` with the store's error, and the run stops (exit 3). Run state stays continuable: a commit
record is written before the driver counts its shard, so a rerun redoes exactly the shards without one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from ..telemetry.events import StoreRetry
from ..failures import backoff_delay, transient_cause
from ..reads import ReadRetry, Reads, retryable
from ..storage import Storage


class StoreWriteFailed(RuntimeError):
    """A driver-side write to output.dir failed past its retries (or with an error no retry changes)."""


# what a write means to say, not a store failure: a conditional create that found the file, a delete of one gone
_ANSWERS = (FileExistsError, FileNotFoundError)


@dataclass(frozen=True)
class WriteRetry:
    attempts: int = 5
    backoff_s: float = 1.0

    @classmethod
    def of(cls, output) -> "WriteRetry":
        return cls(output.write_attempts, output.write_backoff_s)

    def run(self, what: str, write: Callable, until: float | None = None, on_retry=None):
        """write(), tried again after a transient store error until `attempts` tries (or the wall clock `until`)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return write()
            except Exception as error:
                transient = transient_cause(error) is not None
                if isinstance(error, _ANSWERS) and not transient:
                    raise
                delay = backoff_delay(self.backoff_s, attempt)
                times = "once" if attempt == 1 else f"{attempt} times"
                if not transient:
                    how = "with an error no retry changes"
                elif attempt >= self.attempts:
                    how = f"{times} (output.write_attempts={self.attempts})"
                elif until is not None and time.time() + delay > until:
                    how = f"{times}, with no time left for another try"
                else:
                    if on_retry is not None:
                        on_retry(what, attempt, delay, error)
                    time.sleep(delay)
                    continue
                raise StoreWriteFailed(f"{what} failed {how}; the store says: {type(error).__name__}: "
                                       f"{str(error)[:300]}") from error


class RetriedStorage:
    """A Storage whose writes go through a WriteRetry and whose reads through a pipeline.reads.Reads of the same
    tries and backoff (a read that still fails raises the store's error, as before)."""

    def __init__(self, storage: Storage, retry: WriteRetry, on_event=lambda event: None):
        self.storage, self.retry, self.on_event = storage, retry, on_event
        self.reads = Reads(ReadRetry(retry.attempts, retry.backoff_s))
        self.failed: StoreWriteFailed | None = None  # the first write that failed for good

    def exists(self, relative: str) -> bool:
        return self.reads.call(self.storage.exists, relative)

    def read_bytes(self, relative: str) -> bytes:
        return self.reads.call(self.storage.read_bytes, relative)

    def list(self, folder: str) -> list[str]:
        return self.reads.call(self.storage.list, folder)

    def read_many(self, relatives: list[str]) -> dict:
        """As Storage.read_many; a file that failed for a transient cause is read again on its own."""
        found = self.reads.call(self.storage.read_many, relatives)
        for relative, data in found.items():
            if isinstance(data, Exception) and retryable(data):
                try:
                    found[relative] = self.reads.call(self.storage.read_bytes, relative)
                except Exception as error:  # kept as the file's error, as Storage.read_many does
                    found[relative] = error
        return found

    def __getattr__(self, name):
        return getattr(self.storage, name)

    def _retried(self, what: str, write: Callable, until: float | None = None):
        try:
            return self.retry.run(f"{what} in {self.storage.url}", write, until, self._say_retry)
        except StoreWriteFailed as error:
            if until is None:  # the heartbeat's renewals (bounded by `until`) have their own outcome: a lost lease
                self.failed = self.failed or error
            raise

    def _say_retry(self, what: str, attempt: int, delay: float, error: Exception) -> None:
        self.on_event(StoreRetry(what, attempt, delay, f"{type(error).__name__}: {str(error)[:200]}"))

    def write_bytes(self, relative: str, data: bytes, until: float | None = None) -> None:
        """`until`: give up by this wall-clock time (the lease's heartbeat must renew before the lease expires)."""
        self._retried(f"writing {relative}", lambda: self.storage.write_bytes(relative, data), until)

    def create(self, relative: str, data: bytes) -> None:
        self._retried(f"creating {relative}", lambda: self.storage.create(relative, data))

    def remove(self, relative: str) -> None:
        self._retried(f"removing {relative}", lambda: self.storage.remove(relative))

    def remove_file(self, relative: str) -> None:
        self._retried(f"removing {relative}", lambda: self.storage.remove_file(relative))

    def remove_stale_temporaries(self, folder: str) -> int:
        return self._retried(f"removing temporaries in {folder}", lambda: self.storage.remove_stale_temporaries(folder))
