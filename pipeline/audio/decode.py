"""Audio bytes, spilled files or arrays -> validated mono float32 at the codec's rate.

A file's length is read from its header before any sample is decoded, so one over `audio.max_seconds`
costs nothing (one whose header declares no length is measured as it decodes). Clips up to BLOCKED_ABOVE_S
(and up to that many seconds of 48 kHz stereo in samples) decode whole, as they always have (downmixed into one
mono array as they are read: `_read_mono`). Longer ones decode
BLOCK_S at a time, each block downmixed and pushed through soxr's streaming resampler into a `FileWave`
(a temporary file the codec reads a window at a time): memory is a block and a window, not the clip.
Downmixing is per frame and soxr's stream gives its one-shot resampler's samples exactly, so the blocked
path's samples are the whole-file path's wherever the decoder's are (libsndfile's decoding of MPEG-2 MP3,
e.g. at 22.05 kHz, depends slightly on read sizes); jobs/bench_memory.py compares the codes.

Each format is decoded by the library pipeline/audio/decoders.py names for it. libsndfile's (wav, FLAC, MP3, ...) go
as above; the formats ffmpeg decodes (pipeline/audio/pyav_reader.py: Vorbis, Opus, AAC in MP4) always go a block at a
time, their resampled clip held in memory up to the whole-file limits and moved to a FileWave past them, so that
a header that lies cannot make a clip decode whole. The channels are averaged in numpy's order (`downmix`), so
lossless formats give the samples they always have (tests/test_audio.py compares them bit for bit).

With `audio.loudness_lufs` set, each clip's integrated loudness is measured as the reference tokenizer does
(pipeline/audio/loudness.py: the mono clip at its source rate, before resampling) and one gain brings it to the
target. The gain is applied to the resampled samples (`apply_gain`; a FileWave multiplies it into every read),
the same float32 operation on both paths, so blocked and whole clips stay bit-identical; the gain being
linear, this differs from the reference's gain-then-resample by float32 rounding only.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import soundfile
import soxr

from ..failures import Reason
from ..tokenizer import FileWave
from . import containers, decoders, pyav_reader
from .loudness import LoudnessMeter, Normalisation, apply_gain, normalisation

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg", "opus", "oga", "m4a", "mp4", "aiff", "aif", "au", "sph", "w64", "caf")

BLOCK_S = 10.0  # decoded and resampled at a time, for clips over BLOCKED_ABOVE_S
# ffmpeg's formats decode every clip a block at a time, in blocks of their own, shorter than BLOCK_S: a block's
# buffers (ffmpeg's FIFO, the block taken from it, soxr's output) are smaller, so the allocator recycles them
# rather than mapping fresh pages for each, while the Python work per block stays small (jobs/bench_decode.py's
# own share). soxr's stream gives the same samples for any block size (tests/test_audio.py), so it changes no output.
PYAV_BLOCK_S = 2.0
BLOCKED_ABOVE_S = 120.0
# A clip decodes whole only if it also holds no more samples (frames x channels) than `blocked_above_s` of 48 kHz
# stereo: a small file of many channels at a high rate is decoded in blocks too, so what it declares cannot claim
# gigabytes. No clip that decoded whole before moves to blocks, and blocks give the whole-file samples (see
# above), so the recorded DECODE_METHOD stands. A block is at most BLOCK_MAX_BYTES of decoded float32.
WHOLE_SAMPLES_PER_S = 48000 * 2
BLOCK_MAX_BYTES = 16 << 20
# libsndfile's `frames` for a stream whose container declares no length (FLAC with total_samples = 0, as
# ffmpeg writes to a pipe): such a file is decoded in blocks and measured, audio.max_seconds applied as it goes
UNKNOWN_FRAMES = 2**63 - 1
# recorded in the output's identity: how audio became the codec's input
DECODE_METHOD = f"blocked-v1: {BLOCK_S:g} s blocks above {BLOCKED_ABOVE_S:g} s, soxr stream into a temp file"


class SampleError(Exception):
    """A sample that cannot be encoded; `reason` is a short stable label for summaries."""

    def __init__(self, reason: Reason | str, detail: str = ""):
        self.reason = Reason(reason)  # a plain string names a member (ValueError for one that is none)
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):
        # what crosses processes (decode tasks, decode processes) is rebuilt from its fields, not from its message
        return SampleError, (self.reason, self.detail)


class NeedsFileWave(Exception):
    """decode_audio(file_waves=False): the clip is longer than what decodes in memory."""


# Audio files larger than this are copied to a temporary file in chunks (a SpilledFile), not read into memory:
# an hour of 48 kHz stereo FLAC is hundreds of MB, held per sample in flight.
SPILL_ABOVE_BYTES = 64 << 20


class SpilledFile:
    """A source member too large to hold in memory, copied to an anonymous temporary file in chunks.

    The file is unlinked at creation: its space returns when it is closed (once decoded), collected, or
    when the process ends, killed or not."""

    def __init__(self, stream, directory: str | None = None, chunk_bytes: int = 1 << 20):
        self.file = tempfile.TemporaryFile(prefix="audiotok-spill-", dir=directory)
        try:
            shutil.copyfileobj(stream, self.file, chunk_bytes)
            self.size = self.file.tell()
            self.file.seek(0)
        except BaseException:
            self.file.close()
            raise

    def close(self) -> None:
        self.file.close()

    def __repr__(self) -> str:
        return f"SpilledFile({self.size} bytes)"


@dataclass
class Audio:
    wave: np.ndarray | FileWave  # mono float32 at the target rate; a FileWave for clips decoded in blocks
    source_rate: int
    source_channels: int
    duration_s: float  # of the input audio
    loudness: Normalisation | None = None  # what audio.loudness_lufs did to the clip (None: off)


_DECODER_ERRORS = (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, *pyav_reader.ERRORS)


@dataclass
class _Input:
    """A file opened by the library that decodes its format (pipeline/audio/decoders.py)."""

    rate: int
    channels: int
    declared: int | None  # frames the container declares; None: no length (measured as it decodes)
    # the share of `declared` a whole file decodes to at least (an MP3's length is a header's estimate: a little
    # off by design); a cut file is found from its container first (pipeline/audio/containers.py)
    complete_share: float
    finite: bool  # its samples are stored as integers: no NaN or inf to look for
    mono_blocks: Callable[[int], Iterator[tuple[np.ndarray, bool]]]  # block frames -> (mono block, is the last)
    read_mono: Callable[[], np.ndarray] | None  # the whole clip downmixed (libsndfile); None: always streamed
    read_channels: Callable[[], np.ndarray]  # [frames, channels] of the whole clip (`decode_bytes`)
    complete_slack: int = 0  # frames a whole file may decode short of `complete_share` of `declared`
    block_s: float = BLOCK_S  # seconds decoded at a time


# ffmpeg decodes past damage in the middle of a stream (a bad Ogg page, a lost MP4 chunk), giving a shorter clip
# where libsndfile refuses the file: so its decoded length is held to the container's too. An Opus stream declares
# its pre-skip (6.5 ms) on top, AAC in MP4 its encoder delay (up to 2112 frames at 44.1 kHz).
PYAV_COMPLETE_SHARE, PYAV_COMPLETE_SLACK_S = 0.99, 0.05


def decode_audio(source, target_rate: int, quality: str, max_seconds: float,
                 blocked_above_s: float | None = None, loudness_lufs: float | None = None,
                 ceil_length: bool = False, file_waves: bool = True) -> Audio:
    """Bytes, a SpilledFile or an (array, sample_rate) pair -> validated audio at `target_rate`.

    A file declaring more than `max_seconds` is refused from its header, before any sample is decoded;
    one longer than `blocked_above_s` (None: BLOCKED_ABOVE_S), holding more samples than that long a 48 kHz
    stereo clip, or whose container declares no length, is decoded in blocks into a FileWave. A format ffmpeg
    decodes (pipeline/audio/decoders.py) is always decoded a block at a time, its resampled clip kept in memory until
    it passes those limits and in a FileWave from there.
    `loudness_lufs`: normalise the clip's integrated loudness to this target (None: leave it).
    `ceil_length`: a resampled clip holds ceil(frames x target_rate / rate) samples, zero-padded, as
    librosa.resample's `fix_length` gives them (the authors' preprocessing, `codec.convention=authors`);
    soxr alone returns one sample fewer for some lengths.
    `file_waves=False`: a clip that would go to a FileWave (a temporary file of this process) raises `NeedsFileWave`
    instead, as soon as that is known (before decoding where its header says so)."""
    blocked_above_s = BLOCKED_ABOVE_S if blocked_above_s is None else blocked_above_s
    if not isinstance(source, (bytes, bytearray, SpilledFile)):
        array, rate = source
        return to_model_audio(array, rate, target_rate, quality, max_seconds, loudness_lufs, ceil_length)
    with _opened(source) as f:
        rate, declared = f.rate, f.declared
        if rate > 0 and declared is not None:
            _require_within(declared / rate, max_seconds, " (the header's length; not decoded)")
        in_memory = _whole_frames(blocked_above_s, rate, f.channels)
        if f.read_mono is None:
            return _decode_in_blocks(f, target_rate, quality, loudness_lufs, max_seconds, ceil_length, in_memory,
                                     file_waves)
        if declared is None or declared > in_memory:
            if not file_waves:
                raise NeedsFileWave(f"{declared} frames declared" if declared is not None else "no length declared")
            return _decode_in_blocks(f, target_rate, quality, loudness_lufs, max_seconds, ceil_length)
        mono = f.read_mono()
    return _model_audio(mono, rate, f.channels, _clip_duration(len(mono), rate, max_seconds), target_rate, quality,
                        loudness_lufs, ceil_length, f.finite)


def _whole_frames(blocked_above_s: float, rate: int, channels: int) -> float:
    """The most frames a clip may hold to be decoded whole (see WHOLE_SAMPLES_PER_S)."""
    return min(blocked_above_s * rate, blocked_above_s * WHOLE_SAMPLES_PER_S / max(1, channels))


def decode_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """[frames, channels] float32 and the sample rate of a whole file, by its format's decoder (the one
    `decode_audio` uses: pipeline/audio/decoders.py), with the same checks."""
    with _opened(data) as f:
        return f.read_channels(), f.rate


@contextlib.contextmanager
def _opened(source: bytes | SpilledFile) -> Iterator[_Input]:
    """The file open for reading by its format's decoder; what it cannot read is `undecodable` (naming the
    format), a file holding less than its container declares `truncated` (pipeline/audio/containers.py)."""
    if isinstance(source, (bytes, bytearray)) and not source:
        raise SampleError("empty_file", "0 bytes")
    if isinstance(source, SpilledFile):
        head, tail, size = containers.head_and_tail(fd=source.file.fileno(), size=source.size)
    else:
        head, tail, size = containers.head_and_tail(source)
    cut = containers.truncation(head, tail, size)
    if cut:
        raise SampleError("truncated", cut)
    fmt = decoders.sniff(head)
    file = source.file if isinstance(source, SpilledFile) else io.BytesIO(source)
    try:
        if decoders.decoder_for(fmt) is decoders.Decoder.PYAV:
            with pyav_reader.opened(file, fmt) as f:
                yield _pyav_input(f)
        else:
            with soundfile.SoundFile(file) as f:
                yield _soundfile_input(f)
    except _DECODER_ERRORS as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SampleError("undecodable", f"{fmt.value}: {detail}"[:200]) from None


def _soundfile_input(f: soundfile.SoundFile) -> _Input:
    unknown = f.frames == UNKNOWN_FRAMES

    def mono_blocks(frames: int) -> Iterator[tuple[np.ndarray, bool]]:
        while True:
            # read(), not blocks(): a short read (the end, or a truncated file) must show as one
            block = _read_block(f, frames, unknown)
            last = len(block) < frames
            yield downmix(block), last
            if last:
                return

    return _Input(f.samplerate, f.channels, None if unknown else f.frames, _complete_share(f), _integer_coded(f),
                  mono_blocks, lambda: _read_mono(f), lambda: _read_whole(f))


def _pyav_input(f: pyav_reader.PyavInput) -> _Input:
    def mono_blocks(frames: int) -> Iterator[tuple[np.ndarray, bool]]:
        for channels in f.blocks(frames):
            yield _channel_mean(channels, in_place=True), False  # each block's arrays are its own
        yield np.empty(0, np.float32), True  # flushes the resampler

    def read_channels() -> np.ndarray:
        blocks = [np.stack(channels, axis=1) for channels in f.blocks(1 << 20)]
        return np.concatenate(blocks) if blocks else np.empty((0, f.channels), np.float32)

    return _Input(f.rate, f.channels, f.declared_frames, PYAV_COMPLETE_SHARE, False, mono_blocks, None, read_channels,
                  round(PYAV_COMPLETE_SLACK_S * f.rate), block_s=PYAV_BLOCK_S)


def _read_whole(f: soundfile.SoundFile) -> np.ndarray:
    declared = f.frames
    array = _as_float(f.read(dtype=_read_dtype(f), always_2d=True))
    _require_complete(_complete_share(f), declared, len(array))
    return array


# A whole clip whose samples libsndfile gives the same whatever the read size (PCM, A-law, mu-law, float: not MP3's,
# whose MPEG-2 decoding depends on it) is read READ_FRAMES at a time into buffers used again for each read and
# downmixed from there into the clip's one mono array: no [frames, channels] array of the clip is made, whose fresh
# pages cost more than the downmix itself (jobs/bench_decode.py's own share). The samples are `_read_whole`'s,
# downmixed per frame as before (tests/test_audio.py compares them bit for bit).
READ_FRAMES = 1 << 16


def _read_mono(f: soundfile.SoundFile) -> np.ndarray:
    if not (_integer_coded(f) or f.subtype in ("FLOAT", "DOUBLE")):
        return downmix(_read_whole(f))
    declared = f.frames
    mono = np.empty(declared, np.float32)
    raw = np.empty((min(READ_FRAMES, declared), f.channels), _read_dtype(f))
    floats = raw if raw.dtype == np.float32 else np.empty(raw.shape, np.float32)
    done = 0
    while done < declared:
        got = _sf_read_into(f, raw, min(len(raw), declared - done))
        if got <= 0:
            break
        if raw is not floats and f.channels == 1:  # scaled straight into the clip
            np.multiply(raw[:got, 0], PCM16_SCALE, out=mono[done:done + got])
        else:
            block = floats[:got] if raw is floats else np.multiply(raw[:got], PCM16_SCALE, out=floats[:got])
            downmix(block, out=mono[done:done + got])
        done += got
    _require_complete(_complete_share(f), declared, done)
    return mono[:done]


def _sf_read_into(f: soundfile.SoundFile, out: np.ndarray, frames: int) -> int:
    """Up to `frames` frames into the C-contiguous int16 or float32 `out` by libsndfile's own call (soundfile's
    read() allocates, checks and seeks per call, and seeks where a stream of unknown length cannot): the frames
    read. libsndfile's error is raised, not read as the end: a cut stream's last frame is one ('lost sync'), and
    where no length is declared nothing else tells."""
    if out.dtype == np.int16:
        got = soundfile._snd.sf_readf_short(f._file, soundfile._ffi.cast("short *", out.ctypes.data), frames)
    else:
        got = soundfile._snd.sf_readf_float(f._file, soundfile._ffi.cast("float *", out.ctypes.data), frames)
    soundfile._error_check(f._errorcode)
    return got


def _complete_share(f: soundfile.SoundFile) -> float:
    # an MP3's length is its Xing/LAME header's or an estimate from the bit rate: a little off by design
    return 0.99 if f.format == "MP3" else 1.0


class _Resampled:
    """A clip's resampled samples as they come: in memory up to `in_memory` source frames, then in a FileWave."""

    def __init__(self, in_memory: float, file_waves: bool = True):
        self.in_memory, self.chunks, self.file, self.size = in_memory, [], None, 0
        self.file_waves = file_waves

    def append(self, samples: np.ndarray, decoded: int) -> None:
        if self.file is None and decoded > self.in_memory:
            if not self.file_waves:
                raise NeedsFileWave(f"more than {self.in_memory:.0f} frames")
            self.file = FileWave()
            for chunk in self.chunks:
                self.file.append(chunk)
            self.chunks = []
        if self.file is not None:
            self.file.append(samples)
        else:
            self.chunks.append(samples)
        self.size += len(samples)

    def finish(self, gain: float | None) -> np.ndarray | FileWave:
        if self.file is not None:
            self.file.gain = 1.0 if gain is None else gain
            return self.file
        mono = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        return mono if gain is None else apply_gain(mono, gain)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _decode_in_blocks(f: _Input, target_rate: int, quality: str, loudness_lufs: float | None,
                      max_seconds: float = math.inf, ceil_length: bool = False, in_memory: float = -1,
                      file_waves: bool = True) -> Audio:
    """Decode, downmix and resample BLOCK_S (at most BLOCK_MAX_BYTES) at a time, in a block's memory, into a FileWave
    (once more than `in_memory` frames are decoded; before that, in memory); with a loudness target, the loudness is
    measured block by block and the gain is the FileWave's, applied as it is read. A clip found longer than
    `max_seconds` as it decodes is `too_long`."""
    rate, declared = f.rate, f.declared
    block = max(1, min(round(f.block_s * rate), BLOCK_MAX_BYTES // (4 * f.channels)))
    resampler = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality=quality) if rate != target_rate else None
    meter = LoudnessMeter(rate) if loudness_lufs is not None else None
    wave, decoded, non_finite, peak, loudness = _Resampled(in_memory, file_waves), 0, 0, 0.0, None
    try:
        for mono, last in f.mono_blocks(block):
            decoded += len(mono)
            _require_within(decoded / rate, max_seconds, " (found while decoding" +
                            (": its header declares no length)" if declared is None else ")"))
            non_finite += 0 if f.finite else _non_finite_count(mono)
            if meter is not None:
                meter.add(mono)
            resampled = resampler.resample_chunk(mono, last=last) if resampler else mono
            peak = max(peak, _peak(resampled)) if meter is not None else peak
            wave.append(resampled, decoded)
        if ceil_length and resampler:
            wave.append(np.zeros(max(0, ceil_resampled_size(decoded, rate, target_rate) - wave.size), np.float32),
                        decoded)
        if declared is not None:
            _require_complete(f.complete_share, declared, decoded + f.complete_slack)
        _require_samples(decoded)
        _require_finite(non_finite)
        _require_resampled(wave.size, decoded, rate)
        if meter is not None:
            loudness = normalisation(meter.integrated(), loudness_lufs, peak)
        result = wave.finish(loudness.gain if loudness is not None else None)
    except BaseException:
        wave.close()
        raise
    return Audio(result, int(rate), int(f.channels), decoded / rate, loudness)


def _read_block(f: soundfile.SoundFile, frames: int, unknown_length: bool) -> np.ndarray:
    """Up to `frames` [frames, channels] float32. soundfile's read() seeks to its new position after every read,
    which libsndfile refuses for a stream of unknown length, so such a stream is read through libsndfile's call."""
    if not unknown_length:
        return _as_float(f.read(frames, dtype=_read_dtype(f), always_2d=True))
    out = np.empty((frames, f.channels), dtype=np.float32)  # only FLAC declares no length: libsndfile's floats
    return out[:_sf_read_into(f, out, frames)]


# 16-bit PCM (wav, AIFF, AU, ...: not FLAC, whose decoding dominates) is read as libsndfile's int16 and made float32
# by numpy: libsndfile's own conversion costs several times its whole read of such a file (jobs/bench_decode.py),
# numpy's is vectorised, and the bits are libsndfile's (an int16 is exact in float32, and 2**-15 scales it exactly,
# as libsndfile does: tests/test_audio.py compares them)
PCM16_SCALE = np.float32(2.0 ** -15)


def _read_dtype(f: soundfile.SoundFile) -> str:
    return "int16" if f.subtype == "PCM_16" and f.format != "FLAC" else "float32"


def _as_float(samples: np.ndarray) -> np.ndarray:
    if samples.dtype == np.float32:
        return samples
    return np.multiply(samples, PCM16_SCALE, dtype=np.float32)


def _integer_coded(f: soundfile.SoundFile) -> bool:
    """Samples stored as integers (PCM, A-law, mu-law; FLAC's are PCM too) decode to finite floats: not checked."""
    return f.subtype.startswith(("PCM_", "ALAW", "ULAW"))


def _require_complete(share: float, declared: int, decoded: int) -> None:
    """Fewer frames decoded than `share` of what the container declared (FLAC's and MP3's headers, the length
    ffmpeg reads; cut containers are found before decoding, in _opened) is a truncated file: a silently shortened
    clip is data loss."""
    if decoded < share * declared:
        raise SampleError("truncated", f"{decoded} of {declared} declared frames decodable")


def _require_samples(frames: int) -> None:
    if frames == 0:
        raise SampleError("empty_audio", "0 samples")


def _require_within(seconds: float, max_seconds: float, how: str = "") -> None:
    if seconds > max_seconds:
        raise SampleError("too_long", f"{seconds:.0f} s > audio.max_seconds={max_seconds:.0f}{how}")


# numpy sums up to this many channels of a row one after another (more: pairwise), so adding columns in order
# below it gives its mean's bits
_SEQUENTIAL_CHANNELS = 8


def downmix(frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """[frames, channels] float32 -> their channel mean, float32 (into `out` if given): the bits of
    `frames.mean(axis=1, dtype=float32)` at a fraction of its cost (numpy reduces a short inner axis slowly: on
    48 kHz stereo, slower than libsndfile decodes it)."""
    if frames.shape[1] >= _SEQUENTIAL_CHANNELS:
        return frames.mean(axis=1, dtype=np.float32, out=out)
    return _channel_mean([frames[:, channel] for channel in range(frames.shape[1])], out=out)


def _channel_mean(channels: list[np.ndarray], in_place: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """The mean of float32 channels, added in order; `in_place`: into the first channel's array (no new one)."""
    if len(channels) == 1:
        if out is None:
            return channels[0]
        out[...] = channels[0]
        return out
    mono = np.add(channels[0], channels[1], out=channels[0] if in_place else out)
    for channel in channels[2:]:
        np.add(mono, channel, out=mono)
    count = len(channels)
    if count & (count - 1):
        mono /= np.float32(count)
    else:  # 1 / count is exact, so this rounds the same real number: the same bits, at a multiply's cost
        mono *= np.float32(1 / count)
    return mono


def _non_finite_count(mono: np.ndarray) -> int:
    # NaN propagates through max and min and an inf is one of them: two vectorised passes where (nearly always) there
    # are none, and no arithmetic that a loud clip could overflow
    if mono.size == 0 or (math.isfinite(mono.max()) and math.isfinite(mono.min())):
        return 0
    return int(mono.size - np.count_nonzero(np.isfinite(mono)))


def _require_finite(non_finite: int) -> None:
    if non_finite:
        raise SampleError("non_finite", f"{non_finite} NaN/inf samples")


def _require_resampled(size: int, frames: int, rate: int) -> None:
    if size == 0:
        raise SampleError("empty_audio", f"{frames} samples at {rate} Hz resample to none")


def _peak(samples: np.ndarray) -> float:
    return float(np.max(np.abs(samples))) if samples.size else 0.0


def ceil_resampled_size(frames: int, rate: int, target_rate: int) -> int:
    """librosa.resample's output length: ceil(frames x target / rate), in integers."""
    return -(-frames * target_rate // rate)


def to_model_audio(array: np.ndarray, rate: int, target_rate: int, quality: str, max_seconds: float,
                   loudness_lufs: float | None = None, ceil_length: bool = False, finite: bool = False) -> Audio:
    """Downmix, validate, resample and (with a loudness target) normalise one decoded clip. `finite`: the
    samples are known to be finite (decoded from integers), so they are not checked."""
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise SampleError("bad_shape", f"audio array of shape {array.shape}")
    duration = _clip_duration(len(array), rate, max_seconds)
    return _model_audio(downmix(array.astype(np.float32, copy=False)), rate, array.shape[1], duration, target_rate,
                        quality, loudness_lufs, ceil_length, finite)


def _clip_duration(frames: int, rate: int, max_seconds: float) -> float:
    """A decoded clip's seconds, once it is known to hold samples at a valid rate within `max_seconds`."""
    _require_samples(frames)
    if not rate or rate <= 0:
        raise SampleError("bad_sample_rate", str(rate))
    _require_within(frames / rate, max_seconds)
    return frames / rate


def _model_audio(mono: np.ndarray, rate: int, channels: int, duration: float, target_rate: int, quality: str,
                 loudness_lufs: float | None, ceil_length: bool, finite: bool) -> Audio:
    """Check, resample and (with a loudness target) normalise one downmixed clip (`_clip_duration` checked it)."""
    frames = len(mono)
    if not finite:
        _require_finite(_non_finite_count(mono))
    measured = None
    if loudness_lufs is not None:
        meter = LoudnessMeter(rate)
        meter.add(mono)
        measured = meter.integrated()
    if rate != target_rate:
        mono = soxr.resample(mono, rate, target_rate, quality=quality).astype(np.float32, copy=False)
        if ceil_length:
            size = ceil_resampled_size(frames, rate, target_rate)
            mono = np.pad(mono[:size], (0, max(0, size - mono.size)))
    _require_resampled(mono.size, frames, rate)
    loudness = None
    if loudness_lufs is not None:
        loudness = normalisation(measured, loudness_lufs, _peak(mono))
        mono = apply_gain(mono, loudness.gain)
    return Audio(np.ascontiguousarray(mono), int(rate), int(channels), float(duration), loudness)
