"""An actor's batch budget under memory pressure: halved on out-of-memory and kept, grown back slowly.

A budget that ran out of memory once will again on the next pool of the same shapes, so it is lowered
for the actor's life, not for one pool. Growing back is allowed after many clean pools (the memory
another process on the device held may be gone), one doubling at a time up to where it started; every
halving doubles the clean pools the next growth waits for, so a budget that keeps failing stops trying.
"""

from __future__ import annotations

from ..tokenizer import BatchPolicy

# clean pools (of ~8 batches each) before a lowered budget doubles once
GROW_AFTER_POOLS = 200


class BatchBudget:
    def __init__(self, initial: BatchPolicy, grow_after: int = GROW_AFTER_POOLS):
        self.initial = initial
        self.policy = initial
        self.grow_after = grow_after
        self.halvings = 0
        self.clean_pools = 0  # since the last change

    def halve(self) -> bool:
        """Lower the budget after an out-of-memory; False when it is one clip already (nothing to halve)."""
        if self.policy.max_clips == 1:
            return False
        self.policy = BatchPolicy(self.policy.max_batch_seconds / 2, max(1, self.policy.max_clips // 2))
        self.halvings += 1
        self.clean_pools = 0
        return True

    def pool_done(self) -> bool:
        """A pool encoded without running out of memory; True when the budget grew."""
        self.clean_pools += 1
        if self.policy == self.initial or self.clean_pools < self.grow_after * 2 ** self.halvings:
            return False
        self.policy = BatchPolicy(min(self.initial.max_batch_seconds, 2 * self.policy.max_batch_seconds),
                                  min(self.initial.max_clips, 2 * self.policy.max_clips))
        self.clean_pools = 0
        return True

    def as_dict(self) -> dict:
        return {"max_batch_seconds": self.policy.max_batch_seconds, "max_clips": self.policy.max_clips,
                "initial": self.initial.__dict__, "halvings": self.halvings}
