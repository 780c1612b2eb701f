"""Actors stream: their peak memory does not grow with the size of the dataset."""

from pipeline.job import run_job
from tests.corpus import mixed_tar
from tests.test_pipeline import config_for


def peak_rss(tmp_path, shards: int, name: str) -> float:
    for i in range(shards):
        mixed_tar(str(tmp_path / f"{name}/s-{i}.tar"), f"{name}{i}", 6, seed=100 + i, max_seconds=3.0)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / f"{name}/s-*.tar")]},
                        f"output.dir={tmp_path}/out-{name}", "ray.num_actors=1")
    results = []
    run_job(config, lambda kind, info: results.append(info["result"]) if kind == "shard_done" else None)
    assert len(results) == shards
    return max(r.peak_rss_mb for r in results)


def test_peak_memory_per_actor_is_flat_for_4x_the_data(tmp_path, ray_local):
    small = peak_rss(tmp_path, 2, "small")
    large = peak_rss(tmp_path, 8, "large")
    assert small > 100  # the codec and torch are in there: the measurement is real
    assert large < 1.2 * small, (small, large)
