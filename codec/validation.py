"""Checks on what callers hand to the codec, with errors that name the clip and the problem."""

from __future__ import annotations

import numpy as np

from .waves import FileWave, non_finite


class CodecInputError(ValueError):
    def __init__(self, index: int | None, reason: str):
        self.index = index
        self.reason = reason
        where = f"clip {index}: " if index is not None else ""
        super().__init__(where + reason)


def check_waveforms(waveforms) -> list:
    """The waveforms (numpy arrays or FileWaves) if each is a non-empty, finite, 1-D float32 clip."""
    if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
        raise CodecInputError(None, "expected a list of 1-D waveforms, got a single array; wrap it in a list")
    checked = []
    for index, wave in enumerate(waveforms):
        if not isinstance(wave, (np.ndarray, FileWave)):
            raise CodecInputError(index, f"expected a numpy array (or a FileWave), got {type(wave).__name__}")
        if wave.dtype != np.float32:
            raise CodecInputError(index, f"expected dtype float32, got {wave.dtype}")
        if wave.ndim != 1:
            raise CodecInputError(index, f"expected a 1-D mono waveform, got shape {wave.shape}")
        if wave.size == 0:
            raise CodecInputError(index, "empty waveform (0 samples)")
        bad, any_nan = non_finite(wave)
        if bad:
            raise CodecInputError(index, f"{bad} non-finite samples ({'NaN' if any_nan else 'inf'})")
        checked.append(wave)
    return checked


def check_bandwidth(bandwidth: float, valid: list[float]) -> float:
    if bandwidth not in valid:
        raise CodecInputError(None, f"bandwidth {bandwidth} kbps is not in this checkpoint's list {list(valid)}")
    return bandwidth
