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


# What one extra forward pass costs, as a share of a full batch's padded audio: kernel launches,
# per-batch Python work, a smaller batch's lower device utilisation. It keeps the plan from
# splitting batches merely to save a little padding.
BATCH_OVERHEAD_SHARE = 0.02


def plan_batches(lengths: list[int], sample_rate: int, policy: BatchPolicy) -> list[list[int]]:
    """Indices of `lengths` grouped into batches within the policy, with the least padded audio.

    Clips sorted by length are cut into consecutive runs (bucketing: similar lengths share a batch);
    where to cut is chosen by dynamic programming over cost = padded audio of each batch + a fixed
    overhead per batch, so a long clip does not drag shorter ones into a mostly padded batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    budget = policy.max_batch_seconds * sample_rate
    overhead = BATCH_OVERHEAD_SHARE * budget
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[i]: cost of batching the i longest clips
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end - 1, max(-1, end - 1 - policy.max_clips), -1):
            longest = lengths[order[start]]  # sorted: the first clip of the run is the longest
            count = end - start
            if count > 1 and count * longest > budget:
                break
            cost = best[start] + count * longest + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches = []
    end = n
    while end > 0:
        batches.append(order[cut[end] : end])
        end = cut[end]
    return batches[::-1]
