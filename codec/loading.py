"""`load_codec`: a hub id, a local folder (transformers or original format), or a random preset -> `Codec`."""

from __future__ import annotations

import torch

from .batching import BatchPolicy
from .checkpoint import Checkpoint, load_model, resolve_checkpoint
from .codec import Codec
from .conventions import MODEL_CARD

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device; use 'auto' or 'cpu'")
    return resolved


def load_codec(
    spec: str | Checkpoint,
    device: str = "auto",
    dtype: str = "float32",
    seed: int = 0,
    revision: str | None = None,
    window_s: float = 120.0,
    context_s: float = 10.0,
    policy: BatchPolicy | None = None,
    allow_tf32: bool = False,
    acoustic_chunk_s: float = 20.0,
    cache_dir: str | None = None,
    convention: str = MODEL_CARD,
) -> Codec:
    """Load the tokenizer named by `spec`.

    spec: 'random:tiny' / 'random:full' (random weights, deterministic for `seed`), a local folder or a
    hub id holding either format (see `checkpoint`), or a `Checkpoint` already resolved (by the driver:
    every actor then loads the same commit). cache_dir: where an original-format checkpoint is
    converted once per node (default $AUDIOTOK_CACHE or ~/.cache/audiotok).
    dtype: 'float32' (exact), or 'bfloat16'/'float16' autocast for the encoders (faster on GPUs,
    codes may differ; the benchmark reports by how much). The quantizer always runs in float32.
    acoustic_chunk_s: batches longer than this run the DAC encoder in chunks with receptive-field
    context (same codes, bounded activation memory).
    convention: which codes a clip has (codec.conventions): 'model_card' (zero-padded to whole hops,
    `model.encode` alone) or 'authors' (what boson-ai's own `HiggsAudioTokenizer.encode` returns).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    torch_device = resolve_device(device)
    checkpoint = spec if isinstance(spec, Checkpoint) else resolve_checkpoint(spec, revision, seed)[0]
    return Codec(
        load_model(checkpoint, cache_dir),
        checkpoint.identity(),
        torch_device,
        dtype=DTYPES[dtype],
        window_s=window_s,
        context_s=context_s,
        policy=policy,
        acoustic_chunk_s=acoustic_chunk_s,
        convention=convention,
        allow_tf32=allow_tf32,
    )
