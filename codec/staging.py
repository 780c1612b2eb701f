"""Host-to-device staging of a batch's audio through one reused buffer.

A fresh pinned (page-locked) tensor per batch costs a cudaHostAlloc each time, and an unpinned one makes the
copy synchronous. So each codec keeps one buffer, grown when a batch needs more, pinned on CUDA, and issues
the copy non-blocking; before the buffer is written again, the host waits for the copy that last read it
(a CUDA event), which has long finished by the time the next batch is staged unless batches are tiny.
"""

from __future__ import annotations

import numpy as np
import torch


class StagingBuffer:
    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32):
        self.device = device
        self.dtype = dtype
        self.pinned = device.type == "cuda"
        self._buffer: torch.Tensor | None = None
        self._read_by: torch.cuda.Event | None = None  # the last copy out of the buffer

    def to_device(self, clips: list[np.ndarray], total: int) -> torch.Tensor:
        """The clips, each zero-padded to `total` samples, as a [B, 1, total] tensor (of the buffer's dtype) on the
        device."""
        need = len(clips) * total
        if self._read_by is not None:
            self._read_by.synchronize()
        if self._buffer is None or self._buffer.numel() < need:
            self._buffer = torch.empty(need, dtype=self.dtype, pin_memory=self.pinned)
        host = self._buffer[:need].view(len(clips), total)
        for row, clip in enumerate(clips):
            host[row, : clip.size] = torch.from_numpy(clip)
            host[row, clip.size :] = 0
        if self.device.type == "cpu":
            return host.clone()[:, None, :]  # the buffer is reused: the batch must not alias it
        # non-blocking only from pinned memory: another device's copy from pageable memory could still be
        # reading the buffer when the next batch overwrites it
        out = host.to(self.device, non_blocking=self.pinned)
        if self.pinned:
            self._read_by = torch.cuda.Event()
            self._read_by.record()
        return out[:, None, :]


class LengthRows:
    """Every per-row length a batch's masks need (valid samples, frames, steps at each convolution), gathered on
    the host while the batch is planned and copied to the device in one transfer, from the pinned buffer and
    without blocking. Masks are then built on the device from these rows (`arange < length`): no value is read
    back, and no small tensor crosses per convolution."""

    def __init__(self):
        self._index: dict[tuple[int, ...], int] = {}
        self._table: torch.Tensor | None = None

    def add(self, *rows: tuple[int, ...]) -> None:
        if self._table is not None:
            raise RuntimeError("rows added after the copy to the device")
        for row in rows:
            self._index.setdefault(tuple(row), len(self._index))

    def copy(self, staging: StagingBuffer) -> "LengthRows":
        if self._index:
            width = len(next(iter(self._index)))
            rows = [np.asarray(row, np.int64) for row in self._index]
            self._table = staging.to_device(rows, width)[:, 0, :]
        return self

    def __getitem__(self, row: tuple[int, ...]) -> torch.Tensor:
        """The device tensor of a row added before the copy (KeyError otherwise: a mask the plan missed)."""
        return self._table[self._index[tuple(row)]]
