"""`python -m pipeline.verify OUTPUT_DIR`: check an output folder against its manifest.

Reports files that are missing, extra (not in the manifest), corrupt (checksum or unreadable) or
with the wrong row count, and shards that did not finish. Exit status 0 only when all is well.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys

import pyarrow.parquet as pq

from .manifest import Manifest
from .storage import Storage


def verify(output_dir: str) -> list[str]:
    """Problems found, one line each; empty when the folder matches its manifest."""
    storage = Storage(output_dir)
    manifest = Manifest.load(storage)
    if manifest is None:
        return [f"no manifest.json in {output_dir}"]
    problems = []
    expected = set()
    for shard_id, entry in sorted(manifest.shards.items()):
        if entry["status"] != "done":
            problems.append(f"shard {shard_id}: not finished ({entry.get('shard_error')})")
        for name in entry.get("files", []):
            expected.add(name)
            if not storage.exists(name):
                problems.append(f"missing: {name}")
                continue
            data = storage.read_bytes(name)
            checksum = entry.get("sha256", {}).get(name)
            if checksum and hashlib.sha256(data).hexdigest() != checksum:
                problems.append(f"corrupt: {name} (checksum differs from the manifest)")
                continue
            if name.endswith(".parquet"):
                try:
                    rows = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
                except Exception as error:  # any unreadable file is a finding, not a crash
                    problems.append(f"corrupt: {name} ({str(error)[:120]})")
                    continue
                if rows != entry["rows"]:
                    problems.append(f"row count: {name} has {rows}, manifest says {entry['rows']}")
            elif name.endswith(".jsonl"):
                lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
                if sum(1 for r in lines if r.get("key") is not None) != entry["errors"]:
                    problems.append(f"error count: {name} has {len(lines)} records, manifest says {entry['errors']}")
    for folder in ("data", "errors"):
        for name in storage.list(folder):
            if f"{folder}/{name}" not in expected:
                kind = "leftover temporary" if name.startswith(".tmp-") else "extra"
                problems.append(f"{kind}: {folder}/{name} (not in the manifest)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    args = parser.parse_args(argv)
    problems = verify(args.output_dir)
    for line in problems:
        print(line)
    if problems:
        print(f"FAILED: {len(problems)} problem(s) in {args.output_dir}")
        return 1
    manifest = Manifest.load(Storage(args.output_dir))
    totals = manifest.totals()
    print(f"OK: {totals['shards_done']} shards, {totals['rows']} rows, {totals['errors']} error records match the manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
