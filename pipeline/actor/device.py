"""The device the codes come from, as the output's identity records it.

cuBLAS and cuDNN choose kernels by GPU model and library version, and CPU kernels by instruction set, so
codes are exact on one device but may differ in a few tokens on another: a rerun on another device type
or model is an identity change (`pipeline.runstate.identity`). The facts are read where a codec actor
would run, by a one-off Ray task holding the resources an actor holds, since the driver's node may have
no GPU, or another CPU.
"""

from __future__ import annotations

import platform

import ray
import torch

from ..tokenizer import resolve_device


def device_facts(device: str) -> dict:
    """{type, name, cuda, cudnn} of the device `codec.device` resolves to in this process."""
    resolved = resolve_device(device)
    on_gpu = resolved.type == "cuda"
    return {"type": resolved.type, "name": torch.cuda.get_device_name(resolved) if on_gpu else cpu_model(),
            "cuda": torch.version.cuda if on_gpu else None,
            "cudnn": torch.backends.cudnn.version() if on_gpu else None}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_for_actor(device: str) -> str:
    """The device a process Ray started may use for `codec.device`: in a Ray task or actor that Ray gave no GPU,
    'auto' is the CPU, explicitly; torch may still see the node's GPUs, but they are other actors' (or no one's
    to take). 'cuda' stays, and such an actor's device facts then differ from the run's (worker.ShardProcessor)."""
    if device == "auto" and ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE \
            and not ray.get_gpu_ids():
        return "cpu"
    return device


@ray.remote(max_retries=0)
def facts_here(device: str) -> dict:
    """The device facts in a task Ray placed as it would place an actor (actor/side.py's probe)."""
    return device_facts(device_for_actor(device))
