"""Decoding in the actor's own processes (audio.decode_processes): the same audio and the same error records as
the actor's threads, clips too long for memory decoded in the thread, a worker killed mid-clip costs a retry of the
shard, and a run decodes through them on Ray with each clip's codes as encoded alone."""

import io
import pickle
import threading

import numpy as np
import pytest
import soundfile

from codec import FileWave
from demo.synth import synth_clip
from pipeline.actor.decode_processes import DecodeProcesses
from pipeline.actor.sample_decoder import SampleDecoder
from pipeline.audio.decode import BLOCKED_ABOVE_S, SampleError
from pipeline.config import AudioConfig, ConfigError
from pipeline.failures import TRANSIENT, ObjectChanged, ShardError
from pipeline.run import run_job
from pipeline.telemetry.events import ActorsStarted
from pipeline.sources import RawSample
from tests.corpus import mixed_tar
from tests.dying_decoder import DyingDecoder, UnreadyDecoder
from tests.test_pipeline import config_for, expected_codes, read_rows


def _file(seconds: float, rate: int, fmt: str, subtype: str, channels: int = 1, seed: int = 0) -> bytes:
    clip = np.concatenate([synth_clip(np.random.default_rng(seed + c), seconds, rate) for c in range(channels)], axis=1)
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", rate, channels, subtype, format=fmt) as f:
        for start in range(0, len(clip), rate):  # a second at a time: libsndfile's Ogg writer crashes on long writes
            f.write(clip[start:start + rate])
    return buffer.getvalue()


def _same(a, b) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, SampleError):
        assert (a.reason, a.detail.split(" at 0x")[0]) == (b.reason, b.detail.split(" at 0x")[0])
        return
    assert isinstance(a.wave, type(b.wave)) and (a.source_rate, a.source_channels, a.duration_s) == (
        b.source_rate, b.source_channels, b.duration_s)
    np.testing.assert_array_equal(np.asarray(a.wave[0:a.wave.size]), np.asarray(b.wave[0:b.wave.size]))


def test_errors_crossing_processes_keep_their_reason_detail_and_kind():
    """SampleError and ShardError are rebuilt from their fields: from the message alone ('truncated: ...'),
    unpickling one raised ValueError, so a decode task returning any error record lost its shard."""
    for error in (SampleError("truncated", "10 of 20 declared frames decodable"), SampleError("empty_file"),
                  ShardError("read_failed", "s3: timeout", TRANSIENT), ObjectChanged("etag a -> b")):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error) and again.reason == error.reason
        assert getattr(again, "kind", None) == getattr(error, "kind", None)


def test_decode_processes_give_the_threads_audio_and_errors_and_long_clips_decode_in_the_thread():
    audio = AudioConfig()
    decode = SampleDecoder(audio, 24000, ceil_length=False)
    long_s = BLOCKED_ABOVE_S + 2
    files = {
        "wav": _file(2.0, 16000, "WAV", "PCM_16"),
        "flac_stereo": _file(1.5, 44100, "FLAC", "PCM_24", channels=2, seed=1),
        "vorbis_stereo": _file(1.5, 48000, "OGG", "VORBIS", channels=2, seed=2),  # ffmpeg's (PyAV)
        "garbage": b"not audio at all" * 10,
        "empty": b"",
        # longer than what decodes in memory: the worker says so (from the header; for Vorbis, once decoded past
        # the limit) and the thread decodes it into a FileWave
        "long_wav": _file(long_s, 8000, "WAV", "PCM_16", seed=3),
        "long_vorbis": _file(long_s, 8000, "OGG", "VORBIS", seed=4),
    }
    in_processes = DecodeProcesses(decode, 2)
    in_processes.start()
    try:
        for name, data in files.items():
            alone, crossed = decode(RawSample(name, data)), in_processes(RawSample(name, data))
            _same(alone, crossed)
            if name.startswith("long"):
                assert isinstance(crossed.wave, FileWave), name
            elif name in ("garbage", "empty"):
                assert crossed.reason == ("undecodable" if name == "garbage" else "empty_file")
            else:
                assert isinstance(crossed.wave, np.ndarray), name
        # ffmpeg's formats went to the processes (the long one came back undecoded); libsndfile's stayed here
        assert in_processes.sent == 2
        # known bad before decoding, and arrays: decoded in the thread, as before
        bad = RawSample("bad", None, error=SampleError("missing_field", "audio"))
        assert in_processes(bad) is bad.error
        array = (np.zeros((800, 1), np.float32), 8000)
        _same(decode(RawSample("array", array)), in_processes(RawSample("array", array)))
    finally:
        in_processes.close()


def test_ffmpeg_decoded_hostile_input_gives_the_same_records_in_a_decode_process():
    """The hostile inputs of ffmpeg's formats (tests/test_hostile_input.py) sent to a decode process: each the same
    record as in the thread, and the small file of 8 channels at 384 kHz (past what decodes in memory) decoded in
    the thread into a FileWave."""
    from tests.test_hostile_input import encoded, many_channels_at_a_high_rate, pyav_encoded, with_last_page

    rng = np.random.default_rng(9)
    opus, vorbis, m4a = (encoded("OGG", "OPUS", seconds=1.0, channels=2), encoded("OGG", "VORBIS", seconds=1.0),
                         pyav_encoded(seconds=1.0))
    hostile = {
        "truncated_opus": opus[:len(opus) // 2], "truncated_vorbis": vorbis[:len(vorbis) // 2],
        "truncated_m4a": m4a[:len(m4a) // 2],
        "header_claims_a_million_seconds": with_last_page(opus, granule=48000 * 10**6),
        "not_mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)),
        "not_opus": b"OggS\x00\x02" + bytes(22) + b"OpusHead" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)),
        "not_m4a": b"\x00\x00\x00\x10ftypM4A \x00\x00\x00\x00" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)),
        "damaged_mid_stream": opus[:2000] + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)) + opus[5000:],
        "headers_only": with_last_page(encoded("OGG", "OPUS", seconds=0.0), end_of_stream=True),
        "8_channels_at_384_khz": many_channels_at_a_high_rate("flac_in_mp4"),
    }
    decode = SampleDecoder(AudioConfig(), 24000, ceil_length=False)
    in_processes = DecodeProcesses(decode, 1)
    in_processes.start()
    try:
        for name, data in hostile.items():
            crossed = in_processes(RawSample(name, data))
            _same(decode(RawSample(name, data)), crossed)
            assert isinstance(crossed, SampleError) or name == "8_channels_at_384_khz", (name, crossed)
        assert isinstance(crossed.wave, FileWave)  # the last: decoded in the thread, in blocks
        # all but the MP3 (libsndfile's) went to the process, and none was lost
        assert in_processes.sent == len(hostile) - 1 and len(in_processes.pids) == 1
    finally:
        in_processes.close()


def test_a_decode_process_killed_mid_clip_is_a_transient_shard_error_and_the_next_clip_decodes():
    in_processes = DecodeProcesses(DyingDecoder(AudioConfig(), 24000, ceil_length=False), 1)
    in_processes.start()
    vorbis = _file(1.0, 16000, "OGG", "VORBIS")
    try:
        lost = in_processes(RawSample("die", vorbis))
        assert isinstance(lost, ShardError) and lost.reason == "decode_process_lost" and lost.kind == TRANSIENT
        assert "decoding die: process" in lost.detail and "exited with code 1" in lost.detail
        again = in_processes(RawSample("next", vorbis))  # another process took the lost one's place
        assert isinstance(again.wave, np.ndarray) and again.duration_s == 1.0
        assert len(in_processes.pids) == 2 and in_processes.sent == 2
    finally:
        in_processes.close()


def test_decode_processes_that_die_before_they_are_ready_fail_the_start_and_leave_no_place_taken():
    """A process that dies before it is ready (its imports failed) fails the actor's start-up; one that dies so
    later, when a clip needs it, raises to that clip's caller, and frees its place: no later clip waits forever
    for a process that will never come."""
    in_processes = DecodeProcesses(UnreadyDecoder(AudioConfig(), 24000, ceil_length=False), 1)
    with pytest.raises(EOFError):
        in_processes.start()
    vorbis = _file(0.5, 16000, "OGG", "VORBIS")
    raised = []

    def two_clips():  # in a thread of its own: a place left taken would block it for good, not fail it
        for _ in range(2):
            try:
                in_processes(RawSample("k", vorbis))
            except EOFError as error:
                raised.append(error)

    clips = threading.Thread(target=two_clips, daemon=True)
    clips.start()
    clips.join(timeout=60)
    assert not clips.is_alive(), "a clip waits for a process place that a dead process still holds"
    assert len(raised) == 2 and in_processes.pids == [] and in_processes._alive == 0


def test_decode_processes_with_decode_tasks_or_a_bad_word_is_a_config_error_naming_the_key(tmp_path):
    source = {"kind": "webdataset", "urls": ["x.tar"]}
    with pytest.raises(ConfigError, match=r"audio\.decode_processes.*decode_task_cpus=0 or decode_processes=off"):
        config_for(tmp_path, source, "audio.decode_processes=true", "audio.decode_task_cpus=1")
    with pytest.raises(ConfigError, match=r"audio\.decode_processes.*'sometimes'.*auto \(GPU actors\), on or off"):
        config_for(tmp_path, source, "audio.decode_processes=sometimes")
    assert config_for(tmp_path, source, "audio.decode_processes=false").audio.decode_processes == "off"


@pytest.mark.parametrize("setting, device, threads, expected", [
    ("auto", "cuda", 8, True), ("auto", "cuda", 1, False), ("auto", "cpu", 8, False),
    ("on", "cpu", 1, True), ("off", "cuda", 8, False)])
def test_auto_decodes_in_processes_on_gpu_actors_with_more_than_one_decode_thread(setting, device, threads, expected):
    """A GPU actor's node must keep the GPU fed from its cores: auto turns decode processes on there; a CPU actor
    (one decode thread by default; the encoder is its bottleneck) keeps its threads."""
    from pipeline.actor.processor import decodes_in_processes

    assert decodes_in_processes(AudioConfig(decode_processes=setting), device, threads) is expected
    assert decodes_in_processes(AudioConfig(decode_processes=setting, decode_task_cpus=1), device, threads) is False


def test_a_run_decoding_in_processes_on_ray_writes_each_clips_codes_as_encoded_alone(tmp_path, ray_local, tiny_codec):
    samples = {s.key: s for s in mixed_tar(str(tmp_path / "in/part-0.tar"), "p", 8, seed=5)}
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/part-0.tar")]},
                        "audio.decode_processes=on", "ray.num_actors=1")
    facts = []

    def on_event(event):
        if isinstance(event, ActorsStarted):  # what the actor holds, asked while it runs
            facts.extend(ray_local.get([actor.facts.remote() for actor in event.actors]))

    summary = run_job(config, on_event)
    assert summary.status == "complete" and summary.shards_run == 1
    # the actor decoded through processes of its own: as many as its decode threads, none of them itself
    (actor,) = facts
    assert len(actor.decode_process_pids) == actor.decode_threads >= 1 and actor.pid not in actor.decode_process_pids
    rows = read_rows(tmp_path / "out")
    assert sorted(row["key"] for row in rows) == sorted(samples)
    for row in rows:
        (audio,) = [data for ext, data in samples[row["key"]].members.items() if ext in ("wav", "flac", "ogg", "mp3")]
        np.testing.assert_array_equal(np.array(row["codes"], np.int16), expected_codes(tiny_codec, audio), row["key"])
