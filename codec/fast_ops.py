"""Faster, bit-identical forwards for the codec's elementwise layers, switched on only inside `Codec`.

DAC's Snake activation, x + sin(alpha x)^2 / alpha, allocates four full-size temporaries; doing
the same operations in the same order in place gives the same bits with less memory traffic (it is
memory-bound on CPUs and GPUs alike). Outside `Codec` the stock forward runs, so
`model.encode` stays the unmodified reference.
"""

from __future__ import annotations

import contextlib
import types

import torch.nn as nn


def _snake_in_place(module, hidden):
    out = hidden * module.alpha
    return out.sin_().square_().mul_((module.alpha + 1e-9).reciprocal()).add_(hidden)


class FastOps:
    def __init__(self, model: nn.Module):
        self.enabled = False
        for module in model.acoustic_encoder.modules():
            if type(module).__name__ == "Snake1d":
                self._install(module)

    def _install(self, module) -> None:
        original = module.forward
        ops = self

        def forward(mod, hidden):
            if ops.enabled and hidden.dim() == 3 and not hidden.requires_grad:
                return _snake_in_place(mod, hidden)
            return original(hidden)

        module.forward = types.MethodType(forward, module)

    @contextlib.contextmanager
    def active(self):
        self.enabled = True
        try:
            yield
        finally:
            self.enabled = False
