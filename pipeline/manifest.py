"""manifest.json: what a run is (codec, bandwidth, fingerprint) and which shards are finished.

The driver rewrites it (atomically) after every shard, so a killed run loses at most the shards
in flight; a rerun skips every shard recorded as done and leaves its files alone.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

from .storage import Storage
from .writer import SCHEMA_VERSION

MANIFEST = "manifest.json"


class FingerprintMismatch(RuntimeError):
    pass


@dataclass
class Manifest:
    fingerprint: str
    fingerprint_inputs: dict
    codec: dict
    bandwidth: float
    num_codebooks: int
    frame_rate: float
    config: dict
    codebook_size: int = 1024
    schema_version: int = SCHEMA_VERSION
    shards: dict = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = 0.0

    @classmethod
    def load(cls, storage: Storage) -> "Manifest | None":
        if not storage.exists(MANIFEST):
            return None
        data = json.loads(storage.read_bytes(MANIFEST))
        data.pop("totals", None)
        return cls(**data)

    def save(self, storage: Storage) -> dict:
        """Write it with its totals; returns those totals, so callers need not add them up again."""
        self.updated_at = time.time()
        totals = self.totals()
        storage.write_bytes(MANIFEST, json.dumps(dict(self.__dict__, totals=totals), indent=1, sort_keys=True).encode())
        return totals

    def done(self, shard_id: str) -> bool:
        return self.shards.get(shard_id, {}).get("status") == "done"

    def record(self, result: dict) -> None:
        self.shards[result["shard_id"]] = dict(result, finished_at=time.time())

    def totals(self) -> dict:
        entries = list(self.shards.values())
        reasons = Counter()
        for entry in entries:
            reasons.update(entry.get("error_reasons", {}))
        encoded = sum(e.get("encoded_frames", 0) for e in entries)
        frames = sum(e.get("frames", 0) for e in entries)
        return {
            "shards_done": sum(e["status"] == "done" for e in entries),
            "shards_failed": sum(e["status"] != "done" for e in entries),
            "samples_read": sum(e.get("samples_read", 0) for e in entries),
            "rows": sum(e.get("rows", 0) for e in entries),
            "errors": sum(e.get("errors", 0) for e in entries),
            "error_reasons": dict(reasons),
            "shard_error_reasons": dict(Counter(
                (e.get("shard_error") or "").split(":")[0] for e in entries if e["status"] != "done")),
            "audio_seconds": sum(e.get("audio_seconds", 0.0) for e in entries),
            "frames": frames,
            "tokens": sum(e.get("tokens", 0) for e in entries),
            "padding_efficiency": frames / encoded if encoded else None,
        }


def check_compatible(existing: Manifest, fingerprint: str, inputs: dict) -> None:
    if existing.fingerprint == fingerprint:
        return
    changed = sorted(k for k in set(inputs) | set(existing.fingerprint_inputs)
                     if inputs.get(k) != existing.fingerprint_inputs.get(k))
    raise FingerprintMismatch(
        f"output.dir was written with other settings ({', '.join(changed)} differ: "
        f"{ {k: existing.fingerprint_inputs.get(k) for k in changed} } -> { {k: inputs.get(k) for k in changed} }); "
        "its codes would not match. Use a new output.dir, or set output.overwrite=true to replace it."
    )
