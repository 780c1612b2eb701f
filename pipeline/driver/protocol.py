"""What the driver asks of the actor side, and what the two tell each other: the one interface between them.

The driver schedules and knows nothing of audio or of the codec. It is handed an `ActorSide` (pipeline/run.py hands
it pipeline/actor/side.py's; tests hand it scripted ones): the Ray actor class it starts, keeping
`SHARDS_IN_FLIGHT` shards on each and reading back commit records, progress and start-up facts; a probe of the
device an actor would run on; and what of the actor's own methods decides the codes, for the output's identity.
What they exchange are plain dataclasses here: what every actor is built with (`ActorSetup`), its facts once it is
up (`ActorFacts`) and its progress on the shards it holds (`ActorProgress`). The actor side implements this module;
it sits below both, so neither imports the other (tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import Config
from ..runstate import ShardRecord
from ..sources import Shard

# The driver keeps this many shards on each actor: while one encodes, the next one reads and decodes its first pool,
# so the device does not idle at shard boundaries (start-up decode, Parquet publish). The pool starts each actor
# with one more concurrent call than that, so `progress`, `facts` and `set_threads` answer meanwhile.
SHARDS_IN_FLIGHT = 2


@dataclass(frozen=True)
class ActorSetup:
    """What every codec actor of a run is built with, beside the config and its name: the run's own, not the
    actor's choice (an actor that cannot match the versions or the device refuses to start)."""

    resolved: Any  # tokenizer.Resolved: the pinned checkpoint every actor loads
    schema: Any  # pyarrow.Schema of the output's data files
    versions: dict  # the run's library versions (identity)
    device: dict | None = None  # the run's recorded device (None: an output written before it was)

    def args(self) -> tuple:
        """The actor constructor's arguments after (config, name)."""
        return self.resolved, self.schema, self.versions, self.device


@dataclass
class Startup:
    """Where an actor's start-up time went: wall-clock marks (lined up with the driver's clock) and seconds."""

    init_at: float  # the processor's constructor began (its process and imports are before it)
    load_s: float = 0.0  # checkpoint load
    calibrate_s: float = 0.0  # batch policy calibration (0 when none)
    first_shard_at: float | None = None  # its first shard began


@dataclass(frozen=True)
class ActorFacts:
    """An actor's `facts()`: where it runs, what it loaded and how it batches. Its answer also says it is up."""

    pid: int
    node_id: str
    host: str = ""
    identity: dict = field(default_factory=dict)  # the codec's identity
    device: str = ""
    policy: dict = field(default_factory=dict)  # the codec's batch policy
    batch_budget: dict = field(default_factory=dict)
    cuda_alloc_conf: str | None = None
    calibration: list = field(default_factory=list)  # the batch policies measured at start-up (codec.calibrate)
    decode_threads: int = 0
    decode_process_pids: list = field(default_factory=list)  # audio.decode_processes: its processes (none: threads)
    torch_threads: int = 0
    startup: Startup | None = None  # None: an actor that does not measure its start


@dataclass(frozen=True)
class ActorProgress:
    """An actor's `progress()`: the shards it holds now, as far as they got (the heartbeat and the deadlines)."""

    shards: int = 0
    samples: int = 0  # encoded so far, over its shards
    audio_seconds: float = 0.0
    started: dict = field(default_factory=dict)  # shard id -> when it began (wall clock)
    audio: dict = field(default_factory=dict)  # shard id -> audio seconds encoded so far (the driver's deadlines)
    batch_budget: dict = field(default_factory=dict)


class ShardActor(Protocol):
    """The methods of a started actor, as the driver calls them (each through Ray's `.remote`)."""

    def facts(self) -> ActorFacts:
        """Start-up facts (device, batch budget, calibration, ...); its answer says the actor is ready."""

    def set_threads(self, threads: int) -> None:
        """Torch threads for the next encodes: the driver lends an actor the cores of idle ones."""

    def progress(self) -> ActorProgress:
        """The shards under way: for deadlines and the live progress line."""

    def process(self, shard: Shard) -> ShardRecord:
        """Read, decode, encode and write one shard; its commit record (done, or failed with a reason)."""


class ActorClass(Protocol):
    """A Ray actor class of `ShardActor`s: `options(...).remote(config, name, *setup)` starts one."""

    def options(self, **options: Any) -> ActorClass: ...

    def remote(self, config: Config, name: str, *setup: Any) -> ShardActor: ...


class ActorSide(Protocol):
    """The actor side as the driver sees it."""

    actor_class: ActorClass

    def probe_device(self, config: Config, options: dict) -> dict:
        """The device facts where an actor started with the Ray `options` would run (a task holding them)."""

    def identity(self, config: Config) -> dict:
        """What of the actor's own methods decides the codes beside the codec: {"decode": ..., "audio": ...}."""
