"""The recorded shards of a source whose listing alone does not fix them (files grouped N to a shard, a
manifest's line ranges): written once, when a shard is first listed, so a rerun after additions keeps every
recorded shard as it was and only adds new ones.

`_run/source/plan-NNNNNNNNNN.jsonl`: one JSON object per shard (the source's own fields), one file per run that
added shards, named by how many shards were recorded before it, created write-once (no object store appends).
Cleared with the rest of the run state on `output.overwrite=true`.
"""

from __future__ import annotations

import json
from typing import Iterator

from ..storage import Storage

PLAN = "_run/source"


def read_plan(storage: Storage) -> Iterator[dict]:
    """The recorded shards, in the order they were recorded."""
    for name in storage.list(PLAN):
        if name.startswith("plan-") and name.endswith(".jsonl"):
            for line in storage.read_bytes(f"{PLAN}/{name}").splitlines():
                if line.strip():
                    yield json.loads(line)


def record_plan(storage: Storage, recorded_before: int, shards: list[dict]) -> None:
    """Append `shards` to the plan as one new write-once file (FileExistsError if another run wrote the same)."""
    if shards:
        body = "".join(json.dumps(s, separators=(",", ":")) + "\n" for s in shards).encode()
        storage.create(f"{PLAN}/plan-{recorded_before:010d}.jsonl", body)
