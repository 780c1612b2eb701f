"""The output's Arrow schema and its version: one place for the writer, the readers, `verify` and `inspect`.

Every data file of a run has the same schema, fixed when the run starts: the output columns below,
then the source's declared metadata columns (WebDataset: `text`; HF: the dataset's scalar columns),
nullable and never of the null type, then `metadata` (JSON text). A value the schema has no
column for (a column that appears in a later shard, or one whose values do not fit the declared
type) goes into the `metadata` JSON of its row instead of becoming a column of its own, so readers
that merge files by schema (pyarrow.dataset, Ray Data) see one schema.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pyarrow as pa

# 2: one schema per run (fixed at start), commit records under _run/, no rows for failed shards
SCHEMA_VERSION = 2

OUTPUT_FIELDS = [
    pa.field("key", pa.string()),
    pa.field("codes", pa.list_(pa.list_(pa.int16()))),  # outer: codebook, inner: frame
    pa.field("num_frames", pa.int32()),
    pa.field("num_codebooks", pa.int16()),
    pa.field("duration_s", pa.float32()),
    pa.field("source", pa.string()),
]
METADATA = "metadata"  # JSON text: the WebDataset .json member, or values outside the schema
_OUTPUT_NAMES = {f.name for f in OUTPUT_FIELDS} | {METADATA}


def row_group_summary(num_frames: np.ndarray) -> list:
    """What a commit record's `row_groups` holds for one row group: [rows, summed num_frames, length bins],
    the bins [[b, rows, summed num_frames], ...] over the rows with 2**b <= num_frames < 2**(b+1) (b = 0
    holds 0 and 1), non-empty ones only. Readers plan crops and token-budget batches from them."""
    frames = np.asarray(num_frames, np.int64)
    bins = np.floor(np.log2(np.maximum(frames, 1))).astype(np.int64)
    rows, sums = np.bincount(bins, minlength=1), np.bincount(bins, weights=frames, minlength=1)
    return [int(frames.size), int(frames.sum()), [[int(b), int(rows[b]), int(sums[b])] for b in np.flatnonzero(rows)]]


def column_name(source_name: str) -> str:
    """The output column of a source metadata column: a name the output uses itself gets a `meta_` prefix."""
    return f"meta_{source_name}" if source_name in _OUTPUT_NAMES else source_name


def output_schema(source_fields: list[pa.Field]) -> pa.Schema:
    """The run's schema from the source's declared metadata fields (name in the source, Arrow type)."""
    fields = list(OUTPUT_FIELDS)
    for field in source_fields:
        kind = pa.string() if pa.types.is_null(field.type) else field.type  # never the null type
        fields.append(pa.field(column_name(field.name), kind, nullable=True, metadata={"source_name": field.name}))
    fields.append(pa.field(METADATA, pa.string(), nullable=True))
    return pa.schema(fields)


def metadata_fields(schema: pa.Schema) -> list[tuple[str, pa.Field]]:
    """(source name, output field) of each declared metadata column."""
    return [(f.metadata[b"source_name"].decode(), f) for f in schema if f.metadata and b"source_name" in f.metadata]


def schema_to_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def column_lines(schema: pa.Schema) -> list[str]:
    """Readable column list for manifest.json."""
    return [f"{f.name}: {f.type}" for f in schema]


def codes_array(codes: list[np.ndarray]) -> pa.Array:
    """list<list<int16>> (outer: codebook, inner: frame) built from flat buffers, not Python lists."""
    flat = np.concatenate([c.reshape(-1) for c in codes]) if codes else np.zeros(0, np.int16)
    inner_sizes = np.concatenate([np.full(c.shape[0], c.shape[1]) for c in codes]) if codes else np.zeros(0)
    inner_offsets = np.concatenate([[0], np.cumsum(inner_sizes)]).astype(np.int32)
    outer_offsets = np.concatenate([[0], np.cumsum([c.shape[0] for c in codes])]).astype(np.int32)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(flat.astype(np.int16)))
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


def build_table(schema: pa.Schema, keys: list[str], codes: list[np.ndarray], durations: list[float], source: str,
                metadata: list[dict]) -> pa.Table:
    """One shard's rows in `schema`; metadata values without a column of their own go to the JSON column."""
    columns = [
        pa.array(keys, pa.string()),
        codes_array(codes),
        pa.array([c.shape[1] for c in codes], pa.int32()),
        pa.array([c.shape[0] for c in codes], pa.int16()),
        pa.array(durations, pa.float32()),
        pa.array([source] * len(keys), pa.string()),
    ]
    extras: list[dict] = [{} for _ in keys]
    placed = set()
    for source_name, field in metadata_fields(schema):
        values = [meta.get(source_name) for meta in metadata]
        placed.add(source_name)
        try:
            columns.append(pa.array(values, field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError):
            # this shard's values do not fit the declared type: keep them, in the JSON column
            columns.append(pa.nulls(len(keys), field.type))
            for extra, value in zip(extras, values):
                if value is not None:
                    extra[source_name] = value
    for extra, meta in zip(extras, metadata):
        extra.update({k: v for k, v in meta.items() if k not in placed and k != METADATA})
    raw = [meta.get(METADATA) for meta in metadata]
    columns.append(pa.array([_merge_json(r, e) for r, e in zip(raw, extras)], pa.string()))
    return pa.Table.from_arrays(columns, schema=schema)


def _merge_json(raw: str | None, extra: dict) -> str | None:
    if not extra:
        return raw
    parsed = json.loads(raw) if raw else {}
    merged = parsed if isinstance(parsed, dict) else {"_value": parsed}
    merged.update({k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for k, v in extra.items()})
    return json.dumps(merged, sort_keys=True)
