"""Random-weight presets of the Higgs Audio V2 tokenizer, for tests, demos and benchmarks.

Codes from these models are meaningless as audio tokens; they exist so that the whole
stack can run with no hub access. Two things make them useful for testing:
- codebooks are drawn from the statistics of real forward passes, so codes use the
  whole codebook (transformers initialises codebooks to zeros: every code would be 0);
- the acoustic path is rescaled to the magnitude of the semantic path, so a broken
  acoustic path changes the codes instead of hiding ~500x below the semantic one.
"""

from __future__ import annotations

import torch
from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

from .original_format import RELEASED_ACOUSTIC, RELEASED_BANDWIDTHS, released_config

# hop 960 = 8*5*4*2*3 at 24 kHz -> 25 frames/s; HuBERT's 320x stride at 16 kHz gives
# 50 frames/s, which the tokenizer halves, so the semantic path lines up with the acoustic one.
_TINY_ACOUSTIC = dict(RELEASED_ACOUSTIC, encoder_hidden_size=4, decoder_hidden_size=64, hidden_size=16)
_TINY_SEMANTIC = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=[32] * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)

PRESETS = {
    "tiny": dict(acoustic_model_config=_TINY_ACOUSTIC, semantic_model_config=_TINY_SEMANTIC, codebook_dim=8),
}


def preset_config(name: str) -> HiggsAudioV2TokenizerConfig:
    """'full': the released checkpoint's architecture; 'tiny': the same layout, a few channels wide."""
    if name == "full":
        return released_config()
    if name not in PRESETS:
        raise ValueError(f"unknown random preset {name!r}; choose one of {sorted(PRESETS) + ['full']} (spec 'random:NAME')")
    return HiggsAudioV2TokenizerConfig(target_bandwidths=list(RELEASED_BANDWIDTHS), **PRESETS[name])


@torch.no_grad()
def build_random_model(name: str, seed: int) -> HiggsAudioV2TokenizerModel:
    config = preset_config(name)
    torch.manual_seed(seed)
    model = HiggsAudioV2TokenizerModel(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    probe = 0.1 * torch.randn(2, 1, 4 * config.hop_length * config.frame_rate, generator=generator)
    _balance_paths(model, probe)
    _init_codebooks(model, probe, generator)
    return model


def _semantic_and_acoustic(model, audio):
    semantic = model.encoder_semantic(model._extract_semantic_features(audio).transpose(1, 2))
    return semantic, model.acoustic_encoder(audio)


def _balance_paths(model, probe) -> None:
    semantic, acoustic = _semantic_and_acoustic(model, probe)
    scale = (semantic.std() / acoustic.std()).item()
    model.acoustic_encoder.conv2.weight.mul_(scale)
    model.acoustic_encoder.conv2.bias.mul_(scale)


def _init_codebooks(model, probe, generator) -> None:
    # Each stage's codebook follows the per-dimension distribution of that stage's residual.
    semantic, acoustic = _semantic_and_acoustic(model, probe)
    residual = model.fc(torch.cat([acoustic, semantic], dim=1).transpose(1, 2)).transpose(1, 2)
    for quantizer in model.quantizer.quantizers:
        projected = quantizer.project_in(residual.transpose(1, 2)).reshape(-1, quantizer.project_in.out_features)
        mean, std = projected.mean(0), projected.std(0)
        codebook = quantizer.codebook
        noise = torch.randn(codebook.embed.shape, generator=generator)
        codebook.embed.copy_(mean + std * noise)
        codebook.embed_avg.copy_(codebook.embed)
        residual = residual - quantizer.decode(quantizer.encode(residual))
