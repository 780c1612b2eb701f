"""Higgs Audio V2 tokenizer: loading and padding-invariant batched encoding.

Names are imported from their modules on first use (PEP 562), so a process that only decodes audio (a decode
task, pipeline/actor/decode_tasks.py, reading `FileWave`) does not import torch and transformers to start.
"""

from importlib import import_module

_WHERE = {
    "BatchPolicy": "batching", "default_policy": "batching", "plan_batches": "batching",
    "calibrate": "calibration",
    "Codec": "codec", "CodecIdentity": "codec", "codebooks_for_bandwidth": "codec", "reference_encode": "codec",
    "AUTHORS": "conventions", "CONVENTIONS": "conventions", "MODEL_CARD": "conventions",
    "Checkpoint": "checkpoint", "CheckpointError": "checkpoint", "resolve_checkpoint": "checkpoint",
    "load_codec": "loading", "resolve_device": "loading",
    "is_out_of_memory": "memory", "release_device_memory": "memory",
    "CodecInputError": "validation",
    "FileWave": "waves",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'codec' has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value
