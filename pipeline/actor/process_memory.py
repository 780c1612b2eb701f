"""The actor process's memory: its resident size (recorded per shard) and the CUDA allocator's setting.

Process facts, not the tokenizer's: a shard's record reports the actor's RSS after it, and the allocator is
configured once per actor process, before the tokenizer's first CUDA allocation.
"""

from __future__ import annotations

import os

ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
# expandable segments let the caching allocator grow a segment instead of failing on a fragmented heap
# when batch shapes vary (every batch of length-bucketed audio has another shape)
EXPANDABLE_SEGMENTS = "expandable_segments:True"


def prefer_expandable_segments(environ=os.environ) -> str:
    """Set the CUDA allocator to expandable segments unless the user configured it; before CUDA starts.
    Returns the setting in force."""
    return environ.setdefault(ALLOC_CONF, EXPANDABLE_SEGMENTS)


def resident_mb() -> float:
    """This process's resident memory now (Linux /proc; 0 where it is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0
