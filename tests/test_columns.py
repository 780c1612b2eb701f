"""One owner per output column: `pipeline.schema.COLUMNS` decides what the writer writes, the schema the manifest
records and the dataset card's column list. Outputs are written without the codec (`demo.synth_tokens`:
ShardWriter + RunState commits, as a run writes them)."""

import hashlib
import json
from operator import attrgetter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo.synth_tokens import write_rows
from pipeline import schema
from pipeline.audio.decode import Audio
from pipeline.reading.card import card_text
from pipeline.schema import COLUMNS, Column, EncodedSample, UnknownColumn, build_table, output_schema, schema_to_text
from pipeline.storage import Storage
from pipeline.writer import ShardWriter

TEXT = [pa.field("text", pa.string())]
# sha256 of schema_to_text(output_schema(TEXT)) as the code before the column table wrote it into manifest.json
# (`git show 8b9cf3f:pipeline/schema.py`): the manifest and the data files' schema stay byte for byte what they were
RECORDED_TEXT_SCHEMA = "55ac1313297322de1ea44816cced129826e5f40a6978c89113c9e779201d8d1a"
NUM_TOKENS = Column("num_tokens", pa.int32(), "codes in the row (`num_codebooks` x `num_frames`)",
                    value=lambda sample: sample.codes.size)
SOURCE_RATE = Column("source_rate", pa.int32(), "the input audio's sample rate", value=attrgetter("source_rate"))


def _output(tmp_path) -> tuple[str, list]:
    rng = np.random.default_rng(0)
    rows = [(f"k{i}", rng.integers(0, 1024, (8, 3 + i)).astype(np.int16), {"text": f"t{i}"}) for i in range(3)]
    url = str(tmp_path / "out")
    write_rows(url, [rows], num_codebooks=8, fields=TEXT)
    return url, rows


def _written(url: str) -> tuple[pa.Table, dict, dict]:
    """The data file, the manifest, and the card's column lines by column name."""
    with open(f"{url}/manifest.json") as f:
        manifest = json.load(f)
    lines = card_text(url).split("## Columns\n", 1)[1].split("\n## ", 1)[0].strip().splitlines()
    return pq.read_table(f"{url}/data/s000000.parquet"), manifest, {line.split("`")[1]: line for line in lines}


def test_every_column_of_the_table_is_written_typed_and_documented_in_the_card(tmp_path):
    url, rows = _output(tmp_path)
    table, manifest, card = _written(url)
    assert table.schema.names == [c.name for c in COLUMNS] + ["text", "metadata"]
    assert [line.split(":")[0] for line in manifest["output_columns"]] == table.schema.names
    for column in COLUMNS:
        assert table.schema.field(column.name).type == column.type
        assert column.doc and card[column.name] == f"- `{column.name}` ({column.type}): {column.doc}"
    assert card["text"].endswith("the source's `text` (null where a sample has none)")
    assert table.column("key").to_pylist() == [key for key, _, _ in rows]
    assert table.column("num_frames").to_pylist() == [codes.shape[1] for _, codes, _ in rows]
    assert table.column("codes").to_pylist() == [codes.tolist() for _, codes, _ in rows]


def test_the_output_schema_is_byte_for_byte_the_one_outputs_recorded_before_the_column_table():
    assert hashlib.sha256(schema_to_text(output_schema(TEXT)).encode()).hexdigest() == RECORDED_TEXT_SCHEMA


def test_a_column_added_to_the_table_reaches_the_parquet_the_recorded_schema_and_the_card(tmp_path, monkeypatch):
    monkeypatch.setattr(schema, "COLUMNS", [*COLUMNS, NUM_TOKENS])
    url, rows = _output(tmp_path)
    table, manifest, card = _written(url)
    assert table.schema.names == [c.name for c in COLUMNS] + ["num_tokens", "text", "metadata"]
    assert table.column("num_tokens").to_pylist() == [codes.size for _, codes, _ in rows]
    assert "num_tokens: int32" in manifest["output_columns"]
    assert schema.schema_from_text(manifest["output_schema"]).field("num_tokens").type == pa.int32()
    assert card["num_tokens"] == f"- `num_tokens` (int32): {NUM_TOKENS.doc}"


def test_an_output_started_before_a_column_was_added_goes_on_in_its_recorded_schema(monkeypatch):
    recorded = output_schema(TEXT)
    monkeypatch.setattr(schema, "COLUMNS", [*COLUMNS, NUM_TOKENS])
    samples = [EncodedSample("k", np.zeros((8, 2), np.int16), 0.08, "shard", {"text": "t"})]
    assert build_table(recorded, samples).schema == recorded
    monkeypatch.setattr(schema, "COLUMNS", COLUMNS[:-1])  # a column the recorded schema has, no longer made
    with pytest.raises(UnknownColumn, match="'source'.*output.dir"):
        build_table(recorded, samples)



def test_a_column_made_from_the_decoded_audio_gets_its_facts_from_the_writer(tmp_path, monkeypatch):
    monkeypatch.setattr(schema, "COLUMNS", [*COLUMNS, SOURCE_RATE])
    writer = ShardWriter(Storage(str(tmp_path)), "s", "shard", output_schema([]))
    audio = Audio(np.zeros(2400, np.float32), source_rate=44100, source_channels=2, duration_s=0.1)
    writer.add("a", np.zeros((8, 3), np.int16), 0.1, {}, audio)  # as the shard processor adds an encoded clip
    writer.add("b", np.zeros((8, 3), np.int16), 0.1, {})  # as a writer without decoded audio (demo.synth_tokens)
    assert writer.table().column("source_rate").to_pylist() == [44100, None]
