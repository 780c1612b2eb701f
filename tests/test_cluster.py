"""A multi-node Ray cluster on one machine (Ray's own `cluster_utils.Cluster`): a worker node goes away
while its actor is encoding, and the run finishes on the nodes that remain."""

import threading
import time

import numpy as np
import pytest
import ray

from pipeline.telemetry.events import ActorLost, ActorsStarted, ActorsWaiting
from pipeline.run import run_job
from tests.corpus import mixed_tar
from tests.test_pipeline import config_for, expected_codes, read_rows


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # the shared local runtime: the ray_local fixture starts it again for later tests
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * 2**20})
    nodes = [cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def test_lost_node_mid_encode_loses_no_sample_and_changes_no_code(tmp_path, cluster, tiny_codec):
    cluster, nodes = cluster
    samples = []
    for i in range(6):
        samples += mixed_tar(str(tmp_path / f"in/n-{i}.tar"), f"n{i}", 8, seed=90 + i, max_seconds=3.0)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/n-{0..5}.tar")]},
                        "ray.memory_per_actor_gb=0.5", "ray.pool_seconds=1", "ray.pending_actor_warn_s=3",
                        "ray.max_attempts=2")
    events, removed = [], []

    driver_node = ray.get_runtime_context().get_node_id()  # removing that one would end the driver

    def remove_a_node_once_it_encodes(actors):
        deadline = time.time() + 120
        while time.time() < deadline:
            for actor in actors:
                try:
                    info, progress = ray.get([actor.facts.remote(), actor.progress.remote()], timeout=5)
                except ray.exceptions.RayError:
                    continue
                node = next((n for n in nodes if n.node_id == info.node_id != driver_node), None)
                if node is not None and progress.samples > 0:
                    cluster.remove_node(node, allow_graceful=False)
                    removed.append(node)
                    return
            time.sleep(0.05)

    def on_event(event):
        events.append(event)
        if isinstance(event, ActorsStarted):
            threading.Thread(target=remove_a_node_once_it_encodes, args=(event.actors,), daemon=True).start()

    summary = run_job(config, on_event)
    assert removed, "no node was removed while encoding"
    assert summary.status == "complete"
    lost = [e for e in events if isinstance(e, ActorLost)]
    # an actor lost holding several shards charges none of them (each runs again alone); one it held alone is charged
    assert lost and all((e.charged is None) == (len(e.lost) > 1) for e in lost)
    assert any(isinstance(e, ActorsWaiting) for e in events)  # its replacement has nowhere to go: said so
    rows = read_rows(config.output.dir)
    assert sorted(r["key"] for r in rows) == sorted(s.key for s in samples)  # every sample exactly once
    by_key = {s.key: s for s in samples}
    for row in rows:  # codes equal an undisturbed single-clip encode
        audio = next(v for k, v in by_key[row["key"]].members.items() if k not in ("txt", "json"))
        np.testing.assert_array_equal(np.array(row["codes"], np.int16), expected_codes(tiny_codec, audio))
