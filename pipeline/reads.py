"""Remote reads retried where they happen: a flaky store costs a retried request, not a retried shard.

`Reads` holds one shard's (or one listing's) retry settings (`source.read_*`) and counts its retries. Every remote
read goes through it: `call` tries a request again after a transient error (failures.py: 5xx, throttling, a reset
or refused connection, a timeout, a short body) with doubling, jittered delays, up to `read_attempts` tries and no
try started once `read_budget_s` is spent; a 404 or 403 is raised at once (a record, as before). `open` gives a
remote object as a `ResumableFile`: a stream that breaks is reopened with a range request at the byte the reader
reached, after checking that the object is still the one first opened (its ETag and size); one that changed fails
the shard as `changed` (ObjectChanged), never mixing two versions. A read with no byte for `read_stall_s` is cut
by the client's socket timeout (HTTP: aiohttp's sock_read; S3: botocore's read_timeout) and retried like a reset.

Only a read that used its tries fails its shard, as transient, which the driver retries as before.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass

import fsspec

from .failures import ObjectChanged, Reason, backoff_delay, precondition_failed, transient_cause, transient_reason

BUFFER_BYTES = 1 << 20  # what a ResumableFile reads per request of its consumer (a tar header is 512 bytes)
RANGE_BYTES = 4 << 20  # a ranged GET's size where the filesystem's own file reads (s3fs's default: 50 MiB)


class ShortBody(ConnectionError):
    """A body that ended before the object did, without an error from the client: retried like a reset."""


def retryable(error: BaseException) -> bool:
    """Worth another request now: the store or the network (not a full disk or no memory, which a quick retry of
    the same request on the same machine does not change; those fail the shard, retried elsewhere)."""
    cause = transient_cause(error)
    return cause is not None and transient_reason(cause) == Reason.TRANSIENT_IO


@dataclass(frozen=True)
class ReadRetry:
    attempts: int = 5
    backoff_s: float = 1.0
    budget_s: float = 600.0
    stall_s: float = 60.0

    @classmethod
    def of(cls, source) -> "ReadRetry":
        """From a source's settings (pipeline.sources.Source): its source.read_* keys."""
        return cls(source.read_attempts, source.read_backoff_s, source.read_budget_s, source.read_stall_s)


class Reads:
    """The retried reads of one shard or listing, and how many retries they took (`retries`; thread-safe)."""

    def __init__(self, retry: ReadRetry = ReadRetry()):
        self.retry = retry
        self.retries = 0
        self._lock = threading.Lock()

    @classmethod
    def of(cls, source) -> "Reads":
        return cls(ReadRetry.of(source))

    def call(self, read, *args, **kwargs):
        """read(*args, **kwargs), tried again after a transient error until its tries or its budget are spent."""
        began, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            try:
                return read(*args, **kwargs)
            except Exception as error:
                if not retryable(error) or attempt >= self.retry.attempts:
                    raise
                delay = backoff_delay(self.retry.backoff_s, attempt)
                if time.monotonic() - began + delay > self.retry.budget_s:
                    raise
                with self._lock:
                    self.retries += 1
                time.sleep(delay)

    def kind(self, fs, path: str) -> str | None:
        """'file', 'directory' or None (nothing there), its info request retried. Unlike fsspec's exists/isdir/isfile,
        which answer False for any error, a store's 503 is not taken for "nothing there"."""
        try:
            return self.call(fs.info, path).get("type")
        except FileNotFoundError as error:
            if retryable(error):  # a 503 that fsspec's HTTP reports as not found, past its tries
                raise
            return None

    def filesystem(self, url: str):
        """(fs, path) of `url`, its client cutting a read that stalls for `read_stall_s`."""
        return fsspec.core.url_to_fs(url, **_stall_options(fsspec.utils.get_protocol(url), self.retry.stall_s))

    def open(self, url: str, found: tuple | None = None):
        """A binary file of `url`: a local file as it is, a remote object as a buffered ResumableFile.
        `found`: (fs, path, info) of `url` where the caller asked already (its filesystem from `filesystem`)."""
        fs, path, info = found or (*self.filesystem(url), None)
        if _protocol(fs) in ("file", "local"):
            return fs.open(path, "rb")
        return io.BufferedReader(ResumableFile(self, fs, path, url, info or self.call(fs.info, path)), BUFFER_BYTES)


def _protocol(fs) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def _stall_options(protocol: str, stall_s: float) -> dict:
    """Client settings that end a request waiting this long for a byte, merged into fsspec's configured ones."""
    configured = fsspec.config.conf.get(protocol, {})
    if protocol in ("http", "https"):
        import aiohttp

        client = dict(configured.get("client_kwargs", {}))
        client["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=stall_s, sock_read=stall_s)
        return {"client_kwargs": client}
    if protocol in ("s3", "s3a"):
        botocore = dict(configured.get("config_kwargs", {}), connect_timeout=stall_s, read_timeout=stall_s)
        return {"config_kwargs": botocore}
    return {}


def _etag(info: dict) -> str | None:
    return next((str(info[k]) for k in ("ETag", "etag") if info.get(k)), None)


def _range_total(content_range: str | None) -> int | None:
    """The object's size in a Content-Range header ('bytes 10-99/100')."""
    total = (content_range or "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


class ResumableFile(io.RawIOBase):
    """One remote object as a seekable binary file whose reads are retried. A request that breaks is dropped and
    the next try reopens the object at the byte reached. Over HTTP that is one streaming GET (`Range: bytes=N-`,
    `If-Match` its ETag); elsewhere the filesystem's own file (s3fs: ranged GETs, each checked against the ETag)."""

    def __init__(self, reads: Reads, fs, path: str, url: str, info: dict):
        self.reads, self.fs, self.path, self.url = reads, fs, path, url
        self.size = int(info.get("size") or 0) or None
        self.etag = _etag(info)
        self.streamed = _protocol(fs) in ("http", "https")
        self.pos = 0  # where the consumer reads next
        self.inner = None  # the request under way, and the byte it stands at
        self.inner_pos = 0
        self.recent, self.recent_at = b"", 0  # the bytes read last, and where they start
        self.opened = False
        self.failure: Exception | None = None  # what the last failed read raised (soundfile's callbacks hide it)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.size is not None

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self.pos + offset if whence == 1 else (self.size or 0) + offset
        if target < 0:
            raise ValueError(f"seek to {target}")
        self.pos = target  # the next read continues the request under way, or opens one here (_read_once)
        return self.pos

    def readinto(self, buffer) -> int:
        if self.size is not None and self.pos >= self.size:
            return 0
        if self.recent_at <= self.pos < self.recent_at + len(self.recent):  # a decoder's seek back to its header
            data = self.recent[self.pos - self.recent_at:self.pos - self.recent_at + len(buffer)]
        else:
            try:
                data = self.reads.call(self._read_once, len(buffer))
            except Exception as error:
                self.failure = error
                raise
            self.recent, self.recent_at = data, self.pos
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def close(self) -> None:
        self._drop()
        super().close()

    def _drop(self) -> None:
        inner, self.inner = self.inner, None
        if inner is not None:
            try:
                inner.close()
            except Exception:  # a broken connection may fail to close: it is dropped either way
                pass

    def _read_once(self, size: int) -> bytes:
        try:
            if self.inner is not None and self.inner_pos != self.pos:
                if self.streamed:  # a stream goes forward only: a new request from here
                    self._drop()
                else:
                    self.inner.seek(self.pos)
                    self.inner_pos = self.pos
            if self.inner is None:
                self.inner, self.inner_pos = self._reopen(), self.pos
            data = self.inner.read(size)
            if not data and self.size is not None and self.pos < self.size:
                raise ShortBody(f"{self.url}: the body ended at byte {self.pos} of {self.size}")
            self.inner_pos += len(data)
            return data
        except Exception as error:
            self._drop()
            if precondition_failed(error):
                raise self._changed("the store refused the ETag it gave before") from None
            raise

    def _reopen(self):
        first, self.opened = not self.opened, True
        if self.streamed:
            return self._stream()
        if not first:
            info = self.fs.info(self.path)
            if _etag(info) != self.etag or (int(info.get("size") or 0) or None) != self.size:
                raise self._changed(f"size {self.size} -> {info.get('size')}, ETag {self.etag} -> {_etag(info)}")
        handle = self.fs.open(self.path, "rb", block_size=RANGE_BYTES)
        handle.seek(self.pos)
        return handle

    def _stream(self):
        headers = dict(self.fs.kwargs.get("headers") or {})
        if self.pos:
            headers["Range"] = f"bytes={self.pos}-"
        if self.etag:
            headers["If-Match"] = self.etag
        handle = self.fs.open(self.path, "rb", block_size=0, size=self.size, headers=headers)
        response = getattr(handle, "r", None)
        if response is not None:
            etag, total = response.headers.get("ETag"), _range_total(response.headers.get("Content-Range"))
            if (self.etag and etag and etag != self.etag) or (self.size and total and total != self.size):
                handle.close()
                raise self._changed(f"size {self.size} -> {total}, ETag {self.etag} -> {etag}")
            if self.pos and response.status != 206:  # a server without ranges: the body from its first byte
                _skip(handle, self.pos, self.url)
        return handle

    def _changed(self, how: str):
        return ObjectChanged(f"{self.url} changed while it was read, at byte {self.pos} ({how}): its samples would "
                             "mix two versions; a rerun reads the new one")


def _skip(handle, count: int, url: str) -> None:
    while count:
        chunk = handle.read(min(count, BUFFER_BYTES))
        if not chunk:
            raise ShortBody(f"{url}: the body ended {count} bytes before the byte to resume at")
        count -= len(chunk)
