"""Read tokenized output in LM training: a PyTorch IterableDataset over one or more output folders.

Work is planned from the run's commit records (rows, frames and length bins per Parquet row group), so
building the dataset reads the run state only, not the data files (see `plan.py` for the exceptions). Every rank
yields the same number of items per epoch, so no rank waits on another in a collective:

- Rows (no batcher, no consecutive crops): each epoch's row sequence (row groups shuffled by seed and
  epoch when `shuffle_buffer` > 0) is cut into `world_size` equal contiguous slices of S rows, each cut
  among the rank's DataLoader workers. `drop_last=False` (the default, as `DistributedSampler`):
  S = ceil(N / world), the last slice wraps to the start of the sequence, so every row is read and up to
  world - 1 rows are read by two ranks. `drop_last=True`: S = floor(N / world), the remainder (a
  different one each shuffled epoch) is not read. No rank reads a row twice; each rank yields exactly S
  rows. Filters are applied when the dataset is built (below), so S counts the rows they keep.
- Batches (`batcher=`) or consecutive crops on more than one rank: how many batches (windows) a slice
  makes depends on the lengths of its rows, so each rank yields a planned count: the estimate of the
  epoch's batches (windows) from each row group's length bins, divided equally among ranks, then among a
  rank's workers (`jobs/bench_dataset.py` prints how many rows it leaves out or reads twice). A worker first makes batches of its own slice (drained: the buffer
  empties at its end); if they are more than its count, the rest is dropped (those rows wait for another
  epoch); if fewer, it goes on with its fill range, its own share of the other ranks' rows (so rows
  repeat across ranks only to fill, never within a rank). Only if even that runs out does it start over
  (rows then repeat within the rank; logged as a warning). All of it is deterministic from seed and epoch.
- One rank (world_size 1) yields every kept row (window, or batch of them) once per epoch, unplanned.

Filters (`min_frames`, `max_frames`, `where`, `filter_fn`) need the rows, not the records: when any is
set the dataset reads, at build, the columns they need (`num_frames`; with `where` or `filter_fn` every
column but `codes`) of every file, once, and plans over the rows they keep.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import zlib
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..schema import CODES, METADATA, NUM_CODEBOOKS, NUM_FRAMES
from ..storage import Storage
from .batching import Batcher, apply_delay_pattern, undo_delay_pattern
from .epochs import EpochPlan, Unit, load_units

__all__ = ["TokenDataset", "apply_delay_pattern", "list_units", "read_unit", "row_codes", "undo_delay_pattern"]

log = logging.getLogger(__name__)
CROPS = ("random", "consecutive")


def list_units(output_dirs: list[str]) -> list[tuple[str, str, int]]:
    """(output_dir, file, row_group) for every row group of every finished shard, in a stable order."""
    return [(u.output_dir, u.file, u.group) for u in load_units(list(output_dirs))]


def read_unit(output_dir: str, name: str, group: int):
    """One row group of one output file, as a pyarrow Table."""
    storage = Storage(output_dir)
    with storage.fs.open(storage.path(name), "rb") as f:
        return pq.ParquetFile(f).read_row_group(group)


def row_codes(table) -> Iterator[np.ndarray]:
    """The codes of each row of a table as [num_codebooks, num_frames] int16, without Python lists."""
    values = table.column(CODES).combine_chunks().flatten().flatten().to_numpy(zero_copy_only=False)
    books = table.column(NUM_CODEBOOKS).to_numpy()
    frames = table.column(NUM_FRAMES).to_numpy()
    start = 0
    for k, t in zip(books, frames):
        stop = start + int(k) * int(t)
        yield values[start:stop].reshape(int(k), int(t))
        start = stop


class TokenDataset(IterableDataset):
    """Yields {'codes': LongTensor [num_codebooks, frames], 'key': str, 'output_dir': the output it came from,
    ...the row's other columns}, or with
    `batcher` the batches it builds (see `batching.Batcher`). Iterate it through a DataLoader with
    `batch_size=None`; call `set_epoch` before each epoch (and keep `persistent_workers` off, so workers
    see it). Ranks and counts: see the module docstring; `per_rank` is the number of items every rank
    yields per epoch (None where it is not planned: one rank with batches or consecutive crops).

    rank/world_size default to torch.distributed's (read when the dataset is built) when it is
    initialised, else 0/1. shuffle_buffer > 0 shuffles row groups per epoch and rows within a buffer of
    that many rows, seeded by (seed, epoch, rank, worker).
    crop_frames=N (opt-in): crop="random" yields one window of N frames per row at an offset drawn from
    (seed, epoch, the row's file, row group and index), so it moves from epoch to epoch and repeats for
    the same seed and epoch; crop="consecutive" yields the windows [0, N), [N, 2N), ... covering the row,
    the last one shorter (nothing is dropped). Rows of N frames or fewer are yielded whole. A cropped
    item adds `crop_start` (its first frame in the row); its other columns (`num_frames` too) are the row's.
    min_frames/max_frames filter rows by length; `where` keeps rows whose columns (or keys of the
    WebDataset `metadata` JSON) equal the given values; `filter_fn(row) -> bool` (the row without codes)
    for anything else.
    Resuming mid-epoch: iterate the DataLoader through `track(loader)`, save `state_dict()` with the model, and
    `load_state_dict` it after a restart: the rows this rank received in that epoch are not yielded again.
    """

    def __init__(
        self,
        output_dirs: str | list[str],
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_buffer: int = 0,
        seed: int = 0,
        min_frames: int = 0,
        max_frames: int | None = None,
        where: dict | None = None,
        filter_fn: Callable[[dict], bool] | None = None,
        crop_frames: int | None = None,
        crop: str = "random",
        batcher: Batcher | None = None,
        drop_last: bool = False,
    ):
        super().__init__()
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, not {crop!r}")
        if crop_frames is not None and crop_frames < 1:
            raise ValueError(f"crop_frames must be a positive number of frames, not {crop_frames}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither (torch.distributed's are used)")
        if rank is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if distributed else 0
            world_size = torch.distributed.get_world_size() if distributed else 1
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.output_dirs = [output_dirs] if isinstance(output_dirs, str) else list(output_dirs)
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.shuffle_buffer, self.seed, self.epoch = shuffle_buffer, seed, 0
        self._resume: tuple[int, int] | None = None  # (epoch, items received before the restart)
        self._received_epoch, self._received = 0, 0
        self.min_frames, self.max_frames = min_frames, max_frames
        self.where = where or {}
        self.crop_frames, self.crop, self.batcher = crop_frames, crop, batcher
        filtering = bool(min_frames > 0 or max_frames is not None or self.where or filter_fn)
        self._filter_fn = filter_fn
        self.units: list[Unit] = load_units(self.output_dirs, self._keep if filtering else None,
                                            [NUM_FRAMES] if not (self.where or filter_fn) else None)
        self._filter_fn = None  # applied: the workers need not pickle it
        if batcher is not None and len({u.books for u in self.units}) > 1:
            raise ValueError("outputs with different num_codebooks cannot share batches: "
                             f"{sorted({u.books for u in self.units})}")
        # rows come one item each; batches and consecutive windows come in numbers the records only estimate
        counted = batcher is None and not (crop_frames is not None and crop == "consecutive")
        self.planned = world_size > 1 and not counted
        plan = EpochPlan(self.units, world_size, drop_last)
        self.per_rank: int | None = plan.per_rank if counted else None
        if self.planned:
            estimate = sum(self._estimate(u) for u in self.units)
            self.per_rank = int(estimate * plan.per_rank // plan.total) if plan.total else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # ---- resuming mid-epoch --------------------------------------------------------------------------
    def track(self, items: Iterable) -> Iterator:
        """Iterate `items` (the DataLoader over this dataset, in the training process), counting what this rank
        has received this epoch, for `state_dict`."""
        if self._received_epoch != self.epoch:
            self._received_epoch, self._received = self.epoch, self._resume_skip()
        for item in items:
            self._received += 1
            yield item

    def state_dict(self) -> dict:
        """Where this rank is: its epoch and the items it has received in it (counted by `track`)."""
        received = self._received if self._received_epoch == self.epoch else 0
        return {"epoch": self.epoch, "received": received, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next iteration of `state["epoch"]` yields what follows the items already received, so
        no row yielded before the restart is yielded again in this epoch. Same seed, ranks and DataLoader workers
        as before (the item order depends on them)."""
        mine = (self.seed, self.rank, self.world_size)
        theirs = (state["seed"], state["rank"], state["world_size"])
        if mine != theirs:
            raise ValueError(f"state of (seed, rank, world_size) {theirs} cannot resume a dataset of {mine}")
        self.epoch, self._resume = state["epoch"], (state["epoch"], int(state["received"]))
        self._received_epoch, self._received = self.epoch, int(state["received"])

    def _resume_skip(self) -> int:
        return self._resume[1] if self._resume and self._resume[0] == self.epoch else 0

    def _worker_skips(self, workers: int, received: int) -> list[int]:
        """Items each DataLoader worker yielded of the first `received` the rank got: the DataLoader takes
        them in turn from the workers still going, so that needs each worker's count (known when planned, or
        for rows)."""
        if workers == 1:
            return [received]
        if self.planned:
            counts = [self.per_rank * (w + 1) // workers - self.per_rank * w // workers for w in range(workers)]
        elif self.batcher is None and not (self.crop_frames is not None and self.crop == "consecutive"):
            plan = self._plan()
            counts = [(lambda a, b: b - a)(*plan.worker_range(self.rank, w, workers)) for w in range(workers)]
        else:
            raise ValueError("resuming one rank's batches (or consecutive crops) over several DataLoader workers needs "
                             "their counts, which are not planned: resume with num_workers=1, or run more than one rank")
        skips, rounds = [0] * workers, 0
        while received > 0 and rounds < max(counts, default=0):
            for w in range(workers):
                if received and rounds < counts[w]:
                    skips[w], received = skips[w] + 1, received - 1
            rounds += 1
        return skips

    # ---- filters (applied when the dataset is built) -------------------------------------------------
    def _keep(self, table: pa.Table) -> np.ndarray:
        frames = table.column(NUM_FRAMES).to_numpy()
        keep = frames >= self.min_frames
        if self.max_frames is not None:
            keep &= frames <= self.max_frames
        if self.where or self._filter_fn:
            for i, row in enumerate(table.to_pylist()):
                keep[i] = keep[i] and self._keep_row(row)
        return keep

    def _keep_row(self, row: dict) -> bool:
        for name, value in self.where.items():
            if name in row:
                if row[name] != value:
                    return False
            elif json.loads(row.get(METADATA) or "{}").get(name) != value:
                return False
        return self._filter_fn is None or self._filter_fn(row)

    # ---- the plan ----------------------------------------------------------------------------------
    def _estimate(self, unit: Unit) -> float:
        """Items (windows, or batches) a unit makes, from its rows and frames per length bin."""
        total = 0.0
        for rows, frames in unit.bins:
            if not rows:
                continue
            items, length = float(rows), frames / rows
            if self.crop_frames is not None and length > self.crop_frames:
                if self.crop == "consecutive":  # about half a window per row left over at its end
                    items = frames / self.crop_frames + rows / 2
                    length = frames / items
                else:
                    length = float(self.crop_frames)
            total += items if self.batcher is None else items / self.batcher.rows_per_batch(length, unit.books)
        return total

    def _plan(self) -> EpochPlan:
        order_seed = self.seed * 1_000_003 + self.epoch if self.shuffle_buffer else None
        return EpochPlan(self.units, self.world_size, self.drop_last, order_seed)

    # ---- reading -----------------------------------------------------------------------------------
    def _rows(self, pieces: list[tuple[Unit, int, int]]) -> Iterator[dict]:
        for unit, first, end in pieces:
            table = read_unit(unit.output_dir, unit.file, unit.group)
            if unit.kept is None:
                index, table = np.arange(first, end), table.slice(first, end - first)
            else:
                index = unit.kept[first:end]
                table = table.take(pa.array(index))
            meta = table.select([c for c in table.column_names if c != CODES]).to_pylist()
            origin = zlib.crc32(f"{unit.output_dir}|{unit.file}".encode())
            for row, codes, i in zip(meta, row_codes(table), index):
                row[CODES], row["_origin"] = codes, (origin, unit.group, int(i))
                row.setdefault("output_dir", unit.output_dir)
                yield row

    def _shuffled(self, rows: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        buffer: list[dict] = []
        for row in rows:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(row)
                continue
            index = rng.randrange(len(buffer))
            yield buffer[index]
            buffer[index] = row
        rng.shuffle(buffer)
        yield from buffer

    def _cropped(self, rows: Iterator[dict]) -> Iterator[dict]:
        size = self.crop_frames
        for row in rows:
            codes, origin = row.pop(CODES), row.pop("_origin")
            frames = codes.shape[1]
            if size is None or frames <= size:
                starts = [0]
            elif self.crop == "random":
                draw = np.random.default_rng([self.seed, self.epoch, *origin])
                starts = [int(draw.integers(0, frames - size + 1))]
            else:
                starts = list(range(0, frames, size))
            for start in starts:
                item = dict(row, codes=torch.from_numpy(codes[:, start : start + size if size else None].astype(np.int64)))
                if size is not None:
                    item["crop_start"] = start
                yield item

    def _items(self, pieces: list, rng: random.Random) -> Iterator[dict]:
        rows = self._rows(pieces)
        if self.shuffle_buffer:
            rows = self._shuffled(rows, rng)
        items = self._cropped(rows)
        return self.batcher.batches(items, rng) if self.batcher is not None else items

    def __iter__(self) -> Iterator[dict]:
        worker_info = get_worker_info()
        worker, workers = (worker_info.id, worker_info.num_workers) if worker_info else (0, 1)
        skip = self._worker_skips(workers, self._resume_skip())[worker] if self._resume_skip() else 0
        return itertools.islice(self._iter_worker(worker, workers), skip, None)

    def _iter_worker(self, worker: int, workers: int) -> Iterator[dict]:
        plan = self._plan()

        def rng(phase: int) -> random.Random:
            return random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}/{phase}")

        own = plan.pieces(*plan.worker_range(self.rank, worker, workers))
        if not self.planned:
            yield from self._items(own, rng(0))
            return
        quota = self.per_rank * (worker + 1) // workers - self.per_rank * worker // workers
        fill = plan.pieces(*plan.fill_range(self.rank, worker, workers))
        made = round_start = 0
        for phase in itertools.count():  # own slice, fill range, then over again (rows repeat within the rank)
            if made == quota:
                return
            if phase % 2 == 0:
                if phase and made == round_start:
                    raise RuntimeError(f"rank {self.rank} worker {worker} cannot make its {quota} planned items: "
                                       "its slice and fill range hold no rows")
                round_start = made
            if phase == 2:
                log.warning("rank %d worker %d: its slice and fill range made %d of its %d planned items; starting "
                            "over (rows repeat within this rank this epoch)", self.rank, worker, made, quota)
            for item in self._items(own if phase % 2 == 0 else fill, rng(phase)):
                yield item
                made += 1
                if made == quota:
                    return
