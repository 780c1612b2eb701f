"""What the driver asks of the actor side: the one interface between the two sides.

The driver schedules and knows nothing of audio or of the codec. It is handed an `ActorSide` (pipeline/run.py hands
it pipeline/actor/side.py's; tests hand it scripted ones): the Ray actor class it starts, keeping
`SHARDS_IN_FLIGHT` shards on each and reading back commit records, progress and start-up facts; a probe of the
device an actor would run on; and what of the actor's own methods decides the codes, for the output's identity.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..config import Config
from ..runstate import ShardRecord
from ..sources import Shard

# The driver keeps this many shards on each actor: while one encodes, the next one reads and decodes its first pool,
# so the device does not idle at shard boundaries (start-up decode, Parquet publish). The pool starts each actor
# with one more concurrent call than that, so `progress`, `facts` and `set_threads` answer meanwhile.
SHARDS_IN_FLIGHT = 2


class ShardActor(Protocol):
    """The methods of a started actor, as the driver calls them (each through Ray's `.remote`)."""

    def facts(self) -> dict:
        """Start-up facts (device, batch budget, calibration, ...); its answer says the actor is ready."""

    def set_threads(self, threads: int) -> None:
        """Torch threads for the next encodes: the driver lends an actor the cores of idle ones."""

    def progress(self) -> dict:
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
