"""Higgs Audio V2 tokenizer: loading and padding-invariant batched encoding."""

from .batching import BatchPolicy, default_policy, plan_batches
from .calibration import calibrate
from .codec import Codec, CodecIdentity, codebooks_for_bandwidth, reference_encode
from .loading import codec_identity, load_codec
from .validation import CodecInputError

__all__ = [
    "BatchPolicy",
    "calibrate",
    "codebooks_for_bandwidth",
    "Codec",
    "CodecIdentity",
    "CodecInputError",
    "default_policy",
    "codec_identity",
    "load_codec",
    "plan_batches",
    "reference_encode",
]
