"""Device memory: telling an allocation failure from other errors, and giving its memory back.

An out-of-memory error's traceback holds the frames of the failed forward pass, and with them its
activations: `empty_cache()` called while that traceback is alive (inside the `except` block) frees
nothing. Callers keep only the message, leave the `except` block, then call `release_device_memory`.
"""

from __future__ import annotations

import gc
import os

import torch

# cuBLAS and cuDNN report a failed workspace allocation as a plain RuntimeError, not torch.OutOfMemoryError;
# so does torch's CPU allocator
ALLOCATION_FAILURES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                       "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE", "can't allocate memory")

ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
# expandable segments let the caching allocator grow a segment instead of failing on a fragmented heap
# when batch shapes vary (every batch of length-bucketed audio has another shape)
EXPANDABLE_SEGMENTS = "expandable_segments:True"


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in ALLOCATION_FAILURES)


def release_device_memory(device: torch.device) -> None:
    """Collect what a failed pass left (its traceback's frames form cycles) and hand cached blocks back.
    Call it outside the `except` block that caught the failure."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def prefer_expandable_segments(environ=os.environ) -> str:
    """Set the CUDA allocator to expandable segments unless the user configured it; before CUDA starts.
    Returns the setting in force."""
    return environ.setdefault(ALLOC_CONF, EXPANDABLE_SEGMENTS)
