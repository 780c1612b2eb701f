"""What a run tells its caller as it goes: one frozen dataclass per kind of event, handed to `on_event(event)`.

The run state (lease, store retries, identity) and the driver (actors, shards, heartbeats) emit them; the CLI's
progress lines (`pipeline.run.Progress`) and the run's metrics (`pipeline.telemetry.metrics.RunMetrics`) pick a handler by the
event's type. Here, below both, so that neither side imports the other for them. Library code never prints: an
event is how it says something.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..failures import FailureKind


class Event:
    """Any event (the type `on_event` takes)."""


# ---- the run state ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreRetry(Event):
    """A write to output.dir failed and is tried again (output.write_attempts)."""

    what: str
    attempt: int
    delay: float
    error: str


@dataclass(frozen=True)
class LeaseTakenOver(Event):
    note: str  # whose lease, and why it could be taken


@dataclass(frozen=True)
class CorruptCommits(Event):
    corrupt: dict  # shard id -> why its commit record is not trusted (the shard runs again)


@dataclass(frozen=True)
class VersionsAccepted(Event):
    """output.accept_new_versions: the output goes on under these library version changes."""

    changes: list


@dataclass(frozen=True)
class OutputCleared(Event):
    output: str  # output.overwrite removed its run state, data and errors


# ---- the driver ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CodecResolved(Event):
    codec: Any  # driver.job.CodecFacts


@dataclass(frozen=True)
class RunStarted(Event):
    shards: int
    pending: int
    skipped: int  # already done


@dataclass(frozen=True)
class MetricsUnavailable(Event):
    why: str


@dataclass(frozen=True)
class ActorsStarted(Event):
    """Every actor place had its first start."""

    count: int
    options: dict  # the Ray resources each reserves
    actors: list  # their handles


@dataclass(frozen=True)
class ActorLost(Event):
    """An actor died, or was killed past a shard's time limit, and was replaced."""

    actor: int
    lost: list  # ids of the shards it held
    charged: str | None  # the shard charged with the failure (None: each runs again alone, uncharged)
    failure: FailureKind  # TIMEOUT or ACTOR_LOST
    error: str


@dataclass(frozen=True)
class ActorSick(Event):
    """An actor failed ray.max_consecutive_failures shards in a row and is replaced."""

    actor: int
    failures: int
    last: str


@dataclass(frozen=True)
class ActorsWaiting(Event):
    """Actors have waited ray.pending_actor_warn_s for resources while the others work."""

    count: int
    seconds: float
    options: dict
    running: int
    available: dict


@dataclass(frozen=True)
class ActorStartFailure(Event):
    """An actor's constructor raised an error that would repeat (driver.pool's permanent start)."""

    actor: int
    error: str
    replacing: bool  # False: its replacement failed the same way, the run stops


@dataclass(frozen=True)
class ActorStartRetry(Event):
    """An actor failed to start for a transient cause, or died loading: started again after `delay`."""

    actor: int
    cause: str  # driver.pool.TRANSIENT_START | LOST_START
    count: int
    delay: float
    error: str


@dataclass(frozen=True)
class ActorGivenUp(Event):
    actor: int
    cause: str
    left: int  # actor places that go on
    error: str
    why: str


@dataclass(frozen=True)
class ShardRetry(Event):
    shard: str
    attempt: int
    failure: FailureKind
    reason: str  # reason and detail, for people
    delay: float


@dataclass(frozen=True)
class ShardDone(Event):
    """A shard's final outcome was committed (done or failed)."""

    result: Any  # runstate.ShardRecord
    shard_size: int = 0  # bytes, as listed
    in_flight: int = 0
    remaining: int = 0


@dataclass(frozen=True)
class Heartbeat(Event):
    """No shard finished for ray.progress_interval_s: what the actors have done of the shards they hold."""

    in_flight: int
    audio_seconds: float
    samples: int
