"""Windows for clips too long for one forward pass (HuBERT attention is quadratic in length).

A long clip becomes pieces of `window` frames, each encoded with up to `context` frames of
real audio on either side, and only its own core frames kept. Boundaries fall on whole
frames (multiples of the hop), so the kept codes line up with a single-pass encode.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Piece:
    """Frames [start, stop) of clip `clip` go through the model; frames [keep_start, keep_stop) are kept."""

    clip: int
    start: int
    stop: int
    keep_start: int
    keep_stop: int

    @property
    def num_frames(self) -> int:
        return self.stop - self.start


def split_into_pieces(clip: int, num_frames: int, window: int, context: int) -> list[Piece]:
    if num_frames <= window:
        return [Piece(clip, 0, num_frames, 0, num_frames)]
    pieces = []
    for keep_start in range(0, num_frames, window):
        keep_stop = min(keep_start + window, num_frames)
        pieces.append(
            Piece(clip, max(0, keep_start - context), min(num_frames, keep_stop + context), keep_start, keep_stop)
        )
    return pieces
