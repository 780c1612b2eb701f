"""Decoding on other nodes (audio.decode_task_cpus): on a multi-node cluster on one machine (Ray's own
`cluster_utils.Cluster`), a CPU-only node decodes for a codec actor held on an "encoder" node (a custom resource
standing in for the GPU), and a decode task killed mid-shard costs a retry, never a sample."""

import os
import signal
import threading
import time

import numpy as np
import pytest
import ray

from pipeline.telemetry.events import ShardRetry
from pipeline.run import run_job
from pipeline.runstate import read_run
from pipeline.storage import Storage
from tests.corpus import mixed_tar
from tests.test_pipeline import config_for, expected_codes, read_rows


@pytest.fixture
def encoder_and_decoder_nodes():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # the shared local runtime: the ray_local fixture starts it again for later tests
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * 2**20})
    # the encoder node's one CPU goes to the codec actor: decode tasks can only run on the CPU-only node
    encoder = cluster.add_node(num_cpus=1, resources={"encoder": 1}, object_store_memory=80 * 2**20)
    decoder = cluster.add_node(num_cpus=2, object_store_memory=80 * 2**20)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    yield encoder, decoder
    ray.shutdown()
    cluster.shutdown()


def _corpus(tmp_path, shards: int, clips: int):
    samples = []
    for i in range(shards):
        samples += mixed_tar(str(tmp_path / f"in/d-{i}.tar"), f"d{i}", clips, seed=70 + i, max_seconds=3.0)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / f"in/d-{{0..{shards - 1}}}.tar")]},
                        "audio.decode_task_cpus=1", "ray.actor_resources={encoder: 1}", "ray.memory_per_actor_gb=0.5",
                        "ray.pool_seconds=2", "ray.max_attempts=3", "ray.retry_backoff_s=0.1")
    return samples, config


def _assert_each_sample_once_with_its_own_codes(config, samples, tiny_codec):
    rows = read_rows(config.output.dir)
    assert sorted(r["key"] for r in rows) == sorted(s.key for s in samples)
    by_key = {s.key: s for s in samples}
    for row in rows:
        audio = next(v for k, v in by_key[row["key"]].members.items() if k not in ("txt", "json"))
        np.testing.assert_array_equal(np.array(row["codes"], np.int16), expected_codes(tiny_codec, audio))


def test_cpu_only_node_decodes_for_the_encoder_node_and_codes_equal_each_clip_alone(tmp_path, encoder_and_decoder_nodes,
                                                                                    tiny_codec):
    encoder, decoder = encoder_and_decoder_nodes
    samples, config = _corpus(tmp_path, shards=3, clips=6)
    summary = run_job(config)
    assert summary.status == "complete"
    _assert_each_sample_once_with_its_own_codes(config, samples, tiny_codec)
    records = read_run(Storage(config.output.dir)).done().values()
    assert [r.decode_nodes for r in records] == [[decoder.node_id]] * 3  # decoded where the CPUs are, not beside the actor


def _decode_task_pids() -> list[int]:
    """Processes running a decode task now (Ray titles a worker by the task it executes)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::decode_shard"):
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_decode_task_killed_mid_shard_costs_a_retry_not_a_sample(tmp_path, encoder_and_decoder_nodes, tiny_codec):
    samples, config = _corpus(tmp_path, shards=2, clips=24)
    killed, events = [], []

    def kill_the_first_decode_task():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for pid in _decode_task_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.01)

    threading.Thread(target=kill_the_first_decode_task, daemon=True).start()
    summary = run_job(config, events.append)
    assert killed, "no decode task was seen running"
    assert summary.status == "complete"
    retries = [e for e in events if isinstance(e, ShardRetry)]
    assert retries and "decode_task_lost" in retries[0].reason
    _assert_each_sample_once_with_its_own_codes(config, samples, tiny_codec)
