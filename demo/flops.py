"""FLOPs of an encode, counted with forward hooks, for the benchmarks' FLOP-utilisation estimates."""

from __future__ import annotations

import numpy as np
import torch

# dense peak FLOP/s by math, for device names containing the key: vendor datasheet figures for SXM
# parts (a PCIe card matches the same key and has lower peaks, so its utilisation reads low)
_HOPPER = {"float32": 67e12, "tf32": 495e12, "bfloat16": 989e12, "float16": 989e12}  # H200: H100's compute
PEAK_FLOPS = {
    "H100": _HOPPER,
    "H200": _HOPPER,
    "A100": {"float32": 19.5e12, "tf32": 156e12, "bfloat16": 312e12, "float16": 312e12},
}


def flops_per_audio_second(codec, bandwidth: float, seconds: float = 10.0) -> float:
    """Multiply-add FLOPs (x2) that `codec.encode` spends on one second of audio, for one clip of `seconds`:
    every Conv1d and Linear as it runs, plus HuBERT's attention products (4 T^2 d per layer).
    torch's FlopCounterMode cannot run this model (weight-norm parametrisations), hence the hooks."""
    wave = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * codec.sample_rate))).astype(np.float32)
    total = [0]

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv1d):
            total[0] += 2 * output.numel() * module.in_channels // module.groups * module.kernel_size[0]
        else:
            total[0] += 2 * output.numel() * module.in_features

    def count_attention(module, inputs, output):
        hidden = inputs[0]  # (batch, frames, width)
        total[0] += 4 * hidden.shape[0] * hidden.shape[1] ** 2 * hidden.shape[2]

    hooks = [m.register_forward_hook(count) for m in codec.model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Linear))]
    hooks += [layer.attention.register_forward_hook(count_attention) for layer in codec.model.semantic_model.encoder.layers]
    try:
        codec.encode([wave], bandwidth, max_clips=1)
    finally:
        for hook in hooks:
            hook.remove()
    return total[0] / seconds


def peak_flops(device: torch.device, math: str) -> float | None:
    """The datasheet peak for this GPU and math ('float32', 'tf32', 'bfloat16', 'float16'); None if unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks.get(math) for key, peaks in PEAK_FLOPS.items() if key in name), None)


def math_of(codec) -> str:
    """The math a codec's matmuls run in: its autocast dtype, or tf32 when float32 runs with TF32 allowed."""
    name = str(codec.dtype).removeprefix("torch.")
    if name == "float32" and codec.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return name
