"""Waveforms the codec reads a slice at a time, so a long clip never has to be held in memory whole.

`Codec.encode` takes numpy arrays or `FileWave`s: 24 kHz mono float32 samples in a temporary file.
The codec only ever slices a wave (`wave[a:b]`, a window plus its context) and reads `size`, `dtype`
and `ndim`; every whole-clip pass (the finite check, the windows' normalisation statistics) runs in
chunks.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

CHECK_CHUNK = 1 << 20  # samples per read of whole-clip passes over a wave


class FileWave:
    """A 1-D float32 waveform in an anonymous temporary file, appended to once, then read by slices.

    The file is unlinked at creation, so its space returns when the wave is closed or collected, or when
    the process ends, killed or not: nothing is left behind. Slices are read with `pread` into fresh
    arrays, so a window costs its own bytes, not the clip's: pages of a memory map would stay in the
    process's RSS once touched.

    `gain` (1.0: none) multiplies every slice read, in float32: a clip whose loudness is normalised after it
    was written (the gain is known only at its end) reads exactly as the array `samples * float32(gain)`."""

    dtype = np.dtype(np.float32)
    ndim = 1

    def __init__(self, directory: str | None = None):
        self._file = tempfile.TemporaryFile(prefix="audiotok-wave-", dir=directory)
        self.size = 0
        self.gain = 1.0

    @property
    def shape(self) -> tuple[int]:
        return (self.size,)

    def __len__(self) -> int:
        return self.size

    def append(self, samples: np.ndarray) -> None:
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        self._file.write(memoryview(samples).cast("B"))
        self._file.flush()  # reads go to the file descriptor, past Python's buffer
        self.size += samples.size

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError(f"a FileWave reads contiguous slices (wave[start:stop]), not {index!r}")
        start, stop, _ = index.indices(self.size)
        out = np.empty(max(0, stop - start), np.float32)
        view, offset = memoryview(out).cast("B"), start * out.itemsize
        while view:
            read = os.preadv(self._file.fileno(), [view], offset)
            if read == 0:
                raise EOFError(f"FileWave: {view.nbytes} bytes missing at offset {offset}")
            view, offset = view[read:], offset + read
        if self.gain != 1.0:
            out *= np.float32(self.gain)
        return out

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:
        return f"FileWave({self.size} samples" + (f", gain {self.gain:g})" if self.gain != 1.0 else ")")


def zero_padded(wave, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of `wave` (an ndarray or a FileWave) as a new array, zeros where the range
    leaves the clip (before 0 or past its end)."""
    out = np.zeros(stop - start, np.float32)
    inside_start, inside_stop = max(start, 0), min(stop, wave.size)
    if inside_stop > inside_start:
        out[inside_start - start : inside_stop - start] = wave[inside_start:inside_stop]
    return out


def non_finite(wave, chunk: int = CHECK_CHUNK) -> tuple[int, bool]:
    """How many samples of `wave` are NaN or infinite, and whether any is NaN; read a chunk at a time."""
    bad, any_nan = 0, False
    for start in range(0, wave.size, chunk):
        part = wave[start : start + chunk]
        finite = np.isfinite(part)
        if not finite.all():
            bad += int(finite.size - np.count_nonzero(finite))
            any_nan = any_nan or bool(np.isnan(part).any())
    return bad, any_nan
