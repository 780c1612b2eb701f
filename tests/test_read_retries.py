"""Transient errors retried where they happen (pipeline/reads.py): a flaky store costs a retried request, not a
retried shard. A misbehaving HTTP server on 127.0.0.1 (tests/httpserver.py) answers 503s, cuts bodies, stalls,
and has its files replaced between two reads."""

import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo.synth import SynthSample, write_tar
from pipeline.config import ConfigError, load_config
from pipeline.failures import TRANSIENT
from pipeline.reads import ReadRetry, Reads
from pipeline.runstate import ShardRecord
from pipeline.runstate.summary import Totals
from pipeline.sources import Shard, ShardError, list_shards, read_shard
from pipeline.sources.hf import read_hf_shard
from pipeline.sources.webdataset import read_tar_shard
from pipeline.storage import Storage
from tests.corpus import wav_bytes
from tests.httpserver import TroubleServer

FAST = ReadRetry(attempts=5, backoff_s=0.01, budget_s=30.0, stall_s=30.0)
FAST_KEYS = ["source.read_backoff_s=0.01"]


def clip(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)


def serve_wavs(folder, names, seconds: float = 0.5) -> None:
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(names):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(wav_bytes(clip(seconds, i), 16000))


def big_tar(path, megabytes: float = 5.0) -> list[str]:
    """A tar of 5 s float WAVs (320 kB each) adding up to about `megabytes`."""
    count = max(1, round(megabytes * 1e6 / 320044))
    write_tar(str(path), [SynthSample(f"k{i:03d}", {"wav": wav_bytes(clip(5.0, i), 16000)}, 5.0) for i in range(count)])
    return [f"k{i:03d}" for i in range(count)]


FLAKY = ["flaky-a.wav", "flaky-b.wav", "flaky-c.wav"]


def files_config(tmp_path, url):
    return load_config(None, ["source.kind=files", f"source.urls=[{','.join(f'{url}/{n}' for n in FLAKY)}]",
                              "codec.model=random:tiny", f"output.dir={tmp_path}/out", *FAST_KEYS])


def nemo_config(tmp_path, url):
    with open(tmp_path / "manifest.json", "w") as f:
        for name in FLAKY:  # two segments of each recording: one open, read forward
            f.write(json.dumps({"audio_filepath": f"{url}/{name}", "offset": 0.0, "duration": 0.25}) + "\n")
            f.write(json.dumps({"audio_filepath": f"{url}/{name}", "offset": 0.25, "duration": 0.25}) + "\n")
    return load_config(None, ["source.kind=nemo", f"source.path={tmp_path}/manifest.json", "codec.model=random:tiny",
                              f"output.dir={tmp_path}/out", *FAST_KEYS])


@pytest.mark.parametrize("configured", [files_config, nemo_config], ids=["files", "nemo"])
def test_files_and_nemo_recordings_behind_two_503s_per_head_and_get_are_rows_at_the_shards_first_try(
        tmp_path, configured):
    serve_wavs(tmp_path / "served", FLAKY)
    with TroubleServer(str(tmp_path / "served"), flaky_failures=2, flaky_heads=True) as server:
        config = configured(tmp_path, server.url)
        (shard,) = list_shards(config.source).settle(Storage(config.output.dir))
        reads = Reads.of(config.source)
        samples = list(read_shard(shard, config.source, reads=reads))  # no ShardError: the shard's first try holds
    assert len(samples) == (3 if configured is files_config else 6)
    assert all(s.error is None and s.audio is not None for s in samples), [s.error for s in samples]
    # each file: its info asked twice (fsspec's HEAD then GET, both 503) before a HEAD answered, then one GET
    assert reads.retries == 2 * len(FLAKY)
    assert all(server.requests[name] == 6 for name in FLAKY), (server.requests, server.ranges)  # no GET more


def test_a_tar_cut_at_40_percent_on_its_first_two_gets_resumes_with_range_requests_and_yields_every_row(tmp_path):
    keys = big_tar(tmp_path / "served/cut-a.tar")
    size = os.path.getsize(tmp_path / "served/cut-a.tar")
    assert size > 5e6
    with TroubleServer(str(tmp_path / "served"), cut_failures=2, cut_at=0.4) as server:
        reads = Reads(FAST)
        samples = list(read_tar_shard(Shard("a", f"{server.url}/cut-a.tar", "webdataset"), reads=reads))
    assert [s.key for s in samples] == keys and all(s.error is None for s in samples)
    first, second, third = server.ranges["cut-a.tar"]  # three GETs, the later two from the byte the reader reached
    assert first == 0 and 0 < second <= int(size * 0.4) and second < third <= second + int((size - second) * 0.4)
    assert reads.retries == 2

def test_an_object_replaced_between_two_ranged_reads_fails_its_shard_as_changed_never_mixing_versions(tmp_path):
    big_tar(tmp_path / "served/cut-a.tar", 1.0)

    def replace(name, count):
        if count == 2:  # after the first GET broke, before the resumed one is answered
            big_tar(tmp_path / "served/cut-a.tar", 1.3)

    with TroubleServer(str(tmp_path / "served"), cut_failures=1, cut_at=0.4) as server:
        server.on_get = replace
        with pytest.raises(ShardError) as failed:
            list(read_tar_shard(Shard("a", f"{server.url}/cut-a.tar", "webdataset"), reads=Reads(FAST)))
    assert failed.value.reason == "changed" and failed.value.kind != TRANSIENT, failed.value
    assert server.ranges["cut-a.tar"][0] == 0 and len(server.ranges["cut-a.tar"]) == 1  # refused, nothing sent


def test_a_stalled_read_is_cut_within_its_stall_limit_and_resumed_where_it_stopped(tmp_path):
    serve_wavs(tmp_path / "served", ["stall-a.wav"], seconds=2.0)
    size = os.path.getsize(tmp_path / "served/stall-a.wav")
    with TroubleServer(str(tmp_path / "served"), stall_s=60.0, stall_failures=1) as server:
        reads = Reads(ReadRetry(attempts=3, backoff_s=0.01, stall_s=0.5))
        began = time.monotonic()
        with reads.open(f"{server.url}/stall-a.wav") as f:
            data = f.read()
        took = time.monotonic() - began
    assert data == open(tmp_path / "served/stall-a.wav", "rb").read()
    assert took < 5.0, took  # the server stalls 60 s: cut after 0.5 s without a byte
    assert reads.retries == 1 and server.ranges["stall-a.wav"] == [0, size // 2]


def hf_path_shard(tmp_path, urls):
    pq.write_table(pa.table({"id": [u.rsplit("/", 1)[-1] for u in urls], "audio": urls}), tmp_path / "a.parquet")
    return Shard("a", str(tmp_path / "a.parquet"), "hf-parquet")


def test_a_404_path_cell_is_one_missing_audio_file_record_at_the_first_try(tmp_path):
    from pipeline.sources import source_of

    serve_wavs(tmp_path / "served", ["ok.wav"])
    with TroubleServer(str(tmp_path / "served")) as server:
        reads = Reads(FAST)
        shard = hf_path_shard(tmp_path, [f"{server.url}/ok.wav", f"{server.url}/gone.wav"])
        ok, gone = read_hf_shard(shard, source_of("hf", path=shard.url), reads=reads)
    assert ok.error is None and gone.error.reason == "missing_audio_file", gone.error
    assert reads.retries == 0 and server.requests["gone.wav"] == 2  # fsspec's HEAD, then its GET: not retried


def test_a_store_answering_503_forever_costs_read_attempts_gets_then_one_transient_shard_failure(tmp_path, tiny_codec):
    from pipeline.actor.processor import ShardProcessor

    serve_wavs(tmp_path / "served", ["flaky-a.wav"])
    with TroubleServer(str(tmp_path / "served"), flaky_failures=10**6) as server:
        config = load_config(None, ["source.kind=files", f"source.urls=[{server.url}/flaky-a.wav]", "source.read_attempts=3",
                                    "codec.model=random:tiny", f"output.dir={tmp_path}/out", *FAST_KEYS])
        (shard,) = list_shards(config.source).settle(Storage(config.output.dir))
        began = time.monotonic()
        result = ShardProcessor(config).process(shard)
    assert time.monotonic() - began < 10
    assert result.status == "failed" and result.failure == TRANSIENT and result.rows == 0, result
    assert server.get_requests["flaky-a.wav"] == 3 and result.read_retries == 2


def test_run_state_reads_are_retried_through_503s(tmp_path):
    from pipeline.runstate.retry import RetriedStorage, WriteRetry

    os.makedirs(tmp_path / "served")
    (tmp_path / "served/flaky-manifest.json").write_text('{"a": 1}')
    with TroubleServer(str(tmp_path / "served"), flaky_failures=2) as server:
        storage = RetriedStorage(Storage(server.url), WriteRetry(attempts=3, backoff_s=0.01))
        assert json.loads(storage.read_bytes("flaky-manifest.json")) == {"a": 1}
    assert server.get_requests["flaky-manifest.json"] == 3 and storage.reads.retries == 2


def test_a_commit_record_written_before_read_retries_existed_reads_as_none():
    old = {"shard_id": "s", "source": "x.tar", "status": "done", "rows": 3, "files": ["data/s.parquet"]}
    assert ShardRecord.from_dict(old).read_retries == 0
    new = dict(ShardRecord("t", "y.tar", "failed", read_retries=4).to_dict(), reason="transient_io")
    assert Totals([old, new]).as_dict()["read_retries"] == 4


@pytest.mark.parametrize("key,value", [("read_attempts", 0), ("read_attempts", -1), ("read_backoff_s", -1),
                                       ("read_budget_s", 0), ("read_stall_s", -2)])
def test_zero_or_negative_read_attempts_or_budgets_are_refused_naming_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError) as error:
        load_config(None, ["source.kind=webdataset", "source.urls=[a.tar]", f"output.dir={tmp_path}",
                           f"source.{key}={value}"])
    assert error.value.key == f"source.{key}"


def test_a_zero_read_stall_limit_exits_2_naming_the_key_before_ray(tmp_path, capsys):
    from pipeline.run import main as run_main

    (tmp_path / "run.yaml").write_text(f"source: {{kind: webdataset, urls: [{tmp_path}/a.tar]}}\noutput: {{dir: {tmp_path}/out}}\n")
    assert run_main([str(tmp_path / "run.yaml"), "source.read_stall_s=0"]) == 2
    assert "source.read_stall_s" in capsys.readouterr().err


def test_read_settings_are_not_in_the_outputs_identity(tmp_path):
    big_tar(tmp_path / "a.tar", 0.1)
    identities = [list_shards(load_config(None, ["source.kind=webdataset", f"source.urls=[{tmp_path}/a.tar]",
                                                 f"output.dir={tmp_path}", *keys]).source).identity
                  for keys in ([], ["source.read_attempts=9", "source.read_stall_s=3", "source.read_budget_s=7"])]
    assert identities[0] == identities[1]  # the source's part of the identity (pipeline.driver.job._identity)


def test_read_shard_without_reads_uses_the_configured_settings(tmp_path):
    serve_wavs(tmp_path / "served", ["flaky-a.wav"])
    with TroubleServer(str(tmp_path / "served"), flaky_failures=2) as server:
        config = load_config(None, ["source.kind=files", f"source.urls=[{server.url}/flaky-a.wav]",
                                    "source.read_attempts=2", f"output.dir={tmp_path}/out", *FAST_KEYS])
        (shard,) = list_shards(config.source).settle(Storage(config.output.dir))
        with pytest.raises(ShardError) as error:  # two tries: both 503
            list(read_shard(shard, config.source))
    assert error.value.kind == TRANSIENT and server.get_requests["flaky-a.wav"] == 2


def test_a_listing_asks_through_503s_and_takes_no_503_for_nothing_there(tmp_path):
    serve_wavs(tmp_path / "served", ["flaky-a.wav"])
    with TroubleServer(str(tmp_path / "served"), flaky_failures=2, flaky_heads=True) as server:
        reads = Reads(FAST)
        fs, path = reads.filesystem(f"{server.url}/flaky-a.wav")
        assert reads.kind(fs, path) == "file" and reads.retries == 2  # fsspec's exists() said False to the 503s
        assert reads.kind(fs, path.replace("flaky-a", "gone")) is None
