"""audio.loudness_lufs: each clip brought to a target integrated loudness (BS.1770) before encoding, as the
reference tokenizer's `loudness_normalize` does; measured block by block for long clips, counted, and part of
the output's identity."""

import io
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pyloudnorm as pyln
import pytest
import soundfile
import soxr
from omegaconf import OmegaConf

from codec import FileWave, reference_encode
from pipeline.audio.decode import decode_audio
from pipeline.actor.side import CodecActorSide
from pipeline.config import ConfigError, load_config
from pipeline.driver.job import _identity
from pipeline.audio.loudness import CLIPPED, NORMALISED, TOO_QUIET, TOO_SHORT, LoudnessMeter
from pipeline.run import main as run_main
from pipeline.runstate import IdentityChanged
from pipeline.runstate.identity import check_identity
from demo.synth import SynthSample, encode_audio, synth_clip, write_tar
from tests.corpus import wav_bytes
from tests.test_pipeline import manifest_of, read_rows, records_of

WHOLE = math.inf  # `blocked_above_s` that keeps a clip on the whole-file path
TARGET = -23.0


def decode(data: bytes, loudness_lufs=TARGET, blocked_above_s=WHOLE):
    return decode_audio(data, 24000, "HQ", 3600.0, blocked_above_s=blocked_above_s, loudness_lufs=loudness_lufs)


def samples(audio) -> np.ndarray:
    return audio.wave[:] if isinstance(audio.wave, FileWave) else audio.wave


def mono_of(data: bytes) -> tuple[np.ndarray, int]:
    """The clip as the reference measures it: mono (channel mean), float32, at its own rate."""
    array, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return array.mean(axis=1, dtype=np.float32), rate


def reference_wave(data: bytes, target: float | None) -> np.ndarray:
    """Written from the reference (higgs_audio_tokenizer.encode) with pyloudnorm itself, not pipeline.audio.loudness:
    loudness of the mono clip at its rate, pyloudnorm.normalize.loudness's gain, applied to the 24 kHz samples
    (the reference applies it before resampling: the same up to float32 rounding); a clip pyloudnorm cannot
    measure (too short, or -inf) left as it is."""
    mono, rate = mono_of(data)
    wave = soxr.resample(mono, rate, 24000, quality="HQ").astype(np.float32) if rate != 24000 else mono
    if target is None or len(mono) < 0.4 * rate:
        return wave
    measured = pyln.Meter(rate).integrated_loudness(mono)
    if not np.isfinite(measured):
        return wave
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Possible clipped samples": the reference only warns too
        gain = pyln.normalize.loudness(np.ones(1), measured, target)[0]
    return wave * np.float32(gain)


def clip_at(lufs: float, seconds: float, rate: int, channels: int, seed: int) -> np.ndarray:
    """A speech-like clip whose mono mix measures `lufs` (pyloudnorm)."""
    clip = synth_clip(np.random.default_rng(seed), seconds, rate, channels)
    measured = pyln.Meter(rate).integrated_loudness(clip.mean(axis=1, dtype=np.float32))
    return (clip * 10 ** ((lufs - measured) / 20)).astype(np.float32)


def varying_clip(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Loud, quiet (below the relative gate) and silent (below the absolute gate) stretches, so both gates act."""
    clip = synth_clip(np.random.default_rng(seed), seconds, rate)[:, 0]
    envelope = np.ones_like(clip)
    envelope[int(0.2 * len(clip)) : int(0.4 * len(clip))] = 0.02
    envelope[int(0.6 * len(clip)) : int(0.7 * len(clip))] = 0.0
    return clip * envelope


@pytest.mark.parametrize("blocked_above_s", [WHOLE, 0.0], ids=["whole", "blocked"])
def test_clip_at_a_known_loudness_is_normalised_to_the_target(blocked_above_s):
    data = wav_bytes(clip_at(-37.0, 6.0, 44100, 2, seed=1), 44100)
    audio = decode(data, blocked_above_s=blocked_above_s)
    assert audio.loudness.status == NORMALISED
    # measured as the reference measures: the mono mix at its source rate, before resampling
    assert audio.loudness.measured_lufs == pyln.Meter(44100).integrated_loudness(mono_of(data)[0])
    assert abs(audio.loudness.measured_lufs - -37.0) < 1e-3
    assert pyln.Meter(24000).integrated_loudness(samples(audio)) == pytest.approx(TARGET, abs=0.1)
    np.testing.assert_array_equal(samples(audio), reference_wave(data, TARGET))


def test_clip_gained_past_full_scale_is_counted_and_not_limited():
    quiet = clip_at(-45.0, 3.0, 16000, 1, seed=2)
    quiet[8000] = 0.3  # one click: about +22 dB of gain takes it past full scale
    data = wav_bytes(quiet, 16000)
    audio = decode(data)
    assert audio.loudness.status == CLIPPED and audio.loudness.gain > 10
    off = decode(data, loudness_lufs=None)
    assert np.abs(samples(audio)).max() > 1.0
    np.testing.assert_array_equal(samples(audio), samples(off) * np.float32(audio.loudness.gain))  # a gain, no limiter


@pytest.mark.parametrize("clip,status", [
    pytest.param(clip_at(-30.0, 0.5, 16000, 1, seed=3)[:3200], TOO_SHORT, id="0.2 s"),
    pytest.param(np.zeros((32000, 2), np.float32), TOO_QUIET, id="digital silence"),
])
def test_short_clip_and_silence_are_left_unchanged_and_counted(clip, status):
    data = wav_bytes(clip, 16000)
    for blocked_above_s in (WHOLE, 0.0):
        audio, off = decode(data, blocked_above_s=blocked_above_s), decode(data, None, blocked_above_s=blocked_above_s)
        assert audio.loudness.status == status and audio.loudness.unmeasured and audio.loudness.gain == 1.0
        np.testing.assert_array_equal(samples(audio), samples(off))


def test_blockwise_loudness_equals_pyloudnorm_on_the_whole_clip():
    rate = 44100
    clip = varying_clip(47.3, rate, seed=4)
    expected = pyln.Meter(rate).integrated_loudness(clip)
    meter, start, sizes = LoudnessMeter(rate), 0, [7919, 104729, 1, 3 * rate + 17, 997]
    for index in range(len(clip)):
        if start >= len(clip):
            break
        meter.add(clip[start : start + sizes[index % len(sizes)]])
        start += sizes[index % len(sizes)]
    assert abs(meter.integrated() - expected) <= 1e-6
    # the pipeline's blocked decoding (10 s blocks of a FLAC) measures the same
    data = encode_audio(clip[:, None], rate, "flac")
    blocked = decode(data, blocked_above_s=0.0)
    assert isinstance(blocked.wave, FileWave)
    assert abs(blocked.loudness.measured_lufs - pyln.Meter(rate).integrated_loudness(mono_of(data)[0])) <= 1e-6


def test_normalised_long_clip_gives_the_codes_of_the_clip_normalised_whole(tiny_codec):
    data = encode_audio(clip_at(-31.0, 12.5, 48000, 2, seed=5), 48000, "flac")
    whole, blocked = decode(data), decode(data, blocked_above_s=10.0)  # 12.5 s: just over this threshold
    assert isinstance(blocked.wave, FileWave) and blocked.loudness == whole.loudness
    np.testing.assert_array_equal(blocked.wave[:], whole.wave)
    whole_codes, blocked_codes = tiny_codec.encode([whole.wave, blocked.wave], 2.0)
    np.testing.assert_array_equal(blocked_codes, whole_codes)


def test_loudness_off_gives_todays_samples_and_codes(tiny_codec):
    data = encode_audio(clip_at(-31.0, 3.0, 22050, 2, seed=6), 22050, "flac")
    today = reference_wave(data, None)  # decode, downmix, soxr: the chain without normalisation
    for blocked_above_s in (WHOLE, 0.0):
        audio = decode(data, None, blocked_above_s=blocked_above_s)
        assert audio.loudness is None
        np.testing.assert_array_equal(samples(audio), today)
        np.testing.assert_array_equal(tiny_codec.encode([audio.wave], 2.0)[0],
                                      reference_encode(tiny_codec.model, today, 2.0))


@pytest.mark.parametrize("value", ["10", "-200", "nan", "loud"])
def test_nonsense_loudness_target_is_a_config_error_naming_the_key(value):
    with pytest.raises(ConfigError) as error:
        load_config(None, ["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x", f"audio.loudness_lufs={value}"])
    assert error.value.key == "audio.loudness_lufs"


def test_an_output_written_before_the_option_goes_on_with_it_off_and_is_refused_with_it_on():
    def identity(*overrides):
        config = load_config(None, ["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x", *overrides])
        codec = SimpleNamespace(resolved=SimpleNamespace(identity={"spec": "random:tiny"}))
        return _identity(config, codec, {"kind": "webdataset"}, CodecActorSide().identity(config))

    before = identity()
    del before["audio"]  # what outputs written before audio.loudness_lufs existed recorded
    assert check_identity(before, identity(), accept_new_versions=False) == []
    with pytest.raises(IdentityChanged, match=r"audio.loudness_lufs: None -> -23.0"):
        check_identity(before, identity("audio.loudness_lufs=-23"), accept_new_versions=False)


def test_run_counts_clipped_and_unmeasured_clips_and_refuses_another_target_on_its_output(tmp_path, ray_local, capsys,
                                                                                           tiny_codec):
    clips = {
        "normal": wav_bytes(clip_at(-35.0, 2.0, 44100, 2, seed=7), 44100),
        "loud_click": wav_bytes(np.where(np.arange(32000) == 9000, 0.3, clip_at(-45.0, 2.0, 16000, 1, seed=8)[:, 0]),
                                16000),
        "short": wav_bytes(clip_at(-30.0, 0.5, 16000, 1, seed=9)[:3200], 16000),
        "silence": wav_bytes(np.zeros(24000, np.float32), 24000),
    }
    write_tar(str(tmp_path / "in/l.tar"), [SynthSample(key, {"wav": data}, 0.0) for key, data in clips.items()])
    OmegaConf.save(OmegaConf.create({
        "source": {"kind": "webdataset", "urls": [str(tmp_path / "in/l.tar")]}, "codec": {"model": "random:tiny"},
        "output": {"dir": str(tmp_path / "out")}, "ray": {"num_actors": 1}}), tmp_path / "run.yaml")
    config = str(tmp_path / "run.yaml")

    assert run_main([config, "audio.loudness_lufs=-23"]) == 0
    err = capsys.readouterr().err
    assert "loudness: normalised to -23 LUFS; 1 clips past full scale" in err and "2 too short" in err
    (record,) = records_of(tmp_path / "out").values()
    assert (record.loudness_clipped, record.loudness_unmeasured) == (1, 2)
    totals = manifest_of(tmp_path / "out")["totals"]
    assert (totals["loudness_clipped"], totals["loudness_unmeasured"]) == (1, 2)
    for row in read_rows(tmp_path / "out"):
        np.testing.assert_array_equal(np.array(row["codes"], np.int16),
                                      reference_encode(tiny_codec.model, reference_wave(clips[row["key"]], TARGET), 2.0))

    # another target, or none, would give other codes: refused before any work, naming the key
    for value in ("-16", "null"):
        assert run_main([config, f"audio.loudness_lufs={value}"]) == 3
        err = capsys.readouterr().err
        assert "audio.loudness_lufs: -23.0 ->" in err and "output.overwrite=true" in err
    assert run_main([config, "audio.loudness_lufs=-23"]) == 0  # the same target goes on (nothing to do)
