"""Commit records: one small file per finished shard, the run's source of truth for what is done.

`_run/commits/SHARD.done.json` or `SHARD.failed.json`, written after the shard's data and error files
(atomically: a staged file renamed locally, one PUT on an object store). The status is in the name,
so a done record never changes once written: a summary that holds it holds exactly its content, and
a rerun reads only the records the summary does not hold yet.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, fields

from ..failures import FailureKind, Reason
from ..storage import Storage

COMMITS = "_run/commits"


class Status(enum.StrEnum):
    """A shard's outcome, in its commit record's name and its `status` (a `str`: the JSON is as it was)."""

    DONE = "done"
    FAILED = "failed"


DONE, FAILED = Status.DONE, Status.FAILED
REQUIRED = ("shard_id", "status", "source")


def reason_and_detail(record: dict) -> tuple[str, str]:
    """A failed record's (reason, detail). Records written before these were fields hold them as one
    "reason: detail" string in `shard_error`."""
    if record.get("reason") is not None:
        return record["reason"], record.get("detail") or ""
    reason, _, detail = (record.get("shard_error") or "").partition(": ")
    return reason, detail


def error_text(record: dict) -> str:
    """A failed record's reason and detail as one line, for people."""
    reason, detail = reason_and_detail(record)
    return f"{reason}: {detail}" if detail else reason


@dataclass
class ShardRecord:
    """A shard's outcome: what its worker reports and the driver commits (`to_dict` is the commit record's JSON)."""

    shard_id: str
    source: str
    status: Status
    samples_read: int = 0
    rows: int = 0
    errors: int = 0
    error_reasons: dict = field(default_factory=dict)
    reason: Reason | str | None = None  # why a failed shard failed (a str: a reason an older version wrote)
    detail: str | None = None  # what the failure said
    failure: FailureKind | str | None = None  # a str: a kind an older version wrote
    traceback: str | None = None  # type, message and last frames, for unexpected failures
    attempts: int = 1  # tries this shard took in this run, this one included
    audio_seconds: float = 0.0
    frames: int = 0
    encoded_frames: int = 0
    tokens: int = 0
    files: list = field(default_factory=list)
    sha256: dict = field(default_factory=dict)
    row_groups: dict = field(default_factory=dict)  # data file -> per row group [rows, frames, length bins]: readers plan from it
    seconds: float = 0.0
    decode_wait_s: float = 0.0  # of `seconds`, the encoder waiting for decoded audio
    encode_s: float = 0.0  # of `seconds`, the device encoding this shard
    started_at: float = 0.0  # wall clock (time.time()); shards of one actor overlap
    worker: str = ""
    peak_rss_mb: float = 0.0  # of the worker process, so far
    rss_after_mb: float = 0.0  # of the worker process when the shard ended, freed heap handed back: grows with a leak
    first_encode_s: float | None = None  # worker start to its first encode call (first shard only)
    threads: int = 0  # most torch threads its encodes ran with (CPU actors get idle actors' cores)
    loudness_clipped: int = 0  # rows gained past full scale by audio.loudness_lufs (not limited)
    loudness_unmeasured: int = 0  # rows left as they were: too short (< 400 ms) or too quiet to measure
    batch_budget: dict = field(default_factory=dict)  # the actor's batch budget when the shard ended (see BatchBudget)
    budget_halvings: int = 0  # out-of-memory errors during this shard that halved the actor's budget
    decode_nodes: list = field(default_factory=list)  # nodes whose decode tasks decoded it (audio.decode_task_cpus)
    read_retries: int = 0  # remote reads of this try tried again after a transient error (pipeline/reads.py)
    finished_at: float = 0.0  # when the driver committed it

    def __post_init__(self):
        # plain strings from a commit record's JSON (or a caller) become the enums they name
        self.status = Status(self.status)
        self.failure = _member(FailureKind, self.failure)
        self.reason = _member(Reason, self.reason)

    @property
    def error(self) -> str:
        """Reason and detail as one line, for people ("" for a done shard)."""
        return error_text(asdict(self)) if self.status != DONE else ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> "ShardRecord":
        """A commit record as written by any version: unknown keys are dropped, an old `shard_error` is split."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        if record.get("status") != DONE and "reason" not in record:
            values["reason"], values["detail"] = reason_and_detail(record)
        return cls(**values)


def _member(enum_type, value):
    """`value` as a member of `enum_type`; a string that names none is kept as written (older versions' labels are
    what status and the totals count them as)."""
    try:
        return value if value is None else enum_type(value)
    except ValueError:
        return value


def record_path(shard_id: str, status: str) -> str:
    return f"{COMMITS}/{shard_id}.{status}.json"


def shard_log_path(shard_id: str) -> str:
    """The shard's log (its worker's lines, how its last attempt ended), beside its commit record."""
    return f"{COMMITS}/{shard_id}.log"


def parse_name(name: str) -> tuple[str, str] | None:
    """(shard id, status) of a commit record's file name; None for anything else (temporaries, strays)."""
    if name.startswith(".") or not name.endswith(".json"):
        return None
    shard_id, _, status = name[: -len(".json")].rpartition(".")
    return (shard_id, status) if shard_id and status in (DONE, FAILED) else None


def list_records(storage: Storage) -> dict[str, list[str]]:
    """shard id -> the statuses it has records for (one LIST, no reads)."""
    found: dict[str, list[str]] = {}
    for name in storage.list(COMMITS):
        parsed = parse_name(name)
        if parsed:
            found.setdefault(parsed[0], []).append(parsed[1])
    return found


def decode(shard_id: str, status: str, data: bytes | Exception) -> ShardRecord | str:
    """The record, or a reason it cannot be trusted (so its shard counts as not done)."""
    if isinstance(data, Exception):
        return f"unreadable: {type(data).__name__}"
    try:
        record = json.loads(data)
    except ValueError:
        return f"not JSON ({len(data)} bytes; a write cut short)"
    if not isinstance(record, dict) or any(k not in record for k in REQUIRED):
        return "incomplete record"
    if record["shard_id"] != shard_id or record["status"] != status:
        return f"names shard {record['shard_id']!r} with status {record['status']!r}"
    if status == DONE and not record.get("files"):
        return "a done record without files"
    try:
        return ShardRecord.from_dict(record)
    except (TypeError, ValueError) as error:
        return f"not a commit record ({str(error)[:120]})"


def read_records(storage: Storage, wanted: list[tuple[str, str]]) -> tuple[dict, dict]:
    """Read the records (shard id, status) -> ({shard id: ShardRecord}, {shard id: why it is not trusted})."""
    raw = storage.read_many([record_path(i, s) for i, s in wanted])
    records, corrupt = {}, {}
    for shard_id, status in wanted:
        decoded = decode(shard_id, status, raw[record_path(shard_id, status)])
        if isinstance(decoded, str):
            corrupt[shard_id] = f"{record_path(shard_id, status)}: {decoded}"
        else:
            records[shard_id] = decoded
    return records, corrupt


def record_bytes(record: ShardRecord) -> bytes:
    """A record's JSON as commit records and the shard list hold it (keys sorted: field order does not matter)."""
    return json.dumps(record.to_dict(), sort_keys=True).encode()


def write_record(storage: Storage, record: ShardRecord) -> None:
    storage.write_bytes(record_path(record.shard_id, record.status), record_bytes(record))
