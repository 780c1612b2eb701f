"""The sources people have besides tars and HF datasets: folders of audio files (more kinds below)."""

import json
import os

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.job import run_job
from pipeline.sources import list_shards, read_shard
from pipeline.storage import Storage
from pipeline.synth import random_sample
from tests.test_pipeline import config_for, expected_codes, read_rows, records_of

FILES_PATTERN = "in/**/*.{wav,flac,mp3,txt,json}"


def write_audio_files(root, names: list[str], seed: int) -> dict:
    """Audio files (the extension picks the format) with a .txt and a .json sidecar each; key -> the sample."""
    rng, written = np.random.default_rng(seed), {}
    for name in names:
        stem, ext = name.rsplit(".", 1)
        sample = random_sample(rng, stem, float(rng.uniform(0.2, 1.5)), ext)
        for member_ext, data in sample.members.items():
            path = os.path.join(root, f"{stem}.{member_ext}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        written[stem] = sample
    return written


def files_config(tmp_path, *overrides):
    return load_config(None, ["source.kind=files", f"source.urls=['{tmp_path}/{FILES_PATTERN}']",
                              "source.files_per_shard=2", "codec.model=random:tiny", f"output.dir={tmp_path}/out",
                              *overrides])


def test_files_added_in_the_sort_order_go_to_new_shards_and_recorded_ones_keep_their_files(tmp_path):
    write_audio_files(tmp_path / "in", ["a/1.wav", "a/3.flac", "b/5.mp3"], seed=0)
    config = files_config(tmp_path)
    storage = Storage(config.output.dir)
    first = list_shards(config.source).settle(storage)
    assert [[m[0] for m in s.members] for s in first] == [["a/1.wav", "a/3.flac"], ["b/5.mp3"]]
    write_audio_files(tmp_path / "in", ["a/2.wav", "b/4.flac"], seed=1)  # both sort between recorded files
    second = list_shards(config.source).settle(storage)
    assert second[:2] == first  # same ids, same files: done shards stay done and their data stays valid
    assert [[m[0] for m in s.members] for s in second[2:]] == [["a/2.wav", "b/4.flac"]]
    assert list_shards(config.source).settle(storage) == second  # nothing new: nothing recorded


def test_files_missing_or_with_bad_sidecars_are_error_records_not_a_failed_shard(tmp_path):
    write_audio_files(tmp_path / "in", ["x/1.wav", "x/2.flac", "x/3.wav"], seed=2)
    config = files_config(tmp_path, "source.files_per_shard=10")
    (shard,) = list_shards(config.source).settle(Storage(config.output.dir))
    os.remove(tmp_path / "in/x/1.wav")
    (tmp_path / "in/x/2.json").write_text("{not json")
    samples = {s.key: s for s in read_shard(shard, config.source)}
    assert samples["x/1"].error.reason == "missing_file"
    assert samples["x/2"].error.reason == "bad_metadata"
    assert samples["x/3"].error is None and samples["x/3"].metadata["text"] == "sample x/3"


def test_files_run_keys_codes_sidecars_and_a_rerun_after_additions_leaves_done_shards_alone(tmp_path, ray_local,
                                                                                           tiny_codec):
    written = write_audio_files(tmp_path / "in", ["top.wav", "a/b/deep.flac", "a/song.mp3"], seed=3)
    config = config_for(tmp_path, {"kind": "files", "urls": [str(tmp_path / FILES_PATTERN)], "files_per_shard": 2})
    assert run_job(config).status == "complete"
    rows = {r["key"]: r for r in read_rows(tmp_path / "out")}
    assert sorted(rows) == ["a/b/deep", "a/song", "top"]  # relative to the pattern's fixed prefix, no extension
    for key, sample in written.items():
        audio = next(data for ext, data in sample.members.items() if ext not in ("txt", "json"))
        np.testing.assert_array_equal(np.array(rows[key]["codes"]), expected_codes(tiny_codec, audio))
        assert rows[key]["text"] == f"sample {key}"
        assert json.loads(rows[key]["metadata"]) == json.loads(sample.members["json"])
    done = records_of(tmp_path / "out")
    data = {name: os.stat(tmp_path / "out/data" / name).st_mtime_ns for name in os.listdir(tmp_path / "out/data")}

    write_audio_files(tmp_path / "in", ["a/b/added.wav", "z/new.flac"], seed=4)
    os.remove(tmp_path / "in/top.wav")  # vanished from a done shard: nothing written changes
    again = run_job(config)
    assert again.status == "complete" and again.shards_skipped == len(done) and again.shards_run == 1
    assert {name: os.stat(tmp_path / "out/data" / name).st_mtime_ns for name in data} == data
    records = records_of(tmp_path / "out")
    assert {k: records[k] for k in done} == done
    assert sorted(r["key"] for r in read_rows(tmp_path / "out")) == ["a/b/added", "a/b/deep", "a/song", "top", "z/new"]
