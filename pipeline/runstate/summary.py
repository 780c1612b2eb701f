"""manifest.json and its shard list: the summary people and readers look at, compacted from commit records.

manifest.json holds what the output is (identity, codec, schema, config), the totals and a pointer to
`_run/shards.jsonl`, one line per shard (its latest commit record), with its digest for `pipeline.status` beside it
(`_run/digest.json`, see digest.py). It is rewritten at the end of a run
and at most every `output.summary_interval_s`; between those, commit records are ahead of it, and
everything that decides what is done reads them (see `RunState`, `read_run`).
"""

from __future__ import annotations

import json
import time
from collections import Counter

from ..storage import Storage
from .digest import write_digest
from .records import DONE, ShardRecord, reason_and_detail, record_bytes

MANIFEST = "manifest.json"
SHARD_LIST = "_run/shards.jsonl"


class Totals:
    """Sums over commit records, kept up to date one record at a time (the guard reads it per shard)."""

    _SUMS = ("samples_read", "rows", "errors", "audio_seconds", "frames", "tokens", "encoded_frames",
             "loudness_clipped", "loudness_unmeasured")

    def __init__(self, records=()):
        self.sums: Counter = Counter()
        self.error_reasons: Counter = Counter()
        self.shard_error_reasons: Counter = Counter()
        for record in records:
            self.add(record)

    def add(self, record: ShardRecord | dict, sign: int = 1) -> None:
        """A record, or a digest row (pipeline.status sums those: dicts of a record's fields, see digest.py)."""
        if isinstance(record, ShardRecord):
            record = vars(record)
        self.sums["read_retries"] += sign * record.get("read_retries", 0)  # done and failed tries alike
        if record["status"] == DONE:
            self.sums["shards_done"] += sign
            for name in self._SUMS:
                self.sums[name] += sign * record.get(name, 0)
            for reason, count in record.get("error_reasons", {}).items():
                self.error_reasons[reason] += sign * count
        else:
            self.sums["shards_failed"] += sign
            self.shard_error_reasons[reason_and_detail(record)[0]] += sign

    def as_dict(self) -> dict:
        s = self.sums
        return {
            "shards_done": s["shards_done"], "shards_failed": s["shards_failed"],
            # over done shards, so that rows + errors = samples_read; a failed shard is one shard-level record
            "samples_read": s["samples_read"], "rows": s["rows"], "errors": s["errors"],
            "error_reasons": {k: v for k, v in self.error_reasons.items() if v},
            "shard_error_reasons": {k: v for k, v in self.shard_error_reasons.items() if v},
            "audio_seconds": s["audio_seconds"], "frames": s["frames"], "tokens": s["tokens"],
            "padding_efficiency": s["frames"] / s["encoded_frames"] if s["encoded_frames"] else None,
            # rows whose clip audio.loudness_lufs gained past full scale (not limited), or could not measure
            "loudness_clipped": s["loudness_clipped"], "loudness_unmeasured": s["loudness_unmeasured"],
            # remote reads tried again where they failed (a record keeps its latest try's; older records: 0)
            "read_retries": s["read_retries"],
        }


def write_summary(storage: Storage, header: dict, records: dict[str, ShardRecord]) -> dict:
    """Shard list and its digest first, then manifest.json pointing at the list; returns the totals written."""
    storage.write_bytes(SHARD_LIST, b"".join(record_bytes(records[k]) + b"\n" for k in sorted(records)))
    write_digest(storage, records)
    totals = Totals(records.values()).as_dict()
    manifest = dict(header, totals=totals, shard_count=len(records), shard_list=SHARD_LIST, compacted_at=time.time())
    storage.write_bytes(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return totals


def read_manifest(storage: Storage) -> dict | None:
    if not storage.exists(MANIFEST):
        return None
    try:
        manifest = json.loads(storage.read_bytes(MANIFEST))
    except ValueError as error:
        raise ValueError(f"{storage.url}/{MANIFEST} is not JSON ({error})") from None
    return manifest if isinstance(manifest, dict) else None


def read_shard_list(storage: Storage) -> dict[str, ShardRecord]:
    """The summary's records by shard id ({} before the first compaction); a torn line is skipped, the
    commit records still hold it."""
    if not storage.exists(SHARD_LIST):
        return {}
    records = {}
    for line in storage.read_bytes(SHARD_LIST).decode().splitlines():
        try:
            record = ShardRecord.from_dict(json.loads(line))
            records[record.shard_id] = record
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return records
