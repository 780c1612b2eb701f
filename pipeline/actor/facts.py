"""What the driver and a codec actor tell each other: what every actor is built with (`ActorSetup`), its facts once
it is up (`facts()`) and its progress on the shards it holds (`progress()`). Plain dataclasses with no heavy
imports, so that the driver uses them without importing the shard processor (any actor the driver drives answers
with these; see tests/scripted_actor.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ActorSetup:
    """What every codec actor of a run is built with, beside the config and its name: the run's own, not the
    actor's choice (an actor that cannot match the versions or the device refuses to start)."""

    checkpoint: Any  # codec.Checkpoint: the resolved commit every actor loads
    schema: Any  # pyarrow.Schema of the output's data files
    versions: dict  # the run's library versions (identity)
    device: dict | None = None  # the run's recorded device (None: an output written before it was)

    def args(self) -> tuple:
        """The actor constructor's arguments after (config, name)."""
        return self.checkpoint, self.schema, self.versions, self.device


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
