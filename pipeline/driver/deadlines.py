"""Each running shard's time limit, counted from when the driver dispatched it (an actor that never answers is
timed out too).

`ray.shard_timeout_s` when set; else `TIMEOUT_FACTOR` times the shard's expected time, never below
`ray.shard_timeout_min_s`. The expected time comes from what is known of the shard at the speed of the shards
done so far: its byte size (from the listing, or `fs.info` where the listing has none), and the audio seconds
its actor reports through `progress()` as it encodes, so a shard holding hours of audio keeps its time while it
makes progress at the usual speed, and one that stalls is stopped.
"""

from __future__ import annotations

import statistics
from collections import deque

from ..config import RayConfig
from ..runstate import DONE, ShardRecord
from ..sources import Shard

TIMEOUT_FACTOR = 4  # auto time limit: this many times a shard's expected time
MEASURED = 200  # recent done shards whose speed is kept
MIN_MEASURED = 3  # done shards needed before a speed is trusted


class _Speed:
    """A median over the most recent done shards (recomputed when one is added, not per question)."""

    def __init__(self):
        self.recent: deque = deque(maxlen=MEASURED)
        self.median: float | None = None

    def add(self, value: float) -> None:
        self.recent.append(value)
        if len(self.recent) >= MIN_MEASURED:
            self.median = statistics.median(self.recent)


class Deadlines:
    def __init__(self, config: RayConfig):
        self.config = config
        self.dispatched: dict[str, float] = {}  # shard id -> when it was given to its actor
        self.audio: dict[str, float] = {}  # shard id -> audio seconds its actor reported so far
        self.bytes_per_second, self.audio_per_second = _Speed(), _Speed()

    def dispatch(self, shard_id: str, now: float) -> None:
        self.dispatched[shard_id] = now
        self.audio.pop(shard_id, None)

    def progress(self, audio_by_shard: dict[str, float]) -> None:
        """Audio seconds encoded so far per shard, from an actor's progress()."""
        for shard_id, seconds in audio_by_shard.items():
            if shard_id in self.dispatched:
                self.audio[shard_id] = float(seconds)

    def finish(self, shard: Shard, record: ShardRecord | None) -> None:
        """The shard left its actor (`record`: its outcome, None when it was taken back)."""
        self.dispatched.pop(shard.id, None)
        self.audio.pop(shard.id, None)
        if record is not None and record.status == DONE and record.seconds > 0:
            if shard.size:
                self.bytes_per_second.add(shard.size / record.seconds)
            if record.audio_seconds > 0:
                self.audio_per_second.add(record.audio_seconds / record.seconds)

    def limit(self, shard: Shard) -> float:
        r = self.config
        if r.shard_timeout_s:
            return r.shard_timeout_s
        expected = [0.0]
        if shard.size and self.bytes_per_second.median:
            expected.append(shard.size / self.bytes_per_second.median)
        if self.audio.get(shard.id) and self.audio_per_second.median:
            expected.append(self.audio[shard.id] / self.audio_per_second.median)
        return max(r.shard_timeout_min_s, TIMEOUT_FACTOR * max(expected))

    def overdue(self, shard: Shard, now: float) -> float | None:
        """The shard's limit when it has run past it; None when it has not."""
        began = self.dispatched.get(shard.id)
        limit = self.limit(shard)
        return limit if began is not None and now - began > limit else None
