"""Which failures are worth another try: transient (the network, a store's 5xx or throttling, a timeout, and the
machine's resources: a full disk, no memory left) or permanent (the data itself: a missing file, a corrupt tar,
a bad column).

Client libraries wrap their errors (fsspec's HTTP filesystem turns a 503 into FileNotFoundError from the
503; s3fs turns a botocore ClientError into an OSError caused by it), so the whole cause chain is read,
and by duck typing: no client library has to be imported to classify its errors.
"""

from __future__ import annotations

import enum
import errno
import random
import traceback
from contextlib import contextmanager


class FailureKind(enum.StrEnum):
    """How a shard's try failed, which decides whether it runs again (driver/policy.py). A `str`: records and
    events hold it as the same string as before it was an enum."""

    TRANSIENT = "transient"  # retried with backoff on another actor, up to ray.max_attempts
    PERMANENT = "permanent"  # the shard fails at once
    UNEXPECTED = "unexpected"  # a bug or a sick device: retried once elsewhere, then fails with its traceback
    TIMEOUT = "timeout"  # the driver killed its actor past ray.shard_timeout_s: transient
    ACTOR_LOST = "actor_lost"  # its actor died under it: transient


TRANSIENT, PERMANENT, UNEXPECTED = FailureKind.TRANSIENT, FailureKind.PERMANENT, FailureKind.UNEXPECTED


class Reason(enum.StrEnum):
    """Why a sample (an error record's `reason`) or a whole shard (a failed commit record's `reason`) failed: a
    closed set, so that summaries, metrics and the guard count the same labels. `SampleError`, `ShardError` and
    `ClipFailure` take the plain string too and turn it into a member (an unknown one raises ValueError), so a new
    reason is added here; tests/test_typed_records.py checks every literal in pipeline/ is one."""

    # a sample: its bytes or its audio
    EMPTY_FILE = "empty_file"
    TRUNCATED = "truncated"
    UNDECODABLE = "undecodable"
    DECODE_FAILED = "decode_failed"
    EMPTY_AUDIO = "empty_audio"
    TOO_LONG = "too_long"
    NON_FINITE = "non_finite"
    BAD_SHAPE = "bad_shape"
    BAD_SAMPLE_RATE = "bad_sample_rate"
    BAD_SAMPLE = "bad_sample"
    BAD_ARRAY = "bad_array"
    BAD_AUDIO_CELL = "bad_audio_cell"
    NO_AUDIO = "no_audio"
    NO_RECORDING = "no_recording"
    # a sample: where it comes from
    BAD_METADATA = "bad_metadata"
    METADATA_TOO_LARGE = "metadata_too_large"
    FILE_TOO_LARGE = "file_too_large"
    MISSING_FILE = "missing_file"
    MISSING_AUDIO_FILE = "missing_audio_file"
    UNREADABLE_FILE = "unreadable_file"
    UNREADABLE_AUDIO_PATH = "unreadable_audio_path"
    NOT_A_REGULAR_FILE = "not_a_regular_file"
    BAD_MANIFEST_LINE = "bad_manifest_line"
    MISSING_FIELD = "missing_field"
    BAD_SEGMENT = "bad_segment"
    SEGMENT_PAST_END = "segment_past_end"
    OUTSIDE_AUDIO_ROOT = "outside_audio_root"
    DUPLICATE_KEY = "duplicate_key"
    DUPLICATE_MEMBER = "duplicate_member"
    UNSUPPORTED_MEMBER = "unsupported_member"
    # a sample: the codec
    ENCODE_FAILED = "encode_failed"
    OUT_OF_MEMORY = "out_of_memory"
    # a shard: its source
    MISSING_SHARD = "missing_shard"
    UNREADABLE_SHARD = "unreadable_shard"
    CORRUPT_TAR = "corrupt_tar"
    CORRUPT_SHAR = "corrupt_shar"
    CORRUPT_FILE = "corrupt_file"
    MISSING_AUDIO_COLUMN = "missing_audio_column"
    MISSING_KEY_COLUMN = "missing_key_column"
    MANIFEST_CHANGED = "manifest_changed"
    CHANGED = "changed"
    # a shard: the run
    READ_FAILED = "read_failed"
    DECODE_TASK_FAILED = "decode_task_failed"
    DECODE_TASK_LOST = "decode_task_lost"
    DECODE_PROCESS_LOST = "decode_process_lost"
    WORKER_EXCEPTION = "worker_exception"
    TIMEOUT = "timeout"
    ACTOR_LOST = "actor_lost"
    # a shard: transient causes (transient_reason)
    TRANSIENT_IO = "transient_io"
    NO_SPACE_LEFT = "no_space_left"
    OUT_OF_HOST_MEMORY = "out_of_host_memory"
    # what a failed record without a reason is counted as
    TRANSIENT = "transient"
    FAILED = "failed"

_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable",
                    "InternalError", "TooManyRequests", "RequestLimitExceeded"}
_TRANSIENT_TYPES = {  # by name: aiohttp, botocore/urllib3, requests, http.client
    "ClientPayloadError", "ServerDisconnectedError", "ClientConnectorError", "ClientConnectionError",
    "ClientOSError", "ServerTimeoutError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
    "ConnectionClosedError", "ProtocolError", "IncompleteRead", "RemoteDisconnected", "ChunkedEncodingError",
}


# the machine, not the data: another attempt on another node (or once the disk or memory is freed) succeeds
_RESOURCE_ERRNOS = {errno.ENOSPC: Reason.NO_SPACE_LEFT, errno.ENOMEM: Reason.OUT_OF_HOST_MEMORY}


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _status(error: BaseException) -> tuple[int | None, str | None]:
    """(HTTP status, error code) where the exception carries a response."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        meta, detail = response.get("ResponseMetadata", {}), response.get("Error", {})
        return meta.get("HTTPStatusCode"), detail.get("Code")
    for holder in (error, response):
        for name in ("status", "status_code"):
            value = getattr(holder, name, None)
            if isinstance(value, int):
                return value, None
    return None, None


def transient_cause(error: BaseException) -> BaseException | None:
    """The error in the cause chain that makes `error` transient; None when it is not."""
    for cause in _chain(error):
        if isinstance(cause, (ConnectionError, TimeoutError, MemoryError)) or type(cause).__name__ in _TRANSIENT_TYPES:
            return cause
        if isinstance(cause, OSError) and cause.errno in _RESOURCE_ERRNOS:
            return cause
        status, code = _status(cause)
        if (status is not None and (status in _TRANSIENT_STATUS or status >= 500)) or code in _TRANSIENT_CODES:
            return cause
    return None


def precondition_failed(error: BaseException) -> bool:
    """The store says the object is no longer the version asked for: an HTTP 412 to If-Match, s3fs's FileExpired."""
    return any(type(c).__name__ == "FileExpired" or _status(c)[0] == 412 for c in _chain(error))


def is_transient(error: BaseException) -> bool:
    return transient_cause(error) is not None


def transient_reason(cause: BaseException) -> Reason:
    """The reason a shard failed for a transient `cause` (one transient_cause returned): the store or network
    (`transient_io`), a full disk (`no_space_left`) or no memory left (`out_of_host_memory`)."""
    if isinstance(cause, MemoryError):
        return Reason.OUT_OF_HOST_MEMORY
    if isinstance(cause, OSError) and cause.errno in _RESOURCE_ERRNOS:
        return _RESOURCE_ERRNOS[cause.errno]
    return Reason.TRANSIENT_IO


def backoff_delay(backoff_s: float, attempt: int) -> float:
    """Seconds to wait after the `attempt`-th failed try: `backoff_s` doubling per try, jittered down to half,
    so that the clients a store throttled at once do not all come back at once."""
    return backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)


def traceback_summary(error: BaseException, frames: int = 6) -> str:
    """Type, message and the last frames of the traceback: what a failed shard's error record keeps."""
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    tail = "".join(lines[-(frames + 1):])
    return f"{type(error).__name__}: {str(error)[:300]}\n{tail}".strip()


class TransientStartError(RuntimeError):
    """An actor's constructor failed for a transient cause (the hub's 429, a connection reset): the driver starts
    it again after a backoff instead of counting it toward the stop after two failed starts (driver.pool)."""


class WrongDeviceError(RuntimeError):
    """An actor came up on another device than the run's recorded one (another GPU model, no GPU): its codes
    would differ. The driver gives up its place, and the run goes on with the others (driver.pool)."""


@contextmanager
def classified_start():
    """Around an actor's constructor: a transient error leaves it as TransientStartError, whose name the driver
    reads in the error Ray reports (the original exception does not cross the actor's death)."""
    try:
        yield
    except Exception as error:
        if is_transient(error):
            raise TransientStartError(traceback_summary(error)) from error
        raise


class ConfigError(ValueError):
    """A bad configuration value: names the key and how to fix it. Here, below the config and the sources, so
    that every side (the config, each source kind's settings) raises the one type."""

    def __init__(self, key: str, problem: str, fix: str = ""):
        self.key = key
        super().__init__(f"config key '{key}': {problem}" + (f" ({fix})" if fix else ""))


class ShardError(Exception):
    """A whole shard cannot be read: missing, truncated, not the format it claims (permanent), or the
    store or network failed while reading it (transient: worth another try)."""

    def __init__(self, reason: Reason | str, detail: str = "", kind: FailureKind = PERMANENT):
        self.reason = Reason(reason)  # a plain string names a member (ValueError for one that is none)
        self.detail = detail
        self.kind = FailureKind(kind)
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):
        # what crosses processes (decode tasks, decode processes) is rebuilt from its fields, not from its message
        return ShardError, (self.reason, self.detail, self.kind)


class ObjectChanged(ShardError):
    """An object that changed while its shard read it (another ETag or size on a resumed read): the shard fails
    as `changed`, never mixing two versions."""

    def __init__(self, detail: str):
        super().__init__(Reason.CHANGED, detail, PERMANENT)

    def __reduce__(self):
        return ObjectChanged, (self.detail,)
