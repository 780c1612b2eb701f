"""The actor pool: how many codec actors and what each reserves, their starts (staggered, backed off after a
transient failure), replacement, and the cores idle actors lend to busy ones. It knows nothing of shards.

A start can fail four ways (`start_cause`):
- permanent: the constructor raised an error that would repeat (a bad checkpoint, other library versions):
  the actor is replaced once, and a second such failure of its place stops the run (`ActorStartFailed`);
- transient: the constructor raised a transient error (the hub's 429 when many actors load at once, a
  connection reset; see `failures.TransientStartError`): started again after a backoff, not counted as above;
- lost: the actor died with no Python error before it was up (killed for host memory while loading, its node
  gone): counted and started again after a backoff;
- wrong device: it came up on another device than the run's recorded one (`failures.WrongDeviceError`): its place
  is given up at once, with the reason in the log.
A place whose actor fails to start transiently or is lost `START_RETRIES` times in a row is given up, and the
run goes on with the others; when every place is given up the run stops (`ActorStartFailed`).
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError

from ..config import Config
from ..telemetry.events import (ActorGivenUp, ActorsStarted, ActorStartFailure, ActorStartRetry, ActorsWaiting,
                      MetricsUnavailable)
from ..failures import TransientStartError, WrongDeviceError
from ..telemetry.metrics import ray_init_options
from .protocol import SHARDS_IN_FLIGHT, ActorFacts, ActorSetup

CPU_ACTOR_MEMORY_GB = 4.5
START_STAGGER_S = 0.25  # between the first starts of consecutive actors: they do not all ask the hub at once
START_RETRIES = 8  # transient or lost starts in a row after which an actor place is given up
PERMANENT_START, TRANSIENT_START, LOST_START, WRONG_DEVICE = "permanent", "transient", "lost", "wrong_device"


@dataclass(frozen=True)
class ActorUp:
    """An actor's facts() answer and when its place started it and heard back (driver clock)."""

    facts: ActorFacts
    created: float
    ready: float


class ActorStartFailed(RuntimeError):
    """Codec actors die in their constructor, and their replacements too: nothing can run."""


def ensure_ray(config: Config, on_event=lambda event: None) -> float:
    """Start or join Ray unless this process has; returns the seconds this call took."""
    began = time.time()
    if not ray.is_initialized():
        metrics, warning = ray_init_options(config.ray)  # a local runtime's metrics export port and interval
        if warning:
            on_event(MetricsUnavailable(warning))
        # address None: RAY_ADDRESS (set by `ray job submit`) if present, else a local runtime. Actors'
        # warnings and errors reach the driver's log.
        ray.init(address=config.ray.address, log_to_driver=True, include_dashboard=False, logging_level="ERROR",
                 **metrics)
    return time.time() - began


def start_cause(error: RayActorError) -> tuple[str, str]:
    """(permanent | transient | lost, message) of an actor that died before it was up."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    if not getattr(error, "actor_init_failed", False):
        return LOST_START, message
    if WrongDeviceError.__name__ in message:
        return WRONG_DEVICE, message
    return (TRANSIENT_START if TransientStartError.__name__ in message else PERMANENT_START), message


def actor_options(config: Config, nodes: list[dict], pending: int | None = None) -> tuple[int, dict]:
    """How many codec actors, and the Ray resources each one reserves (see RayConfig for the defaults).
    ray.actor_resources: only the nodes offering them are sized for, and no more actors than they hold."""
    wanted = config.ray.actor_resources
    offering = [n for n in nodes if all(n.get(name, 0) >= amount for name, amount in wanted.items())]
    count, options = _actor_options(config, offering or nodes, pending)
    if wanted:
        held = sum(min(int(n[name] // amount) for name, amount in wanted.items()) for n in offering)
        count, options["resources"] = min(count, max(1, held)), dict(wanted)
    return count, options


def _actor_options(config: Config, nodes: list[dict], pending: int | None = None) -> tuple[int, dict]:
    """actor_options over the nodes that may hold an actor.

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
        if config.audio.decode_task_cpus:
            share = 1  # decoding runs in tasks, which take the node's other CPUs (or another node's)
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


@dataclass
class Slot:
    """One actor place: its current actor (a new generation after each replacement) and its shards."""

    index: int
    actor: Any = None
    generation: int = 0
    ready_ref: Any = None  # the pending `facts` call; None once the actor is up
    start_at: float = 0.0  # when its next actor is started (staggered first starts, backoff after a failed one)
    created: float = 0.0
    running: dict = field(default_factory=dict)  # task ref -> Shard
    solo: bool = False  # running a suspect shard alone
    failed_starts: int = 0  # permanent start failures in a row
    lost_starts: int = 0  # transient or lost starts in a row
    given_up: bool = False
    consecutive_failures: int = 0
    warned_at: float = 0.0
    node: str = ""  # the node its actor runs on (from its facts)
    threads: int = 0  # torch threads last given to its actor (0: its own)

    @property
    def key(self) -> tuple[int, int]:
        """This place's current actor (a replacement is another)."""
        return self.index, self.generation

    @property
    def ready(self) -> bool:
        return self.actor is not None and self.ready_ref is None

    @property
    def starting(self) -> bool:
        return self.actor is not None and self.ready_ref is not None


class ActorPool:
    def __init__(self, config: Config, actor_class, setup: ActorSetup, on_event, start_failures: list[str]):
        self.config, self.actor_class, self.setup, self.on_event = config, actor_class, setup, on_event
        self.start_failures = start_failures  # messages of every failed start, for the run's summary
        self.slots: list[Slot] = []
        self.options: dict = {}
        self._announced = False  # the "actors" event, sent once every place had its first start
        self.first_facts: dict[str, ActorUp] = {}  # actor name -> facts() of its first generation

    def open(self, pending: int) -> None:
        """Size the pool to the live nodes and `pending` shards; the first starts are staggered."""
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        count, self.options = actor_options(self.config, nodes, pending)
        now = time.time()
        self.slots = [Slot(i, start_at=now + i * START_STAGGER_S) for i in range(min(count, pending))]
        self.start_due(now)

    def start_due(self, now: float) -> None:
        for slot in self.slots:
            if slot.actor is None and not slot.given_up and slot.start_at <= now:
                self._start(slot)
        if not self._announced and all(s.generation or s.given_up for s in self.slots):
            self._announced = True  # once every place had its first start
            actors = [s.actor for s in self.slots if s.actor is not None]
            self.on_event(ActorsStarted(len(self.slots), self.options, actors))

    def next_start_in(self, now: float) -> float | None:
        """Seconds until the next actor start that waits out its stagger or backoff; None when none waits."""
        waits = [s.start_at - now for s in self.slots if s.actor is None and not s.given_up]
        return min(waits) if waits else None

    def _start(self, slot: Slot) -> None:
        name = f"actor-{slot.index}"
        slot.actor = self.actor_class.options(**self.options, max_concurrency=SHARDS_IN_FLIGHT + 1).remote(
            self.config, name, *self.setup.args())
        slot.generation += 1
        slot.ready_ref = slot.actor.facts.remote()
        slot.created = slot.warned_at = time.time()
        slot.running, slot.solo, slot.threads = {}, False, 0

    def replace(self, slot: Slot, delay: float = 0.0) -> None:
        """Kill the slot's actor (the caller has taken its shards back) and start another after `delay`."""
        if slot.actor is not None:
            ray.kill(slot.actor)
        slot.actor, slot.ready_ref, slot.running = None, None, {}
        slot.start_at = time.time() + delay
        if delay <= 0:
            self._start(slot)

    @property
    def starting(self) -> dict:
        """facts() ref -> slot, of actors not up yet."""
        return {s.ready_ref: s for s in self.slots if s.starting}

    def ready(self) -> list[Slot]:
        return [s for s in self.slots if s.ready]

    def on_ready(self, slot: Slot) -> None:
        """The slot's facts() answered: the actor is up, or it died starting (see the module's docstring)."""
        try:
            up = ActorUp(ray.get(slot.ready_ref), slot.created, time.time())
        except RayActorError as error:
            self._start_failed(slot, *start_cause(error))
            return
        slot.node = up.facts.node_id
        self.first_facts.setdefault(f"actor-{slot.index}", up)
        slot.ready_ref, slot.failed_starts, slot.lost_starts = None, 0, 0

    def _start_failed(self, slot: Slot, cause: str, message: str) -> None:
        if cause == WRONG_DEVICE:  # another start would land on the same kind of node: keep the place's resources free
            self.start_failures.append(message)
            self._give_up(slot, cause, message)
            return
        self.start_failures.append(message if cause == PERMANENT_START else f"({cause}, started again) {message}")
        if cause == PERMANENT_START:
            slot.failed_starts += 1
            replacing = slot.failed_starts < 2
            self.on_event(ActorStartFailure(slot.index, message, replacing))
            if not replacing:
                raise ActorStartFailed(message)
            self.replace(slot)
            return
        slot.lost_starts += 1
        if slot.lost_starts >= START_RETRIES:
            self._give_up(slot, cause, message)
            return
        delay = min(300.0, self.config.ray.retry_backoff_s * 2 ** (slot.lost_starts - 1)) * random.uniform(0.75, 1.25)
        self.on_event(ActorStartRetry(slot.index, cause, slot.lost_starts, delay, message))
        self.replace(slot, delay)

    def _give_up(self, slot: Slot, cause: str, message: str) -> None:
        ray.kill(slot.actor)
        slot.actor, slot.ready_ref, slot.given_up = None, None, True
        left = sum(not s.given_up for s in self.slots)
        if cause == WRONG_DEVICE:
            why = (f"codec actor {slot.index} came up on another device than the run's, whose codes would differ "
                   "(pin actors to one GPU model with ray.actor_resources)")
        else:
            why = (f"codec actor {slot.index} did not come up {slot.lost_starts} times in a row "
                   + ("(it died while loading with no Python error: out of host memory? lower ray.num_actors or "
                      "raise ray.memory_per_actor_gb)" if cause == LOST_START else "(transient errors while starting)"))
        self.on_event(ActorGivenUp(slot.index, cause, left, message, why))
        if not left:
            raise ActorStartFailed(f"every codec actor place was given up; the last: {why}. Its last error: {message}")

    def lend_threads(self) -> None:
        """On CPU, spare cores of idle actors to the busy ones on the same node (see threads_to_lend)."""
        if self.options.get("num_gpus"):
            return  # a GPU actor's speed is its device's; its decode threads are set per shard
        ready = self.ready()
        wanted = threads_to_lend([(s.node, self.options["num_cpus"], bool(s.running)) for s in ready])
        for slot, threads in zip(ready, wanted):
            if slot.threads != threads:
                slot.actor.set_threads.remote(threads)
                slot.threads = threads

    def warn_waiting(self, now: float) -> None:
        """Say when actors have waited `ray.pending_actor_warn_s` for resources while the others work."""
        waiting = [s for s in self.slots if s.starting and now - s.warned_at >= self.config.ray.pending_actor_warn_s]
        if not waiting:
            return
        for slot in waiting:
            slot.warned_at = now
        self.on_event(ActorsWaiting(len(waiting), now - min(s.created for s in waiting), self.options,
                                    sum(s.ready for s in self.slots), ray.available_resources()))

    def close(self) -> None:
        for slot in self.slots:
            if slot.actor is not None:
                ray.kill(slot.actor)
