"""Higgs Audio V2 tokenizer: loading and padding-invariant batched encoding."""

from .batching import BatchPolicy, default_policy, plan_batches
from .calibration import calibrate
from .codec import Codec, CodecIdentity, codebooks_for_bandwidth, reference_encode
from .conventions import AUTHORS, CONVENTIONS, MODEL_CARD
from .checkpoint import Checkpoint, CheckpointError, resolve_checkpoint
from .loading import load_codec
from .validation import CodecInputError
from .waves import FileWave

__all__ = [
    "AUTHORS",
    "CONVENTIONS",
    "MODEL_CARD",
    "BatchPolicy",
    "calibrate",
    "codebooks_for_bandwidth",
    "Checkpoint",
    "CheckpointError",
    "Codec",
    "CodecIdentity",
    "CodecInputError",
    "default_policy",
    "FileWave",
    "load_codec",
    "plan_batches",
    "reference_encode",
    "resolve_checkpoint",
]
