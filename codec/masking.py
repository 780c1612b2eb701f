"""Padding masks that make a batched forward pass equal to one forward pass per clip.

A clip encoded alone sees zeros beyond its end (the convolutions' own zero padding) and
normalises/attends over its own frames only. In a batch, the positions beyond a clip's end
hold its batch mates' padding, which after the first layer is no longer zero. So:
- every convolution with a kernel wider than 1 gets its input zeroed past each clip's end;
- HuBERT's first-layer GroupNorm takes its statistics over each clip's valid frames only;
- HuBERT's attention gets a key mask (done by transformers from `attention_mask`).

The masks are installed once on the model and do nothing unless a `PaddingContext` is active,
so `model.encode` on its own is untouched and stays the reference.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class PaddingMasks:
    def __init__(self, model: nn.Module):
        self._lengths: list[int] | None = None  # valid samples per clip at the model's input rate
        self._cache: dict = {}
        self._total: int = 0
        self._group_norm_lengths: torch.Tensor | None = None
        self._group_norm_stats: GroupNormStats | None = None
        self._handles = []
        for module in (model.acoustic_encoder, model.encoder_semantic):
            for conv in module.modules():
                if isinstance(conv, nn.Conv1d) and conv.kernel_size[0] > 1:
                    self._handles.append(conv.register_forward_pre_hook(self._mask_conv_input))
        first = model.semantic_model.feature_extractor.conv_layers[0]
        norm = getattr(first, "layer_norm", None)
        if isinstance(norm, nn.GroupNorm):
            original = norm.forward
            masks = self

            def forward(module, hidden):
                if masks._group_norm_lengths is None:
                    return original(hidden)
                return masked_group_norm(hidden, masks._group_norm_lengths, module, masks._group_norm_stats)

            norm.forward = types.MethodType(forward, norm)

    @contextlib.contextmanager
    def active(self, lengths: list[int], total: int, group_norm_lengths, group_norm_stats: GroupNormStats | None = None):
        """Masks on for one batch: `lengths` valid input samples of each clip, `total` the padded length,
        `group_norm_stats` statistics to use instead of each row's own (windows of a long clip)."""
        self._lengths, self._total = lengths, total
        self._group_norm_lengths, self._group_norm_stats = group_norm_lengths, group_norm_stats
        self._cache = {}
        try:
            yield
        finally:
            self._lengths, self._group_norm_lengths, self._group_norm_stats = None, None, None
            self._cache = {}

    def _mask_conv_input(self, module, args):
        if self._lengths is None:
            return None
        (hidden,) = args
        steps = hidden.shape[-1]
        mask = self._cache.get((steps, hidden.dtype, hidden.device))
        if mask is None:
            # Every tensor on these paths has a length proportional to the input's (all clips are
            # padded to a multiple of the hop), so each clip's valid length scales exactly. Plain
            # ints here: no device round trip per convolution.
            if any(length * steps % self._total for length in self._lengths):
                raise RuntimeError(f"valid lengths {self._lengths} do not scale to {steps} steps of {self._total}")
            valid = torch.tensor([length * steps // self._total for length in self._lengths], device=hidden.device)
            mask = time_mask(valid, steps, hidden.dtype)[:, None, :]
            self._cache[(steps, hidden.dtype, hidden.device)] = mask
        return (hidden * mask,)


def time_mask(valid: torch.Tensor, steps: int, dtype=torch.bool) -> torch.Tensor:
    mask = torch.arange(steps, device=valid.device)[None, :] < valid[:, None]
    return mask if dtype == torch.bool else mask.to(dtype)


@dataclass
class GroupNormStats:
    """Per-row GroupNorm mean and variance [B, groups]; rows where `given` is False use their own."""

    mean: torch.Tensor
    var: torch.Tensor
    given: torch.Tensor


def masked_group_norm(
    hidden: torch.Tensor, valid: torch.Tensor, norm: nn.GroupNorm, stats: GroupNormStats | None = None
) -> torch.Tensor:
    """GroupNorm whose statistics cover only each clip's first `valid` steps (or are given)."""
    batch, channels, steps = hidden.shape
    groups = norm.num_groups
    dtype = hidden.dtype
    hidden = hidden.float()  # statistics in float32, as autocast runs GroupNorm
    mask = time_mask(valid, steps, hidden.dtype)[:, None, None, :]
    grouped = hidden.reshape(batch, groups, channels // groups, steps)
    count = (valid * (channels // groups)).to(hidden.dtype)[:, None, None, None]
    mean = (grouped * mask).sum(dim=(2, 3), keepdim=True) / count
    var = (((grouped - mean) * mask) ** 2).sum(dim=(2, 3), keepdim=True) / count
    if stats is not None:
        given = stats.given[:, None, None, None]
        mean = torch.where(given, stats.mean[:, :, None, None].float(), mean)
        var = torch.where(given, stats.var[:, :, None, None].float(), var)
    normed = ((grouped - mean) * torch.rsqrt(var + norm.eps)).reshape(batch, channels, steps)
    if norm.affine:
        normed = normed * norm.weight[None, :, None] + norm.bias[None, :, None]
    return normed.to(dtype)


def conv_output_lengths(lengths: torch.Tensor, convs) -> torch.Tensor:
    for conv in convs:
        pad = conv.padding[0] if isinstance(conv.padding, tuple) else 0
        span = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
        lengths = torch.div(lengths + 2 * pad - span, conv.stride[0], rounding_mode="floor") + 1
    return lengths


def pad_batch(clips: list[torch.Tensor], total: int) -> torch.Tensor:
    return torch.stack([F.pad(clip, (0, total - clip.shape[-1])) for clip in clips])
