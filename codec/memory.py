"""Device memory: telling an allocation failure from other errors, and giving its memory back.

An out-of-memory error's traceback holds the frames of the failed forward pass, and with them its
activations: `empty_cache()` called while that traceback is alive (inside the `except` block) frees
nothing. Callers keep only the message, leave the `except` block, then call `release_device_memory`.
"""

from __future__ import annotations

import gc

import torch

# cuBLAS and cuDNN report a failed workspace allocation as a plain RuntimeError, not torch.OutOfMemoryError;
# so does torch's CPU allocator
ALLOCATION_FAILURES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                       "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE", "can't allocate memory")


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
