"""Token-budget batches of similar-length rows, padded into `[B, K, T]` tensors, for LM training.

    batcher = Batcher(max_tokens=48_000, pad_id=1024, delay_pattern=True)
    TokenDataset(out, batcher=batcher)       # the dataset yields batches: DataLoader(..., batch_size=None)
    batcher.collate(rows)                    # or collate a list of the dataset's rows yourself

The budget counts the codes tensor itself: B x T x K <= max_tokens, T being the batch's padded length
(the longest row, plus K - 1 frames under the delay pattern). A row over the budget on its own forms a
batch of one (crop long rows with `TokenDataset(crop_frames=...)` to avoid it).

Grouping (in the spirit of Lhotse's DynamicBucketingSampler, with a sorted buffer instead of fixed
buckets): rows go into a buffer kept sorted by length; once it holds `buffer_rows`, a row is drawn at
random and its batch is the run of rows next to it in length order (shorter first, then longer) that
fits the budget. So a batch's rows are of similar length and batches come out in random order. At the
end of the stream the buffer is drained the same way.
"""

from __future__ import annotations

import bisect
import itertools
import random
from typing import Iterable, Iterator

import torch


def apply_delay_pattern(codes: torch.Tensor, pad_id: int) -> torch.Tensor:
    """[..., K, T] -> [..., K, T + K - 1] with codebook k shifted right by k frames (MusicGen-style delay)."""
    books, frames = codes.shape[-2:]
    out = torch.full((*codes.shape[:-1], frames + books - 1), pad_id, dtype=codes.dtype, device=codes.device)
    for k in range(books):
        out[..., k, k : k + frames] = codes[..., k, :]
    return out


def undo_delay_pattern(delayed: torch.Tensor) -> torch.Tensor:
    """Inverse of apply_delay_pattern: [..., K, T + K - 1] -> [..., K, T]."""
    books, length = delayed.shape[-2:]
    frames = length - books + 1
    return torch.stack([delayed[..., k, k : k + frames] for k in range(books)], dim=-2)


class Batcher:
    """Builds `[B, K, T]` batches within `max_tokens` (B x T x K, padding and delay included).

    Each batch is a dict: `codes` LongTensor [B, K, T] (padded with `pad_id`; delayed when
    `delay_pattern`), `mask` BoolTensor [B, T] (True where the frame holds at least one real code),
    `codebook_mask` BoolTensor [B, K, T] (True where that codebook's code is real: under the delay
    pattern codebook k is real from frame k to k + length), `lengths` LongTensor [B] (frames of each
    row, before the delay), and every other field of the rows as a list (`key`, `crop_start`, ...).
    """

    def __init__(self, max_tokens: int, pad_id: int, delay_pattern: bool = False, buffer_rows: int = 2000,
                 max_rows: int | None = None):
        if max_tokens < 1 or buffer_rows < 1 or (max_rows is not None and max_rows < 1):
            raise ValueError(f"max_tokens, buffer_rows and max_rows must be positive (got {max_tokens}, {buffer_rows}, "
                             f"{max_rows})")
        self.max_tokens, self.pad_id, self.delay_pattern = max_tokens, pad_id, delay_pattern
        self.buffer_rows, self.max_rows = buffer_rows, max_rows

    def length(self, row: dict) -> int:
        """What the budget counts of one row, and the order of the length-sorted buffer: its frames."""
        return int(row["codes"].shape[1])

    def cost(self, rows: int, frames: int, books: int) -> int:
        """Codes in a batch of `rows` rows padded to `frames` frames (before the delay)."""
        return rows * (frames + (books - 1 if self.delay_pattern else 0)) * books

    def rows_per_batch(self, frames: float, books: int) -> float:
        """Rows of `frames` frames per batch if they filled the budget exactly (at least 1): planned counts
        divide by it."""
        fit = self.max_tokens / max(1.0, self.cost(1, frames, books))
        return max(1.0, min(fit, self.max_rows or fit))

    def collate(self, rows: list[dict]) -> dict:
        """Rows with `codes` [K, T_i] -> one padded batch (see the class docstring)."""
        if not rows:
            raise ValueError("cannot collate an empty list of rows")
        books = {int(r["codes"].shape[0]) for r in rows}
        if len(books) != 1:
            raise ValueError(f"rows with different numbers of codebooks {sorted(books)} cannot share a batch")
        (k,) = books
        lengths = torch.tensor([int(r["codes"].shape[1]) for r in rows], dtype=torch.long)
        frames = int(lengths.max())
        codes = torch.full((len(rows), k, frames), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            codes[i, :, : lengths[i]] = r["codes"]
        positions = torch.arange(frames + (k - 1 if self.delay_pattern else 0))
        if self.delay_pattern:
            codes = apply_delay_pattern(codes, self.pad_id)
            starts = torch.arange(k)[None, :, None]
            codebook_mask = (positions >= starts) & (positions < starts + lengths[:, None, None])
        else:
            codebook_mask = (positions < lengths[:, None, None]).expand(-1, k, -1)
        batch = {"codes": codes, "mask": codebook_mask.any(dim=1), "codebook_mask": codebook_mask, "lengths": lengths}
        for name in rows[0]:
            if name not in batch and name != "codes":
                batch[name] = [r.get(name) for r in rows]
        return batch

    def batches(self, rows: Iterable[dict], rng: random.Random) -> Iterator[dict]:
        """Batches of `rows` (a stream of the dataset's rows), drawn from the length-sorted buffer."""
        buffer: list[tuple[int, int, dict]] = []  # (length, arrival, row): sorted by length, ties by arrival
        arrival = itertools.count()
        for row in rows:
            bisect.insort(buffer, (self.length(row), next(arrival), row))
            if len(buffer) >= self.buffer_rows:
                yield self.collate(self._take(buffer, rng))
        while buffer:
            yield self.collate(self._take(buffer, rng))

    def _take(self, buffer: list, rng: random.Random) -> list[dict]:
        """Remove and return one batch: a random row and its neighbours in length order that fit the budget."""
        books = int(buffer[0][2]["codes"].shape[0])
        anchor = rng.randrange(len(buffer))
        low, high = anchor, anchor + 1  # the batch is buffer[low:high]; buffer[high - 1] is its longest row
        cap = self.max_rows or len(buffer)
        while low > 0 and high - low < cap and self.cost(high - low + 1, buffer[high - 1][0], books) <= self.max_tokens:
            low -= 1
        while (high < len(buffer) and high - low < cap
               and self.cost(high - low + 1, buffer[high][0], books) <= self.max_tokens):
            high += 1
        taken = [entry[2] for entry in buffer[low:high]]
        del buffer[low:high]
        return taken
