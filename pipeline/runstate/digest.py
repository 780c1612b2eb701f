"""The shard digest: of each shard the summary holds, only what `pipeline.status` reads, in one small columnar file.

The shard list (`_run/shards.jsonl`) holds whole commit records, about 1 KB each (a third of it row groups' length
bins, which readers plan from): at 100,000 shards, parsing it alone takes longer than "a few seconds". The digest is
written beside it at each compaction, `_run/digest.json`, one JSON array per field, so a status call parses a few
columns of numbers, and the commit records newer than it. The same form is status's local cache of what it has seen.

Digest rows are plain dicts with the keys of the commit records they come from, so everything that sums records
(`Totals`) sums them alike. An output written before the digest has none: status digests its shard list instead.
"""

from __future__ import annotations

import json

from ..storage import Storage
from .records import DONE, ShardRecord

DIGEST = "_run/digest.json"
VERSION = 1
# what status reads of a record, and its value in a record written before the field was
FIELDS = {"shard_id": "", "status": "", "reason": None, "audio_seconds": 0.0, "rows": 0, "errors": 0,
          "error_reasons": {}, "seconds": 0.0, "started_at": 0.0, "finished_at": 0.0, "worker": ""}


def digest_row(record: ShardRecord) -> dict:
    """A commit record cut to what status reads (a done record's `reason` None)."""
    row = {name: getattr(record, name) for name in FIELDS}
    row["reason"] = None if record.status == DONE else "" if record.reason is None else record.reason
    return row


def encode(rows) -> bytes:
    """Digest rows as the digest's bytes: one array per field."""
    rows = list(rows)
    columns = {name: [r[name] for r in rows] for name in FIELDS}
    return json.dumps({"version": VERSION, "columns": columns}, separators=(",", ":")).encode()


def decode(data: bytes) -> dict | None:
    """shard id -> its digest row; None for anything that is not a whole digest of this version (a write cut short,
    another version's): the caller reads what the digest would have spared it."""
    try:
        digest = json.loads(data)
        columns = digest["columns"]
        if digest["version"] != VERSION or set(columns) != set(FIELDS):
            return None
        names = list(FIELDS)
        rows = [dict(zip(names, values)) for values in zip(*(columns[n] for n in names), strict=True)]
    except (ValueError, KeyError, TypeError):
        return None
    return {row["shard_id"]: row for row in rows}


def write_digest(storage: Storage, records: dict) -> None:
    storage.write_bytes(DIGEST, encode(digest_row(records[k]) for k in sorted(records)))


def read_digest(storage: Storage) -> dict | None:
    """The digest of the last compaction; None when there is none (an output written before it) or it is unreadable."""
    try:
        return decode(storage.read_bytes(DIGEST))
    except FileNotFoundError:
        return None
