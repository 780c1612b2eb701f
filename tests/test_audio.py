"""Decoding long files: in blocks (the whole-file samples, every sample error kept), refused from the header
when over `audio.max_seconds`, and large WebDataset members spilled to disk and closed once decoded."""

import gc
import io
import math
import os

import numpy as np
import pytest
import soundfile

from codec import FileWave
from pipeline.audio.decode import BLOCK_S, SampleError, SpilledFile, decode_audio
from pipeline.config import load_config
from pipeline.sources import Shard
from pipeline.sources import webdataset
from demo.synth import SynthSample, encode_audio, synth_clip, write_tar
from pipeline.actor.processor import ShardProcessor
from tests.corpus import wav_bytes

WHOLE, BLOCKED = math.inf, 0.0  # `blocked_above_s` that force each path


def spilled(data: bytes) -> SpilledFile:
    return SpilledFile(io.BytesIO(data))


def decode(source, blocked_above_s: float, max_seconds: float = 3600.0):
    return decode_audio(source, 24000, "HQ", max_seconds, blocked_above_s=blocked_above_s)


# several blocks each, ending mid-block or (24 kHz) on a block boundary, resampled or not. The largest sample
# difference allowed: none, but for MPEG-2 MP3 (rates up to 24 kHz), whose samples libsndfile's decoder returns
# slightly differently for different read sizes (reading such a file in two parts instead of one differs too)
CLIPS = {
    "flac_44k_stereo": ("flac", 44100, 2, 2.53 * BLOCK_S, 0.0),
    "wav_48k_mono": ("wav", 48000, 1, 2.1 * BLOCK_S, 0.0),
    "mp3_44k_stereo": ("mp3", 44100, 2, 2.3 * BLOCK_S, 0.0),
    "mp3_22k_stereo": ("mp3", 22050, 2, 2.3 * BLOCK_S, 1e-4),
    "ogg_16k_mono": ("ogg", 16000, 1, 2.2 * BLOCK_S, 0.0),
    "flac_24k_whole_blocks": ("flac", 24000, 1, 2 * BLOCK_S, 0.0),
}


@pytest.mark.parametrize("name", CLIPS)
def test_blocked_decoding_gives_the_whole_file_samples(name):
    ext, rate, channels, seconds, tolerance = CLIPS[name]
    data = encode_audio(synth_clip(np.random.default_rng(len(name)), seconds, rate, channels), rate, ext)
    whole, blocked = decode(data, WHOLE), decode(spilled(data), BLOCKED)
    assert isinstance(whole.wave, np.ndarray) and isinstance(blocked.wave, FileWave)
    np.testing.assert_allclose(blocked.wave[:], whole.wave, rtol=0, atol=tolerance)
    assert (blocked.source_rate, blocked.source_channels) == (whole.source_rate, whole.source_channels) == (rate, channels)
    assert blocked.duration_s == pytest.approx(whole.duration_s)


def bad_files() -> dict:
    rng = np.random.default_rng(3)
    nan_clip = synth_clip(rng, 1.5 * BLOCK_S, 16000)
    nan_clip[[5, int(1.2 * BLOCK_S * 16000)]] = np.nan  # in two blocks
    cut = {ext: encode_audio(synth_clip(rng, 2.2 * BLOCK_S, rate, 2), rate, ext)
           for ext, rate in (("ogg", 16000), ("mp3", 22050), ("wav", 48000), ("flac", 44100))}
    return {
        "truncated_ogg": (cut["ogg"][: len(cut["ogg"]) // 2], "truncated"),
        "truncated_mp3": (cut["mp3"][: len(cut["mp3"]) // 2], "truncated"),
        "truncated_wav": (cut["wav"][: len(cut["wav"]) // 2], "truncated"),
        "truncated_flac": (cut["flac"][: len(cut["flac"]) // 2], "undecodable"),
        "nan": (wav_bytes(nan_clip, 16000, "FLOAT"), "non_finite"),
        "random_bytes": (bytes(rng.integers(0, 256, 4000, dtype=np.uint8)), "undecodable"),
    }


@pytest.mark.parametrize("name", bad_files())
def test_blocked_decoding_keeps_every_sample_error(name):
    data, reason = bad_files()[name]
    for source, path in ((data, WHOLE), (spilled(data), BLOCKED)):
        with pytest.raises(SampleError) as error:
            decode(source, path)
        assert error.value.reason == reason, (path, error.value)
    if name == "nan":
        assert error.value.detail == "2 NaN/inf samples"


def test_a_loud_finite_clip_is_not_counted_as_non_finite_and_a_lone_nan_or_inf_of_either_sign_is():
    """The finite check looks at a block's max and min first (two passes, no arithmetic to overflow): a loud clip,
    whose float32 sum would be inf, is finite; one NaN, +inf or -inf anywhere is found and counted one by one."""
    from pipeline.audio.decode import _non_finite_count

    loud = np.full(1000, 3e38, np.float32)  # each finite, their float32 sum inf
    assert _non_finite_count(loud) == 0
    for bad in (np.nan, np.inf, -np.inf):
        quiet = np.zeros(1000, np.float32)
        quiet[700] = bad
        assert _non_finite_count(quiet) == 1, bad
    loud[[3, 500]] = np.nan, -np.inf
    assert _non_finite_count(loud) == 2
    assert _non_finite_count(np.array([np.inf, -np.inf], np.float32)) == 2
    assert _non_finite_count(np.zeros(0, np.float32)) == 0


def test_a_file_over_max_seconds_is_refused_from_its_header_before_any_sample_is_read(monkeypatch):
    data = encode_audio(synth_clip(np.random.default_rng(4), 3.0, 16000), 16000, "wav")

    def no_reading(*args, **kwargs):
        raise AssertionError("samples were read")

    for method in ("read", "buffer_read", "blocks"):
        monkeypatch.setattr(soundfile.SoundFile, method, no_reading)
    for source in (data, spilled(data)):
        with pytest.raises(SampleError, match=r"3 s > audio.max_seconds=2 \(the header's length; not decoded\)") as error:
            decode(source, WHOLE, max_seconds=2.0)
        assert error.value.reason == "too_long"


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def spilling_tar(tmp_path, monkeypatch):
    """A tar of a 2 s WAV (spilled: over the threshold), a 0.1 s one and a large transcript (both kept in memory),
    and an undecodable audio member over the threshold."""
    monkeypatch.setattr(webdataset, "SPILL_ABOVE_BYTES", 10_000)
    rng = np.random.default_rng(5)
    members = {
        "big": {"wav": encode_audio(synth_clip(rng, 2.0, 16000), 16000, "wav")},
        "small": {"wav": encode_audio(synth_clip(rng, 0.1, 16000), 16000, "wav"), "txt": b"x" * 20_000},
        "garbage": {"flac": bytes(rng.integers(0, 256, 20_000, dtype=np.uint8))},
    }
    write_tar(str(tmp_path / "s.tar"), [SynthSample(key, m, 0) for key, m in members.items()])
    return Shard("s", str(tmp_path / "s.tar"), "webdataset"), members


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc")
def test_large_members_are_spilled_decoded_from_disk_and_closed(tmp_path, spilling_tar):
    shard, members = spilling_tar
    processor = ShardProcessor(load_config(None, ["source.kind=webdataset", f"source.urls=[{shard.url}]",
                                                  "codec.model=random:tiny", f"output.dir={tmp_path}/out"]))
    before = open_files()
    big, small, garbage = webdataset.read_tar_shard(shard)
    assert isinstance(big.audio, SpilledFile) and big.audio.size == len(members["big"]["wav"])
    assert small.audio == members["small"]["wav"] and small.metadata["text"] == "x" * 20_000
    assert open_files() == before + 2  # one file per spilled member, none for the rest

    decoded = processor._decode(big)
    np.testing.assert_array_equal(decoded.wave, decode(members["big"]["wav"], WHOLE).wave)
    assert processor._decode(garbage).reason == "undecodable"
    assert big.audio.file.closed and garbage.audio.file.closed and open_files() == before

    # a reader abandoned after its first sample: the spilled member goes with the sample
    reader = webdataset.read_tar_shard(shard)
    first = next(reader)
    reader.close()
    assert isinstance(first.audio, SpilledFile)
    del first
    gc.collect()
    assert open_files() == before


def todays_decode(data: bytes) -> np.ndarray:
    """The pipeline's arithmetic before the downmix was rewritten: libsndfile's float32, numpy's channel mean,
    soxr HQ at 24 kHz."""
    import soxr

    array, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return soxr.resample(array.mean(axis=1, dtype=np.float32), rate, 24000, quality="HQ")


# lossless formats at channel counts numpy averages one after another (up to 7) and pairwise (8 and more); 24-bit
# and float samples, independent per channel, so that the order of the sum shows in the last bit
LOSSLESS = {"wav_16k_mono": ("WAV", "PCM_16", 16000, 1), "wav_48k_stereo": ("WAV", "PCM_16", 48000, 2),
            "aiff_44k_stereo_big_endian": ("AIFF", "PCM_16", 44100, 2), "au_22k_3ch": ("AU", "PCM_16", 22050, 3),
            "flac_44k_stereo_16bit": ("FLAC", "PCM_16", 44100, 2),
            "flac_44k_stereo_24bit": ("FLAC", "PCM_24", 44100, 2), "flac_48k_6ch_24bit": ("FLAC", "PCM_24", 48000, 6),
            "wav_48k_8ch_float": ("WAV", "FLOAT", 48000, 8)}


@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_formats_decode_to_the_same_samples_as_before_bit_for_bit(name):
    fmt, subtype, rate, channels = LOSSLESS[name]
    rng = np.random.default_rng(7)
    clip = np.concatenate([synth_clip(rng, 1.5 * BLOCK_S, rate) for _ in range(channels)], axis=1)
    clip = np.clip(2 * clip + rng.uniform(-0.1, 0.1, clip.shape), -1, 1).astype(np.float32)  # loud: sums round
    buffer = io.BytesIO()
    soundfile.write(buffer, clip, rate, format=fmt, subtype=subtype)
    data = buffer.getvalue()
    expected = todays_decode(data).view(np.int32)
    for source, path in ((data, WHOLE), (spilled(data), BLOCKED)):
        np.testing.assert_array_equal(np.asarray(decode(source, path).wave[:]).view(np.int32), expected, err_msg=path)


def test_each_formats_decoder_is_in_the_identity_and_an_output_without_it_is_refused_as_a_library_upgrade():
    from pipeline.runstate import IdentityChanged, library_versions
    from pipeline.runstate.identity import check_identity

    versions = library_versions()
    assert versions["decoders"]["opus"].startswith("av ") and versions["decoders"]["flac"].startswith("soundfile ")
    before = {"versions": {k: v for k, v in versions.items() if k != "decoders"}}  # written before decoders were chosen
    with pytest.raises(IdentityChanged, match=r"versions\.decoders\.opus: None -> 'av .*output\.accept_new_versions=true"):
        check_identity(before, {"versions": versions}, accept_new_versions=False)
    assert check_identity(before, {"versions": versions}, accept_new_versions=True)


def test_a_missing_decoder_library_is_a_start_up_error_naming_its_package(monkeypatch):
    import sys

    from pipeline.audio.decoders import DecoderMissing
    from pipeline.runstate import library_versions

    monkeypatch.setitem(sys.modules, "av", None)  # import av fails, as where it is not installed
    with pytest.raises(DecoderMissing, match="pip install av"):
        library_versions()


@pytest.mark.parametrize("ext", ["ogg", "mp3", "flac", "wav"])
def test_whole_file_reference_decode_uses_the_decoder_the_pipeline_uses(ext):
    """`decode_bytes` + `to_model_audio` (the tests' and benchmarks' reference for a clip's audio) gives the samples
    `decode_audio` gives: a reference decoding Vorbis by libsndfile where the pipeline uses ffmpeg differs in the
    last bits, and the codes compared with it in a few tokens."""
    from demo.synth import random_sample
    from pipeline.audio.decode import decode_bytes, to_model_audio

    rng = np.random.default_rng(3)
    for i in range(3):
        data = random_sample(rng, f"k{i}", float(rng.uniform(0.2, 2.0)), ext).members[ext]
        streamed = np.asarray(decode_audio(data, 24000, "HQ", 3600).wave)
        np.testing.assert_array_equal(streamed, to_model_audio(*decode_bytes(data), 24000, "HQ", 3600).wave)


@pytest.mark.parametrize("seconds", [0.05, 0.3, 1.37])
def test_a_short_vorbis_stream_decodes_to_its_granule_length_not_its_last_blocks_padding(seconds):
    """ffmpeg decodes a short Ogg Vorbis stream's last block whole, past the stream's last granule position (its
    exact length, which libsndfile keeps to): the clip gained the codec's padding, and frames of codes."""
    rng = np.random.default_rng(1)
    clip = synth_clip(rng, seconds, 44100, 2)
    audio = decode_audio(encode_audio(clip, 44100, "ogg"), 44100, "HQ", 3600)
    assert np.asarray(audio.wave).size == clip.shape[0]


@pytest.mark.parametrize("ext", ["ogg", "opus", "m4a"])
def test_ffmpeg_decoded_formats_give_the_same_samples_whatever_their_block_size(ext, monkeypatch):
    """ffmpeg's formats always decode in blocks (`PYAV_BLOCK_S`, chosen for speed): a block's downmix written into
    its own arrays and soxr's stream across blocks give the samples of the whole clip resampled at once."""
    import av

    from pipeline.audio import decode as decode_module
    from pipeline.audio.decode import decode_bytes, to_model_audio

    rng = np.random.default_rng(5)
    rate = 48000 if ext == "opus" else 44100
    clip = synth_clip(rng, 2.3, rate, 2)
    if ext == "ogg":
        data = encode_audio(clip, rate, "ogg")
    else:
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="ogg" if ext == "opus" else "ipod") as container:
            stream = container.add_stream("libopus" if ext == "opus" else "aac", rate=rate, layout="stereo")
            for start in range(0, len(clip), 4096):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(clip[start:start + 4096].T), format="fltp",
                                                   layout="stereo")
                frame.sample_rate, frame.pts = rate, start
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        data = buffer.getvalue()
    whole = to_model_audio(*decode_bytes(data), 24000, "HQ", 3600).wave
    for block_s in (0.37, 1.0, 10.0):
        monkeypatch.setattr(decode_module, "PYAV_BLOCK_S", block_s)
        np.testing.assert_array_equal(np.asarray(decode_audio(data, 24000, "HQ", 3600).wave), whole, err_msg=block_s)
