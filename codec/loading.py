"""`load_codec`: a hub id, a local `save_pretrained` folder, or a random preset -> `Codec`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

from .batching import BatchPolicy
from .codec import Codec, CodecIdentity
from .presets import build_random_model, preset_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device; use 'auto' or 'cpu'")
    return resolved


def load_codec(
    spec: str,
    device: str = "auto",
    dtype: str = "float32",
    seed: int = 0,
    revision: str | None = None,
    window_s: float = 120.0,
    context_s: float = 10.0,
    policy: BatchPolicy | None = None,
    allow_tf32: bool = False,
    acoustic_chunk_s: float = 20.0,
) -> Codec:
    """Load the tokenizer named by `spec`.

    spec: 'random:tiny' / 'random:full' (random weights, deterministic for `seed`), a local
    folder written by `save_pretrained`, or a hub id (needs the hub or its local cache).
    dtype: 'float32' (exact), or 'bfloat16'/'float16' autocast for the encoders (faster on GPUs,
    codes may differ; the benchmark reports by how much). The quantizer always runs in float32.
    acoustic_chunk_s: batches longer than this run the DAC encoder in chunks with receptive-field
    context (same codes, bounded memory; on CPU 20 s chunks were also ~8% faster than one pass).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    torch_device = resolve_device(device)
    if torch_device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
    identity, _ = codec_identity(spec, seed, revision)
    if spec.startswith("random:"):
        model = build_random_model(spec.split(":", 1)[1], seed)
    else:
        model = HiggsAudioV2TokenizerModel.from_pretrained(spec, revision=revision)
    return Codec(
        model,
        identity,
        torch_device,
        dtype=DTYPES[dtype],
        window_s=window_s,
        context_s=context_s,
        policy=policy,
        acoustic_chunk_s=acoustic_chunk_s,
    )


def codec_identity(spec: str, seed: int = 0, revision: str | None = None):
    """(identity, config) of a codec without building the model: cheap enough for a driver."""
    if spec.startswith("random:"):
        config = preset_config(spec.split(":", 1)[1])
        return CodecIdentity(spec, f"seed={seed}", _config_hash(config), None), config
    local = Path(spec)
    if not local.is_dir() and (spec.startswith((".", "/")) or local.suffix):
        raise FileNotFoundError(f"codec.model {spec!r} looks like a path but no such folder exists")
    config = HiggsAudioV2TokenizerConfig.from_pretrained(spec, revision=revision)
    weights = _weights_hash(local) if local.is_dir() else None
    commit = getattr(config, "_commit_hash", None) or revision
    return CodecIdentity(spec, commit, _config_hash(config), weights), config


def _config_hash(config) -> str:
    config = config.to_dict()
    config.pop("_commit_hash", None)
    config.pop("transformers_version", None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _weights_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()
