"""Reading the output: the training dataset, other readers, inspect and decode."""

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.reading.dataset import TokenDataset, apply_delay_pattern, undo_delay_pattern
from pipeline.reading.inspect import main as inspect_main
from pipeline.run import run_job
from tests.corpus import mixed_tar
from tests.test_pipeline import config_for, read_rows


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    tmp = tmp_path_factory.mktemp("consumers")
    for i in range(5):
        mixed_tar(str(tmp / f"in/c-{i}.tar"), f"c{i}", 4 + i, seed=50 + i)
    config = config_for(tmp, {"kind": "webdataset", "urls": [str(tmp / "in/c-{0..4}.tar")]})
    assert run_job(config).status == "complete"
    rows = {r["key"]: r for r in read_rows(config.output.dir)}
    return config.output.dir, rows


def keys_seen(out, world, workers, **kwargs):
    seen = []
    for rank in range(world):
        dataset = TokenDataset(out, rank=rank, world_size=world, **kwargs)
        for row in DataLoader(dataset, batch_size=None, num_workers=workers):
            seen.append(row["key"])
            assert row["codes"].dtype == torch.int64 and row["codes"].shape == (row["num_codebooks"], row["num_frames"])
    return seen


@pytest.mark.parametrize("shuffle", [0, 3])
def test_two_ranks_two_workers_see_every_row_once(output, shuffle):
    out, rows = output
    seen = keys_seen(out, world=2, workers=2, shuffle_buffer=shuffle, seed=1)
    assert Counter(seen) == Counter(list(rows))
    if shuffle:
        again = []
        for rank in range(2):
            dataset = TokenDataset(out, rank=rank, world_size=2, shuffle_buffer=shuffle, seed=1)
            dataset.set_epoch(1)
            again += [row["key"] for row in DataLoader(dataset, batch_size=None, num_workers=2)]
        assert Counter(again) == Counter(list(rows)) and again != seen


def test_codes_match_and_filters_apply(output):
    out, rows = output
    for row in TokenDataset(out):
        np.testing.assert_array_equal(row["codes"].numpy(), np.array(rows[row["key"]]["codes"]))
    long_ones = {r["key"] for r in TokenDataset(out, min_frames=30)}
    assert long_ones == {k for k, r in rows.items() if r["num_frames"] >= 30} and 0 < len(long_ones) < len(rows)
    speech = {r["key"] for r in TokenDataset(out, where={"category": "speech"})}
    assert speech == {k for k, r in rows.items() if json.loads(r["metadata"])["category"] == "speech"}
    assert {r["key"] for r in TokenDataset(out, filter_fn=lambda r: r["key"].startswith("c1_"))} == {
        k for k in rows if k.startswith("c1_")}


def test_done_records_of_a_run_carry_their_files_row_groups(output):
    """The worker's commit record holds what `ShardWriter.publish` measured, so readers plan without the files."""
    import pyarrow.parquet as pq

    from pipeline.runstate import read_run
    from pipeline.storage import Storage

    out, rows = output
    done = read_run(Storage(out)).done()
    for record in done.values():
        (name,) = [f for f in record.files if f.endswith(".parquet")]
        metadata = pq.ParquetFile(os.path.join(out, name)).metadata
        groups = record.row_groups[name]
        assert [n for n, _, _ in groups] == [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        assert sum(n for n, _, _ in groups) == record.rows and sum(f for _, f, _ in groups) == record.frames
    assert sum(r.rows for r in done.values()) == len(rows)


def test_delay_pattern_round_trip():
    codes = torch.arange(4 * 6).reshape(4, 6)
    delayed = apply_delay_pattern(codes, pad_id=-1)
    assert delayed.shape == (4, 9)
    assert delayed[0, :6].tolist() == codes[0].tolist() and delayed[0, 6:].tolist() == [-1, -1, -1]
    assert delayed[3, :3].tolist() == [-1, -1, -1] and delayed[3, 3:].tolist() == codes[3].tolist()
    assert torch.equal(undo_delay_pattern(delayed), codes)


def test_other_readers_load_the_same_codes(output, ray_local):
    import datasets
    import polars
    import pyarrow.dataset as pads
    import ray

    out, rows = output
    expected = {k: r["codes"] for k, r in rows.items()}
    pattern = os.path.join(out, "data", "*.parquet")
    hf = datasets.load_dataset("parquet", data_files=pattern, split="train")
    assert {r["key"]: r["codes"] for r in hf} == expected
    arrow = pads.dataset(os.path.join(out, "data"), format="parquet").to_table().to_pylist()
    assert {r["key"]: r["codes"] for r in arrow} == expected
    pl = polars.read_parquet(pattern)
    assert {k: [list(c) for c in v] for k, v in zip(pl["key"].to_list(), pl["codes"].to_list())} == expected
    ray_rows = ray.data.read_parquet(os.path.join(out, "data")).take_all()
    assert {r["key"]: [list(c) for c in r["codes"]] for r in ray_rows} == expected


def test_inspect_prints_a_summary_and_writes_a_report(output, capsys):
    out, rows = output
    assert inspect_main([out]) == 0
    text = capsys.readouterr().out
    assert f"samples: {len(rows)} encoded" in text
    assert "per category:" in text and "speech" in text and "codebook 7:" in text and "entropy" in text
    report = open(os.path.join(out, "report.html")).read()
    assert report.count('<img src="report_files/') >= 5 and "clip length" in report


def test_inspect_decodes_a_sample_to_audio(output, tmp_path, capsys):
    import soundfile

    out, rows = output
    key, row = next(iter(rows.items()))
    wav = tmp_path / "one.wav"
    assert inspect_main([out, "--decode", key, "-o", str(wav)]) == 0
    audio, rate = soundfile.read(wav)
    assert rate == 24000 and abs(audio.size - row["duration_s"] * 24000) <= 1 and np.abs(audio).max() > 0
    assert inspect_main([out, "--decode", "no-such-key"]) == 2
