"""Nothing lost, nothing duplicated: bad samples, bad shards, the failure guard, killed processes."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.dataset as pads
import pytest

from codec import load_codec
from pipeline.run import run_job
from pipeline.driver import GuardTripped
from pipeline.telemetry.events import ActorLost, ActorsStarted
from pipeline.run import Progress
from pipeline.run import main as cli_main
from demo.synth import SynthSample, encode_audio, synth_clip, write_tar
from pipeline.reading.verify import main as verify_main
from pipeline.reading.verify import verify
from tests.corpus import mixed_tar, wav_bytes
from tests.test_pipeline import config_for, expected_codes, read_rows, records_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def errors_of(out_dir) -> list[dict]:
    folder = os.path.join(out_dir, "errors")
    records = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name)) as f:
            records += [json.loads(line) for line in f]
    return records


def test_bad_samples_get_codes_or_a_specific_error(tmp_path, ray_local):
    rng = np.random.default_rng(0)
    flac = encode_audio(synth_clip(rng, 2.0, 44100), 44100, "flac")
    mp3 = encode_audio(synth_clip(rng, 2.0, 44100), 44100, "mp3")
    nan_clip = synth_clip(rng, 0.5, 16000)
    nan_clip[100] = np.nan
    good = {
        "six_channels": ("wav", wav_bytes(synth_clip(rng, 1.0, 16000, 6), 16000, "PCM_16")),
        "hires": ("flac", _flac_24bit(synth_clip(rng, 1.0, 96000), 96000)),
        "mulaw": ("wav", wav_bytes(synth_clip(rng, 1.0, 8000), 8000, "ULAW")),
        "tiny": ("wav", wav_bytes(synth_clip(rng, 0.001, 16000), 16000, "PCM_16")),
        "silence": ("wav", wav_bytes(np.zeros((24000, 1), np.float32), 24000, "PCM_16")),
        "long": ("flac", encode_audio(synth_clip(rng, 9.0, 24000), 24000, "flac")),
        "dup": ("wav", wav_bytes(synth_clip(rng, 0.4, 16000), 16000, "PCM_16")),
    }
    bad = {
        "zero_bytes": ("flac", b"", "empty_file"),
        "truncated_flac": ("flac", flac[: len(flac) // 2], "undecodable"),
        "truncated_mp3": ("mp3", mp3[: len(mp3) // 2], "truncated"),
        "random_bytes": ("flac", bytes(rng.integers(0, 256, 4000, dtype=np.uint8)), "undecodable"),
        "nan": ("wav", wav_bytes(nan_clip, 16000, "FLOAT"), "non_finite"),
    }
    samples = [SynthSample(k, {ext: data}, 0) for k, (ext, data) in good.items()]
    samples += [SynthSample(k, {ext: data}, 0) for k, (ext, data, _) in bad.items()]
    samples.append(SynthSample("no_audio", {"txt": b"only a transcript"}, 0))
    samples.append(SynthSample("dup", {"wav": wav_bytes(synth_clip(rng, 0.3, 16000), 16000, "PCM_16")}, 0))
    write_tar(str(tmp_path / "bad.tar"), samples)

    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "bad.tar")]},
                        "codec.window_s=2.0", "codec.context_s=1.0")
    summary = run_job(config)
    assert summary.status == "complete"

    reasons = {e["key"]: e["reason"] for e in errors_of(config.output.dir)}
    expected_reasons = {k: reason for k, (_, _, reason) in bad.items()}
    expected_reasons.update(no_audio="no_audio", dup="duplicate_key")
    assert reasons == expected_reasons

    rows = {r["key"]: r for r in read_rows(config.output.dir)}
    assert set(rows) == set(good)
    codec = load_codec("random:tiny", device="cpu", window_s=2.0, context_s=1.0)
    for key, (_, data) in good.items():
        codes = np.array(rows[key]["codes"], np.int16)
        expected = expected_codes(codec, data)
        assert codes.shape == expected.shape
        if key == "long":  # windowed: agreement with the single pass, not identity
            assert (codes == expected).mean() > 0.95
        else:
            np.testing.assert_array_equal(codes, expected)
    assert rows["tiny"]["num_frames"] == 1 and rows["long"]["num_frames"] == 225
    entry = next(iter(records_of(config.output.dir).values()))
    assert entry.samples_read == len(samples) == entry.rows + entry.errors


def _flac_24bit(array, rate):
    import io

    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, array, rate, format="FLAC", subtype="PCM_24")
    return buffer.getvalue()


def test_bad_shards_are_recorded_without_partial_rows_and_the_run_goes_on(tmp_path, ray_local, capsys):
    mixed_tar(str(tmp_path / "in/good.tar"), "g", 3, seed=1)
    mixed_tar(str(tmp_path / "in/cut.tar"), "c", 4, seed=2)
    data = (tmp_path / "in/cut.tar").read_bytes()
    (tmp_path / "in/cut.tar").write_bytes(data[: len(data) * 2 // 3])
    urls = [str(tmp_path / f"in/{n}.tar") for n in ("good", "missing", "cut")]
    config_for(tmp_path, {"kind": "webdataset", "urls": urls})
    status = cli_main([str(tmp_path / "run.yaml")])
    err = capsys.readouterr().err
    assert status == 1 and "status: INCOMPLETE" in err and "rerun the same command" in err

    by_source = {os.path.basename(e.source): e for e in records_of(tmp_path / "out").values()}
    assert by_source["good.tar"].status == "done"
    assert by_source["missing.tar"].status == "failed" and by_source["missing.tar"].reason == "missing_shard"
    cut = by_source["cut.tar"]
    assert cut.status == "failed" and cut.reason == "corrupt_tar"
    # the cut tar read some samples before it broke; none of them reach data/ (glob readers would see them),
    # its shard-level record stands for all of them and a rerun redoes it whole
    assert cut.samples_read >= 1 and cut.rows == 0 and cut.files == [f"errors/{cut.shard_id}.jsonl"]
    assert sorted(os.listdir(tmp_path / "out/data")) == [f"{by_source['good.tar'].shard_id}.parquet"]
    assert {r["key"] for r in read_rows(tmp_path / "out")} == {f"g_{i:03d}" for i in range(3)}
    errors = errors_of(tmp_path / "out")
    assert sorted(e["reason"] for e in errors if e["key"] is None) == ["corrupt_tar", "missing_shard"]
    assert not [e for e in errors if e["shard"] == cut.shard_id and e["key"] is not None]


def test_hf_bad_files_are_shard_errors(tmp_path, ray_local):
    from tests.corpus import hf_dataset

    os.makedirs(tmp_path / "pq")
    hf_dataset(3, seed=3).to_parquet(str(tmp_path / "pq/good.parquet"))
    (tmp_path / "pq/fake.parquet").write_bytes(b"this is not parquet" * 10)
    hf_dataset(2, seed=4).rename_column("audio", "sound").to_parquet(str(tmp_path / "pq/renamed.parquet"))
    config = config_for(tmp_path, {"kind": "hf", "path": str(tmp_path / "pq")})
    summary = run_job(config)
    assert summary.status == "incomplete" and summary.totals["rows"] == 3
    errors = {os.path.basename(e["source"]): e["reason"] for e in errors_of(config.output.dir) if e["key"] is None}
    assert errors == {"fake.parquet": "corrupt_file", "renamed.parquet": "missing_audio_column"}


def test_guard_stops_a_run_that_mostly_fails(tmp_path, ray_local, capsys):
    rng = np.random.default_rng(5)
    for i in range(3):
        noise = [SynthSample(f"n{i}_{j}", {"flac": bytes(rng.integers(0, 256, 2000, dtype=np.uint8))}, 0) for j in range(8)]
        write_tar(str(tmp_path / f"in/noise-{i}.tar"), noise)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/noise-{0..2}.tar")]},
                        "guard.min_samples=10", "ray.num_actors=1")
    with pytest.raises(GuardTripped, match=r"16 of 16 samples failed.*undecodable x16"):
        run_job(config)
    assert len(records_of(config.output.dir)) == 2  # stopped before the third shard

    from tests.corpus import hf_dataset

    os.makedirs(tmp_path / "pq")
    for i in range(3):
        hf_dataset(2, seed=i).to_parquet(str(tmp_path / f"pq/part-{i}.parquet"))
    config_for(tmp_path, {"kind": "hf", "path": str(tmp_path / "pq"), "audio_column": "wav"},
               f"output.dir={tmp_path}/out_hf", "guard.min_shards=2", "ray.num_actors=1")
    assert cli_main([str(tmp_path / "run.yaml"), f"output.dir={tmp_path}/out_hf", "source.audio_column=wav",
                     "guard.min_shards=2", "ray.num_actors=1"]) == 3
    assert "missing_audio_column" in capsys.readouterr().err


def test_killed_actor_mid_shard_is_replaced_and_the_shard_appears_once(tmp_path, ray_local):
    import ray

    samples = mixed_tar(str(tmp_path / "in/big.tar"), "big", 40, seed=6, max_seconds=4.0)
    others = mixed_tar(str(tmp_path / "in/other.tar"), "other", 30, seed=7)
    # one actor holds both shards (two in flight): its death loses both, and it must be replaced once,
    # not once per lost shard (a second replacement would drop the first one's retry; max_attempts=2
    # leaves no room for that)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/big.tar"), str(tmp_path / "in/other.tar")]},
                        "ray.num_actors=1", "ray.pool_seconds=2", "ray.max_attempts=2")
    events, killed, replacements = [], [], []

    def kill_once_it_has_encoded_something(actor):
        pid = ray.get(actor.facts.remote()).pid
        deadline = time.time() + 120
        while time.time() < deadline:
            progress = ray.get(actor.progress.remote())
            if progress.shards == 2 and progress.samples > 0:
                os.kill(pid, signal.SIGKILL)
                killed.append(progress.samples)
                return
            time.sleep(0.02)

    shown = io.StringIO()
    progress = Progress(shown)  # what the CLI would print

    def on_event(event):
        events.append(type(event))
        progress(event)
        if isinstance(event, ActorLost):
            replacements.append(event)
        if isinstance(event, ActorsStarted) and events.count(ActorsStarted) == 1:
            threading.Thread(target=kill_once_it_has_encoded_something, args=(event.actors[0],)).start()

    summary = run_job(config, on_event)
    assert killed and summary.status == "complete"
    # both shards lost, one replacement; neither charged (which one killed it is unknown), each rerun alone
    assert [(len(r.lost), r.charged) for r in replacements] == [(2, None)]
    assert "replaced, its shards run again, each alone, uncharged" in shown.getvalue()
    assert all(r.attempts == 1 for r in records_of(config.output.dir).values())
    keys = [r["key"] for r in read_rows(config.output.dir)]
    assert sorted(keys) == sorted(s.key for s in samples + others)
    assert sorted(os.listdir(tmp_path / "out/data")) == sorted(f"{shard}.parquet" for shard in records_of(config.output.dir))
    assert verify(config.output.dir) == []


def test_killed_driver_then_rerun_holds_every_sample_once(tmp_path, ray_local, capsys):
    import ray

    keys = []
    for i in range(6):
        keys += [s.key for s in mixed_tar(str(tmp_path / f"in/d-{i}.tar"), f"d{i}", 4, seed=10 + i)]
    config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/d-{0..5}.tar")]})
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "pipeline.run", str(tmp_path / "run.yaml"), f"ray.address={address}",
               "ray.num_actors=1"]
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    commits = tmp_path / "out/_run/commits"
    deadline = time.time() + 300
    while time.time() < deadline:
        if commits.exists() and 1 <= len(os.listdir(commits)) < 6:
            break
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done_before = len(records_of(tmp_path / "out"))
    assert done_before < 6

    # the rerun in this process, as `python -m pipeline.run` runs it (the killed driver is the one that must be
    # a process of its own): its imports, its Ray connection and its device probe are this process's, warm
    capsys.readouterr()
    code = cli_main(command[3:])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert f"{done_before} already done" in err
    table = pads.dataset(str(tmp_path / "out/data"), format="parquet").to_table()
    assert sorted(table.column("key").to_pylist()) == sorted(keys)
    assert not [n for n in os.listdir(tmp_path / "out/data") if n.startswith(".")]
    assert verify(str(tmp_path / "out")) == []


def test_unwritable_output_is_a_clear_error_and_leaves_no_partial_file(tmp_path, ray_local, capsys):
    mixed_tar(str(tmp_path / "in/w-0.tar"), "w0", 2, seed=20)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/w-0.tar")]})
    assert cli_main([str(tmp_path / "run.yaml"), f"output.dir={tmp_path}/blocker/out"]) == 2
    assert "config key 'output.dir': cannot write there" in capsys.readouterr().err

    # a write that fails mid-run: data/ became a file after the run started
    assert cli_main([str(tmp_path / "run.yaml")]) == 0
    mixed_tar(str(tmp_path / "in/w-1.tar"), "w1", 2, seed=21)
    data = tmp_path / "out/data"
    for name in os.listdir(data):
        os.rename(data / name, tmp_path / name)
    data.rmdir()
    data.write_text("not a folder")
    assert cli_main([str(tmp_path / "run.yaml"), f"source.urls=[{tmp_path}/in/w-0.tar,{tmp_path}/in/w-1.tar]"]) == 1
    assert "worker_exception" in capsys.readouterr().err
    leftovers = [f for _, _, files in os.walk(tmp_path / "out") for f in files if f.startswith(".tmp")]
    assert leftovers == []


def test_codes_do_not_depend_on_actor_count_or_batch_budget(tmp_path, ray_local):
    for i in range(3):
        mixed_tar(str(tmp_path / f"in/x-{i}.tar"), f"x{i}", 6, seed=30 + i)
    source = {"kind": "webdataset", "urls": [str(tmp_path / "in/x-{0..2}.tar")]}
    run_job(config_for(tmp_path, source, f"output.dir={tmp_path}/a", "ray.num_actors=1"))
    run_job(config_for(tmp_path, source, f"output.dir={tmp_path}/b", "ray.num_actors=2", "ray.cpus_per_actor=1",
                       "codec.max_clips=4", "codec.max_batch_seconds=5", "ray.pool_seconds=2"))
    a = {r["key"]: r["codes"] for r in read_rows(tmp_path / "a")}
    b = {r["key"]: r["codes"] for r in read_rows(tmp_path / "b")}
    assert len(a) == 18 and a == b


def test_verify_reports_missing_extra_and_corrupt_files(tmp_path, ray_local, capsys):
    for i in range(2):
        mixed_tar(str(tmp_path / f"in/v-{i}.tar"), f"v{i}", 3, seed=40 + i)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/v-{0..1}.tar")]})
    run_job(config)
    out = config.output.dir
    assert verify_main([out]) == 0 and "OK: 2 shards, 6 rows" in capsys.readouterr().out

    first, second = sorted(os.listdir(os.path.join(out, "data")))
    os.remove(os.path.join(out, "data", first))
    with open(os.path.join(out, "data", second), "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    open(os.path.join(out, "data", "stray.parquet"), "wb").close()
    open(os.path.join(out, "data", ".tmp-123-x.parquet"), "wb").close()
    assert verify_main([out]) == 1
    report = capsys.readouterr().out
    assert f"missing: data/{first}" in report
    assert f"corrupt: data/{second}" in report
    assert "uncommitted: data/stray.parquet" in report and "leftover temporary: data/.tmp-123-x.parquet" in report
