"""The driver side of a run, one concern per module: `pool` (codec actors: sizing, starts, replacement, core
lending), `policy` (what a shard's outcome means, retries, the guard), `deadlines` (time limits) and
`scheduler` (the loop that hands shards to actors)."""

from .policy import GuardTripped, check_guard
from .protocol import ActorSetup
from .pool import ActorStartFailed, actor_options, ensure_ray, threads_to_lend
from .scheduler import Scheduler

__all__ = ["ActorSetup", "ActorStartFailed", "GuardTripped", "Scheduler", "actor_options", "check_guard", "ensure_ray",
           "threads_to_lend"]
