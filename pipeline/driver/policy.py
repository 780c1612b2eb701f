"""The failure policy: what a shard's outcome means for it, and when it runs again.

- done: committed;
- permanent failure (missing file, corrupt tar, bad column): committed as failed at once;
- transient failure (network, a store's 5xx or throttling, a timeout, its actor lost): retried with
  exponential backoff on another actor, charged one attempt, failed past `ray.max_attempts`;
- unexpected exception (a bug, a sick device): retried once on another actor, then failed with its traceback.
An actor that dies holding two shards cannot say which one killed it: both are requeued uncharged and
each runs again alone on an actor (suspects), so a shard that kills an actor it has to itself is the one charged.

Retries wait in a heap by the time they may run again; once due they move to a queue, where an actor skips
only the shard that failed on it (`avoid`). The guard reads the outcomes of this run only: a rerun redoes the
failed shards of the run before, which would otherwise count against it before it tried them.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque

from ..config import Config
from ..telemetry.events import ShardRetry
from ..failures import PERMANENT, UNEXPECTED, FailureKind, Reason
from ..runstate import DONE, FAILED, ShardRecord, Totals
from ..sources import Shard


class GuardTripped(RuntimeError):
    pass


def check_guard(config: Config, totals: dict) -> None:
    """Stop a run whose shards or samples mostly fail: a wrong source, column or decoder, not bad luck."""
    g = config.guard
    checks = [
        ("finished shards", totals["shards_failed"], totals["shards_done"] + totals["shards_failed"], g.min_shards,
         "guard.max_failed_shard_fraction", g.max_failed_shard_fraction, totals["shard_error_reasons"],
         "Check source.audio_column / source.urls and the failed shards' errors/ records."),
        ("samples", totals["errors"], totals["samples_read"], g.min_samples, "guard.max_error_fraction",
         g.max_error_fraction, totals["error_reasons"],
         "Check source.audio_column and the audio format; see errors/ in the output folder."),
    ]
    for what, failed, total, minimum, key, fraction, reasons, hint in checks:
        if total >= minimum and failed > fraction * total:
            top = ", ".join(f"{r} x{n}" for r, n in Counter(reasons).most_common(3))
            raise GuardTripped(f"stopped: {failed} of {total} {what} failed in this run ({failed / total:.0%} > "
                               f"{key}={fraction}); most common: {top}. {hint}")


class Retries:
    """Shards waiting to run again: a heap by not-before time, then, once due, queues in the order they became due."""

    def __init__(self):
        self._heap: list[tuple[float, int, Shard, bool]] = []  # (not before, order, shard, suspect)
        self._order = itertools.count()
        self._due: deque = deque()
        self._due_suspects: deque = deque()

    def __len__(self) -> int:
        return len(self._heap) + len(self._due) + len(self._due_suspects)

    def push(self, shard: Shard, not_before: float, suspect: bool = False) -> None:
        heapq.heappush(self._heap, (not_before, next(self._order), shard, suspect))

    def next_due_in(self, now: float) -> float | None:
        """Seconds until the next retry falls due (0 when one is due); None when none waits."""
        if self._due or self._due_suspects:
            return 0.0
        return self._heap[0][0] - now if self._heap else None

    def _release(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, _, shard, suspect = heapq.heappop(self._heap)
            (self._due_suspects if suspect else self._due).append(shard)

    @staticmethod
    def _first(queue: deque, skip) -> Shard | None:
        # `skip` holds back only the shards that failed on the asking actor: a scan stops at the first other one
        for i, shard in enumerate(queue):
            if not skip(shard):
                del queue[i]
                return shard
        return None

    def take(self, now: float, busy: bool, skip=lambda shard: False) -> tuple[Shard | None, bool]:
        """(a due shard for an actor, or None; whether the actor should take nothing new meanwhile). A suspect runs
        alone: a busy actor leaves it, and takes nothing else new while it waits, so the first actor to empty takes it."""
        self._release(now)
        if not busy:
            shard = self._first(self._due_suspects, skip)
            if shard is not None:
                return shard, False
        shard = self._first(self._due, skip)
        if shard is not None:
            return shard, False
        return None, busy and bool(self._due_suspects)


class FailurePolicy:
    def __init__(self, config: Config, on_event, commit):
        """commit(shard, record): writes a shard's final outcome (its attempts already set)."""
        self.config, self.on_event, self.commit = config, on_event, commit
        self.retries = Retries()
        self.attempts: Counter = Counter()  # charged tries that failed (transient), per shard
        self.unexpected: Counter = Counter()
        self.suspects: set[str] = set()  # shards that were on an actor that died: each runs alone next
        self.avoid: dict[str, tuple[int, int]] = {}  # shard -> the actor (slot, generation) it last failed on
        self.this_run = Totals()  # the outcomes committed by this run: what the guard reads

    # ---- what runs next -------------------------------------------------------------------------------
    def take(self, now: float, actor: tuple[int, int], busy: bool, others_up: bool) -> tuple[Shard | None, bool]:
        """A due retry for `actor` (slot, generation), or None; and whether it should wait rather than take new work."""
        skip = (lambda shard: self.avoid.get(shard.id) == actor) if others_up else (lambda shard: False)
        return self.retries.take(now, busy, skip)

    def retry(self, shard: Shard, actor: tuple[int, int] | None, delay: float, now: float) -> None:
        if actor is not None:
            self.avoid[shard.id] = actor
        self.retries.push(shard, now + delay, shard.id in self.suspects)

    def _backoff(self, shard: Shard) -> float:
        base = self.config.ray.retry_backoff_s * 2 ** (self.attempts[shard.id] - 1)
        return min(300.0, base) * random.uniform(0.75, 1.25)

    # ---- outcomes ---------------------------------------------------------------------------------------
    def settle(self, shard: Shard, record: ShardRecord, actor: tuple[int, int], now: float) -> bool:
        """A shard's outcome from its actor; True when it counts as a failure of that actor."""
        if record.status == DONE:
            self._final(shard, record)
            return False
        kind = record.failure or PERMANENT
        if kind == PERMANENT:
            self._final(shard, record)
            return False
        if kind == UNEXPECTED and self.unexpected[shard.id] == 0:
            self.unexpected[shard.id] += 1
            self.on_event(ShardRetry(shard.id, 1, kind, record.error[:300], 0.0))
            self.retry(shard, actor, 0.0, now)
        elif kind == UNEXPECTED:
            self._final(shard, record)
        else:
            self.charge(shard, actor, kind, record.reason or Reason.TRANSIENT, record.detail or "", now)
        return True

    def charge(self, shard: Shard, actor: tuple[int, int] | None, kind: FailureKind, reason: Reason, detail: str,
               now: float) -> None:
        """A transient failure of this shard: retry with backoff, or fail past ray.max_attempts."""
        self.attempts[shard.id] += 1
        if self.attempts[shard.id] < self.config.ray.max_attempts:
            delay = self._backoff(shard)
            self.on_event(ShardRetry(shard.id, self.attempts[shard.id], kind, f"{reason}: {detail}"[:300], delay))
            self.retry(shard, actor, delay, now)
        else:
            self._final(shard, ShardRecord(shard.id, shard.source, FAILED, reason=reason, detail=detail, failure=kind),
                        charged=True)

    def requeue_uncharged(self, shards: list[Shard], now: float, suspect: bool = False) -> None:
        for shard in shards:
            if suspect:
                self.suspects.add(shard.id)
            self.retry(shard, None, 0.0, now)

    def _final(self, shard: Shard, record: ShardRecord, charged: bool = False) -> None:
        """Commit; `charged`: its last failure is already counted in its attempts. Then the guard."""
        record.attempts = self.attempts[shard.id] + self.unexpected[shard.id] + (0 if charged else 1)
        self.suspects.discard(shard.id)
        self.commit(shard, record)
        self.this_run.add(record)
        check_guard(self.config, self.this_run.as_dict())
