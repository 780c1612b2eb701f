"""Padding masks that make a batched forward pass equal to one forward pass per clip.

A clip encoded alone sees zeros beyond its end (the convolutions' own zero padding) and
normalises/attends over its own frames only. In a batch, the positions beyond a clip's end
hold its batch mates' padding, which after the first layer is no longer zero. So:
- every convolution with a kernel wider than 1 gets its input zeroed past each clip's end, the clip's
  valid length at that layer following from its input length by the layers' conv arithmetic (any length:
  a whole number of hops or not, as the authors' convention needs);
- HuBERT's first-layer GroupNorm takes its statistics over each clip's valid frames only;
- HuBERT's encoder zeroes each clip's frames past its end and its attention gets a key mask: what
  transformers does from `attention_mask`, but built here from lengths, because transformers' way reads the
  mask's values back (`hidden_states[~mask] = 0`, `padding_mask.all()`), which makes the host wait on a GPU.

Every length the masks use reaches the device in one copy per batch (`staging.LengthRows`); the masks are
built there from it. The masks are installed once on the model and do nothing unless `PaddingMasks.active` is
on, so `model.encode` on its own is untouched and stays the reference.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, bidirectional_mask_function

from .staging import LengthRows


class ConvChain:
    """An encoder's Conv1d layers in the order its forward runs them, each reading the previous one's output
    (activations, residual adds and 1x1 convolutions keep the length). So the valid length at every conv
    follows from the input's by conv arithmetic, for any input length, as it would for the clip alone.
    The order is recorded from a forward pass and the chain checked against it at two input lengths."""

    def __init__(self, encoder: nn.Module, channels: int, probe_steps: tuple[int, int]):
        order: list[nn.Conv1d] = []
        seen: list[int] = []

        def record(module, args):
            order.append(module)
            seen.append(args[0].shape[-1])

        convs = [m for m in encoder.modules() if isinstance(m, nn.Conv1d)]
        device = convs[0].weight.device if convs else None  # the probe runs where the weights are
        handles = [conv.register_forward_pre_hook(record) for conv in convs]
        try:
            for steps in probe_steps:
                order.clear(), seen.clear()
                with torch.no_grad():
                    encoder(torch.zeros(1, channels, steps, device=device))
                if len(order) != len(convs) or len(set(map(id, order))) != len(convs) \
                        or list(self._chain(order, steps)[0]) != seen:
                    raise RuntimeError(f"{type(encoder).__name__} is not a chain of convolutions; padding masks "
                                       "cannot follow its lengths")
        finally:
            for handle in handles:
                handle.remove()
        self.convs = list(order)

    @staticmethod
    def _chain(convs, length: int) -> tuple[list[int], int]:
        inputs = []
        for conv in convs:
            inputs.append(length)
            span = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
            length = max(0, (length + 2 * conv.padding[0] - span) // conv.stride[0] + 1)
        return inputs, length

    def output_length(self, length: int) -> int:
        return self._chain(self.convs, length)[1]

    def input_lengths(self, lengths: list[int]) -> dict[int, tuple[int, ...]]:
        """id(conv) -> each row's valid steps at that conv's input, rows `lengths` long at the chain's input."""
        per_row = [self._chain(self.convs, n)[0] for n in lengths]
        return {id(conv): tuple(row[i] for row in per_row) for i, conv in enumerate(self.convs)}


class PaddingMasks:
    def __init__(self, model: nn.Module):
        hop = model.config.hop_length
        first = model.encoder_semantic.conv
        self.acoustic = ConvChain(model.acoustic_encoder, 1, (4 * hop, 4 * hop + 7 * hop // 10 + 1))
        self.semantic = ConvChain(model.encoder_semantic, first.in_channels, (8, 13))
        self._valid: dict[int, tuple[int, ...]] = {}  # id(conv) -> valid input steps per row, while active
        self._rows: LengthRows | None = None  # those lengths on the device, while active
        self._cache: dict = {}
        self._group_norm_lengths: torch.Tensor | None = None
        self._group_norm_stats: GroupNormStats | None = None
        self._hubert_frames: torch.Tensor | None = None  # valid frames per row at HuBERT's encoder, while active
        self._attention_mask: torch.Tensor | None = None  # the batch's key mask, built at the encoder's input
        self._handles = []
        for conv in self.acoustic.convs + self.semantic.convs:
            if conv.kernel_size[0] > 1:
                self._handles.append(conv.register_forward_pre_hook(self._mask_conv_input))
        encoder = model.semantic_model.encoder
        self._hubert_config = encoder.config
        self._handles.append(encoder.register_forward_pre_hook(self._mask_hubert_frames, with_kwargs=True))
        for layer in encoder.layers:
            self._handles.append(layer.attention.register_forward_pre_hook(self._give_attention_mask, with_kwargs=True))
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

    def rows_needed(self, acoustic: list[int] | None = None, semantic: list[int] | None = None) -> list[tuple]:
        """The length rows `active` with these arguments reads from its `LengthRows`."""
        valid = {}
        if acoustic is not None:
            valid.update(self.acoustic.input_lengths(acoustic))
        if semantic is not None:
            valid.update(self.semantic.input_lengths(semantic))
        return list(valid.values())

    @contextlib.contextmanager
    def active(self, rows: LengthRows, acoustic: list[int] | None = None, semantic: list[int] | None = None,
               group_norm_lengths: torch.Tensor | None = None, group_norm_stats: GroupNormStats | None = None,
               hubert_frames: torch.Tensor | None = None):
        """Masks on for one batch: `acoustic` valid samples of each row at the acoustic encoder's input,
        `semantic` valid frames of each row at the semantic encoder's input, `group_norm_lengths` valid steps at
        HuBERT's first GroupNorm, `group_norm_stats` statistics to use instead of each row's own (windows of a
        long clip), `hubert_frames` valid frames at HuBERT's transformer encoder. A path given None is not
        masked. `rows`: the batch's lengths on the device, holding every row of `rows_needed`."""
        self._valid = {}
        if acoustic is not None:
            self._valid.update(self.acoustic.input_lengths(acoustic))
        if semantic is not None:
            self._valid.update(self.semantic.input_lengths(semantic))
        self._rows = rows
        self._group_norm_lengths, self._group_norm_stats = group_norm_lengths, group_norm_stats
        self._hubert_frames, self._attention_mask = hubert_frames, None
        self._cache = {}
        try:
            yield
        finally:
            self._valid, self._group_norm_lengths, self._group_norm_stats = {}, None, None
            self._rows = self._hubert_frames = self._attention_mask = None
            self._cache = {}

    def _mask_hubert_frames(self, module, args, kwargs):
        """At HuBERT's encoder input: zero each row's frames past its end and build the key mask transformers
        would, from the frame lengths, with no value read back (transformers' own path reads two)."""
        if self._hubert_frames is None:
            return None
        if kwargs.get("attention_mask") is not None:
            raise RuntimeError("HuBERT was given an attention_mask while the padding masks are on: they make it")
        hidden = args[0] if args else kwargs.pop("hidden_states")
        batch, steps = hidden.shape[:2]
        valid = time_mask(self._hubert_frames, steps)
        hidden = torch.where(valid[..., None], hidden, 0.0)
        self._attention_mask = ALL_MASK_ATTENTION_FUNCTIONS[self._hubert_config._attn_implementation](
            batch_size=batch, q_length=steps, kv_length=steps, q_offset=0, kv_offset=0,
            mask_function=bidirectional_mask_function, attention_mask=valid, allow_is_causal_skip=False,
            allow_is_bidirectional_skip=False, dtype=hidden.dtype, config=self._hubert_config, use_vmap=False,
            device=hidden.device)
        return (hidden, *args[1:]), kwargs

    def _give_attention_mask(self, module, args, kwargs):
        if self._attention_mask is None:
            return None
        return args, {**kwargs, "attention_mask": self._attention_mask}

    def _mask_conv_input(self, module, args):
        valid = self._valid.get(id(module))
        if valid is None:
            return None
        (hidden,) = args
        steps = hidden.shape[-1]
        if all(n >= steps for n in valid):
            return None
        key = (valid, steps, hidden.dtype)
        mask = self._cache.get(key)
        if mask is None:
            # the row was copied with the batch's other lengths: no transfer per convolution
            mask = time_mask(self._rows[valid], steps, hidden.dtype)[:, None, :]
            self._cache[key] = mask
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


def conv_output_lengths(lengths: list[int], convs) -> tuple[int, ...]:
    """Each row's valid steps after `convs`, rows `lengths` long at their input (host ints: no device op)."""
    out = []
    for length in lengths:
        for conv in convs:
            pad = conv.padding[0] if isinstance(conv.padding, tuple) else 0
            span = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
            length = (length + 2 * pad - span) // conv.stride[0] + 1
        out.append(length)
    return tuple(out)
