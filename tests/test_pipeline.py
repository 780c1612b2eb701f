import json
import os

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from codec import reference_encode
from pipeline.audio.decode import decode_bytes, to_model_audio
from pipeline.driver.protocol import ActorProgress
from pipeline.config import ConfigError, load_config
from pipeline.telemetry.events import ActorsStarted, ShardDone
from pipeline.run import run_job
from pipeline.driver import actor_options as _actor_options
from pipeline.runstate import IdentityChanged, read_run
from pipeline.storage import Storage
from pipeline.sources import Shard, largest_first, list_shards, source_of
from tests.corpus import hf_dataset, mixed_tar


def config_for(tmp_path, source: dict, *overrides: str, name: str = "run.yaml"):
    path = tmp_path / name
    OmegaConf.save(
        OmegaConf.create({"source": source, "codec": {"model": "random:tiny"}, "output": {"dir": str(tmp_path / "out")},
                          "ray": {"pool_seconds": 4.0, "progress_interval_s": 1.0}}),
        path,
    )
    return load_config(str(path), list(overrides))


def read_rows(out_dir) -> list[dict]:
    return pads.dataset(os.path.join(out_dir, "data"), format="parquet").to_table().to_pylist()


def manifest_of(out_dir) -> dict:
    with open(os.path.join(out_dir, "manifest.json")) as f:
        return json.load(f)


def records_of(out_dir) -> dict:
    """Shard id -> its commit record (what the run state counts as finished)."""
    return read_run(Storage(str(out_dir))).records


def expected_codes(codec, audio_bytes: bytes, bandwidth: float = 2.0) -> np.ndarray:
    array, rate = decode_bytes(audio_bytes)
    audio = to_model_audio(array, rate, 24000, "HQ", 3600)
    return reference_encode(codec.model, audio.wave, bandwidth)


def test_webdataset_run_writes_canonical_codes_with_metadata(tmp_path, ray_local, tiny_codec):
    samples = {}
    for i in range(3):
        for s in mixed_tar(str(tmp_path / f"in/part-{i}.tar"), f"p{i}", 7, seed=i):
            samples[s.key] = s
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/part-{0..2}.tar")]})
    events, described = [], []

    def on_event(event):
        events.append(type(event))
        if isinstance(event, ActorsStarted):  # what the actors hold, asked while they run
            described.extend(ray_local.get([actor.facts.remote() for actor in event.actors]))

    summary = run_job(config, on_event)
    assert summary.status == "complete" and summary.shards_run == 3
    assert events.count(ShardDone) == 3
    assert 0 < summary.encoder_busy_share <= 1
    # auto sizing on the 2-CPU runtime: two CPU actors of one torch thread and one decode thread each
    assert len(described) == 2 and len({d.pid for d in described}) == 2
    assert all(d.torch_threads == 1 and d.decode_threads == 1 for d in described)
    # the start-up split: each part measured, the parts within the whole, nothing large unaccounted for
    s = summary.startup
    assert s.pop("calibration") == []  # CPU actors do not calibrate
    assert all(v >= 0 for v in s.values()) and s["actor_process_s"] > 0 and s["checkpoint_load_s"] > 0
    assert s["actor_process_s"] + s["checkpoint_load_s"] + s["first_read_s"] <= s["ray_up_to_first_batch_s"] + 0.01
    before_actors = s["prepare_s"] + s["ray_start_s"]
    assert 0 <= s["to_first_batch_s"] - before_actors - s["ray_up_to_first_batch_s"] < 2, s

    rows = read_rows(config.output.dir)
    assert sorted(r["key"] for r in rows) == sorted(samples)
    for row in rows:
        sample = samples[row["key"]]
        audio_ext = next(e for e in sample.members if e not in ("txt", "json"))
        codes = np.array(row["codes"], dtype=np.int16)
        np.testing.assert_array_equal(codes, expected_codes(tiny_codec, sample.members[audio_ext]))
        assert row["num_codebooks"] == 8 and row["num_frames"] == codes.shape[1]
        assert row["text"] == sample.members["txt"].decode()
        assert json.loads(row["metadata"]) == json.loads(sample.members["json"])
        assert row["source"].endswith(".tar")
        assert abs(row["duration_s"] - sample.seconds) < 0.01

    manifest = manifest_of(config.output.dir)
    assert manifest["schema_version"] == 2 and manifest["num_codebooks"] == 8
    assert manifest["codec"]["spec"] == "random:tiny" and len(manifest["fingerprint"]) == 64
    assert manifest["shard_count"] == 3 and manifest["totals"]["rows"] == len(samples)
    for entry in records_of(config.output.dir).values():
        assert entry.status == "done" and entry.rows + entry.errors == entry.samples_read == 7
    schema = pq.read_schema(os.path.join(config.output.dir, entry.files[0]))
    assert str(schema.field("codes").type) == "list<element: list<element: int16>>"
    assert pq.ParquetFile(os.path.join(config.output.dir, entry.files[0])).metadata.row_group(0).column(1).compression == "ZSTD"


def test_hf_datasets_save_to_disk_and_parquet(tmp_path, ray_local, tiny_codec):
    saved = hf_dataset(10, seed=1)
    saved.save_to_disk(str(tmp_path / "saved"), num_shards=2)
    config = config_for(tmp_path, {"kind": "hf", "path": str(tmp_path / "saved")})
    summary = run_job(config)
    assert summary.status == "complete" and summary.shards_total == 2
    rows = {r["key"]: r for r in read_rows(config.output.dir)}
    assert sorted(rows) == sorted(saved["id"])
    for record in saved.with_format("arrow")[:3].to_pylist():
        row = rows[record["id"]]
        np.testing.assert_array_equal(np.array(row["codes"], np.int16), expected_codes(tiny_codec, record["audio"]["bytes"]))
        assert row["text"] == record["text"] and row["speaker"] == record["speaker"]

    no_id = hf_dataset(6, seed=2, with_id=False)
    os.makedirs(tmp_path / "pq")
    no_id.select(range(3)).to_parquet(str(tmp_path / "pq/a.parquet"))
    no_id.select(range(3, 6)).to_parquet(str(tmp_path / "pq/b.parquet"))
    config = config_for(tmp_path, {"kind": "hf", "path": str(tmp_path / "pq/*.parquet")}, f"output.dir={tmp_path}/out_pq")
    assert run_job(config).status == "complete"
    keys = sorted(r["key"] for r in read_rows(config.output.dir))
    assert len(keys) == 6 and all("/" in k for k in keys)  # shard id / row index


def test_rerun_skips_done_shards_and_picks_up_new_ones(tmp_path, ray_local):
    mixed_tar(str(tmp_path / "in/a-0.tar"), "a0", 3, seed=10)
    mixed_tar(str(tmp_path / "in/a-1.tar"), "a1", 3, seed=11)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/a-*.tar")]})
    assert run_job(config).shards_run == 2
    data = tmp_path / "out/data"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in data.iterdir()}

    again = run_job(config)
    assert again.shards_run == 0 and again.shards_skipped == 2

    mixed_tar(str(tmp_path / "in/a-2.tar"), "a2", 3, seed=12)
    grown = run_job(config)
    assert grown.shards_run == 1 and grown.shards_skipped == 2 and grown.status == "complete"
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in data.iterdir()}
    assert {k: after[k] for k in before} == before
    assert len(after) == 3 and len(read_rows(tmp_path / "out")) == 9


def test_changed_fingerprint_stops_unless_overwrite(tmp_path, ray_local):
    mixed_tar(str(tmp_path / "in/f.tar"), "f", 2, seed=20)
    source = {"kind": "webdataset", "urls": [str(tmp_path / "in/f.tar")]}
    run_job(config_for(tmp_path, source))
    with pytest.raises(IdentityChanged, match="bandwidth.*output.overwrite=true"):
        run_job(config_for(tmp_path, source, "codec.bandwidth=1.0"))
    summary = run_job(config_for(tmp_path, source, "codec.bandwidth=1.0", "output.overwrite=true"))
    assert summary.status == "complete" and summary.shards_run == 1
    assert {r["num_codebooks"] for r in read_rows(tmp_path / "out")} == {4}


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x", "source.colour=red"], "source.colour"),
        (["source.kind=tarball", "source.urls=[a.tar]", "output.dir=x"], "source.kind"),
        (["source.kind=webdataset", "output.dir=x"], "source.urls"),
        (["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x", "codec.bandwidth=fast"], "codec.bandwidth"),
        (["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x", "audio.resampler_quality=best"],
         "audio.resampler_quality"),
        (["source.kind=hf", "output.dir=x"], "source.path"),
        (["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x", "ray.metrics_export_port=70000"],
         "ray.metrics_export_port"),
        (["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x", "ray.metrics_report_interval_s=0"],
         "ray.metrics_report_interval_s"),
        (["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x", "output.progress_interval_s=-1"],
         "output.progress_interval_s"),
    ],
)
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert error.value.key == key and f"'{key}'" in str(error.value)


@pytest.mark.parametrize("written, meaning", [("off", "off"), ("on", "on"), ("false", "off"), ("true", "on"),
                                              ("auto", "auto")])
def test_calibrate_off_and_on_read_by_yaml_as_booleans_are_accepted(tmp_path, written, meaning):
    base = ["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x"]
    assert load_config(None, base + [f"codec.calibrate={written}"]).codec.calibrate == meaning
    (tmp_path / "run.yaml").write_text(f"codec:\n  calibrate: {written}\n")
    assert load_config(str(tmp_path / "run.yaml"), base).codec.calibrate == meaning


def test_calibrate_nonsense_is_still_a_config_error():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x", "codec.calibrate=sometimes"])
    assert error.value.key == "codec.calibrate"


def test_start_line_carries_the_calibration_table_speed_peak_memory_and_why_a_policy_was_not_kept(tiny_codec, monkeypatch):
    from pipeline.run import startup_line
    from tests.test_codec import calibrated_with_headroom

    table = calibrated_with_headroom(tiny_codec, monkeypatch)
    parts = ("prepare_s", "ray_start_s", "actor_process_s", "checkpoint_load_s", "calibrate_s", "first_read_s",
             "ray_up_to_first_batch_s", "to_first_batch_s")
    line = startup_line({**dict.fromkeys(parts, 1.0), "calibration": table})
    assert line.startswith("start: first batch encoded") and "; calibration: 480 s x 1 clips " in line
    assert "audio-s/s, peak 220 MB (kept); 480 s x 4 clips " in line
    assert "peak 880 MB (leaves less than 15% of the device's 1000 MB free)" in line


def test_actor_sizing_by_device_cpus_and_memory_fits_each_node():
    config = load_config(None, ["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x"])
    gib = 2**30
    # CPU: one CPU per actor, and no more actors than each node's memory holds at 4.5 GB each
    assert _actor_options(config, [{"CPU": 2, "memory": 17 * gib}]) == (2, {"num_gpus": 0, "num_cpus": 1, "memory": int(4.5 * gib)})
    assert _actor_options(config, [{"CPU": 16, "memory": 20 * gib}, {"CPU": 2, "memory": 40 * gib}])[0] == 4 + 2
    # nodes smaller than one actor's estimate: still actors, reserving what a node has
    assert _actor_options(config, [{"CPU": 2, "memory": 2 * gib}]) == (1, {"num_gpus": 0, "num_cpus": 1, "memory": 2 * gib})
    # GPU: one actor per GPU with all the CPUs beside each GPU on the tightest GPU node, for decoding (no fixed cap:
    # one GPU needs more decode cores than 8); a big CPU-only head node does not count
    head = {"CPU": 64, "memory": 200 * gib}
    assert _actor_options(config, [head, {"CPU": 96, "GPU": 8, "memory": 900 * gib}]) == (8, {"num_gpus": 1, "num_cpus": 12})
    assert _actor_options(config, [head, {"CPU": 64, "GPU": 2}]) == (2, {"num_gpus": 1, "num_cpus": 32})
    assert _actor_options(config, [head, {"CPU": 12, "GPU": 4}, {"CPU": 4, "GPU": 2}]) == (6, {"num_gpus": 1, "num_cpus": 2})
    # codec.device=cpu ignores the GPUs; explicit settings win
    cpu_only = load_config(None, ["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x", "codec.device=cpu",
                                  "ray.cpus_per_actor=4", "ray.memory_per_actor_gb=2", "ray.num_actors=3"])
    assert _actor_options(cpu_only, [{"CPU": 96, "GPU": 8, "memory": 900 * gib}]) == (3, {"num_gpus": 0, "num_cpus": 4, "memory": 2 * gib})
    with pytest.raises(ConfigError) as error:
        load_config(None, ["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x", "ray.cpus_per_actor=-1"])
    assert error.value.key == "ray"


def test_encoder_busy_share_counts_overlapping_shards_once():
    from pipeline.runstate import ShardRecord
    from pipeline.driver.job import encoder_busy_share

    def result(worker, started_at, seconds, encode_s):
        return ShardRecord("s", "u", "done", worker=worker, started_at=started_at, seconds=seconds, encode_s=encode_s)

    # actor a: shards over 100-110 and 105-115 (a 15 s span, 12 s encoding); actor b: 5 s, all encoding
    results = [result("a", 100, 10, 6), result("a", 105, 10, 6), result("b", 100, 5, 5)]
    assert encoder_busy_share(results) == pytest.approx(17 / 20)
    assert encoder_busy_share([]) is None


def test_shards_are_listed_with_sizes_and_dispatched_largest_first(tmp_path):
    for name, count in (("a", 2), ("b", 9), ("c", 5)):
        mixed_tar(str(tmp_path / f"in/{name}.tar"), name, count, seed=count)
    sizes = {name: os.path.getsize(tmp_path / f"in/{name}.tar") for name in "abc"}
    biggest_first = sorted("abc", key=lambda name: -sizes[name])
    assert biggest_first[0] != "a"  # the order differs from the listing's
    by_glob = list_shards(source_of("webdataset", urls=[f"{tmp_path}/in/*.tar"])).shards
    by_name = list_shards(source_of("webdataset", urls=[f"{tmp_path}/in/{{a,b,c}}.tar"])).shards
    for shards in (by_glob, by_name):
        assert [s.size for s in shards] == [sizes[n] for n in "abc"]  # listed in name order ...
        assert [s.url[-5] for s in largest_first(shards)] == biggest_first  # ... run biggest first
    unknown = [Shard("x", "x", "webdataset"), Shard("y", "y", "webdataset")]
    assert largest_first(by_glob[:1] + unknown) == by_glob[:1] + unknown  # unknown sizes keep their order, last


def test_bandwidth_not_in_checkpoint_fails_before_work(tmp_path):
    mixed_tar(str(tmp_path / "in/b.tar"), "b", 1, seed=30)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/b.tar")]}, "codec.bandwidth=3.0")
    with pytest.raises(ConfigError, match=r"codec.bandwidth.*\[0\.5, 1, 1\.5, 2\]"):
        run_job(config)
    assert not (tmp_path / "out").exists()


def test_hf_audio_as_paths_and_arrays(tmp_path, ray_local, tiny_codec):
    import pyarrow as pa

    from demo.synth import encode_audio, synth_clip

    rng = np.random.default_rng(7)
    os.makedirs(tmp_path / "files")
    paths, arrays = [], []
    for i in range(3):
        path = tmp_path / f"files/{i}.ogg"
        path.write_bytes(encode_audio(synth_clip(rng, 0.8, 32000, 2), 32000, "ogg"))
        paths.append(str(path))
        arrays.append({"array": synth_clip(rng, 0.6, 16000)[:, 0].tolist(), "sampling_rate": 16000})
    os.makedirs(tmp_path / "pq")
    pq.write_table(pa.table({"id": ["p0", "p1", "p2"], "audio": paths}), tmp_path / "pq/paths.parquet")
    pq.write_table(pa.table({"id": ["a0", "a1", "a2"], "audio": arrays}), tmp_path / "pq/arrays.parquet")
    config = config_for(tmp_path, {"kind": "hf", "path": str(tmp_path / "pq")})
    assert run_job(config).status == "complete"
    rows = {r["key"]: r for r in read_rows(config.output.dir)}
    assert sorted(rows) == ["a0", "a1", "a2", "p0", "p1", "p2"]
    np.testing.assert_array_equal(np.array(rows["p1"]["codes"], np.int16),
                                  expected_codes(tiny_codec, (tmp_path / "files/1.ogg").read_bytes()))
    wave = to_model_audio(np.array(arrays[2]["array"], np.float32), 16000, 24000, "HQ", 3600).wave
    np.testing.assert_array_equal(np.array(rows["a2"]["codes"], np.int16), reference_encode(tiny_codec.model, wave, 2.0))


def test_two_shards_at_once_on_one_processor_report_progress_and_their_own_counts(tmp_path, tiny_codec):
    import threading
    import time

    from pipeline.sources import list_shards
    from pipeline.actor.processor import ShardProcessor

    samples = {s.key: s for name, seed in (("p", 70), ("q", 71)) for s in mixed_tar(str(tmp_path / f"in/{name}.tar"), name, 6, seed=seed)}
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/*.tar")]}, "ray.pool_seconds=1")
    processor = ShardProcessor(config)
    results, seen = [], []
    workers = [threading.Thread(target=lambda shard=shard: results.append(processor.process(shard)))
               for shard in list_shards(config.source).shards]
    for worker in workers:
        worker.start()
    while any(worker.is_alive() for worker in workers):
        seen.append(processor.in_shard.samples)
        time.sleep(0.005)
    assert len(results) == 2 and all(r.status == "done" and r.rows == 6 for r in results)
    assert 0 < max(seen) <= 12 and processor.in_shard == ActorProgress()
    for r in results:  # CPU encodes clip by clip: each shard's encoded frames are exactly its own frames
        assert r.encoded_frames == r.frames and r.encode_s > 0
    for row in read_rows(config.output.dir):
        sample = samples[row["key"]]
        audio = next(v for k, v in sample.members.items() if k not in ("txt", "json"))
        np.testing.assert_array_equal(np.array(row["codes"], np.int16), expected_codes(tiny_codec, audio))
