"""Length bucketing: group clips into batches under a padded-audio budget."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    """How many clips go into one forward pass.

    max_batch_seconds bounds clips x longest clip (the padded audio the model sees, so memory);
    max_clips bounds the batch size. A clip longer than the budget still gets a batch of its own.
    """

    max_batch_seconds: float
    max_clips: int

    def __post_init__(self):
        if self.max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be > 0, got {self.max_batch_seconds}")
        if self.max_clips < 1:
            raise ValueError(f"max_clips must be >= 1, got {self.max_clips}")


# On CPU a batch is slower than the same clips one by one (measured: jobs/bench_codec.py), so
# CPU encodes clip by clip and batching is a GPU matter.
CPU_POLICY = BatchPolicy(max_batch_seconds=60.0, max_clips=1)
GPU_POLICY = BatchPolicy(max_batch_seconds=480.0, max_clips=64)


def default_policy(device_type: str) -> BatchPolicy:
    return CPU_POLICY if device_type == "cpu" else GPU_POLICY


def plan_batches(lengths: list[int], sample_rate: int, policy: BatchPolicy) -> list[list[int]]:
    """Indices of `lengths` grouped longest first, each group within the policy.

    Sorting by length keeps clips of similar length together, so little compute goes to padding.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    budget = policy.max_batch_seconds * sample_rate
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) + 1 > policy.max_clips or (len(current) + 1) * longest > budget):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
