"""The output's columns, Arrow schema and version: one place for the writer, the readers and the card.

Every data file of a run has the same schema, fixed when the run starts: the output columns of `COLUMNS`,
then the source's declared metadata columns (WebDataset: `text`; HF: the dataset's scalar columns),
nullable and never of the null type, then `metadata` (JSON text). A value the schema has no
column for (a column that appears in a later shard, or one whose values do not fit the declared
type) goes into the `metadata` JSON of its row instead of becoming a column of its own, so readers
that merge files by schema (pyarrow.dataset, Ray Data) see one schema.

`COLUMNS` owns each output column: its name, Arrow type, meaning (the dataset card shows it) and how a
row's value is made from the encoded sample. The writer, the schema recorded in the manifest and the card
all follow it, so adding a column is one entry there (and its test). An output keeps the schema it was
started with: a column added later appears in new outputs, not in rows written into an older one.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from operator import attrgetter
from typing import Callable

import numpy as np
import pyarrow as pa

# 2: one schema per run (fixed at start), commit records under _run/, no rows for failed shards
SCHEMA_VERSION = 2

KEY, CODES, NUM_FRAMES, NUM_CODEBOOKS, DURATION_S, SOURCE = (
    "key", "codes", "num_frames", "num_codebooks", "duration_s", "source")
METADATA = "metadata"  # JSON text: the WebDataset .json member, or values outside the schema
METADATA_DOC = ("JSON text: the WebDataset `.json` member or a file's `.json` sidecar, and the source's values "
                "the schema has no column for")


@dataclass(frozen=True)
class EncodedSample:
    """One encoded clip, as the shard's writer holds it until the shard ends: every output column's value is
    made from it. Facts of the decoded audio (not its wave) ride along for columns made from them."""

    key: str
    codes: np.ndarray  # [num_codebooks, num_frames] int16
    duration_s: float  # of the input audio
    source: str  # the input shard, as written (no URL secret)
    metadata: dict  # the source's values for the sample (declared columns, `metadata` JSON text, the rest)
    source_rate: int | None = None  # the input audio's (None: the writer's caller gave no decoded audio)
    source_channels: int | None = None


@dataclass(frozen=True)
class Column:
    """One output column. `value(sample)` makes one row's value; `values(samples)` a whole column at once, for a
    column whose values per-row Python objects would make slowly (codes). `doc` is its line in the dataset card."""

    name: str
    type: pa.DataType
    doc: str
    value: Callable[[EncodedSample], object] | None = None
    values: Callable[[list[EncodedSample]], pa.Array] | None = None
    nullable: bool = True

    def __post_init__(self):
        if (self.value is None) == (self.values is None):
            raise TypeError(f"column {self.name!r}: give exactly one of value (per row) and values (per column)")

    @property
    def field(self) -> pa.Field:
        return pa.field(self.name, self.type, nullable=self.nullable)

    def array(self, samples: list[EncodedSample]) -> pa.Array:
        if self.values is not None:
            return self.values(samples)
        return pa.array([self.value(s) for s in samples], self.type)


# in file order; a new column goes last (before the source's columns), so the columns before it keep their places
COLUMNS = [
    Column(KEY, pa.string(), "the sample's key (WebDataset key, HF `id`/key column, or `SHARD/ROW`)",
           value=attrgetter("key")),
    Column(CODES, pa.list_(pa.list_(pa.int16())), "the codes: `codes[k][t]` is codebook `k` at frame `t`",
           values=lambda samples: codes_array([s.codes for s in samples])),
    Column(NUM_FRAMES, pa.int32(), "frames per codebook (`len(codes[k])`)", value=lambda s: s.codes.shape[1]),
    Column(NUM_CODEBOOKS, pa.int16(), "codebooks per frame (`len(codes)`), from the bandwidth",
           value=lambda s: s.codes.shape[0]),
    Column(DURATION_S, pa.float32(), "seconds of the input audio", value=attrgetter("duration_s")),
    Column(SOURCE, pa.string(), "the input shard (its URL without query or credentials)", value=attrgetter("source")),
]


class UnknownColumn(ValueError):
    """The run's recorded schema has a column `COLUMNS` does not make (an output started by another version)."""


def output_fields() -> list[pa.Field]:
    """The fields of `COLUMNS`, in order: the schema's first columns."""
    return [c.field for c in COLUMNS]


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
    return f"meta_{source_name}" if source_name in {c.name for c in COLUMNS} | {METADATA} else source_name


def output_schema(source_fields: list[pa.Field]) -> pa.Schema:
    """The run's schema from the source's declared metadata fields (name in the source, Arrow type)."""
    fields = output_fields()
    for field in source_fields:
        kind = pa.string() if pa.types.is_null(field.type) else field.type  # never the null type
        fields.append(pa.field(column_name(field.name), kind, nullable=True, metadata={"source_name": field.name}))
    fields.append(pa.field(METADATA, pa.string(), nullable=True))
    return pa.schema(fields)


def metadata_fields(schema: pa.Schema) -> list[tuple[str, pa.Field]]:
    """(source name, output field) of each declared metadata column."""
    return [(f.metadata[b"source_name"].decode(), f) for f in schema if f.metadata and b"source_name" in f.metadata]


def column_doc(schema: pa.Schema, name: str) -> str:
    """What column `name` of `schema` holds, for the dataset card."""
    declared = {field.name: source_name for source_name, field in metadata_fields(schema)}
    if name in declared:
        return f"the source's `{declared[name]}` (null where a sample has none)"
    if name == METADATA:
        return METADATA_DOC
    return next((c.doc for c in COLUMNS if c.name == name), "")


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


def build_table(schema: pa.Schema, samples: list[EncodedSample]) -> pa.Table:
    """One shard's rows in `schema` (the run's, as recorded): its `COLUMNS` made from the samples, the declared
    metadata columns, and the `metadata` JSON holding the values without a column of their own."""
    arrays: dict[str, pa.Array] = {}
    extras: list[dict] = [{} for _ in samples]
    placed = set()
    for source_name, field in metadata_fields(schema):
        values = [s.metadata.get(source_name) for s in samples]
        placed.add(source_name)
        try:
            arrays[field.name] = pa.array(values, field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError):
            # this shard's values do not fit the declared type: keep them, in the JSON column
            arrays[field.name] = pa.nulls(len(samples), field.type)
            for extra, value in zip(extras, values):
                if value is not None:
                    extra[source_name] = value
    for extra, s in zip(extras, samples):
        extra.update({k: v for k, v in s.metadata.items() if k not in placed and k != METADATA})
    raw = [s.metadata.get(METADATA) for s in samples]
    arrays[METADATA] = pa.array([_merge_json(r, e) for r, e in zip(raw, extras)], pa.string())
    made = {c.name: c for c in COLUMNS}
    for field in schema:
        if field.name not in arrays:
            if field.name not in made:
                raise UnknownColumn(f"the run's schema has a column {field.name!r} that this audiotok does not make "
                                    "(an output started by another version): continue it with that version, or start "
                                    "a new output.dir (or set output.overwrite=true to re-encode this one)")
            arrays[field.name] = made[field.name].array(samples)
    return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)


def _merge_json(raw: str | None, extra: dict) -> str | None:
    if not extra:
        return raw
    parsed = json.loads(raw) if raw else {}
    merged = parsed if isinstance(parsed, dict) else {"_value": parsed}
    merged.update({k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for k, v in extra.items()})
    return json.dumps(merged, sort_keys=True)
