import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def ray_local():
    """A real local Ray runtime for the pipeline tests (2 CPUs, like CI's machine), shared by the
    tests that ask for it; started again if a test had to stop it."""
    import ray

    if not ray.is_initialized():
        # "local": a runtime of its own, never one a `ray start` (or an earlier test's cluster) left announced
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 _system_config=KEEP_IDLE_WORKERS)
    return ray


# Ray kills idle workers beyond num_cpus (actors count), so each job's device probe (pipeline/actor/device.py, a task)
# would start a worker and import torch anew while the last job's actors still held the 2 CPUs: seconds per
# job. Kept, the probe's worker answers the next job's probe at once. Actors start in fresh workers either way.
KEEP_IDLE_WORKERS = {"num_workers_soft_limit": 4}


@pytest.fixture(scope="session", autouse=True)
def _stop_ray_at_exit():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_codec():
    from codec import load_codec

    return load_codec("random:tiny", device="cpu")
