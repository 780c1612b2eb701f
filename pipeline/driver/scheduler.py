"""The driver's loop: shards to codec actors as they free up, outcomes to the failure policy, overdue shards to
their deadlines. What a failure means is `policy`'s, actors are `pool`'s, time limits are `deadlines`'.

An actor that fails `ray.max_consecutive_failures` shards in a row (transient or unexpected) is replaced. A
shard running past its time limit has its actor killed and replaced, and is retried as transient. Actors are
only given shards once they are up; replacements wait for resources while the others go on, and the driver
says when none have come for `ray.pending_actor_warn_s`.
"""

from __future__ import annotations

import time
from collections import deque

import ray
from ray.exceptions import RayActorError, RayTaskError

from ..config import Config
from ..telemetry.events import ActorLost, ActorSick, Heartbeat, ShardDone
from ..failures import UNEXPECTED, FailureKind, Reason
from ..telemetry.logs import append_shard_log
from ..runstate import DONE, FAILED, RunState, ShardRecord
from ..runstate.retry import WriteRetry
from ..sources import Shard
from ..storage import Storage
from ..writer import publish_shard_failure
from .deadlines import Deadlines
from .policy import FailurePolicy
from .pool import ActorPool, Slot, ensure_ray
from .protocol import SHARDS_IN_FLIGHT, ActorClass

TIMEOUT, ACTOR_LOST = FailureKind.TIMEOUT, FailureKind.ACTOR_LOST  # transient failures the driver itself observes


class Scheduler:
    def __init__(self, config: Config, state: RunState, storage: Storage, shards: list[Shard], on_event,
                 setup: ActorSetup, start_failures: list[str], actor_class: ActorClass):
        self.config, self.state, self.storage, self.on_event = config, state, storage, on_event
        self.actor_class = actor_class  # what processes the shards, through driver/protocol.py's interface
        self.log_storage = Storage(config.output.dir)  # a shard log that cannot be written never stops the run
        self.setup = setup
        self.start_failures = start_failures
        self.queue = deque(shards)
        self.policy = FailurePolicy(config, on_event, self._commit)
        self.deadlines = Deadlines(config.ray)
        self.pool: ActorPool | None = None
        self.refs: dict = {}  # task ref -> (slot, shard)
        self.results: list[ShardRecord] = []
        self.ray_start_s = 0.0
        self._last_result = self._last_poll = time.time()

    # ---- dispatch ---------------------------------------------------------------------------------
    def _next_for(self, slot: Slot, now: float) -> Shard | None:
        others_up = any(s.ready for s in self.pool.slots if s is not slot)
        shard, hold = self.policy.take(now, slot.key, bool(slot.running), others_up)
        if shard is not None or hold:
            return shard  # hold: busy actors drain, so the first one empty takes a suspect alone
        return self.queue.popleft() if self.queue else None

    def _fill(self) -> None:
        # A second shard per actor (decoded while the first encodes) only while more shards wait than there are
        # actors (or there is one actor): a job's last shards go to whichever actor frees first instead of
        # queueing behind another's.
        now = time.time()
        slots = self.pool.slots
        for depth in range(1, SHARDS_IN_FLIGHT + 1):
            for slot in slots:
                while slot.ready and not slot.solo and len(slot.running) < depth:
                    if depth > 1 and len(slots) > 1 and len(self.queue) + len(self.policy.retries) <= len(slots):
                        return
                    shard = self._next_for(slot, now)
                    if shard is None:
                        break
                    if shard.id in self.policy.suspects:
                        slot.solo = True
                    ref = slot.actor.process.remote(shard)
                    slot.running[ref] = shard
                    self.refs[ref] = (slot, shard)
                    self.deadlines.dispatch(shard.id, now)

    # ---- outcomes ---------------------------------------------------------------------------------
    def _commit(self, shard: Shard, record: ShardRecord) -> None:
        """Write a shard's final outcome: a failed shard's error file, then its commit record."""
        if record.status != DONE:
            record.files = publish_shard_failure(self.storage, shard.id, shard.source, record.reason or Reason.FAILED,
                                                 record.traceback or record.detail or "")
            append_shard_log(self.log_storage, shard.id, f"failed for good after {record.attempts} attempt(s) "
                             f"({record.failure}): {record.error}", WriteRetry.of(self.config.output))
        self.deadlines.finish(shard, record)
        self.state.commit(record)
        self.results.append(record)
        self.on_event(ShardDone(record, shard.size, len(self.refs),
                                len(self.queue) + len(self.policy.retries) + len(self.refs)))

    def _take_back(self, slot: Slot) -> list[Shard]:
        """The shards the slot's actor held, no longer awaited."""
        for ref in slot.running:
            self.refs.pop(ref, None)
        shards = list(slot.running.values())
        for shard in shards:
            self.deadlines.finish(shard, None)
        slot.running = {}
        return shards

    def _settle(self, slot: Slot, shard: Shard, record: ShardRecord) -> None:
        if slot.solo and shard.id in self.policy.suspects:
            slot.solo = False
        if record.status != DONE:
            self.deadlines.finish(shard, None)
        failed = self.policy.settle(shard, record, slot.key, time.time())
        slot.consecutive_failures = slot.consecutive_failures + 1 if failed else 0
        if slot.consecutive_failures >= self.config.ray.max_consecutive_failures and slot.actor is not None:
            self.on_event(ActorSick(slot.index, slot.consecutive_failures, record.error[:200]))
            self.policy.requeue_uncharged(self._take_back(slot), time.time())
            slot.consecutive_failures = 0
            self.pool.replace(slot)

    def _actor_lost(self, slot: Slot, error: str, culprit: Shard | None = None, kind: FailureKind = ACTOR_LOST) -> None:
        """The slot's actor died or was killed: charge the shard that did it, requeue the others uncharged."""
        lost = self._take_back(slot)
        if culprit is None and len(lost) == 1:
            culprit = lost[0]  # it had the actor to itself
        innocent = [s for s in lost if s is not culprit]
        self.on_event(ActorLost(slot.index, [s.id for s in lost], culprit.id if culprit else None, kind, error[:300]))
        self.pool.replace(slot)
        now = time.time()
        # without a culprit, each runs again alone: the one that kills its actor then is charged
        self.policy.requeue_uncharged(innocent, now, suspect=culprit is None)
        if culprit is not None:
            self.policy.charge(culprit, None, kind, Reason(kind), error[:200], now)  # timeout | actor_lost

    def _on_result(self, ref) -> None:
        slot, shard = self.refs.pop(ref)
        slot.running.pop(ref, None)
        self._last_result = time.time()
        try:
            record: ShardRecord = ray.get(ref)
        except RayActorError as error:
            slot.running[ref] = shard  # still counted among what the actor held
            self._actor_lost(slot, str(error))
            return
        except RayTaskError as error:  # the shard processor's own guard failed: treat as unexpected
            record = ShardRecord(shard.id, shard.source, FAILED, failure=UNEXPECTED, reason=Reason.WORKER_EXCEPTION,
                                 detail=str(error).splitlines()[0][:200], traceback=str(error)[-2000:])
        self._settle(slot, shard, record)

    # ---- time --------------------------------------------------------------------------------------
    def _poll(self) -> dict:
        """Each live actor's progress (for the heartbeat and the deadlines); kills the actors of overdue shards,
        whether they answered or not."""
        self._last_poll = now = time.time()
        busy = [s for s in self.pool.slots if s.ready and s.running]
        calls = {s.actor.progress.remote(): s for s in busy}
        ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=2.0)
        total = {"audio_seconds": 0.0, "samples": 0}
        for ref in ready:
            try:
                progress: ActorProgress = ray.get(ref)
            except ray.exceptions.RayError:
                continue  # a dying actor: its shards' own results will say so
            total["audio_seconds"] += progress.audio_seconds
            total["samples"] += progress.samples
            self.deadlines.progress(progress.audio)
        now = time.time()
        for slot in busy:
            for shard in list(slot.running.values()):
                limit = self.deadlines.overdue(shard, now)
                if limit is not None:
                    self._actor_lost(slot, f"over its time limit of {limit:.0f} s (ray.shard_timeout_s)", shard, TIMEOUT)
                    break
        self.pool.warn_waiting(now)
        return total

    def startup(self) -> dict | None:
        """Where the time to the job's first encoded batch went, for the actor that encoded first (seconds), and
        that actor's calibration table. None when no actor encoded (every shard failed, or none ran)."""
        firsts = []
        for r in self.results:
            up = self.pool.first_facts.get(r.worker) if self.pool else None
            if r.first_encode_s is not None and up is not None and up.facts.startup is not None:
                firsts.append((up.facts.startup.init_at + r.first_encode_s, up))
        if not firsts:
            return None
        first_encode, up = min(firsts, key=lambda f: f[0])
        start = up.facts.startup
        read_from = max(up.ready, start.first_shard_at or up.ready)
        return {"ray_start_s": self.ray_start_s,
                "actor_process_s": start.init_at - up.created,  # worker process and imports
                "checkpoint_load_s": start.load_s, "calibrate_s": start.calibrate_s,
                "first_read_s": first_encode - read_from,  # first shard: read and decode its first pool
                "ray_up_to_first_batch_s": first_encode - up.created, "first_batch_at": first_encode,
                "calibration": up.facts.calibration or []}  # that actor's table (see codec.calibrate)

    # ---- the loop --------------------------------------------------------------------------------------
    def _wait_for(self, now: float, poll_every: float) -> float:
        """Seconds to wait for an outcome: until the next poll, the next retry due or the next actor start."""
        soonest = [poll_every - (now - self._last_poll), self.policy.retries.next_due_in(now),
                   self.pool.next_start_in(now)]
        return max(0.05, min(s for s in soonest if s is not None))

    def run(self) -> list[ShardRecord]:
        self.ray_start_s = ensure_ray(self.config)
        self.pool = ActorPool(self.config, self.actor_class, self.setup, self.on_event, self.start_failures)
        r = self.config.ray
        poll_every = min(r.progress_interval_s, 5.0)
        try:
            self.pool.open(len(self.queue))
            while self.queue or self.policy.retries or self.refs:
                self.pool.start_due(time.time())
                self._fill()
                self.pool.lend_threads()
                starting = self.pool.starting
                waitable = list(self.refs) + list(starting)
                timeout = self._wait_for(time.time(), poll_every)
                ready, _ = ray.wait(waitable, num_returns=1, timeout=timeout) if waitable else ([], None)
                if not waitable:
                    time.sleep(timeout)
                self.state.check_lease()
                for ref in ready:
                    if ref in starting:
                        self.pool.on_ready(starting[ref])
                    elif ref in self.refs:
                        self._on_result(ref)
                if time.time() - self._last_poll >= poll_every:
                    progress = self._poll()
                    if time.time() - self._last_result >= r.progress_interval_s:
                        self._last_result = time.time()
                        self.on_event(Heartbeat(len(self.refs), progress["audio_seconds"], progress["samples"]))
        finally:
            self.pool.close()
        return self.results
