"""The Ray actor that holds one tokenizer (one GPU, or CPU cores) and processes shards on request."""

from __future__ import annotations

import dataclasses
import os
import socket

import ray
import torch
from transformers.utils import logging as transformers_logging

from ..config import Config
from ..failures import classified_start
from ..telemetry.logs import ActorLog
from ..sources import Shard
from ..runstate import ShardRecord
from ..tokenizer import Resolved
from ..driver.protocol import ActorFacts, ActorProgress
from .process_memory import prefer_expandable_segments
from .processor import ShardProcessor


# the pool starts it with max_concurrency (driver/protocol.py's SHARDS_IN_FLIGHT + 1)
@ray.remote(max_restarts=0, max_task_retries=0)
class CodecActor:
    def __init__(self, config: Config, name: str, resolved: Resolved, schema, versions: dict,
                 device: dict | None = None):
        # actors' output reaches the driver's log: keep it to warnings and errors, not loading bars
        transformers_logging.disable_progress_bar()
        ActorLog.install(config.output.dir, name)  # in the output: its warnings no shard claims, from its loading on
        self.alloc_conf = prefer_expandable_segments()  # before the codec's first CUDA allocation
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        with classified_start():  # loading from the hub may meet its throttling: the driver retries that later
            self.processor = ShardProcessor(config, name, cpus=max(1, round(cpus)) if cpus else None,
                                            resolved=resolved, schema=schema, versions=versions,
                                            device=device)

    def facts(self) -> ActorFacts:
        codec = self.processor.codec
        return ActorFacts(
            pid=os.getpid(), node_id=ray.get_runtime_context().get_node_id(), host=socket.gethostname(),
            identity=codec.identity.as_dict(), device=str(codec.device), policy=dict(codec.policy.__dict__),
            batch_budget=self.processor.budget.as_dict(), cuda_alloc_conf=self.alloc_conf,
            calibration=self.processor.calibration, decode_threads=self.processor.decode_threads,
            decode_process_pids=self.processor.decode_process_pids,
            torch_threads=torch.get_num_threads(), startup=dataclasses.replace(self.processor.startup))

    def set_threads(self, threads: int) -> None:
        """Torch threads for the next encodes: the driver lends this actor the cores of idle ones."""
        self.processor.threads = max(1, int(threads))

    def progress(self) -> ActorProgress:
        return dataclasses.replace(self.processor.in_shard, batch_budget=self.processor.budget.as_dict())

    def process(self, shard: Shard) -> ShardRecord:
        return self.processor.process(shard)
