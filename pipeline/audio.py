"""Audio bytes or arrays -> validated mono float32 at the codec's rate."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg", "opus", "oga", "aiff", "aif", "au", "sph", "w64", "caf")


class SampleError(Exception):
    """A sample that cannot be encoded; `reason` is a short stable label for summaries."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class Audio:
    wave: np.ndarray  # mono float32 at the target rate
    source_rate: int
    source_channels: int
    duration_s: float  # of the input audio


# a WAV data size of 0 or all ones means "streamed, size unknown", not a truncated file
_STREAMED_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}


def decode_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """[frames, channels] float32 and the sample rate, for anything libsndfile reads.

    libsndfile decodes a truncated WAV, Ogg or MP3 without complaint, returning what is there;
    a silently shortened clip is data loss, so truncation is an error here.
    """
    if not data:
        raise SampleError("empty_file", "0 bytes")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            declared = f.frames
            array = f.read(dtype="float32", always_2d=True)
            rate, info, container = f.samplerate, f.extra_info, f.format
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise SampleError("undecodable", str(error).splitlines()[0][:200]) from None
    truncated = _truncation(container, info, declared, len(array))
    if truncated:
        raise SampleError("truncated", truncated)
    return array, rate


def _truncation(container: str, info: str, declared: int, decoded: int) -> str:
    if container == "MP3" and decoded < 0.99 * declared:
        return f"{decoded} of {declared} frames decodable"
    if container == "OGG" and "lacks an end-of-stream" in info:
        return "the Ogg stream ends without its end-of-stream page"
    for line in info.splitlines():
        if line.startswith("data :") and "should be" in line:
            header = int(line.split(":")[1].split("(")[0])
            actual = int(line.split("should be")[1].strip(" )"))
            if header not in _STREAMED_SIZES and header > actual:
                return f"WAV data chunk declares {header} bytes, {actual} present"
    return ""


def to_model_audio(array: np.ndarray, rate: int, target_rate: int, quality: str, max_seconds: float) -> Audio:
    """Downmix, validate and resample one decoded clip."""
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise SampleError("bad_shape", f"audio array of shape {array.shape}")
    frames, channels = array.shape
    if frames == 0:
        raise SampleError("empty_audio", "0 samples")
    if not rate or rate <= 0:
        raise SampleError("bad_sample_rate", str(rate))
    duration = frames / rate
    if duration > max_seconds:
        raise SampleError("too_long", f"{duration:.0f} s > audio.max_seconds={max_seconds:.0f}")
    mono = array.astype(np.float32, copy=False).mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise SampleError("non_finite", f"{int((~np.isfinite(mono)).sum())} NaN/inf samples")
    if rate != target_rate:
        mono = soxr.resample(mono, rate, target_rate, quality=quality).astype(np.float32, copy=False)
    if mono.size == 0:
        raise SampleError("empty_audio", f"{frames} samples at {rate} Hz resample to none")
    return Audio(np.ascontiguousarray(mono), int(rate), int(channels), float(duration))
