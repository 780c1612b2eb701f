"""`python -m pipeline.reading.verify OUTPUT_DIR`: check an output folder against its commit records.

Reports files that are missing, corrupt (checksum or unreadable), of another schema than the run's
or with the wrong row or error count; files in data/ or errors/ that no commit record names (a
shard whose driver was killed between writing it and committing it: a rerun redoes it), and a data file of a
shard whose record says it failed (rows that readers of data/*.parquet would read); commit
records that cannot be trusted; shards that failed. With `--sources`, also the source files of done shards
that are gone from the source (`files` sources, from the recorded plan): their rows stay as written, but the
output can no longer be rebuilt or audited from the source. Exit status 0 only when all is well.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys

import pyarrow.parquet as pq

from ..runstate import DONE, FAILED, OutputError, ShardRecord, Totals, read_run
from ..schema import schema_from_text
from ..sources import recorded_shards, source_from_record
from ..storage import Storage


def _check_file(storage: Storage, name: str, record: ShardRecord, schema) -> str | None:
    if not storage.exists(name):
        return f"missing: {name}"
    data = storage.read_bytes(name)
    checksum = record.sha256.get(name)
    if checksum and hashlib.sha256(data).hexdigest() != checksum:
        return f"corrupt: {name} (checksum differs from its commit record)"
    if name.endswith(".parquet"):
        try:
            metadata = pq.ParquetFile(io.BytesIO(data)).metadata
        except Exception as error:  # any unreadable file is a finding, not a crash
            return f"corrupt: {name} ({str(error)[:120]})"
        if not metadata.schema.to_arrow_schema().remove_metadata().equals(schema.remove_metadata()):
            return f"schema: {name} differs from the run's schema"
        if metadata.num_rows != record.rows:
            return f"row count: {name} has {metadata.num_rows}, its commit record says {record.rows}"
    elif name.endswith(".jsonl") and record.status == DONE:
        lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        if sum(1 for r in lines if r.get("key") is not None) != record.errors:
            return f"error count: {name} has {len(lines)} records, its commit record says {record.errors}"
    return None


def verify(output_dir: str) -> list[str]:
    """Problems found, one line each; empty when the folder matches its commit records."""
    storage = Storage(output_dir)
    try:
        run = read_run(storage)
    except (FileNotFoundError, OutputError) as error:
        return [str(error)]
    schema = schema_from_text(run.manifest["output_schema"])
    problems = [f"commit record: {why} (the shard counts as not done)" for why in run.corrupt.values()]
    expected = set()
    for shard_id, record in sorted(run.records.items()):
        if record.status != DONE:
            problems.append(f"shard {shard_id}: failed ({record.error})")
        for name in record.files:
            expected.add(name)
            problem = _check_file(storage, name, record, schema)
            if problem:
                problems.append(problem)
    for folder in ("data", "errors"):
        for name in storage.list(folder):
            if f"{folder}/{name}" in expected:
                continue
            record = run.records.get(name.rsplit(".", 1)[0])
            if folder == "data" and record is not None and record.status == FAILED:
                problems.append(f"data file without a done record: {folder}/{name} (its shard failed; readers of "
                                "data/*.parquet read these rows: rerun, or remove the file)")
            else:
                kind = "leftover temporary" if name.startswith(".tmp-") else "uncommitted"
                problems.append(f"{kind}: {folder}/{name} (no commit record names it; a rerun redoes its shard)")
    return problems


def vanished_source_files(output_dir: str) -> list[str]:
    """Source files of done shards that the source no longer holds, as the output's source kind tells them
    (files sources: from the recorded plan, one listing per shard root; other kinds: none)."""
    storage = Storage(output_dir)
    run = read_run(storage)
    source = source_from_record(run.manifest["config"]["source"])
    return source.vanished(list(recorded_shards(storage).values()), set(run.done()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.reading.verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    parser.add_argument("--sources", action="store_true",
                        help="also list source files of done shards that are gone (files sources)")
    args = parser.parse_args(argv)
    problems = verify(args.output_dir)
    if args.sources and not problems:
        problems = vanished_source_files(args.output_dir)
    for line in problems:
        print(line)
    if problems:
        print(f"FAILED: {len(problems)} problem(s) in {args.output_dir}")
        return 1
    run = read_run(Storage(args.output_dir))
    totals = Totals(run.records.values()).as_dict()
    lag = "; manifest.json lags the commit records (the next run rewrites it)" if run.summary_stale else ""
    print(f"OK: {totals['shards_done']} shards, {totals['rows']} rows, {totals['errors']} error records match their "
          f"commit records{lag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
