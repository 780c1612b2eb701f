"""Loudness normalisation as the reference tokenizer does it, measured over a stream of blocks.

The reference (boson-ai/higgs-audio, boson_multimodal/audio_processing/higgs_audio_tokenizer.py,
`HiggsAudioTokenizer.encode(..., loudness_normalize=True, loudness_threshold=-23.0)`) loads the clip mono
(librosa, channel mean) at its own rate, measures `pyloudnorm.Meter(sr).integrated_loudness(wv)`, applies
`pyloudnorm.normalize.loudness` (a gain, no limiter: it only warns about clipping), then resamples.

`LoudnessMeter` computes what `pyloudnorm.Meter(rate).integrated_loudness` gives for a mono float32 clip
(ITU-R BS.1770-4 with pyloudnorm's K-weighting biquads; 400 ms blocks every 100 ms; absolute gate
-70 LUFS, relative gate -10 LU), fed any number of pieces: the filters carry their state across pieces
(`lfilter(..., zi=...)`, the same samples as one pass), a block's mean square is taken once its samples are
in, and only the mean squares are kept, so a long clip costs a block's memory. Each step repeats
pyloudnorm's arithmetic (a float32 clip is filtered and squared in float32, as pyloudnorm does on the float32
array the reference gives it), so the result equals pyloudnorm's (tests/test_loudness.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.signal
from pyloudnorm.iirfilter import IIRfilter

# recorded in the output's identity (with the target) when normalisation is on
METHOD = ("bs1770-v1: pyloudnorm K-weighting, integrated loudness of the mono clip at its source rate; "
          "one gain, applied after resampling; no limiter")

GATE_BLOCK_S = 0.400  # BS.1770 gating block
STEP = 1.0 - 0.75  # 75% overlap: a block every 100 ms
ABSOLUTE_GATE = -70.0  # LUFS
RELATIVE_GATE = -10.0  # LU below the absolutely gated loudness

NORMALISED, CLIPPED, TOO_SHORT, TOO_QUIET = "normalised", "clipped", "too_short", "too_quiet"


def k_weighting(rate: float) -> list[IIRfilter]:
    """pyloudnorm.Meter's 'K-weighting' stages, in its order (high shelf, then high pass)."""
    return [IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, rate, "high_shelf"), IIRfilter(0.0, 0.5, 38.0, rate, "high_pass")]


class LoudnessMeter:
    """Integrated loudness of a mono clip given piece by piece (`add`), read once at the end (`integrated`)."""

    def __init__(self, rate: int):
        self.rate = rate
        self._stages = [(f.b, f.a, f.passband_gain, np.zeros(max(len(f.a), len(f.b)) - 1)) for f in k_weighting(rate)]
        self._pending: list[np.ndarray] = []  # filtered samples from `_offset` on, not yet in a finished block
        self._offset = 0  # clip index of the first pending sample
        self.size = 0  # samples added
        self._mean_squares: list[float] = []  # of the blocks finished so far, in order

    def _bounds(self, block: int) -> tuple[int, int]:
        # pyloudnorm's expressions, so that float rounding puts every boundary on the same sample
        lower = int(GATE_BLOCK_S * (block * STEP) * self.rate)
        upper = int(GATE_BLOCK_S * (block * STEP + 1) * self.rate)
        return lower, upper

    def add(self, mono: np.ndarray) -> None:
        if mono.ndim != 1:
            raise ValueError(f"LoudnessMeter takes a mono clip, not an array of shape {mono.shape}")
        filtered = mono
        for index, (b, a, passband_gain, zi) in enumerate(self._stages):
            out, zi = scipy.signal.lfilter(b, a, filtered, zi=zi)
            self._stages[index] = (b, a, passband_gain, zi)
            filtered = (passband_gain * out).astype(mono.dtype, copy=False)  # pyloudnorm filters in place, in the clip's dtype
        self._pending.append(filtered)
        self.size += len(mono)
        self._finish_blocks(self.size)

    def _finish_blocks(self, available: int, count: int | None = None) -> None:
        """Mean squares of the next blocks whose samples end within `available` (or, given, up to `count` blocks,
        cut at the clip's end); pending samples before the next block's start are let go."""
        pending = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        scale = 1.0 / (GATE_BLOCK_S * self.rate)
        while count is None or len(self._mean_squares) < count:
            lower, upper = self._bounds(len(self._mean_squares))
            if count is None and upper > available:
                break
            self._mean_squares.append(float(scale * np.sum(np.square(pending[lower - self._offset : upper - self._offset]))))
        lower, _ = self._bounds(len(self._mean_squares))
        self._pending = [pending[max(0, lower - self._offset):].copy()]
        self._offset = max(self._offset, lower)

    def integrated(self) -> float | None:
        """LUFS; None for a clip shorter than one gating block, -inf where no block passes the gates (silence)."""
        if self.size < GATE_BLOCK_S * self.rate:
            return None  # pyloudnorm refuses it ("Audio must have length greater than the block size")
        seconds = self.size / self.rate
        count = int(np.round((seconds - GATE_BLOCK_S) / (GATE_BLOCK_S * STEP))) + 1
        self._finish_blocks(self.size, count)
        z = np.array(self._mean_squares[:count])
        with warnings.catch_warnings(), np.errstate(divide="ignore"):
            warnings.simplefilter("ignore", category=RuntimeWarning)
            block_loudness = -0.691 + 10.0 * np.log10(z)
            above_absolute = z[block_loudness >= ABSOLUTE_GATE]
            if not above_absolute.size:
                return float("-inf")
            relative_gate = -0.691 + 10.0 * np.log10(np.mean(above_absolute)) + RELATIVE_GATE
            gated = z[(block_loudness > relative_gate) & (block_loudness > ABSOLUTE_GATE)]
            return float(-0.691 + 10.0 * np.log10(np.mean(gated))) if gated.size else float("-inf")


@dataclass(frozen=True)
class Normalisation:
    """What loudness normalisation did to one clip."""

    status: str  # NORMALISED, CLIPPED (gained past full scale, not limited), TOO_SHORT or TOO_QUIET (left as they are)
    measured_lufs: float | None  # None: too short to measure
    gain: float  # linear; 1.0 for a clip left as it is

    @property
    def unmeasured(self) -> bool:
        return self.status in (TOO_SHORT, TOO_QUIET)


def gain_for(measured_lufs: float | None, target_lufs: float) -> float | None:
    """pyloudnorm.normalize.loudness's gain; None where the clip cannot be measured."""
    if measured_lufs is None or not np.isfinite(measured_lufs):
        return None
    return float(np.power(10.0, (target_lufs - measured_lufs) / 20.0))


def normalisation(measured_lufs: float | None, target_lufs: float, peak: float) -> Normalisation:
    """The gain to apply and what it does; `peak`: the largest |sample| of the clip before the gain."""
    gain = gain_for(measured_lufs, target_lufs)
    if gain is None:
        return Normalisation(TOO_SHORT if measured_lufs is None else TOO_QUIET, measured_lufs, 1.0)
    clipped = float(np.float32(peak) * np.float32(gain)) > 1.0  # as the samples will be scaled (float32)
    return Normalisation(CLIPPED if clipped else NORMALISED, measured_lufs, gain)


def apply_gain(samples: np.ndarray, gain: float) -> np.ndarray:
    """`samples` (float32) scaled by `gain` in float32: the one operation both decoding paths use, so whole and
    blocked clips stay bit-identical."""
    return samples * np.float32(gain) if gain != 1.0 else samples
