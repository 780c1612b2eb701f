"""Codec actors on GPU nodes, tried on CPU with Ray runtimes that declare GPUs: what each actor is given, what
device it picks, and the run refused before any actor when no node has the GPU it asks for."""

from __future__ import annotations

import pytest
import ray

from pipeline.config import ConfigError, load_config

BASE = ["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x"]


def test_codec_device_naming_one_gpu_is_refused_with_why():
    with pytest.raises(ConfigError, match=r"codec.device.*'cuda:1'.*its own GPU.*device 0.*use cuda"):
        load_config(None, [*BASE, "codec.device=cuda:1"])


def test_cuda_on_a_cluster_without_gpus_stops_before_any_actor_with_the_fix(ray_local):
    from pipeline.actor.side import CodecActorSide
    from pipeline.driver.job import probe_device

    with pytest.raises(ConfigError, match=r"codec.device.*no node of this Ray cluster offers a GPU.*codec.device: cpu"):
        probe_device(load_config(None, [*BASE, "codec.device=cuda"]), CodecActorSide())


def test_device_probe_holds_the_actors_own_resources(ray_local, monkeypatch):
    """The probe reads the device where an actor will land: it asks for what an actor asks for, custom
    resources (ray.actor_resources, e.g. a GPU model's accelerator_type) included."""
    import pipeline.actor.side as side
    from pipeline.driver.job import probe_device

    asked = {}

    class Probe:
        def options(self, **options):
            asked.update(options)
            return self

        def remote(self, configured):
            return ray.put({"type": "cpu"})

    monkeypatch.setattr(side, "facts_here", Probe())
    config = load_config(None, [*BASE, "codec.device=cpu", "ray.actor_resources={fast_disk: 1}"])
    probe_device(config, side.CodecActorSide())
    assert asked["resources"] == {"fast_disk": 1} and asked["num_gpus"] == 0 and asked["num_cpus"] >= 1


@ray.remote
class _Reporter:
    def given(self) -> dict:
        return {"gpus": [str(g) for g in ray.get_gpu_ids()],
                "cpus": ray.get_runtime_context().get_assigned_resources().get("CPU")}

    def devices(self) -> tuple[str, str]:
        from pipeline.actor.device import device_for_actor  # imports torch: asked of two actors only

        return device_for_actor("auto"), device_for_actor("cuda")


def test_eight_gpu_node_gets_one_actor_per_gpu_each_with_its_cpu_share():
    """ray.init(num_gpus=8) on a CPU machine: sized by the pool's own rules, 8 actors hold one distinct GPU and
    2 of the 16 CPUs each, and 'auto' means their GPU; an actor given no GPU runs on the CPU, explicitly, though
    the node has GPUs (torch may see them), while 'cuda' stays cuda, for the device check to refuse it."""
    from pipeline.driver.pool import actor_options

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=16, num_gpus=8, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        config = load_config(None, [*BASE, "ray.memory_per_actor_gb=0.05"])
        count, options = actor_options(config, [n["Resources"] for n in ray.nodes() if n["Alive"]])
        assert (count, options["num_gpus"], options["num_cpus"]) == (8, 1, 2)
        actors = [_Reporter.options(**options).remote() for _ in range(count)]
        given = ray.get([a.given.remote() for a in actors])
        assert sorted(g["gpus"][0] for g in given) == [str(i) for i in range(8)]
        assert all(len(g["gpus"]) == 1 and g["cpus"] == 2 for g in given)
        assert ray.get(actors[0].devices.remote()) == ("auto", "cuda")
        for actor in actors:
            ray.kill(actor)
        alone = _Reporter.options(num_cpus=1, num_gpus=0).remote()
        assert ray.get(alone.given.remote())["gpus"] == []
        assert ray.get(alone.devices.remote()) == ("cpu", "cuda")
    finally:
        ray.shutdown()

