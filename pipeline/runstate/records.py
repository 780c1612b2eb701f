"""Commit records: one small file per finished shard, the run's source of truth for what is done.

`_run/commits/SHARD.done.json` or `SHARD.failed.json`, written after the shard's data and error files
(atomically: a staged file renamed locally, one PUT on an object store). The status is in the name,
so a done record never changes once written: a summary that holds it holds exactly its content, and
a rerun reads only the records the summary does not hold yet.
"""

from __future__ import annotations

import json

from ..storage import Storage

COMMITS = "_run/commits"
DONE, FAILED = "done", "failed"
REQUIRED = ("shard_id", "status", "source")


def record_path(shard_id: str, status: str) -> str:
    return f"{COMMITS}/{shard_id}.{status}.json"


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


def decode(shard_id: str, status: str, data: bytes | Exception) -> dict | str:
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
    return record


def read_records(storage: Storage, wanted: list[tuple[str, str]]) -> tuple[dict, dict]:
    """Read the records (shard id, status) -> ({shard id: record}, {shard id: why it is not trusted})."""
    raw = storage.read_many([record_path(i, s) for i, s in wanted])
    records, corrupt = {}, {}
    for shard_id, status in wanted:
        decoded = decode(shard_id, status, raw[record_path(shard_id, status)])
        if isinstance(decoded, str):
            corrupt[shard_id] = f"{record_path(shard_id, status)}: {decoded}"
        else:
            records[shard_id] = decoded
    return records, corrupt


def write_record(storage: Storage, record: dict) -> None:
    storage.write_bytes(record_path(record["shard_id"], record["status"]), json.dumps(record, sort_keys=True).encode())
