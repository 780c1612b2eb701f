"""The driver's scheduling loop: shards to codec actors, and what to do when anything fails.

It knows nothing of audio. Each shard's outcome is one of:
- done: committed;
- permanent failure (missing file, corrupt tar, bad column): committed as failed at once;
- transient failure (network, a store's 5xx or throttling, a timeout, its actor lost): retried with
  exponential backoff on another actor, charged one attempt, failed past `ray.max_attempts`;
- unexpected exception (a bug, a sick device): retried once on another actor, then failed with its traceback.
An actor that dies holding two shards cannot say which one killed it: both are requeued uncharged and
each runs again alone on an actor, so a shard that kills an actor it has to itself is the one charged.
An actor that fails `ray.max_consecutive_failures` shards in a row (transient or unexpected) is replaced.
A shard running longer than its time limit (`ray.shard_timeout_s`, counted from when its actor starts
it) has its actor killed and replaced, and is retried as transient. Actors are only given shards once
they are up; replacements wait for resources while the others go on, and the driver says when none
have come for `ray.pending_actor_warn_s`.
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from .actors import SHARDS_IN_FLIGHT, CodecActor
from .config import Config
from .failures import PERMANENT, UNEXPECTED
from .runstate import RunState
from .sources import Shard
from .storage import Storage
from .worker import ShardResult
from .writer import publish_shard_failure

TIMEOUT, ACTOR_LOST = "timeout", "actor_lost"  # transient failures the driver itself observes
CPU_ACTOR_MEMORY_GB = 4.5
TIMEOUT_FACTOR = 4  # auto time limit: this many times a shard's expected time from its byte size


class GuardTripped(RuntimeError):
    pass


class ActorStartFailed(RuntimeError):
    """Codec actors die in their constructor, and their replacements too: nothing can run."""


def start_error(error: RayActorError) -> str | None:
    """The constructor's error and traceback when an actor died starting; None when it died later."""
    if not getattr(error, "actor_init_failed", False):
        return None
    return re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()


def ensure_ray(config: Config) -> float:
    """Start or join Ray unless this process has; returns the seconds this call took."""
    began = time.time()
    if not ray.is_initialized():
        # address None: RAY_ADDRESS (set by `ray job submit`) if present, else a local runtime. Actors'
        # warnings and errors reach the driver's log.
        ray.init(address=config.ray.address, log_to_driver=True, include_dashboard=False, logging_level="ERROR")
    return time.time() - began


def actor_options(config: Config, nodes: list[dict], pending: int | None = None) -> tuple[int, dict]:
    """How many codec actors, and the Ray resources each one reserves (see RayConfig for the defaults).

    nodes: each live node's resources. Sizes are fitted to the nodes, not the cluster total: a
    reservation no single node can hold would leave an actor pending forever. pending: the shards to
    run; on CPU, when they are fewer than the actors the nodes hold, fewer actors with more cores
    each, so the cores that would have idled encode (torch threads follow the CPUs an actor holds)."""
    r = config.ray
    gpu_nodes = [n for n in nodes if int(n.get("GPU", 0)) >= 1] if config.codec.device != "cpu" else []
    if gpu_nodes:
        # all the CPUs beside each GPU on the tightest GPU node, so every GPU gets its actor and decoding gets every
        # core no other actor holds: one GPU needs ~21 decode cores at 10,000x (jobs/bench_decode.py), more than any cap
        share = min(int(n.get("CPU", 1)) // int(n["GPU"]) for n in gpu_nodes)
        options = {"num_gpus": 1, "num_cpus": r.cpus_per_actor or max(1, share)}
        if r.memory_per_actor_gb:
            options["memory"] = int(r.memory_per_actor_gb * 2**30)
        return r.num_actors or sum(int(n["GPU"]) for n in gpu_nodes), options
    biggest = max(int(n.get("CPU", 1)) for n in nodes)
    cpus = min(r.cpus_per_actor or 1, biggest)
    wanted = int((r.memory_per_actor_gb or CPU_ACTOR_MEMORY_GB) * 2**30)
    # a cluster whose nodes are all smaller than one actor's estimate still runs actors rather than none
    memory = min(wanted, max(int(n.get("memory", wanted)) for n in nodes))

    def fits(cores: int) -> int:
        return sum(min(int(n.get("CPU", 0)) // cores, int(n.get("memory", memory)) // memory) for n in nodes)

    count = r.num_actors or max(1, fits(cpus))
    if pending is not None and not r.cpus_per_actor and 0 < pending < count:
        count = pending
        # the most cores per actor at which the nodes still hold one actor per shard
        cpus = max([c for c in range(cpus, biggest + 1) if fits(c) >= pending], default=cpus)
    return count, {"num_gpus": 0, "num_cpus": cpus, "memory": memory}


def threads_to_lend(slots: list[tuple[str, int, bool]]) -> list[int]:
    """Torch threads per CPU actor: (node, cores it holds, has work) -> threads. The cores of a node's idle
    actors go to that node's busy ones (a job's tail, or retries waiting out their backoff); an idle actor
    keeps its own, and takes them back when it gets work (the lenders are told at the same moment)."""
    threads = [cores for _, cores, _ in slots]
    for node in {node for node, _, _ in slots}:
        mine = [i for i, (n, _, _) in enumerate(slots) if n == node]
        busy = [i for i in mine if slots[i][2]]
        cores = sum(slots[i][1] for i in mine)
        for rank, i in enumerate(busy):
            threads[i] = cores // len(busy) + (rank < cores % len(busy))
    return threads


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
            raise GuardTripped(f"stopped: {failed} of {total} {what} failed ({failed / total:.0%} > {key}={fraction}); "
                               f"most common: {top}. {hint}")


@dataclass
class Slot:
    """One actor place: its current actor (a new generation after each replacement) and its shards."""

    index: int
    actor: Any = None
    generation: int = 0
    ready_ref: Any = None  # the pending `describe` call; None once the actor is up
    created: float = 0.0
    running: dict = field(default_factory=dict)  # task ref -> Shard
    solo: bool = False  # running a suspect shard alone
    failed_starts: int = 0
    consecutive_failures: int = 0
    warned_at: float = 0.0
    node: str = ""  # the node its actor runs on (from describe)
    threads: int = 0  # torch threads last given to its actor (0: its own)

    @property
    def ready(self) -> bool:
        return self.actor is not None and self.ready_ref is None


class Scheduler:
    actor_class = CodecActor  # any Ray actor with describe(), progress() and process(shard) -> ShardResult

    def __init__(self, config: Config, state: RunState, storage: Storage, shards: list[Shard], on_event,
                 setup: tuple, start_failures: list[str]):
        self.config, self.state, self.storage, self.on_event = config, state, storage, on_event
        self.setup = setup  # (checkpoint, schema, versions) every actor is built with
        self.start_failures = start_failures
        self.queue = deque(shards)
        self.retries: list[tuple[float, Shard]] = []  # (not before, shard)
        self.attempts: Counter = Counter()  # charged tries that failed (transient), per shard
        self.unexpected: Counter = Counter()
        self.suspects: set[str] = set()  # shards that were on an actor that died: each runs alone next
        self.avoid: dict[str, tuple[int, int]] = {}  # shard -> the (slot, generation) it last failed on
        self.started: dict[str, float] = {}  # shard -> when the driver first saw its actor working on it
        self.refs: dict = {}  # task ref -> (slot, shard)
        self.results: list[ShardResult] = []
        self.bytes_per_second: deque = deque(maxlen=200)  # of recent done shards of known size
        self.slots: list[Slot] = []
        self.options: dict = {}
        self.ray_start_s = 0.0
        self.first_facts: dict[str, dict] = {}  # actor name -> describe() of its first generation
        self._last_result = self._last_poll = time.time()

    # ---- actors ---------------------------------------------------------------------------------
    def _start(self, slot: Slot) -> None:
        slot.actor = self.actor_class.options(**self.options).remote(self.config, f"actor-{slot.index}", *self.setup)
        slot.generation += 1
        slot.ready_ref = slot.actor.describe.remote()
        slot.created = slot.warned_at = time.time()
        slot.running, slot.solo, slot.threads = {}, False, 0

    def _replace(self, slot: Slot) -> None:
        ray.kill(slot.actor)
        for ref in slot.running:
            self.refs.pop(ref, None)
        self._start(slot)

    def _on_ready(self, slot: Slot) -> None:
        try:
            facts = {**ray.get(slot.ready_ref), "created": slot.created, "ready": time.time()}
            slot.node = facts.get("node_id", "")
            self.first_facts.setdefault(f"actor-{slot.index}", facts)
            slot.ready_ref, slot.failed_starts = None, 0
            return
        except RayActorError as error:
            message = start_error(error)
        if message is None:  # died before it was up for another reason (its node went away): start another
            self._replace(slot)
            return
        slot.failed_starts += 1
        self.start_failures.append(message)
        replacing = slot.failed_starts < 2
        self.on_event("actor_start_failed", {"actor": slot.index, "error": message, "replacing": replacing})
        if not replacing:
            raise ActorStartFailed(message)
        self._replace(slot)

    # ---- dispatch ---------------------------------------------------------------------------------
    def _next_for(self, slot: Slot) -> Shard | None:
        now = time.time()
        others_up = any(s.ready for s in self.slots if s is not slot)
        suspect_waiting = False
        for i, (not_before, shard) in enumerate(self.retries):
            if not_before > now:
                continue
            if others_up and self.avoid.get(shard.id) == (slot.index, slot.generation):
                continue  # another actor, where there is one
            if shard.id in self.suspects and slot.running:
                suspect_waiting = True
                continue
            return self.retries.pop(i)[1]
        if suspect_waiting:
            return None  # let busy actors drain: the first one empty takes the suspect alone
        return self.queue.popleft() if self.queue else None

    def _fill(self) -> None:
        # A second shard per actor (decoded while the first encodes) only while more shards wait than there are
        # actors (or there is one actor): a job's last shards go to whichever actor frees first instead of
        # queueing behind another's.
        for depth in range(1, SHARDS_IN_FLIGHT + 1):
            for slot in self.slots:
                while slot.ready and not slot.solo and len(slot.running) < depth:
                    waiting = len(self.queue) + len(self.retries)
                    if depth > 1 and len(self.slots) > 1 and waiting <= len(self.slots):
                        return
                    shard = self._next_for(slot)
                    if shard is None:
                        break
                    if shard.id in self.suspects:
                        slot.solo = True
                    ref = slot.actor.process.remote(shard)
                    slot.running[ref] = shard
                    self.refs[ref] = (slot, shard)

    def _lend_threads(self) -> None:
        """On CPU, spare cores of idle actors to the busy ones on the same node (see threads_to_lend)."""
        if self.options.get("num_gpus"):
            return  # a GPU actor's speed is its device's; its decode threads are set per shard
        ready = [s for s in self.slots if s.ready]
        wanted = threads_to_lend([(s.node, self.options["num_cpus"], bool(s.running)) for s in ready])
        for slot, threads in zip(ready, wanted):
            if slot.threads != threads:
                slot.actor.set_threads.remote(threads)
                slot.threads = threads

    def _retry(self, shard: Shard, slot: Slot | None, delay: float) -> None:
        if slot is not None:
            self.avoid[shard.id] = (slot.index, slot.generation)
        self.started.pop(shard.id, None)
        self.retries.append((time.time() + delay, shard))

    def _backoff(self, shard: Shard) -> float:
        base = self.config.ray.retry_backoff_s * 2 ** (self.attempts[shard.id] - 1)
        return min(300.0, base) * random.uniform(0.75, 1.25)

    # ---- outcomes ---------------------------------------------------------------------------------
    def _finish(self, shard: Shard, result: ShardResult, charged: bool = False) -> None:
        """Commit a shard's outcome; `charged`: its last failure is already counted in its attempts."""
        if result.status != "done":
            reason, _, detail = (result.shard_error or "failed: ").partition(": ")
            result.files = publish_shard_failure(self.storage, shard.id, shard.source, reason,
                                                 result.traceback or detail)
        elif shard.size and result.seconds > 0:
            self.bytes_per_second.append(shard.size / result.seconds)
        result.attempts = self.attempts[shard.id] + self.unexpected[shard.id] + (0 if charged else 1)
        self.suspects.discard(shard.id)
        self.started.pop(shard.id, None)
        self.state.commit(result.as_dict())
        self.results.append(result)
        self.on_event("shard_done", {"result": result, "remaining": len(self.queue) + len(self.retries) + len(self.refs)})
        check_guard(self.config, self.state.totals())

    def _failed_for_good(self, shard: Shard, kind: str, reason: str, detail: str) -> ShardResult:
        return ShardResult(shard.id, shard.source, "failed", shard_error=f"{reason}: {detail}", failure=kind)

    def _charge(self, shard: Shard, slot: Slot | None, kind: str, reason: str, detail: str) -> None:
        """A transient failure of this shard: retry with backoff, or fail past ray.max_attempts."""
        self.attempts[shard.id] += 1
        if self.attempts[shard.id] < self.config.ray.max_attempts:
            delay = self._backoff(shard)
            self.on_event("shard_retry", {"shard": shard.id, "attempt": self.attempts[shard.id], "failure": kind,
                                          "reason": f"{reason}: {detail}"[:300], "delay": delay})
            self._retry(shard, slot, delay)
        else:
            self._finish(shard, self._failed_for_good(shard, kind, reason, detail), charged=True)

    def _settle(self, slot: Slot, shard: Shard, result: ShardResult) -> None:
        if slot.solo and shard.id in self.suspects:
            slot.solo = False
        if result.status == "done":
            slot.consecutive_failures = 0
            self._finish(shard, result)
            return
        kind = result.failure or PERMANENT
        if kind == PERMANENT:
            self._finish(shard, result)
            return
        slot.consecutive_failures += 1
        if kind == UNEXPECTED and self.unexpected[shard.id] == 0:
            self.unexpected[shard.id] += 1
            self.on_event("shard_retry", {"shard": shard.id, "attempt": 1, "failure": kind,
                                          "reason": (result.shard_error or "")[:300], "delay": 0.0})
            self._retry(shard, slot, 0.0)
        elif kind == UNEXPECTED:
            self._finish(shard, result)
        else:
            reason, _, detail = (result.shard_error or "transient: ").partition(": ")
            self._charge(shard, slot, kind, reason, detail)
        if slot.consecutive_failures >= self.config.ray.max_consecutive_failures and slot.actor is not None:
            self.on_event("actor_sick", {"actor": slot.index, "failures": slot.consecutive_failures,
                                         "last": (result.shard_error or "")[:200]})
            self._requeue_uncharged(list(slot.running.values()))
            slot.consecutive_failures = 0
            self._replace(slot)

    def _requeue_uncharged(self, shards: list[Shard], suspect: bool = False) -> None:
        for shard in shards:
            if suspect:
                self.suspects.add(shard.id)
            self._retry(shard, None, 0.0)

    def _actor_lost(self, slot: Slot, error: str, culprit: Shard | None = None, kind: str = ACTOR_LOST) -> None:
        """The slot's actor died or was killed: charge the shard that did it, requeue the others uncharged."""
        lost = list(slot.running.values())
        if culprit is None and len(lost) == 1:
            culprit = lost[0]  # it had the actor to itself
        innocent = [s for s in lost if s is not culprit]
        self.on_event("actor_lost", {"actor": slot.index, "lost": [s.id for s in lost],
                                     "charged": culprit.id if culprit else None, "failure": kind, "error": error[:300]})
        self._replace(slot)
        # without a culprit, each runs again alone: the one that kills its actor then is charged
        self._requeue_uncharged(innocent, suspect=culprit is None)
        if culprit is not None:
            self._charge(culprit, None, kind, kind, error[:200])

    def _on_result(self, ref) -> None:
        slot, shard = self.refs.pop(ref)
        slot.running.pop(ref, None)
        self._last_result = time.time()
        try:
            result: ShardResult = ray.get(ref)
        except RayActorError as error:
            slot.running[ref] = shard  # still counted among what the actor held
            self._actor_lost(slot, str(error))
            return
        except RayTaskError as error:  # the worker's own guard failed: treat as unexpected
            result = ShardResult(shard.id, shard.source, "failed", failure=UNEXPECTED,
                                 shard_error=f"worker_exception: {str(error).splitlines()[0][:200]}",
                                 traceback=str(error)[-2000:])
        self._settle(slot, shard, result)

    # ---- time --------------------------------------------------------------------------------------
    def time_limit(self, shard: Shard) -> float:
        r = self.config.ray
        if r.shard_timeout_s:
            return r.shard_timeout_s
        if shard.size and len(self.bytes_per_second) >= 3:
            return max(r.shard_timeout_min_s, TIMEOUT_FACTOR * shard.size / statistics.median(self.bytes_per_second))
        return r.shard_timeout_min_s

    def _poll(self) -> dict:
        """Each live actor's progress; notes when its shards started; kills the actors of overdue shards."""
        self._last_poll = now = time.time()
        busy = [s for s in self.slots if s.ready and s.running]
        calls = {s.actor.progress.remote(): s for s in busy}
        ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=2.0)
        total = {"audio_seconds": 0.0, "samples": 0}
        for ref in ready:
            slot = calls[ref]
            try:
                progress = ray.get(ref)
            except ray.exceptions.RayError:
                continue  # a dying actor: its shards' own results will say so
            total["audio_seconds"] += progress["audio_seconds"]
            total["samples"] += progress["samples"]
            for shard_id in progress.get("started", {}):
                self.started.setdefault(shard_id, now)
        for slot in busy:
            for shard in list(slot.running.values()):
                began = self.started.get(shard.id)
                if began is not None and now - began > self.time_limit(shard):
                    limit = self.time_limit(shard)
                    self._actor_lost(slot, f"over its time limit of {limit:.0f} s (ray.shard_timeout_s)", shard, TIMEOUT)
                    break
        self._warn_waiting(now)
        return total

    def _warn_waiting(self, now: float) -> None:
        waiting = [s for s in self.slots if not s.ready and now - s.warned_at >= self.config.ray.pending_actor_warn_s]
        if not waiting:
            return
        for slot in waiting:
            slot.warned_at = now
        self.on_event("actors_waiting", {
            "count": len(waiting), "seconds": now - min(s.created for s in waiting), "options": self.options,
            "running": sum(s.ready for s in self.slots), "available": ray.available_resources()})

    def startup(self) -> dict | None:
        """Where the time to the job's first encoded batch went, for the actor that encoded first (seconds), and
        that actor's calibration table. None when no actor encoded (every shard failed, or none ran)."""
        firsts = []
        for r in self.results:
            facts = self.first_facts.get(r.worker)
            if r.first_encode_s is not None and facts and "startup" in facts:
                firsts.append((facts["startup"]["init_at"] + r.first_encode_s, facts))
        if not firsts:
            return None
        first_encode, facts = min(firsts, key=lambda f: f[0])
        up = facts["startup"]
        read_from = max(facts["ready"], up.get("first_shard_at", facts["ready"]))
        return {"ray_start_s": self.ray_start_s,
                "actor_process_s": up["init_at"] - facts["created"],  # worker process and imports
                "checkpoint_load_s": up["load_s"], "calibrate_s": up["calibrate_s"],
                "first_read_s": first_encode - read_from,  # first shard: read and decode its first pool
                "ray_up_to_first_batch_s": first_encode - facts["created"], "first_batch_at": first_encode,
                "calibration": facts.get("calibration") or []}  # that actor's table (see codec.calibrate)

    # ---- the loop --------------------------------------------------------------------------------------
    def run(self) -> list[ShardResult]:
        self.ray_start_s = ensure_ray(self.config)
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        count, self.options = actor_options(self.config, nodes, len(self.queue))
        self.slots = [Slot(i) for i in range(min(count, len(self.queue)))]
        for slot in self.slots:
            self._start(slot)
        self.on_event("actors", {"count": len(self.slots), "options": self.options,
                                 "actors": [s.actor for s in self.slots]})
        r = self.config.ray
        poll_every = min(r.progress_interval_s, 5.0)
        try:
            while self.queue or self.retries or self.refs:
                self._fill()
                self._lend_threads()
                starting = {s.ready_ref: s for s in self.slots if s.ready_ref is not None}
                waitable = list(self.refs) + list(starting)
                now = time.time()
                due = [nb - now for nb, _ in self.retries]
                timeout = max(0.05, min([poll_every - (now - self._last_poll), *due]))
                ready, _ = ray.wait(waitable, num_returns=1, timeout=timeout) if waitable else ([], None)
                if not waitable:
                    time.sleep(timeout)
                self.state.check_lease()
                for ref in ready:
                    if ref in starting:
                        self._on_ready(starting[ref])
                    elif ref in self.refs:
                        self._on_result(ref)
                if time.time() - self._last_poll >= poll_every:
                    progress = self._poll()
                    if time.time() - self._last_result >= r.progress_interval_s:
                        self._last_result = time.time()
                        self.on_event("heartbeat", {"in_flight": len(self.refs), **progress})
        finally:
            for slot in self.slots:
                if slot.actor is not None:
                    ray.kill(slot.actor)
        return self.results
