"""What an encode asks of the device, counted op by op: for the placement test and the traffic benchmark.

`DeviceTraffic` is a `TorchDispatchMode` that sees every aten op and
- refuses one whose non-scalar tensor arguments sit on two devices (a host tensor meeting device weights,
  which CUDA refuses with "Input type (torch.FloatTensor) and weight type (torch.cuda.FloatTensor)");
- counts copies between host and device (device-to-host blocking or not, host-to-device from pinned or
  pageable memory) and value reads of device tensors (`.item()`, `bool(t)`, `nonzero`, boolean-mask indexing):
  each makes the host wait for the device.

With `placeholders=True` (a `meta` device: tensors without data) it answers what needs data: a copy to the host
gives zeros of the right shape and dtype, a value read gives a fixed answer, boolean-mask indexing leaves its
target as it is. So a codec built for `meta` can be constructed and run end to end on a machine with no GPU,
and the run proves its placement.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

# under inference mode `Tensor.to` reaches the mode as aten.to.*, not decomposed to _to_copy
_COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default,
           aten.to.dtype_layout, aten.to.device, aten.to.other}
_SCALAR_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default}
_SHAPE_FROM_VALUES = {aten.nonzero.default, aten.masked_select.default, aten.unique_consecutive.default,
                      aten._unique2.default, aten.nonzero_static.default}
_INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


class MixedDevices(RuntimeError):
    """An op was given tensors on two devices."""


@dataclass
class Traffic:
    """What ran between host and device; `per_batch` divides by a batch count."""

    d2h_blocking: int = 0
    d2h_non_blocking: int = 0
    h2d_pinned: int = 0
    h2d_pageable: int = 0
    value_reads: int = 0

    def per(self, batches: int) -> dict:
        return {name: round(value / max(1, batches), 2) for name, value in self.__dict__.items()}


class DeviceTraffic(TorchDispatchMode):
    def __init__(self, device: torch.device | str, placeholders: bool | None = None):
        super().__init__()
        self.device = torch.device(device)
        self.placeholders = self.device.type == "meta" if placeholders is None else placeholders
        self.traffic = Traffic()
        self.reads: Counter = Counter()  # op name -> value reads it made, to say where they come from

    def _on_device(self, tensor: torch.Tensor) -> bool:
        return tensor.device.type == self.device.type

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if func in _COPIES:
            return self._copy(func, args, kwargs, tensors)
        devices = {t.device for t in tensors if t.dim() > 0 or t.device.type != "cpu"}
        if len(devices) > 1:
            raise MixedDevices(f"{func} got tensors on {sorted(map(str, devices))}: shapes "
                               f"{[(tuple(t.shape), str(t.device)) for t in tensors]}")
        on_device = any(self._on_device(t) for t in tensors)
        if func is aten.detach_.default and on_device:
            # `torch.tensor(host data, device=...)` copies below the dispatcher; what it shows the mode is the
            # in-place detach of the new device tensor
            self.traffic.h2d_pageable += 1
        if on_device and self._reads_values(func, args):
            self.traffic.value_reads += 1
            self.reads[str(func)] += 1
            if self.placeholders:
                return self._placeholder(func, args)
        return func(*args, **kwargs)

    @staticmethod
    def _reads_values(func, args) -> bool:
        if func in _SCALAR_READS or func in _SHAPE_FROM_VALUES:
            return True
        if func in _INDEXING:  # boolean-mask indexing: which elements depends on the mask's values
            indices = args[1] if len(args) > 1 else []
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or [])
        return False

    def _placeholder(self, func, args):
        if func is aten._local_scalar_dense.default:
            return False if args[0].dtype == torch.bool else 0
        if func in (aten.is_nonzero.default, aten.equal.default):
            return False
        if func in _INDEXING:
            if func is aten.index.Tensor:
                return args[0].new_empty((0, *args[0].shape[sum(1 for i in args[1] if i is not None):]))
            return args[0]
        return torch.empty((0, args[0].dim()), dtype=torch.long, device=args[0].device)

    def _copy(self, func, args, kwargs, tensors):
        if self.device.type == "cpu":  # the host is the device: nothing crosses
            return func(*args, **kwargs)
        if func is aten.copy_.default:
            dst, src = args[0], args[1]
            target = dst.device
        elif func in (aten._to_copy.default, aten.to.dtype_layout):
            src = args[0]
            target = torch.device(kwargs.get("device") or src.device)
        elif func is aten.to.device:
            src, target = args[0], torch.device(args[1])
        else:
            src, target = args[0], args[1].device
        positional = {aten.copy_.default: 2, aten.to.device: 3, aten.to.other: 2}.get(func)
        non_blocking = bool(kwargs.get("non_blocking", args[positional] if positional and len(args) > positional else False))
        if self._on_device(src) and target.type == "cpu":
            if non_blocking:
                self.traffic.d2h_non_blocking += 1
            else:
                self.traffic.d2h_blocking += 1
            if self.placeholders:
                if func is aten.copy_.default:
                    return dst.zero_()
                dtype = kwargs.get("dtype") or (args[2] if func is aten.to.device and len(args) > 2 else None)
                return torch.zeros(src.shape, dtype=dtype or src.dtype)
        elif src.device.type == "cpu" and target.type == self.device.type:
            if src.is_pinned():
                self.traffic.h2d_pinned += 1
            else:
                self.traffic.h2d_pageable += 1
        return func(*args, **kwargs)
