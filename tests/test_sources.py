"""The sources people have besides tars and HF datasets: folders of audio files (more kinds below)."""

import json
import io
import os

import numpy as np
import pytest
import soundfile

from pipeline.config import load_config
from pipeline.run import run_job
from pipeline.reading.verify import vanished_source_files, verify
from pipeline.runstate.plan import read_plan
from pipeline.sources import list_shards, read_shard
from pipeline.storage import Storage
from demo.synth import random_sample
from tests.test_pipeline import config_for, expected_codes, manifest_of, read_rows, records_of

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
    assert verify(str(tmp_path / "out")) == []  # the output matches its records ...
    gone = vanished_source_files(str(tmp_path / "out"))  # ... and verify --sources says what the source lost
    assert len(gone) == 1 and f"{tmp_path / 'in'}/top.wav" in gone[0]


def test_overwrite_clears_the_recorded_plan_so_files_are_grouped_anew(tmp_path, ray_local):
    write_audio_files(tmp_path / "in", ["a/1.wav", "a/3.flac", "b/5.mp3"], seed=0)
    config = config_for(tmp_path, {"kind": "files", "urls": [str(tmp_path / FILES_PATTERN)], "files_per_shard": 2})
    assert run_job(config).status == "complete"
    os.remove(tmp_path / "in/a/1.wav")
    write_audio_files(tmp_path / "in", ["a/0.wav"], seed=1)
    config.output.overwrite, config.source.files_per_shard = True, 3  # other settings: the output is replaced
    assert run_job(config).status == "complete"
    plan = list(read_plan(Storage(str(tmp_path / "out"))))
    assert [[m[0] for m in s["members"]] for s in plan] == [["a/0.wav", "a/3.flac", "b/5.mp3"]]
    assert sorted(r["key"] for r in read_rows(tmp_path / "out")) == ["a/0", "a/3", "b/5"]


def write_recordings(folder) -> dict:
    """Two long recordings: name -> (path, float32 samples as soundfile reads them, rate)."""
    from demo.synth import synth_clip

    rng, recordings = np.random.default_rng(5), {}
    for name, seconds, rate, channels in (("rec/long.flac", 140.0, 44100, 2), ("rec/short.wav", 20.0, 16000, 1)):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, synth_clip(rng, seconds, rate, channels), rate, subtype="PCM_16")
        recordings[name] = (path, soundfile.read(path, dtype="float32", always_2d=True)[0], rate)
    return recordings


# (audio_filepath, offset, duration): unsorted, one past the end, one over the whole-clip limit (read in blocks)
NEMO_SEGMENTS = [("rec/long.flac", 10.123, 3.3), ("rec/short.wav", 1.0, 2.5), ("rec/long.flac", 0.5, 2.0),
                 ("rec/long.flac", 13.5, 125.2), ("rec/long.flac", 138.0, 5.0), ("rec/short.wav", None, None)]
NEMO_BAD_LINES = ["not json", json.dumps({"offset": 1.0}), json.dumps({"audio_filepath": "rec/short.wav", "duration": -1}),
                  json.dumps({"audio_filepath": "../outside.wav"})]


def write_nemo_manifest(path, segments, bad_lines=(), mode="w") -> None:
    with open(path, mode) as f:
        for i, (audio, offset, duration) in enumerate(segments):
            entry = {"audio_filepath": audio, "text": f"segment {i}", "speaker": f"s{i % 2}"}
            entry.update({k: v for k, v in (("offset", offset), ("duration", duration)) if v is not None})
            f.write(json.dumps(entry) + "\n")
        for line in bad_lines:
            f.write(line + "\n")


def nemo_config(tmp_path, *overrides):
    return load_config(None, ["source.kind=nemo", f"source.path={tmp_path}/manifest.json", "source.lines_per_shard=20",
                              f"source.audio_root={tmp_path}/rec", "codec.model=random:tiny",
                              f"output.dir={tmp_path}/out", *overrides])


def test_nemo_segments_encode_as_the_same_samples_written_as_a_file(tmp_path, tiny_codec):
    from pipeline.audio.decode import decode_audio

    recordings = write_recordings(tmp_path)
    write_nemo_manifest(tmp_path / "manifest.json", NEMO_SEGMENTS, NEMO_BAD_LINES)
    config = nemo_config(tmp_path)
    (shard,) = list_shards(config.source).settle(Storage(config.output.dir))
    samples = {s.key: s for s in read_shard(shard, config.source)}
    for line, (audio, offset, duration) in enumerate(NEMO_SEGMENTS, start=1):
        raw = samples[f"manifest.json:{line}"]
        _, array, rate = recordings[audio]
        start = round((offset or 0) * rate)
        frames = len(array) - start if duration is None else round(duration * rate)
        if start + frames > len(array):
            assert raw.error.reason == "segment_past_end" and f"line {line}" in raw.error.detail
            continue
        assert raw.error is None and raw.metadata["text"] == f"segment {line - 1}"
        cut = io.BytesIO()
        soundfile.write(cut, array[start:start + frames], rate, format="WAV", subtype="FLOAT")
        want = decode_audio(cut.getvalue(), 24000, "HQ", 3600)
        got = decode_audio(raw.audio, 24000, "HQ", 3600)
        assert type(got.wave) is type(want.wave)  # the long segment is decoded in blocks, as its cut file is
        np.testing.assert_array_equal(got.wave[:], want.wave[:])  # the codec's input, bit for bit
        if duration is None or duration < 60:  # the codes too (the 125 s one's twice would take most of a minute)
            np.testing.assert_array_equal(tiny_codec.encode([got.wave], 2.0)[0], tiny_codec.encode([want.wave], 2.0)[0])
    first_bad = len(NEMO_SEGMENTS) + 1
    reasons = [samples[f"manifest.json:{first_bad + i}"].error for i in range(len(NEMO_BAD_LINES))]
    assert [e.reason for e in reasons] == ["bad_manifest_line", "missing_field", "bad_segment", "outside_audio_root"]
    assert all(f"line {first_bad + i}" in e.detail for i, e in enumerate(reasons))


def test_nemo_manifest_whose_recorded_lines_changed_is_refused(tmp_path):
    from pipeline.runstate import IdentityChanged

    write_nemo_manifest(tmp_path / "manifest.json", NEMO_SEGMENTS)
    config = nemo_config(tmp_path, "source.lines_per_shard=4")
    storage = Storage(config.output.dir)
    first = list_shards(config.source).settle(storage)
    write_nemo_manifest(tmp_path / "manifest.json", NEMO_SEGMENTS[:1], mode="a")  # appended: a new shard
    assert [s.members[:2] for s in list_shards(config.source).settle(storage)] == [(0, 4), (4, 2), (6, 1)]
    lines = (tmp_path / "manifest.json").read_text().splitlines()
    lines[5] = lines[5].replace("segment 5", "segment five")
    (tmp_path / "manifest.json").write_text("\n".join(lines) + "\n")
    with pytest.raises(IdentityChanged, match="lines 5-6 of manifest"):
        list_shards(config.source).settle(storage)
    assert first[0].members[:2] == (0, 4)


def read_errors(out_dir) -> list[dict]:
    folder = os.path.join(out_dir, "errors")
    return [json.loads(line) for name in sorted(os.listdir(folder)) for line in open(os.path.join(folder, name))]


def test_nemo_run_writes_segment_codes_and_line_errors_the_audit_rereads_segments_and_a_rerun_adds_only_new_lines(
        tmp_path, ray_local, tiny_codec):
    from pipeline.reading.fidelity import RowRef, read_originals

    recordings = write_recordings(tmp_path)
    short = [("rec/short.wav", 1.0, 2.5), ("rec/short.wav", 4.0, 1.25), ("rec/short.wav", 19.0, 2.0)]
    write_nemo_manifest(tmp_path / "manifest.json", short, ["not json"])
    config = config_for(tmp_path, {"kind": "nemo", "path": str(tmp_path / "manifest.json"), "lines_per_shard": 3})
    summary = run_job(config)
    assert summary.status == "complete" and summary.shards_run == 2
    rows = {r["key"]: r for r in read_rows(tmp_path / "out")}
    _, array, rate = recordings["rec/short.wav"]
    for line, (audio, offset, duration) in enumerate(short[:2], start=1):
        cut = io.BytesIO()
        soundfile.write(cut, array[round(offset * rate):][:round(duration * rate)], rate, format="WAV", subtype="FLOAT")
        row = rows[f"manifest.json:{line}"]
        np.testing.assert_array_equal(np.array(row["codes"]), expected_codes(tiny_codec, cut.getvalue()))
        assert (row["text"], row["offset"], row["duration"]) == (f"segment {line - 1}", offset, duration)
        assert json.loads(row["metadata"])["speaker"] == f"s{line - 1}"
    errors = {e["key"]: e for e in read_errors(tmp_path / "out")}
    assert errors["manifest.json:3"]["reason"] == "segment_past_end"
    assert errors["manifest.json:4"]["reason"] == "bad_manifest_line" and "line 4" in errors["manifest.json:4"]["detail"]

    # the fidelity audit finds each row's segment through the recorded line range of its data file
    import pyarrow.parquet as pq

    wanted = [RowRef(str(tmp_path / "out"), f"data/{name}", 0, i, row["key"], row["source"], row["duration_s"])
              for name in sorted(os.listdir(tmp_path / "out/data"))
              for i, row in enumerate(pq.read_table(tmp_path / "out/data" / name).to_pylist())]
    originals = read_originals(manifest_of(tmp_path / "out"), {}, wanted, 24000)
    assert sorted(originals) == ["manifest.json:1", "manifest.json:2"]

    write_nemo_manifest(tmp_path / "manifest.json", short[:1], mode="a")
    again = run_job(config)
    assert (again.status, again.shards_skipped, again.shards_run) == ("complete", 2, 1)
    assert sorted(r["key"] for r in read_rows(tmp_path / "out")) == ["manifest.json:1", "manifest.json:2",
                                                                    "manifest.json:5"]


def write_cutset(tmp_path, recordings, count: int = 4) -> list:
    """Cuts over the long recordings, with supervisions, written by lhotse as cuts.jsonl.gz (paths relative to it)."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    assert os.getcwd() == str(tmp_path)  # lhotse records the paths as given: relative to the manifest's folder
    long, short = (Recording.from_file(name) for name in ("rec/long.flac", "rec/short.wav"))
    spans = [(long, 2.25, 1.5, 1), (short, 0.125, 3.0, 0), (long, 135.0, 9.0, 0), (long, 5.0, 121.0, 0)]
    cuts = []
    for i, (recording, start, duration, channel) in enumerate(spans[:count]):
        supervision = SupervisionSegment(f"sup{i}", recording.id, start, duration, channel=channel, text=f"words {i}",
                                         speaker=f"spk{i % 2}", language="en")
        cuts.append(MonoCut(f"cut{i}", start, duration, channel, recording=recording, supervisions=[supervision]))
    CutSet.from_cuts(cuts).to_file(str(tmp_path / "cuts.jsonl.gz"))
    return cuts


def cut_file_wave(array, rate, start, duration, channels):
    from pipeline.audio.decode import decode_audio

    cut = io.BytesIO()
    first = round(start * rate)
    soundfile.write(cut, array[first:first + round(duration * rate), channels], rate, format="WAV", subtype="FLOAT")
    return decode_audio(cut.getvalue(), 24000, "HQ", 3600)


def test_lhotse_cutset_cuts_are_read_as_their_recordings_segments_with_supervisions(tmp_path, tiny_codec, monkeypatch):
    from pipeline.audio.decode import decode_audio

    monkeypatch.chdir(tmp_path)
    recordings = write_recordings(tmp_path)
    cuts = write_cutset(tmp_path, recordings)
    config = load_config(None, ["source.kind=lhotse", f"source.path={tmp_path}/cuts.jsonl.gz", "codec.model=random:tiny",
                                f"output.dir={tmp_path}/out"])
    (shard,) = list_shards(config.source).settle(Storage(config.output.dir))
    samples = {s.key: s for s in read_shard(shard, config.source)}
    assert samples["cut2"].error.reason == "segment_past_end"
    for cut in (cuts[0], cuts[1], cuts[3]):
        raw = samples[cut.id]
        assert raw.error is None, raw.error
        assert (raw.metadata["text"], raw.metadata["speaker"], raw.metadata["language"]) == (
            cut.supervisions[0].text, cut.supervisions[0].speaker, "en")
        _, array, rate = recordings[cut.recording.sources[0].source]
        want = cut_file_wave(array, rate, cut.start, cut.duration, [cut.channel])
        got = decode_audio(raw.audio, 24000, "HQ", 3600)
        np.testing.assert_array_equal(got.wave[:], want.wave[:])  # the cut's channel only, the cut's frames
        if cut.duration < 60:
            np.testing.assert_array_equal(tiny_codec.encode([got.wave], 2.0)[0], tiny_codec.encode([want.wave], 2.0)[0])


def test_lhotse_shar_folder_is_one_shard_per_shar_shard_with_lhotse_audio(tmp_path, tiny_codec, monkeypatch):
    from lhotse import CutSet

    from pipeline.audio.decode import decode_audio, to_model_audio

    monkeypatch.chdir(tmp_path)
    recordings = write_recordings(tmp_path)
    cuts = write_cutset(tmp_path, recordings, count=2)
    (tmp_path / "shar").mkdir()
    CutSet.from_cuts(cuts).to_shar(str(tmp_path / "shar"), fields={"recording": "flac"}, shard_size=1)
    config = load_config(None, ["source.kind=lhotse", f"source.path={tmp_path}/shar", "codec.model=random:tiny",
                                f"output.dir={tmp_path}/out"])
    shards = list_shards(config.source).shards
    assert len(shards) == 2
    rows = [s for shard in shards for s in read_shard(shard, config.source)]
    assert [(r.key, r.metadata["text"]) for r in rows] == [("cut0", "words 0"), ("cut1", "words 1")]
    for raw, lhotse_cut in zip(rows, CutSet.from_shar(in_dir=str(tmp_path / "shar"))):
        got = decode_audio(raw.audio, 24000, "HQ", 3600)
        want = to_model_audio(lhotse_cut.load_audio().T, lhotse_cut.sampling_rate, 24000, "HQ", 3600)
        np.testing.assert_array_equal(tiny_codec.encode([got.wave], 2.0)[0], tiny_codec.encode([want.wave], 2.0)[0])


def test_lhotse_run_writes_cut_rows_with_supervision_columns(tmp_path, ray_local, tiny_codec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recordings = write_recordings(tmp_path)
    cuts = write_cutset(tmp_path, recordings, count=2)
    with open(tmp_path / "cuts.jsonl.gz", "ab") as f:  # a second gzip member: a line lhotse cannot read
        import gzip

        f.write(gzip.compress(b"{\"id\": \"broken\"}\n"))
    config = config_for(tmp_path, {"kind": "lhotse", "path": str(tmp_path / "cuts.jsonl.gz"), "lines_per_shard": 2})
    assert run_job(config).status == "complete"
    rows = {r["key"]: r for r in read_rows(tmp_path / "out")}
    assert sorted(rows) == ["cut0", "cut1"]
    for cut in cuts:
        _, array, rate = recordings[cut.recording.sources[0].source]
        want = cut_file_wave(array, rate, cut.start, cut.duration, [cut.channel])
        np.testing.assert_array_equal(np.array(rows[cut.id]["codes"]), tiny_codec.encode([want.wave], 2.0)[0])
        assert (rows[cut.id]["text"], rows[cut.id]["speaker"]) == (f"words {cut.id[-1]}", cut.supervisions[0].speaker)
    (error,) = read_errors(tmp_path / "out")
    assert error["key"] == "cuts.jsonl.gz:3" and error["reason"] == "bad_manifest_line" and "line 3" in error["detail"]


def test_dataset_card_lets_load_dataset_read_the_output_folder_and_its_snippet_decodes_a_row(tmp_path, ray_local):
    import datasets

    from pipeline.reading.card import main as card_main

    write_audio_files(tmp_path / "in", ["a/1.wav", "a/2.flac"], seed=6)
    config = config_for(tmp_path, {"kind": "files", "urls": [str(tmp_path / FILES_PATTERN)]})
    assert run_job(config).status == "complete"
    out = tmp_path / "out"
    assert card_main([str(out)]) == 0
    card = (out / "README.md").read_text()
    for fact in ("| convention | `model_card` |", "| bandwidth | 2 kbps |", "| rows | 2 |", "| frame rate | 25 frames/s |",
                 '"kind": "files"'):
        assert fact in card
    rows = datasets.load_dataset(str(out), split="train")  # through the card's configs: data/ only
    assert sorted(rows["key"]) == ["a/1", "a/2"]
    assert rows.features["codes"] == datasets.List(datasets.List(datasets.Value("int16")))
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0].replace('"ORG/NAME"', repr(str(out)))
    scope: dict = {}
    exec(snippet, scope)
    assert scope["audio"].size == round(scope["row"]["duration_s"] * 24000)


@pytest.mark.parametrize("overrides, key", [
    (["source.kind=files"], "source.urls"),
    (["source.kind=files", "source.urls=[a.flac]", "source.files_per_shard=0"], "source.files_per_shard"),
    (["source.kind=nemo"], "source.path"),
    (["source.kind=nemo", "source.path=m.json", "source.lines_per_shard=0"], "source.lines_per_shard"),
    (["source.kind=lhotse"], "source.path"),
])
def test_new_source_kinds_without_their_settings_fail_at_start_naming_the_key(overrides, key):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(None, [*overrides, "output.dir=x"])
