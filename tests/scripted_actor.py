"""The scripted actor test_scheduler.py runs in place of codec actors, in a module of its own: every actor
start imports the module its class lives in, and this one imports neither torch nor transformers, which would
cost each of the dozens of actors the scheduler tests start seconds (`python -X importtime -c "import
tests.scripted_actor"` against `... tests.test_scheduler`)."""

import json
import os
import time

import ray

from pipeline.driver.protocol import ActorFacts, ActorProgress
from pipeline.failures import PERMANENT, TRANSIENT, WrongDeviceError, classified_start
from pipeline.runstate import ShardRecord
from pipeline.sources import Shard


class HubThrottled(Exception):
    status = 429  # as the hub's HTTP error carries its response's status


@ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=3)
class ScriptedActor:
    def __init__(self, config, name, *setup):
        self.folder = os.path.join(config.output.dir, "script")
        os.makedirs(self.folder, exist_ok=True)
        self.name, self.started, self.threads, self.mute = name, {}, 1, False
        self._start_as_planned()
        try:  # the first actor ever started is "sick" when the script asks for one
            os.close(os.open(os.path.join(self.folder, "first-actor"), os.O_CREAT | os.O_EXCL))
            self.first = True
        except FileExistsError:
            self.first = False

    def _start_as_planned(self):
        """script/start-plan.json {"lost": n, "transient": m, "permanent": k, "wrong_device": d}: the first n actor
        starts die with no Python error (as a host OOM kill while loading leaves them), the next m raise a 429, the
        next k a constructor error that would repeat, the next d find another device than the run's; counted
        across actors."""
        path = os.path.join(self.folder, "start-plan.json")
        if not os.path.exists(path):
            return
        plan, start = json.load(open(path)), self._count("starts")
        if start <= plan.get("lost", 0):
            os._exit(1)
        start -= plan.get("lost", 0)
        with classified_start():  # as CodecActor's constructor
            if start <= plan.get("transient", 0):
                raise HubThrottled("429 Client Error: Too Many Requests for url: https://huggingface.co/...")
            if start - plan.get("transient", 0) <= plan.get("permanent", 0):
                raise ValueError("scripted: a checkpoint that cannot load")
            if start - plan.get("transient", 0) - plan.get("permanent", 0) <= plan.get("wrong_device", 0):
                raise WrongDeviceError("scripted: this worker's device differs from the run's")

    def facts(self):
        return ActorFacts(os.getpid(), ray.get_runtime_context().get_node_id())

    def set_threads(self, threads: int):
        self.threads = threads

    def progress(self):
        if self.mute:  # an actor that never answers
            time.sleep(3600)
        return ActorProgress(len(self.started), started=dict(self.started))

    def _count(self, shard_id: str) -> int:
        """This call's number among all calls for the shard, across actors."""
        with open(os.path.join(self.folder, f"{shard_id}.log"), "a+") as log:
            log.write(f"{self.name}:{os.getpid()}\n")
            log.seek(0)
            return len(log.readlines())

    def process(self, shard: Shard) -> ShardRecord:
        self.started[shard.id] = time.time()
        behaviour = shard.url.split("/")[0].removeprefix("script:")
        call = self._count(shard.id)
        try:
            return self._act(shard, behaviour, call)
        finally:
            self.started.pop(shard.id, None)

    def _act(self, shard, behaviour, call):
        def failed(kind, reason):
            return ShardRecord(shard.id, shard.url, "failed", reason=reason, detail=f"call {call}", failure=kind,
                               worker=self.name)

        most_threads = self.threads
        if behaviour.startswith("slow"):
            until = time.time() + float(behaviour.split("-")[1])
            while time.time() < until:  # the threads it would encode with, as the driver lends them
                time.sleep(0.05)
                most_threads = max(most_threads, self.threads)
        elif behaviour.startswith("transient"):
            if call <= int(behaviour.split("-")[1]):
                return failed(TRANSIENT, "transient_io")
        elif behaviour == "permanent":
            return failed(PERMANENT, "corrupt_tar")
        elif behaviour == "unexpected":
            raise ZeroDivisionError(f"scripted bug in {shard.id}")
        elif behaviour == "kill":
            time.sleep(0.5)
            os._exit(1)
        elif behaviour == "hang":
            time.sleep(3600)
        elif behaviour.startswith("mute"):  # answers neither progress() nor, for a while, process()
            self.mute = True
            time.sleep(float(behaviour.split("-")[1]))
        elif behaviour == "sick-actor" and self.first:
            return failed(TRANSIENT, "cuda_error")
        return ShardRecord(shard.id, shard.url, "done", rows=1, samples_read=1, worker=self.name,
                           files=[f"data/{shard.id}.parquet"], threads=most_threads)
