"""Careless and hostile input: every tar member a row or an error record, truncation and unknown lengths
found from the decoded length, bad HF cells costing their row only, memory set by the configuration,
and config mistakes stopped before Ray starts."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import tempfile
import tracemalloc

import numpy as np
import pytest

from pipeline.sources import Shard
from pipeline.sources.webdataset import read_tar_shard
from tests.corpus import wav_bytes


def clip(seconds: float = 0.2, rate: int = 16000) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def shard_of(path) -> Shard:
    return Shard("s", str(path), "webdataset")


def by_key(samples) -> dict:
    return {s.key: s for s in samples}


# -- tar members ---------------------------------------------------------------------------------------------


def test_tar_member_repeated_in_a_row_is_a_duplicate_member_record_not_silently_replaced(tmp_path):
    wav = wav_bytes(clip(), 16000)
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        add(tar, "a.wav", wav)
        add(tar, "a.wav", wav)
        add(tar, "b.wav", wav)
    samples = by_key(read_tar_shard(shard_of(tmp_path / "s.tar")))
    assert samples["a"].error.reason == "duplicate_member" and samples["a"].audio is None
    assert samples["b"].audio == wav and samples["b"].error is None


def test_tar_hard_link_reads_as_its_target_and_symlinks_and_fifos_are_unsupported_member_records(tmp_path):
    wav = wav_bytes(clip(), 16000)
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        add(tar, "dir", type=tarfile.DIRTYPE)  # a folder holds no sample: no record
        add(tar, "dir/a.wav", wav)
        add(tar, "dir/a.txt", b"hello")
        add(tar, "dir/b.wav", type=tarfile.LNKTYPE, linkname="dir/a.wav")  # what GNU tar writes for a hard link
        add(tar, "dir/b.txt", type=tarfile.LNKTYPE, linkname="dir/a.txt")
        add(tar, "dir/c.wav", type=tarfile.SYMTYPE, linkname="a.wav")
        add(tar, "dir/d.wav", type=tarfile.FIFOTYPE)
        add(tar, "dir/e.wav", type=tarfile.LNKTYPE, linkname="elsewhere.wav")
    samples = by_key(read_tar_shard(shard_of(tmp_path / "s.tar")))
    assert sorted(samples) == ["dir/a", "dir/b", "dir/c", "dir/d", "dir/e"]
    assert samples["dir/b"].audio == wav and samples["dir/b"].metadata == {"text": "hello"}
    for key in ("dir/c", "dir/d", "dir/e"):
        assert samples[key].error.reason == "unsupported_member", key


def test_gz_tar_with_a_huge_text_member_is_a_metadata_too_large_record_read_in_bounded_memory(tmp_path):
    wav = wav_bytes(clip(), 16000)
    huge = 48 << 20  # compresses to a few tens of kB: the input's size says nothing about its content's
    path = tmp_path / "s.tar.gz"
    with gzip.open(path, "wb", compresslevel=1) as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        add(tar, "a.wav", wav)
        add(tar, "a.txt", b"x" * huge)
        add(tar, "b.wav", wav)
        add(tar, "b.jpg", b"y" * huge)  # a member no row keeps: never read
    assert os.path.getsize(path) < huge // 100
    tracemalloc.start()
    try:
        samples = by_key(read_tar_shard(shard_of(path), max_text_bytes=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert samples["a"].error.reason == "metadata_too_large" and "source.max_text_bytes" in samples["a"].error.detail
    assert samples["b"].audio == wav and samples["b"].error is None
    assert peak < huge // 4, f"{peak / 2**20:.0f} MiB traced while reading"


# -- config mistakes -----------------------------------------------------------------------------------------


@pytest.fixture
def no_ray(monkeypatch):
    """Ray must not start: a config mistake is reported before it."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for a run whose config is bad")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)


def run_cli(tmp_path, capsys, config_text: str | None, *overrides: str) -> tuple[int, str]:
    from pipeline.run import main

    path = tmp_path / "run.yaml"
    if config_text is not None:
        path.write_text(config_text)
    code = main([str(path), *overrides])
    return code, capsys.readouterr().err


GOOD_YAML = "source:\n  kind: webdataset\n  urls: [{tar}]\ncodec:\n  model: random:tiny\noutput:\n  dir: {out}\n"


@pytest.fixture
def good_yaml(tmp_path):
    wav = wav_bytes(clip(), 16000)
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        add(tar, "a.wav", wav)
    return GOOD_YAML.format(tar=tmp_path / "s.tar", out=tmp_path / "out")


def test_malformed_yaml_exits_2_naming_line_and_column_not_a_traceback(tmp_path, capsys, no_ray):
    code, err = run_cli(tmp_path, capsys, "source:\n  kind: webdataset\n  urls: [a.tar\noutput: {dir: x}\n")
    assert code == 2 and "not valid YAML" in err and "line 4, column 7" in err
    (tmp_path / "run.yaml").write_bytes(b"source:\xae\xff\x00")
    code, err = run_cli(tmp_path, capsys, None)
    assert code == 2 and "is not text" in err


def test_missing_config_file_exits_2_not_a_traceback(tmp_path, capsys, no_ray):
    code, err = run_cli(tmp_path, capsys, None)
    assert code == 2 and "does not exist" in err and "run.yaml" in err


@pytest.mark.parametrize("override", ["audio.max_seconds=nan", "codec.window_s=nan", "codec.context_s=inf",
                                      "ray.shard_timeout_s=-inf", "guard.max_error_fraction=nan"])
def test_nan_or_infinite_number_exits_2_naming_its_key(tmp_path, capsys, no_ray, good_yaml, override):
    code, err = run_cli(tmp_path, capsys, good_yaml, override)
    key = override.split("=")[0]
    assert code == 2 and f"'{key}'" in err and "NaN or infinite" in err


@pytest.mark.parametrize("device, ok", [("bogus", False), ("cuda:x", False), ("gpu", False), ("cuda:1", False),
                                        ("cuda", True), ("mps", True), ("cpu", True), ("auto", True)])
def test_unknown_codec_device_is_a_config_error_before_any_actor(device, ok):
    from pipeline.config import ConfigError, load_config

    overrides = ["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x", f"codec.device={device}"]
    if ok:
        assert load_config(None, overrides).codec.device == device
    else:
        with pytest.raises(ConfigError, match="codec.device"):
            load_config(None, overrides)


def test_source_whose_literal_paths_all_do_not_exist_exits_2_before_ray(tmp_path, capsys, no_ray, good_yaml):
    code, err = run_cli(tmp_path, capsys, good_yaml, f"source.urls=['{tmp_path}/nope-{{0..2}}.tar','{tmp_path}/gone.tar']")
    assert code == 2 and "'source.urls'" in err and "none of the 4 paths exists" in err
    code, err = run_cli(tmp_path, capsys, good_yaml, f"source.urls=['{tmp_path}/nope-*.tar']")
    assert code == 2 and "match no file" in err
    code, err = run_cli(tmp_path, capsys, good_yaml, f"source.urls=[{tmp_path}/a-{{0..2}}.tar")
    assert code == 2 and "'overrides'" in err and "not valid YAML" in err


# -- HF cells ------------------------------------------------------------------------------------------------


@pytest.fixture
def hostile_parquet(tmp_path):
    """One Parquet file whose rows are each a different bad cell, between two good ones."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    wav = wav_bytes(clip(), 16000)
    (tmp_path / "good.wav").write_bytes(wav)
    (tmp_path / "big.wav").write_bytes(wav + b"\0" * 20_000)
    os.mkfifo(tmp_path / "fifo.wav")
    os.mkdir(tmp_path / "folder.wav")
    cells = {
        "good_bytes": {"bytes": wav},
        "ragged": {"array": [[0.1, 0.2], [0.3]], "sampling_rate": 16000},
        "bad_rate": {"array": [[0.1], [0.2]], "sampling_rate": -5},
        "unknown_protocol": {"path": "foo://bucket/a.wav"},
        "missing_driver": {"path": "smb://host/share/a.wav"},
        "fifo": {"path": str(tmp_path / "fifo.wav")},
        "folder": {"path": str(tmp_path / "folder.wav")},
        "too_big": {"path": str(tmp_path / "big.wav")},
        "huge_text": {"bytes": wav},
        "good_path": {"path": str(tmp_path / "good.wav")},
    }
    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string()),
                            ("array", pa.list_(pa.list_(pa.float32()))), ("sampling_rate", pa.int64())])
    table = pa.table({"id": list(cells), "audio": pa.array(list(cells.values()), audio_type),
                      "text": ["x" * (30_000 if key == "huge_text" else 3) for key in cells]})
    pq.write_table(table, tmp_path / "s.parquet")
    return tmp_path / "s.parquet", wav


def unblocking_fifo_writer(path):
    """Opens `path` for writing whenever a reader waits on it, so a reader that blocks on a FIFO gets an empty
    file instead of hanging the test (the test then fails on the reason)."""
    import threading

    stop = threading.Event()

    def run():
        while not stop.wait(0.05):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # no reader waiting

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return stop


def test_bad_hf_cells_are_error_records_for_their_rows_and_the_rest_of_the_shard_is_read(hostile_parquet):
    from pipeline.sources import source_of
    from pipeline.sources.hf import read_hf_shard

    path, wav = hostile_parquet
    stop = unblocking_fifo_writer(path.parent / "fifo.wav")
    try:
        samples = by_key(read_hf_shard(Shard("s", str(path), "hf-parquet"),
                                       source_of("hf", path=str(path), max_text_bytes=10_000),
                                       max_file_bytes=len(wav) + 1000))
    finally:
        stop.set()
    reasons = {key: s.error.reason for key, s in samples.items() if s.error is not None}
    assert reasons == {"ragged": "bad_array", "bad_rate": "bad_sample_rate", "unknown_protocol": "unreadable_audio_path",
                       "missing_driver": "unreadable_audio_path", "fifo": "not_a_regular_file",
                       "folder": "not_a_regular_file", "too_big": "file_too_large", "huge_text": "metadata_too_large"}
    assert samples["good_bytes"].audio == wav and samples["good_path"].audio == wav
    assert "audio.max_file_bytes" in samples["too_big"].error.detail
    assert "source.max_text_bytes" in samples["huge_text"].error.detail


def test_hf_array_cells_are_read_by_their_layout_and_an_implausible_shape_is_a_bad_shape_record(tmp_path, tiny_codec):
    """A [2, N] stereo array (as `datasets` and torchaudio lay it out) is N frames of 2 channels, not 2 frames of N:
    its row lasts N / rate and has the codes of the same samples laid out [N, 2]. Shapes that name no channel
    axis are records naming the shape."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.sources import list_shards
    from pipeline.actor.processor import ShardProcessor
    from tests.test_pipeline import config_for, read_rows
    from tests.test_reliability import errors_of

    stereo = np.stack([clip(1.0), clip(1.0)[::-1]])  # [channels, frames]: 2 x 16000
    cells = {"channels_first": stereo, "frames_first": stereo.T, "both_long": np.zeros((100, 400), np.float32),
             "both_short": np.zeros((2, 8), np.float32)}
    kind = pa.struct([("array", pa.list_(pa.list_(pa.float32()))), ("sampling_rate", pa.int64())])
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": list(cells), "audio": pa.array(
        [{"array": a.tolist(), "sampling_rate": 16000} for a in cells.values()], kind)}), tmp_path / "in/a.parquet")
    cube = pa.struct([("array", pa.list_(pa.list_(pa.list_(pa.float32())))), ("sampling_rate", pa.int64())])
    pq.write_table(pa.table({"id": ["cube"], "audio": pa.array(
        [{"array": np.zeros((2, 2, 100)).tolist(), "sampling_rate": 16000}], cube)}), tmp_path / "in/b.parquet")
    config = config_for(tmp_path, {"kind": "hf", "path": str(tmp_path / "in")})
    processor = ShardProcessor(config)
    assert all(processor.process(shard).status == "done" for shard in list_shards(config.source).shards)
    rows = {r["key"]: r for r in read_rows(config.output.dir)}
    assert sorted(rows) == ["channels_first", "frames_first"]
    assert rows["channels_first"]["duration_s"] == pytest.approx(1.0)
    assert rows["channels_first"]["codes"] == rows["frames_first"]["codes"]
    errors = {e["key"]: e for e in errors_of(config.output.dir)}
    assert {key: e["reason"] for key, e in errors.items()} == {"both_long": "bad_shape", "both_short": "bad_shape",
                                                                "cube": "bad_shape"}
    assert "[100, 400]" in errors["both_long"]["detail"] and "[2, 8]" in errors["both_short"]["detail"]
    assert "[2, 2, 100]" in errors["cube"]["detail"]


# -- truncation, unknown lengths, decode memory -----------------------------------------------------------


def encoded(fmt: str, subtype: str | None, seconds: float = 2.0, rate: int = 48000, channels: int = 1,
            endian: str | None = None) -> bytes:
    import soundfile

    samples = (np.random.default_rng(1).standard_normal((int(seconds * rate), channels)) * 0.1).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype, endian=endian)
    return buffer.getvalue()


def decoded(source, max_seconds: float = 3600.0, blocked_above_s=None):
    from pipeline.audio.decode import decode_audio

    return decode_audio(source, 24000, "HQ", max_seconds, blocked_above_s=blocked_above_s)


def ogg_page_ends(data: bytes) -> list[int]:
    ends, at = [], 0
    while data.startswith(b"OggS", at):
        segments = data[at + 26]
        at += 27 + segments + sum(data[at + 27:at + 27 + segments])
        ends.append(at)
    return ends


TRUNCATED = {  # format, subtype: libsndfile returns the bytes present as a shorter clip for each, without a word
    "opus": ("OGG", "OPUS"), "vorbis": ("OGG", "VORBIS"), "wav": ("WAV", "PCM_16"), "w64": ("W64", "PCM_16"),
    "rf64": ("RF64", "PCM_16"), "aiff": ("AIFF", "PCM_16"), "au": ("AU", "PCM_16"), "nist": ("NIST", "PCM_16"),
    "svx": ("SVX", "PCM_16"), "avr": ("AVR", "PCM_16"), "avr_stereo": ("AVR", "PCM_16", 2), "mp3": ("MP3", None),
    "mat4": ("MAT4", "PCM_16", 2), "mat4_float": ("MAT4", "FLOAT"), "mat4_big": ("MAT4", "PCM_16", 1, "BIG"),
    "mat5": ("MAT5", "PCM_16", 2), "voc": ("VOC", "PCM_16", 2), "voc_u8": ("VOC", "PCM_U8"), "wve": ("WVE", "ALAW"),
    "mpc2k": ("MPC2K", "PCM_16"), "mpc2k_stereo": ("MPC2K", "PCM_16", 2),
}
RATES = {"SVX": 16000, "AVR": 16000, "WVE": 8000, "MPC2K": 44100, "VOC": 8000}  # what each container takes


@pytest.mark.parametrize("name", TRUNCATED)
def test_truncated_file_is_a_truncated_record_not_a_shorter_clip(name):
    from pipeline.audio.decode import SampleError, SpilledFile

    fmt, subtype, *layout = TRUNCATED[name]
    channels, endian = (layout + [1, None][len(layout):])
    data = encoded(fmt, subtype, rate=RATES.get(fmt, 48000), channels=channels, endian=endian)
    assert decoded(data).duration_s == pytest.approx(2.0, abs=0.05)  # whole: accepted as it is
    if name in ("opus", "vorbis"):  # an ID3v1 tag appended after the last page is no cut
        assert decoded(data + b"TAG" + bytes(125)).duration_s == pytest.approx(2.0, abs=0.05)
    cuts = [int(len(data) * 0.9)]
    if name in ("opus", "vorbis"):
        cuts.append(ogg_page_ends(data)[-2])  # cut between two pages: every page whole, the last one lost
    for cut in cuts:
        for source in (data[:cut], SpilledFile(io.BytesIO(data[:cut]))):
            with pytest.raises(SampleError) as error:
                decoded(source)
            assert error.value.reason == "truncated", (cut, error.value)


def flac_without_length(data: bytes) -> bytes:
    """The FLAC with STREAMINFO's total_samples (36 bits from bit 108 of the block after the 8 bytes of 'fLaC'
    and the block header) set to 0, "unknown": what ffmpeg writes when its output is a pipe."""
    patched = bytearray(data)
    streaminfo = int.from_bytes(patched[8:26], "big")
    streaminfo &= ~(((1 << 36) - 1) << (144 - 108 - 36))
    patched[8:26] = streaminfo.to_bytes(18, "big")
    return bytes(patched)


def test_flac_whose_header_declares_no_length_is_decoded_and_measured_not_too_long():
    from pipeline.audio.decode import SampleError, SpilledFile

    data = encoded("FLAC", "PCM_16", seconds=2.5, rate=16000, channels=2)
    unknown = flac_without_length(data)
    reference = decoded(data)
    for source in (unknown, SpilledFile(io.BytesIO(unknown))):
        audio = decoded(source)
        assert audio.duration_s == pytest.approx(2.5) and audio.source_channels == 2
        np.testing.assert_array_equal(audio.wave[:], reference.wave)
    with pytest.raises(SampleError) as error:
        decoded(unknown, max_seconds=1.0)
    assert error.value.reason == "too_long" and "while decoding" in error.value.detail


@pytest.mark.parametrize("kept", [0.5, 0.99])
def test_a_cut_flac_whose_header_declares_no_length_is_an_error_record_not_a_shorter_clip(kept):
    """No declared length to hold the decoded one to: libsndfile's decoder finds the cut frame ('lost sync'), and
    that error must not be read as the stream's end (a shorter clip written as whole is data lost)."""
    from pipeline.audio.decode import SampleError, SpilledFile

    unknown = flac_without_length(encoded("FLAC", "PCM_16", seconds=6, rate=16000, channels=2))
    cut = unknown[:int(len(unknown) * kept)]
    for source in (cut, SpilledFile(io.BytesIO(cut))):
        with pytest.raises(SampleError) as error:
            decoded(source)
        assert error.value.reason == "undecodable" and "lost sync" in error.value.detail, error.value


# -- the ffmpeg decoder (PyAV): the same hostile inputs -------------------------------------------------------


def pyav_encoded(seconds: float = 2.0, rate: int = 44100, layout: str = "stereo", codec: str = "aac",
                 options: dict | None = None, silent: bool = False) -> bytes:
    """An MP4 (M4A) written by ffmpeg's muxer through PyAV: AAC by default, `options` its muxer's (movflags)."""
    import av

    channels = av.AudioLayout(layout).nb_channels
    planar = codec == "aac"
    rng = np.random.default_rng(2)
    handle, path = tempfile.mkstemp(suffix=".m4a")  # a path: faststart rewrites the file when it closes
    os.close(handle)
    with av.open(path, "w", format="mp4", options={"strict": "-2", **(options or {})}) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        for start in range(0, int(seconds * rate), 4096):
            n = min(4096, int(seconds * rate) - start)
            if planar:
                samples = np.zeros((channels, n), np.float32) if silent else \
                    (rng.standard_normal((channels, n)) * 0.1).astype(np.float32)
                frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
            else:
                frame = av.AudioFrame.from_ndarray(np.zeros((1, channels * n), np.int16), format="s16", layout=layout)
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    return data


M4A_LAYOUTS = {"mdat_then_moov": {}, "moov_first": {"movflags": "faststart"},
               "fragmented": {"movflags": "frag_keyframe+empty_moov"}}


@pytest.mark.parametrize("layout", M4A_LAYOUTS)
def test_truncated_m4a_is_a_truncated_record_found_from_its_boxes(layout):
    """AAC in MP4, which libsndfile cannot read at all, decodes (through ffmpeg); cut, it is `truncated`: a box
    declares more bytes than the file holds."""
    from pipeline.audio.decode import SampleError, SpilledFile

    data = pyav_encoded(options=M4A_LAYOUTS[layout])
    audio = decoded(data)
    assert audio.duration_s == pytest.approx(2.0, abs=0.05) and audio.source_channels == 2
    for source in (data[:int(len(data) * 0.9)], SpilledFile(io.BytesIO(data[:int(len(data) * 0.9)]))):
        with pytest.raises(SampleError) as error:
            decoded(source)
        assert error.value.reason == "truncated" and "MP4" in error.value.detail, error.value


def ogg_crc(page: bytes) -> int:
    """Ogg's page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, over the page with its CRC field zero."""
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def with_last_page(data: bytes, granule: int | None = None, end_of_stream: bool = False) -> bytes:
    """The Ogg file with its last page's granule position (the stream's length, as ffmpeg reads it) or its
    end-of-stream flag set, and its checksum made right again."""
    at = data.rfind(b"OggS")
    page = bytearray(data[at:])
    if granule is not None:
        page[6:14] = granule.to_bytes(8, "little")
    if end_of_stream:
        page[5] |= 0x04
    page[22:26] = bytes(4)
    page[22:26] = ogg_crc(bytes(page)).to_bytes(4, "little")
    return data[:at] + bytes(page)


def test_pyav_decoded_files_keep_the_hostile_input_guarantees(monkeypatch):
    """For the formats ffmpeg decodes: a header's length over audio.max_seconds is refused before any frame is
    decoded, and one under it that lies is caught as the file decodes; a stream damaged mid-way is no shorter clip;
    a stream with no declared length is decoded in blocks and measured; files that are no audio (named .mp3 or .m4a) and a file of no samples are one record
    each, naming the format."""
    from pipeline.audio import pyav_reader
    from pipeline.audio.decode import SampleError

    def reason(data, **kwargs) -> str:
        with pytest.raises(SampleError) as error:
            decoded(data, **kwargs)
        return f"{error.value.reason}: {error.value.detail}"

    opus = encoded("OGG", "OPUS", seconds=1.0, rate=48000, channels=2)
    blocks = pyav_reader.PyavInput.blocks
    monkeypatch.setattr(pyav_reader.PyavInput, "blocks", lambda *a: pytest.fail("frames were decoded"))
    assert reason(with_last_page(opus, granule=48000 * 10**6)) == ("too_long: 1000000 s > audio.max_seconds=3600 (the "
                                                                   "header's length; not decoded)")
    monkeypatch.setattr(pyav_reader.PyavInput, "blocks", blocks)
    short = with_last_page(opus, granule=2400)  # declares 50 ms
    assert reason(short, max_seconds=0.5) == "too_long: 1 s > audio.max_seconds=0 (found while decoding)"

    monkeypatch.setattr(pyav_reader, "_declared_frames", lambda *a: None)
    data = pyav_encoded(seconds=1.0)
    assert decoded(data).duration_s == pytest.approx(1.0, abs=0.05)
    assert reason(data, max_seconds=0.5).startswith("too_long: 1 s > audio.max_seconds=0 (found while decoding: its "
                                                    "header declares no length)")
    monkeypatch.undo()

    rng = np.random.default_rng(9)
    assert reason(b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8))).startswith(
        "undecodable: mp3: ")
    assert reason(b"OggS\x00\x02" + bytes(22) + b"OpusHead" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8))
                  ).startswith(("undecodable: opus: ", "truncated: the Ogg stream"))
    assert reason(b"\x00\x00\x00\x10ftypM4A \x00\x00\x00\x00" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8))
                  ).startswith(("undecodable: mp4: ", "truncated: MP4"))
    assert reason(b"This is a text file, named .mp3 by mistake.\n" * 40).startswith("undecodable: other: ")
    assert reason(b"") == "empty_file: 0 bytes"
    damaged = opus[:2000] + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)) + opus[5000:]  # pages lost mid-stream
    assert reason(damaged).startswith(("truncated: ", "undecodable: opus: "))  # ffmpeg decodes past them: not shorter
    headers_only = with_last_page(encoded("OGG", "OPUS", seconds=0.0), end_of_stream=True)  # a whole stream, no audio
    assert reason(headers_only).startswith(("empty_audio: ", "undecodable: opus: "))


def many_channels_at_a_high_rate(writer: str) -> bytes:
    """6 s of 8-channel 384 kHz silence: a FLAC (libsndfile decodes it), or FLAC in MP4 (ffmpeg does)."""
    import soundfile

    if writer == "flac_in_mp4":
        return pyav_encoded(seconds=6.0, rate=384000, layout="7.1", codec="flac")
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros((6 * 384000, 8), np.float32), 384000, format="FLAC")
    return buffer.getvalue()


@pytest.mark.parametrize("writer", ["flac", "flac_in_mp4"])
def test_small_file_of_many_channels_at_a_high_rate_decodes_in_bounded_memory(writer):
    """A file of a few hundred kB whose whole-file decode is 74 MB of float32, by either decoder."""
    from codec import FileWave

    data = many_channels_at_a_high_rate(writer)
    assert len(data) < 1 << 20
    tracemalloc.start()
    try:
        audio = decoded(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(audio.wave, FileWave) and audio.duration_s == pytest.approx(6.0, abs=0.01)
    assert (audio.source_channels, audio.source_rate) == (8, 384000)
    assert peak < 40 << 20, f"{peak / 2**20:.0f} MiB traced while decoding"
    audio.wave.close()


# -- end to end: every member counted --------------------------------------------------------------------------


def read_bytes() -> int:
    """Bytes this process has read through read(2) and its kin so far (/proc/self/io's rchar)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_tar_member_no_field_uses_is_passed_over_without_being_read_locally_and_over_http(tmp_path):
    """A 48 MiB `.bin` between two samples is neither part of a row nor read: the tar is read by seeking past it,
    from a local disk (the bytes this process reads) and from an HTTP server (the bytes it sends)."""
    from tests.httpserver import TroubleServer

    unused = 48 << 20
    wav = wav_bytes(clip(), 16000)
    (tmp_path / "served").mkdir()
    path = tmp_path / "served/s.tar"
    with tarfile.open(path, "w") as tar:
        add(tar, "a.wav", wav)
        add(tar, "a.bin", bytes(unused))
        add(tar, "b.wav", wav)
    assert path.stat().st_size > unused

    before = read_bytes()
    samples = by_key(read_tar_shard(shard_of(path)))
    local = read_bytes() - before
    assert sorted(samples) == ["a", "b"] and samples["a"].audio == samples["b"].audio == wav
    assert local < unused / 4, f"{local} bytes read locally"
    with TroubleServer(str(tmp_path / "served")) as server:
        samples = by_key(read_tar_shard(shard_of(f"{server.url}/s.tar")))
    assert sorted(samples) == ["a", "b"] and samples["b"].audio == wav
    assert server.sent["s.tar"] < unused / 4, f"{server.sent['s.tar']} bytes sent"


def test_hostile_tar_members_are_each_a_row_or_an_error_record_in_a_real_run(tmp_path, ray_local):
    from tests.test_pipeline import config_for, read_rows, records_of
    from tests.test_reliability import errors_of
    from pipeline.run import run_job

    wav, opus = wav_bytes(clip(), 16000), encoded("OGG", "OPUS")
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        add(tar, "a.wav", wav)
        add(tar, "b.wav", wav)
        add(tar, "b.wav", wav)
        add(tar, "c.wav", type=tarfile.SYMTYPE, linkname="a.wav")
        add(tar, "d.wav", type=tarfile.LNKTYPE, linkname="a.wav")
        add(tar, "e.opus", opus[:int(len(opus) * 0.9)])
        add(tar, "f.flac", flac_without_length(encoded("FLAC", "PCM_16", seconds=1.0, rate=16000)))
        add(tar, "g.txt", b"x" * 5000)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "s.tar")], "max_text_bytes": 1000})
    assert run_job(config).status == "complete"
    assert sorted(r["key"] for r in read_rows(config.output.dir)) == ["a", "d", "f"]
    assert {e["key"]: e["reason"] for e in errors_of(config.output.dir)} == {
        "b": "duplicate_member", "c": "unsupported_member", "e": "truncated", "g": "metadata_too_large"}
    record = next(iter(records_of(config.output.dir).values()))
    assert record.samples_read == 7 == record.rows + record.errors


def test_http_path_cells_are_bounded_by_max_file_bytes_and_a_503_is_the_shards_to_retry(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.sources import source_of
    from pipeline.failures import TRANSIENT
    from pipeline.sources import ShardError
    from pipeline.sources.hf import read_hf_shard
    from tests.httpserver import TroubleServer

    wav = wav_bytes(clip(), 16000)
    served = tmp_path / "served"
    served.mkdir()
    (served / "good.wav").write_bytes(wav)
    (served / "big.wav").write_bytes(wav + b"\0" * 20_000)
    (served / "flaky-a.wav").write_bytes(wav)
    with TroubleServer(str(served), flaky_failures=100) as server:
        def read(names):
            path = tmp_path / f"{len(names)}.parquet"
            pq.write_table(pa.table({"id": names, "audio": [f"{server.url}/{n}" for n in names]}), path)
            return by_key(read_hf_shard(Shard("s", str(path), "hf-parquet"), source_of("hf", path=str(path)),
                                        max_file_bytes=len(wav) + 1000))

        samples = read(["good.wav", "big.wav", "gone.wav"])
        assert samples["good.wav"].audio == wav
        assert samples["big.wav"].error.reason == "file_too_large" and server.gets["big.wav"] == 0  # never read
        assert samples["gone.wav"].error.reason == "missing_audio_file"
        with pytest.raises(ShardError) as error:
            read(["good.wav", "flaky-a.wav"])
        assert error.value.kind == TRANSIENT


def test_a_stream_whose_channels_change_midway_is_a_decoder_error_not_a_read_past_a_frame():
    """ffmpeg's FIFO copies as many planes from every frame as its first frame had: a later frame of fewer channels
    would be read past its end (a crash, not a record). The reader refuses the change (a ValueError: `undecodable`)."""
    import av

    from pipeline.audio import pyav_reader

    def frame(layout: str) -> av.AudioFrame:
        channels = av.AudioLayout(layout).nb_channels
        made = av.AudioFrame.from_ndarray(np.zeros((channels, 1024), np.float32), format="fltp", layout=layout)
        made.sample_rate = 48000
        return made

    class Container:  # what ffmpeg's decoders would give for a stream whose parameters change
        def decode(self, stream):
            yield frame("stereo")
            yield frame("mono")

    reader = pyav_reader.PyavInput(Container(), None, 48000, 2, None)
    with pytest.raises(ValueError, match="changes from 2 to 1 channels"):
        list(reader.blocks(48000))
