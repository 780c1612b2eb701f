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


# Batch shapes on a grid: cuDNN plans every convolution again for each new input shape, and a batch padded to
# its longest clip (to a hop) has a new shape almost every batch. On the grid, a batch's frames are rounded up
# to one of GRID_STEPS_PER_OCTAVE steps per octave (at most 1/8 more), and its clip count is one of GRID_COUNTS.
# The padding masks make the extra padding invisible in the codes.
GRID_STEPS_PER_OCTAVE = 8
GRID_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def grid_frames(frames: int) -> int:
    """`frames` rounded up to the grid: a multiple of 1/8 of its octave's start."""
    step = max(1, 1 << (frames.bit_length() - 1)) // GRID_STEPS_PER_OCTAVE
    return -(-frames // max(1, step)) * max(1, step)


def plan_batches(lengths: list[int], sample_rate: int, policy: BatchPolicy, grid_hop: int | None = None) -> list[list[int]]:
    """Indices of `lengths` grouped into batches within the policy, with the least padded audio.

    Clips sorted by length are cut into consecutive runs (bucketing: similar lengths share a batch);
    where to cut is chosen by dynamic programming over cost = padded audio of each batch + a fixed
    overhead per batch, so a long clip does not drag shorter ones into a mostly padded batch.
    grid_hop: batches on the shape grid, frames of this many samples (batch sizes in GRID_COUNTS; padded
    length `padded_samples`).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    budget = policy.max_batch_seconds * sample_rate
    overhead = BATCH_OVERHEAD_SHARE * budget
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[i]: cost of batching the i longest clips
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end - 1, max(-1, end - 1 - policy.max_clips), -1):
            longest = padded_samples(lengths[order[start]], grid_hop)  # sorted: the run's first clip is its longest
            count = end - start
            if count > 1 and count * longest > budget:
                break
            if grid_hop and count not in GRID_COUNTS:
                continue
            cost = best[start] + count * longest + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches = []
    end = n
    while end > 0:
        batches.append(order[cut[end] : end])
        end = cut[end]
    return batches[::-1]


def padded_samples(samples: int, grid_hop: int | None) -> int:
    """The samples a batch whose longest clip has `samples` runs at: as they are, or on the grid of `grid_hop`."""
    if not grid_hop:
        return samples
    return grid_frames(-(-samples // grid_hop)) * grid_hop
