"""No sample lost to a transient cause: a sample that fails to read or decode for a reason another attempt could
change (a store's 503, a full TMPDIR, no memory left) fails its shard as transient, which is retried whole; only
causes no retry changes are the sample's error record."""

import errno

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.failures import TRANSIENT
from pipeline.run import run_job
from tests.corpus import wav_bytes
from tests.httpserver import TroubleServer
from tests.test_pipeline import config_for, manifest_of, read_rows, records_of
from tests.test_reliability import errors_of


def clip(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)


def test_hf_path_cells_behind_two_503s_per_head_and_get_are_all_encoded_in_the_shards_first_try(tmp_path, ray_local,
                                                                                                 capsys):
    from pipeline.run import main as run_main

    names = ["good-0.wav", "flaky-a.wav", "good-1.wav", "flaky-b.wav", "flaky-c.wav", "good-2.wav"]
    (tmp_path / "served").mkdir()
    for i, name in enumerate(names):
        (tmp_path / "served" / name).write_bytes(wav_bytes(clip(0.5, i), 16000))
    with TroubleServer(str(tmp_path / "served"), flaky_failures=2, flaky_heads=True) as server:
        (tmp_path / "in").mkdir()
        pq.write_table(pa.table({"id": names, "audio": [f"{server.url}/{n}" for n in names]}), tmp_path / "in/a.parquet")
        config_for(tmp_path, {"kind": "hf", "path": str(tmp_path / "in")})
        assert run_main([str(tmp_path / "run.yaml"), "source.read_backoff_s=0.01"]) == 0
    assert all(server.requests[n] == 6 for n in names if n.startswith("flaky-"))  # 2 x (HEAD, GET) 503, HEAD, GET
    (record,) = records_of(tmp_path / "out").values()
    assert record.status == "done" and record.attempts == 1  # retried where the reads failed, not whole
    assert record.read_retries == 6 and manifest_of(tmp_path / "out")["totals"]["read_retries"] == 6
    printed = capsys.readouterr()
    assert "6 remote reads retried where they failed" in printed.out + printed.err
    assert sorted(r["key"] for r in read_rows(tmp_path / "out")) == sorted(names)
    assert errors_of(tmp_path / "out") == []


def no_space_left(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def no_memory_left(*args, **kwargs):
    raise MemoryError()


# where decoding meets the machine: a long clip's samples written to TMPDIR (codec.FileWave), a short clip resampled
INJECTIONS = {"enospc_writing_tmpdir": ("codec.waves.FileWave.append", no_space_left, "no_space_left"),
              "memory_error_resampling": ("pipeline.audio.decode.soxr.resample", no_memory_left, "out_of_host_memory")}


@pytest.mark.parametrize("injected", INJECTIONS)
def test_enospc_or_memory_error_while_decoding_fails_the_shard_as_transient_not_a_decode_failed_record(
        tmp_path, tiny_codec, monkeypatch, injected):
    from pipeline.sources import list_shards
    from demo.synth import SynthSample, write_tar
    from pipeline.actor.processor import ShardProcessor

    write_tar(str(tmp_path / "in/s.tar"), [
        SynthSample("short", {"wav": wav_bytes(clip(0.5, 1), 16000)}, 0.5),
        SynthSample("long", {"wav": wav_bytes(clip(121.0, 2, 8000), 8000, "PCM_16")}, 121.0),  # decoded in blocks
    ])
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/s.tar")]})
    processor = ShardProcessor(config)
    (shard,) = list_shards(config.source).shards
    target, raising, reason = INJECTIONS[injected]
    with monkeypatch.context() as patch:
        patch.setattr(target, raising)
        result = processor.process(shard)
    assert result.status == "failed" and result.failure == TRANSIENT, result
    assert result.reason == reason and result.rows == 0 and result.error_reasons == {}
    assert errors_of(config.output.dir) == [] and not (tmp_path / "out/data").exists()
    retried = processor.process(shard)  # the retry, with the disk or memory back
    assert retried.status == "done" and retried.rows == 2 and retried.errors == 0


def test_enospc_spilling_a_large_tar_member_fails_the_shard_as_transient_not_as_a_corrupt_tar(tmp_path, monkeypatch):
    import pipeline.sources.webdataset
    from pipeline.sources import Shard, ShardError
    from pipeline.sources.webdataset import read_tar_shard
    from demo.synth import SynthSample, write_tar

    write_tar(str(tmp_path / "s.tar"), [SynthSample("a", {"wav": wav_bytes(clip(0.5, 1), 16000)}, 0.5)])
    monkeypatch.setattr(pipeline.sources.webdataset, "SPILL_ABOVE_BYTES", 1000)  # the member is spilled to TMPDIR
    monkeypatch.setattr("pipeline.audio.decode.shutil.copyfileobj", no_space_left)
    with pytest.raises(ShardError) as error:
        list(read_tar_shard(Shard("s", str(tmp_path / "s.tar"), "webdataset")))
    assert error.value.kind == TRANSIENT and error.value.reason == "no_space_left", error.value


def test_memory_error_while_lhotse_loads_a_cut_fails_the_shard_as_transient_not_an_undecodable_record(
        tmp_path, monkeypatch):
    import lhotse
    from lhotse import AudioSource, CutSet, MonoCut, Recording

    from pipeline.config import load_config
    from pipeline.sources import ShardError, list_shards, read_shard
    from pipeline.storage import Storage

    path = tmp_path / "a.wav"
    path.write_bytes(wav_bytes(clip(0.5, 1), 16000))
    # a command source: no file segment, lhotse loads the cut itself
    recording = Recording("rec", [AudioSource("command", [0], f"cat {path}")], 16000, 8000, 0.5)
    CutSet.from_cuts([MonoCut("cut", 0.0, 0.5, 0, recording=recording)]).to_file(str(tmp_path / "cuts.jsonl.gz"))
    config = load_config(None, ["source.kind=lhotse", f"source.path={tmp_path}/cuts.jsonl.gz", "codec.model=random:tiny",
                                f"output.dir={tmp_path}/out"])
    (shard,) = list_shards(config.source).settle(Storage(config.output.dir))
    (row,) = read_shard(shard, config.source)
    assert row.error is None and row.audio[0].shape == (8000, 1)  # lhotse loads it
    monkeypatch.setattr(lhotse.MonoCut, "load_audio", no_memory_left)
    with pytest.raises(ShardError) as error:
        list(read_shard(shard, config.source))
    assert error.value.kind == TRANSIENT and error.value.reason == "out_of_host_memory", error.value
