"""Run state at the size in the project's name, shown at a small size: commit records, summary, lease,
identity, one schema per run."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.actor.side import CodecActorSide
from pipeline.driver.job import open_run_state, resolve_codec
from pipeline.telemetry.events import CorruptCommits, LeaseTakenOver
from pipeline.run import main as run_main
from pipeline.runstate import IdentityChanged, LeaseHeld, LeaseLost, OutputError, RunState, ShardRecord, read_run
from pipeline.runstate.digest import DIGEST
from pipeline.runstate.lease import LEASE
from pipeline.runstate.plan import PLAN
from pipeline.runstate.records import COMMITS
from pipeline.runstate.summary import SHARD_LIST
from pipeline.sources import list_shards, source_of
from pipeline.storage import Storage
from pipeline.reading.verify import verify
from tests.corpus import mixed_tar
from tests.test_pipeline import config_for, read_rows, records_of


def header(**identity):
    from pipeline.schema import column_lines, output_schema, schema_to_text

    schema = output_schema([pa.field("text", pa.string())])
    return {"identity": {"source": {"kind": "webdataset"}, **identity}, "codec": {}, "bandwidth": 2.0,
            "num_codebooks": 8, "frame_rate": 25.0, "codebook_size": 1024, "config": {},
            "output_schema": schema_to_text(schema), "output_columns": column_lines(schema)}


def output_settings(**changes):
    return load_config(None, ["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x",
                              *[f"output.{k}={v}" for k, v in changes.items()]]).output


def result(shard_id, status="done", rows=2):
    # as records were written before reason and detail were fields: `from_dict` splits `shard_error`
    return ShardRecord.from_dict({"shard_id": shard_id, "source": f"/in/{shard_id}.tar", "status": status, "samples_read": rows,
            "rows": rows if status == "done" else 0, "errors": 0, "error_reasons": {}, "audio_seconds": 1.0,
            "frames": 25, "tokens": 200, "encoded_frames": 25, "files": [f"data/{shard_id}.parquet"],
            "shard_error": None if status == "done" else "corrupt_tar: cut"})


@pytest.fixture(params=["local", "memory"])
def storage(request, tmp_path):
    if request.param == "local":
        yield Storage(str(tmp_path / "out"))
        return
    url = f"memory://runstate-{time.time_ns()}/out"
    yield Storage(url)
    Storage(url).remove("")


def test_rerun_trusts_commit_records_over_a_summary_that_lags_and_rebuilds_it(storage):
    state = RunState.open(storage, header(), output_settings(summary_interval_s=3600))
    state.commit(result("s0"))
    state.compact()
    for i in (1, 2):
        state.commit(result(f"s{i}"))
    state.commit(result("bad", "failed"))
    # killed before the next compaction: the summary holds one shard, the commit records hold four
    state.lease.release()
    view = read_run(storage)
    assert sorted(view.done()) == ["s0", "s1", "s2"] and view.records["bad"].status == "failed"
    assert view.summary_stale
    again = RunState.open(storage, header(), output_settings())
    assert again.done("s1") and not again.done("bad") and again.totals()["shards_done"] == 3
    manifest = json.loads(storage.read_bytes("manifest.json"))
    assert manifest["shard_count"] == 4 and manifest["totals"]["rows"] == 6  # rebuilt from the records
    again.commit(result("bad"))  # a redone shard: its failed record goes, the done one wins
    assert sorted(storage.list(COMMITS)) == [f"{n}.done.json" for n in ("bad", "s0", "s1", "s2")]
    again.close()
    assert not read_run(storage).summary_stale and not storage.exists(LEASE)


def test_failed_record_written_with_shard_error_only_reads_with_its_reason_and_detail(storage):
    """Records written before reason and detail were fields hold "reason: detail" in `shard_error`: the summary's
    reasons, verify and ShardRecord read them as they read new ones."""
    from pipeline.reading.verify import verify
    from pipeline.runstate.records import record_path

    state = RunState.open(storage, header(), output_settings())
    state.commit(result("new", "failed"))
    state.close()
    old = {"shard_id": "old", "source": "/in/old.tar", "status": "failed", "shard_error": "corrupt_tar: cut at 512",
           "files": ["errors/old.jsonl"]}
    storage.write_bytes(record_path("old", "failed"), json.dumps(old).encode())
    view = read_run(storage)
    assert (view.records["new"].reason, view.records["new"].detail) == ("corrupt_tar", "cut")
    record = view.records["old"]
    assert (record.reason, record.detail, record.error) == ("corrupt_tar", "cut at 512", "corrupt_tar: cut at 512")
    again = RunState.open(storage, header(), output_settings())
    assert again.totals()["shard_error_reasons"] == {"corrupt_tar": 2}
    again.close()
    assert "shard old: failed (corrupt_tar: cut at 512)" in verify(storage.url)


def test_commit_record_cut_short_counts_as_not_done_and_is_reported(storage):
    state = RunState.open(storage, header(), output_settings(summary_interval_s=3600))
    state.commit(result("a"))
    state.commit(result("b"))
    state.lease.release()
    cut = f"{COMMITS}/b.done.json"
    storage.write_bytes(cut, storage.read_bytes(cut)[:40])  # a crash mid-write without atomic rename
    events = []
    again = RunState.open(storage, header(), output_settings(), events.append)
    assert again.done("a") and not again.done("b")
    (event,) = [e for e in events if isinstance(e, CorruptCommits)]
    assert "b" in event.corrupt and "not JSON" in event.corrupt["b"]
    again.close()


def test_second_run_on_a_live_output_is_refused_at_once(storage):
    first = RunState.open(storage, header(), output_settings())
    start = time.time()
    with pytest.raises(LeaseHeld, match=r"being written by another run .* pid %d" % os.getpid()):
        RunState.open(storage, header(), output_settings())
    assert time.time() - start < 5
    first.close()
    RunState.open(storage, header(), output_settings()).close()  # free again once released


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_lease_of_a_dead_driver_on_this_host_is_taken_over_at_once(storage):
    import socket

    lease = {"holder": "x", "host": socket.gethostname(), "pid": dead_pid(), "started_at": time.time(),
             "heartbeat_at": time.time()}
    storage.write_bytes(LEASE, json.dumps(lease).encode())
    events = []
    RunState.open(storage, header(), output_settings(), events.append).close()
    assert [e.note for e in events if isinstance(e, LeaseTakenOver)][0].endswith("is gone")


def test_lease_without_heartbeat_is_taken_over_only_after_the_timeout(storage):
    lease = {"holder": "x", "host": "another-node", "pid": 1, "started_at": time.time(), "heartbeat_at": time.time()}
    storage.write_bytes(LEASE, json.dumps(lease).encode())
    with pytest.raises(LeaseHeld, match="another-node"):
        RunState.open(storage, header(), output_settings(lease_timeout_s=60))
    storage.write_bytes(LEASE, json.dumps(dict(lease, heartbeat_at=time.time() - 61)).encode())
    events = []
    RunState.open(storage, header(), output_settings(lease_timeout_s=60), events.append).close()
    assert "no heartbeat for" in events[0].note


def test_run_whose_lease_was_taken_over_stops_instead_of_writing_beside_the_new_holder(storage):
    state = RunState.open(storage, header(), output_settings(lease_timeout_s=2))
    storage.write_bytes(LEASE, json.dumps({"holder": "other", "host": "elsewhere", "pid": 1}).encode())
    deadline = time.time() + 10
    while not state.lease.lost and time.time() < deadline:
        time.sleep(0.1)
    with pytest.raises(LeaseLost, match="taken over by elsewhere"):
        state.commit(result("a"))
    state.close()
    assert json.loads(storage.read_bytes(LEASE))["holder"] == "other"  # the new holder's lease is left alone


def test_overwrite_removes_run_state_before_data(tmp_path, monkeypatch):
    storage = Storage(str(tmp_path / "out"))
    state = RunState.open(storage, header(dtype="float32"), output_settings())
    storage.write_bytes("data/s0.parquet", b"rows")
    state.commit(result("s0"))
    state.close()
    removed = []
    real = Storage.remove

    def remove_then_die(self, path):
        removed.append(path)
        if path == "data":
            raise KeyboardInterrupt  # killed part-way through the overwrite
        real(self, path)

    monkeypatch.setattr(Storage, "remove", remove_then_die)
    with pytest.raises(KeyboardInterrupt):
        RunState.open(storage, header(dtype="bfloat16"), output_settings(overwrite=True))
    monkeypatch.undo()
    assert removed[:5] == ["manifest.json", SHARD_LIST, DIGEST, COMMITS, PLAN] and removed[5] == "data"
    assert not storage.exists("manifest.json") and storage.exists("data/s0.parquet")  # no manifest claims it
    with pytest.raises(OutputError, match="no manifest.json.*output.overwrite=true"):
        RunState.open(storage, header(dtype="bfloat16"), output_settings())
    RunState.open(storage, header(dtype="bfloat16"), output_settings(overwrite=True)).close()
    assert storage.list("data") == []


def test_output_of_an_older_schema_is_refused(tmp_path, capsys):
    mixed_tar(str(tmp_path / "in/a.tar"), "a", 1, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"schema_version": 1, "shards": {}}))
    config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/a.tar")]})
    assert run_main([str(tmp_path / "run.yaml")]) == 3
    assert "older audiotok (output schema 1" in capsys.readouterr().err
    with pytest.raises(OutputError, match="output schema 1"):
        read_run(Storage(str(out)))


def test_one_file_spelled_two_ways_is_one_shard(tmp_path, monkeypatch):
    mixed_tar(str(tmp_path / "in/a-000.tar"), "a", 1, seed=1)
    monkeypatch.chdir(tmp_path)
    spellings = ["in/a-000.tar", f"file://{tmp_path}/in/a-000.tar", f"{tmp_path}/in/../in/a-{{000..000}}.tar",
                 f"{tmp_path}/in/a-*.tar"]
    ids = {s: [x.id for x in list_shards(source_of("webdataset", urls=[s])).shards] for s in spellings}
    assert len({tuple(v) for v in ids.values()}) == 1, ids


def test_source_urls_takes_one_string():
    config = load_config(None, ["source.kind=webdataset", "source.urls=data/train-{000..003}.tar", "output.dir=x"])
    assert config.source.urls == ["data/train-{000..003}.tar"]


def test_changed_settings_name_what_changed_and_how_to_continue(tmp_path, monkeypatch):
    from tests.test_checkpoint import fake_hub_cache

    from codec.presets import build_random_model
    from huggingface_hub import constants

    build_random_model("tiny", 0).save_pretrained(tmp_path / "tiny")
    files = {n: str(tmp_path / "tiny" / n) for n in os.listdir(tmp_path / "tiny")}
    commit_a, commit_b = "a" * 40, "b" * 40
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "org/tiny-tokenizer", commit_a, files)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    mixed_tar(str(tmp_path / "in/a.tar"), "a", 1, seed=1)

    def open_with(*overrides):
        config = load_config(None, ["source.kind=webdataset", f"source.urls={tmp_path}/in/a.tar",
                                    f"output.dir={tmp_path}/out", "codec.model=org/tiny-tokenizer", *overrides])
        state = open_run_state(config, Storage(config.output.dir), resolve_codec(config), list_shards(config.source),
                               lambda event: None, CodecActorSide().identity(config))
        state.close()
        return state

    open_with()
    # the hub repo moves: main now names another commit
    snapshot = cache / "models--org--tiny-tokenizer" / "snapshots"
    os.symlink(snapshot / commit_a, snapshot / commit_b)
    (cache / "models--org--tiny-tokenizer" / "refs" / "main").write_text(commit_b)
    with pytest.raises(IdentityChanged, match=f"pin codec.revision={commit_a}"):
        open_with()
    open_with(f"codec.revision={commit_a}")  # pinned: goes on

    import pipeline.driver.job as job

    real = job.library_versions
    monkeypatch.setattr(job, "library_versions", lambda: dict(real(), torch="9.9.9"))
    with pytest.raises(IdentityChanged, match=r"versions.torch: .* -> '9.9.9'.*output.accept_new_versions=true"):
        open_with(f"codec.revision={commit_a}")
    state = open_with(f"codec.revision={commit_a}", "output.accept_new_versions=true")
    assert state.header["identity"]["versions"]["torch"] == "9.9.9"
    assert "versions.torch" in json.loads((tmp_path / "out/manifest.json").read_text())["identity_changes"][0]["changes"][0]
    with pytest.raises(IdentityChanged, match="window_s.*new output.dir"):
        open_with(f"codec.revision={commit_a}", "codec.window_s=30")


def test_a_rerun_on_another_device_is_refused_like_a_library_upgrade_and_an_output_without_device_goes_on(tmp_path):
    mixed_tar(str(tmp_path / "in/a.tar"), "a", 1, seed=1)
    config = load_config(None, ["source.kind=webdataset", f"source.urls={tmp_path}/in/a.tar", "codec.model=random:tiny",
                                f"output.dir={tmp_path}/out"])
    codec, listing = resolve_codec(config), list_shards(config.source)
    h100 = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "cuda": "12.8", "cudnn": 91002}
    a100 = dict(h100, name="NVIDIA A100-SXM4-80GB")

    def open_on(device, *overrides, out="out"):
        run_config = load_config(None, [f"source.urls={tmp_path}/in/a.tar", f"output.dir={tmp_path}/{out}",
                                        "source.kind=webdataset", "codec.model=random:tiny", *overrides])
        state = open_run_state(run_config, Storage(str(tmp_path / out)), codec, listing, lambda event: None,
                               CodecActorSide().identity(run_config), device)
        state.close()
        return json.loads((tmp_path / out / "manifest.json").read_text())

    # an output written before the device was recorded goes on unchanged, on any device
    assert "device" not in open_on(None, out="before")["identity"]
    assert "device" not in open_on(h100, out="before")["identity"]
    assert open_on(h100)["identity"]["device"] == h100
    assert open_on(h100)["identity"]["device"] == h100
    with pytest.raises(IdentityChanged, match=r"device.name: 'NVIDIA H100 80GB HBM3' -> 'NVIDIA A100-SXM4-80GB'.*"
                                              r"output.accept_new_versions=true"):
        open_on(a100)
    with pytest.raises(IdentityChanged, match=r"device.type: 'cuda' -> 'cpu'.*output.accept_new_versions=true"):
        open_on({"type": "cpu", "name": "AMD EPYC 9654", "cuda": None, "cudnn": None})
    manifest = open_on(a100, "output.accept_new_versions=true")
    assert manifest["identity"]["device"] == a100 and "device.name" in manifest["identity_changes"][0]["changes"][0]


def test_the_device_probe_reads_the_device_where_an_actor_runs(tmp_path, ray_local):
    from pipeline.actor.device import cpu_model, device_facts
    from pipeline.driver.job import probe_device

    config = load_config(None, ["source.kind=webdataset", "source.urls=[a.tar]", f"output.dir={tmp_path}/out"])
    facts = probe_device(config, CodecActorSide())  # a Ray task on this one-node runtime, on its CPU
    assert facts == device_facts("cpu") == {"type": "cpu", "name": cpu_model(), "cuda": None, "cudnn": None}
    assert facts["name"] and facts["name"] != "cpu"


def test_hf_key_and_audio_columns_are_part_of_the_identity(tmp_path):
    from tests.corpus import hf_dataset

    hf_dataset(4, seed=3).to_parquet(str(tmp_path / "a.parquet"))

    def open_with(*overrides):
        config = load_config(None, ["source.kind=hf", f"source.path={tmp_path}/a.parquet", f"output.dir={tmp_path}/out",
                                    "codec.model=random:tiny", *overrides])
        open_run_state(config, Storage(config.output.dir), resolve_codec(config), list_shards(config.source),
                       lambda event: None, CodecActorSide().identity(config)).close()

    open_with()
    open_with("source.key_column=id")  # the default it resolved to: the same keys
    with pytest.raises(IdentityChanged, match=r"source.key_column: 'id' -> 'text'"):
        open_with("source.key_column=text")


def test_actor_with_other_library_versions_refuses_to_start(tmp_path):
    from pipeline.runstate import library_versions
    from pipeline.actor.processor import ShardProcessor

    config = config_for(tmp_path, {"kind": "webdataset", "urls": ["a.tar"]})
    with pytest.raises(RuntimeError, match="differ from the run's"):
        ShardProcessor(config, versions=dict(library_versions(), transformers="0.0"))


def test_actor_on_another_device_than_the_runs_refuses_to_start(tmp_path):
    from pipeline.actor.device import device_facts
    from pipeline.actor.processor import ShardProcessor

    config = config_for(tmp_path, {"kind": "webdataset", "urls": ["a.tar"]}, "codec.device=cpu")
    here = device_facts("cpu")
    ShardProcessor(config, device=here)  # the run's device: starts
    with pytest.raises(RuntimeError, match="device .* differs from the run's"):
        ShardProcessor(config, device=dict(here, name="Another CPU"))


def test_hub_layout_picks_the_split_files(tmp_path):
    from pipeline.config import ConfigError

    table = pa.table({"audio": [b""], "id": ["x"]})
    for name in ("train-00000-of-00002", "train-00001-of-00002", "test-00000-of-00001"):
        (tmp_path / "data").mkdir(exist_ok=True)
        pq.write_table(table, tmp_path / "data" / f"{name}.parquet")

    def files(split):
        listing = list_shards(source_of("hf", path=str(tmp_path), split=split))
        return [os.path.basename(s.url) for s in listing.shards]

    assert files("train") == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert files("test") == ["test-00000-of-00001.parquet"]
    with pytest.raises(ConfigError, match=r"no files of split 'validation'.*\['test', 'train'\]"):
        files("validation")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):  # a hub name: never a download per actor
        list_shards(source_of("hf", path="org/some-dataset"))


def test_failed_shard_leaves_no_rows_and_a_cut_record_is_redone(tmp_path, ray_local):
    for i in range(3):
        mixed_tar(str(tmp_path / f"in/r-{i}.tar"), f"r{i}", 2, seed=30 + i)
    config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/r-{0..2}.tar")]})
    run_main([str(tmp_path / "run.yaml")])
    out = tmp_path / "out"
    victim = sorted(records_of(out))[0]
    record = out / COMMITS / f"{victim}.done.json"
    record.write_bytes(record.read_bytes()[:25])
    lines = [line for line in (out / SHARD_LIST).read_text().splitlines() if victim not in line]
    (out / SHARD_LIST).write_text("".join(line + "\n" for line in lines))  # died before compacting it
    assert any("not JSON" in p for p in verify(str(out)))
    assert run_main([str(tmp_path / "run.yaml")]) == 0
    assert records_of(out)[victim].status == "done" and verify(str(out)) == []
    assert sorted(r["key"] for r in read_rows(out)) == sorted(f"r{i}_{j:03d}" for i in range(3) for j in range(2))


def mixed_parquet_shards(folder) -> list[str]:
    """An HF-style dataset whose files disagree: the second has no transcripts at all (a column of nulls) and a
    column the first does not declare."""
    from tests.corpus import wav_bytes

    rng = np.random.default_rng(0)
    os.makedirs(folder)

    def audio():
        return {"bytes": wav_bytes((0.1 * rng.standard_normal(8000)).astype(np.float32), 16000), "path": None}

    pq.write_table(pa.table({"id": ["a0", "a1"], "audio": [audio(), audio()], "text": ["hello", "world"],
                             "speaker": [1, 2]}), f"{folder}/part-0.parquet")
    pq.write_table(pa.table({"id": ["b0", "b1"], "audio": [audio(), audio()], "text": pa.nulls(2),
                             "speaker": [3, 4], "mood": ["calm", "sad"]}), f"{folder}/part-1.parquet")
    return ["a0", "a1", "b0", "b1"]


def test_every_data_file_has_the_run_schema_and_readers_read_a_mixed_output_whole(tmp_path, ray_local):
    import datasets
    import polars
    import pyarrow.dataset as pads
    import ray

    keys = mixed_parquet_shards(str(tmp_path / "hf"))
    config_for(tmp_path, {"kind": "hf", "path": str(tmp_path / "hf")}, name="hf.yaml")
    assert run_main([str(tmp_path / "hf.yaml"), f"output.dir={tmp_path}/out_hf"]) == 0
    from demo.synth import SynthSample, random_sample, write_tar

    rng = np.random.default_rng(1)
    for shard in range(3):  # shard 2 has no transcripts at all
        samples = [random_sample(rng, f"t{shard}_{j:03d}", 0.5) for j in range(2)]
        write_tar(str(tmp_path / f"in/t-{shard}.tar"),
                  [SynthSample(x.key, {e: b for e, b in x.members.items() if shard < 2 or e != "txt"}, x.seconds)
                   for x in samples])
    config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/t-{0..2}.tar")]}, name="wds.yaml")
    assert run_main([str(tmp_path / "wds.yaml"), f"output.dir={tmp_path}/out_wds"]) == 0
    for out, expected in ((tmp_path / "out_hf", keys), (tmp_path / "out_wds", [f"t{i}_{j:03d}" for i in range(3) for j in range(2)])):
        files = sorted(str(p) for p in (out / "data").glob("*.parquet"))
        schemas = {pq.read_schema(f).remove_metadata() for f in files}
        assert len(files) >= 2 and len(schemas) == 1
        schema = schemas.pop()
        assert "text" in schema.names and not pa.types.is_null(schema.field("text").type)
        pattern = str(out / "data" / "*.parquet")
        readers = {
            "datasets": lambda: datasets.load_dataset("parquet", data_files=pattern, split="train").to_list(),
            "polars": lambda: polars.scan_parquet(pattern).collect().to_dicts(),
            "pyarrow": lambda: pads.dataset(str(out / "data"), format="parquet").to_table().to_pylist(),
            "ray": lambda: ray.data.read_parquet(str(out / "data")).take_all(),
        }
        for name, read in readers.items():
            rows = read()
            assert sorted(r["key"] for r in rows) == sorted(expected), name
            assert all("text" in r for r in rows), name
    rows = {r["key"]: r for r in read_rows(tmp_path / "out_hf")}
    assert rows["a0"]["text"] == "hello" and rows["b0"]["text"] is None and rows["b1"]["speaker"] == 4
    assert json.loads(rows["b1"]["metadata"]) == {"mood": "sad"} and rows["a1"]["metadata"] is None
    assert verify(str(tmp_path / "out_hf")) == [] and verify(str(tmp_path / "out_wds")) == []


def test_lease_on_a_store_without_conditional_writes_still_refuses_a_live_holder(tmp_path, monkeypatch):
    storage = Storage(str(tmp_path / "out"))
    real = storage.fs.pipe_file

    def pipe_file(path, value, **kwargs):
        if kwargs.get("mode") == "create":
            raise TypeError("pipe_file() got an unexpected keyword argument 'mode'")  # an older fsspec driver
        return real(path, value)

    monkeypatch.setattr(storage.fs, "pipe_file", pipe_file)
    first = RunState.open(storage, header(), output_settings())
    with pytest.raises(LeaseHeld):
        RunState.open(storage, header(), output_settings())
    first.close()
