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

from .config import Config
from .driver.pool import actor_options


def device_facts(device: str) -> dict:
    """{type, name, cuda, cudnn} of the device `codec.device` resolves to in this process."""
    from codec.loading import resolve_device

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


@ray.remote(max_retries=0)
def _facts_here(device: str) -> dict:
    return device_facts(device)


def probe_device(config: Config) -> dict:
    """The device facts where a codec actor of this run would run (on the Ray of `ensure_ray`)."""
    _, options = actor_options(config, [n["Resources"] for n in ray.nodes() if n["Alive"]])
    return ray.get(_facts_here.options(num_gpus=options["num_gpus"], num_cpus=1).remote(config.codec.device))
