"""Out of memory on the device, injected on CPU: the actor's batch budget, the records, the memory released."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from codec.memory import is_out_of_memory
from pipeline.actor.batch_budget import BatchBudget
from pipeline.actor.process_memory import ALLOC_CONF, prefer_expandable_segments
from pipeline.config import load_config
from pipeline.sources import list_shards
from demo.synth import SynthSample, encode_audio, synth_clip, write_tar
from pipeline.actor.processor import ShardProcessor
from tests.test_pipeline import expected_codes, read_rows

RATE = 24000  # the codec's rate: a clip's length in samples is known here
CLIP_S, LONG_S = 0.4, 1.2  # a clip LONG_S long does not fit on the (injected) device even alone

OOM_ERRORS = {
    "torch": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "cublas": lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
}


def tar_of(path, prefix: str, seconds: list[float], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    clips = {f"{prefix}{i:02d}": encode_audio(synth_clip(rng, s, RATE), RATE, "wav") for i, s in enumerate(seconds)}
    write_tar(str(path), [SynthSample(key, {"wav": wav}, 0) for key, wav in clips.items()])
    return clips


def processor_for(tmp_path, *overrides: str) -> tuple[ShardProcessor, list]:
    config = load_config(None, ["source.kind=webdataset", f"source.urls=[{tmp_path}/in/*.tar]", "codec.model=random:tiny",
                                f"output.dir={tmp_path}/out", *overrides])
    return ShardProcessor(config), sorted(list_shards(config.source).shards, key=lambda s: s.url)


def inject_oom(monkeypatch, processor, error, max_clips: int, longest_s: float) -> list[str]:
    """The device runs out of memory for batches of more than `max_clips` clips, or any batch holding more
    than `longest_s` of audio per clip; returns the cause of each failure raised."""
    real, raised = processor.codec.codec._embeddings, []

    def embeddings(batch):
        audio = batch.acoustic
        if audio.shape[0] > max_clips or audio.shape[-1] > longest_s * RATE:
            raised.append("batch" if audio.shape[0] > max_clips else "long")
            raise error()
        return real(batch)

    monkeypatch.setattr(processor.codec.codec, "_embeddings", embeddings)
    return raised


@pytest.mark.parametrize("kind", list(OOM_ERRORS))
def test_out_of_memory_halves_the_actor_budget_for_good_and_a_clip_too_big_alone_is_an_out_of_memory_record(
        tmp_path, monkeypatch, kind):
    clips = {**tar_of(tmp_path / "in/a.tar", "a", [CLIP_S] * 12, seed=1),
             **tar_of(tmp_path / "in/b.tar", "b", [CLIP_S] * 5 + [LONG_S] + [CLIP_S] * 4, seed=2)}
    # pools of 4 clips, batches of up to 8
    processor, (a, b) = processor_for(tmp_path, "codec.max_batch_seconds=40", "codec.max_clips=8", "ray.pool_seconds=1.6")
    raised = inject_oom(monkeypatch, processor, OOM_ERRORS[kind], max_clips=2, longest_s=LONG_S - 0.5)

    first = processor.process(a)
    # 8 clips -> 4 -> 2: two halvings in the first pool, then every later pool fits
    assert first.status == "done" and first.rows == 12 and first.budget_halvings == 2
    assert (first.batch_budget["max_clips"], first.batch_budget["max_batch_seconds"]) == (2, 10.0)
    assert raised == ["batch", "batch"]

    second = processor.process(b)
    # the lowered budget was kept: no batch of the second shard was over 2 clips; the long clip's pool halves it
    # once more, then the long clip alone does not fit and is the one error record
    assert raised.count("batch") == 2 and second.budget_halvings == 1 and second.batch_budget["max_clips"] == 1
    assert second.status == "done" and second.rows == 9 and second.error_reasons == {"out_of_memory": 1}
    errors = [line for line in (tmp_path / "out/errors").glob("*.jsonl") for line in line.read_text().splitlines()]
    assert len(errors) == 1 and '"b05"' in errors[0] and "1.20 s of audio does not fit on cpu alone" in errors[0]
    assert processor.budget.as_dict()["halvings"] == 3

    for row in read_rows(tmp_path / "out"):  # the pools encoded again after an out-of-memory give exact codes
        np.testing.assert_array_equal(np.array(row["codes"], np.int16), expected_codes(processor.codec.codec, clips[row["key"]]))


def test_out_of_memory_releases_the_failed_pass_before_emptying_the_cache(tmp_path, monkeypatch):
    tar_of(tmp_path / "in/a.tar", "a", [CLIP_S] * 4, seed=3)
    processor, (a,) = processor_for(tmp_path, "codec.max_batch_seconds=40", "codec.max_clips=4")
    activations, alive_at_release = [], []

    def embeddings(batch):
        held = torch.ones(1000)  # the failed pass's activations: its frame holds them
        activations.append(weakref.ref(held))
        raise OOM_ERRORS["torch"]()

    def release():
        alive_at_release.append(any(ref() is not None for ref in activations))

    monkeypatch.setattr(processor.codec.codec, "_embeddings", embeddings)
    monkeypatch.setattr(processor.codec, "release_memory", release)
    result = processor.process(a)
    assert result.status == "done" and result.error_reasons == {"out_of_memory": 4}
    assert alive_at_release and not any(alive_at_release)


def test_allocation_failures_are_told_from_other_device_errors():
    assert is_out_of_memory(OOM_ERRORS["torch"]()) and is_out_of_memory(OOM_ERRORS["cublas"]())
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not a device error


def test_expandable_segments_are_set_unless_the_user_configured_the_allocator():
    env = {}
    assert prefer_expandable_segments(env) == "expandable_segments:True" and env[ALLOC_CONF] == "expandable_segments:True"
    env = {ALLOC_CONF: "max_split_size_mb:128"}
    assert prefer_expandable_segments(env) == "max_split_size_mb:128" and env[ALLOC_CONF] == "max_split_size_mb:128"


def test_lowered_budget_grows_back_only_after_clean_pools_and_waits_longer_after_each_failure():
    from codec import BatchPolicy

    budget = BatchBudget(BatchPolicy(480, 64), grow_after=3)
    assert budget.halve() and budget.policy == BatchPolicy(240, 32)
    assert [budget.pool_done() for _ in range(6)] == [False] * 5 + [True]  # 3 x 2^1 clean pools
    assert budget.policy == BatchPolicy(480, 64)
    assert not budget.pool_done()  # never above where it started
    assert budget.halve() and budget.halve() and budget.policy == BatchPolicy(120, 16)
    assert [budget.pool_done() for _ in range(24)] == [False] * 23 + [True]  # 3 x 2^3: it keeps failing, so it waits
    assert budget.policy == BatchPolicy(240, 32)
    one = BatchBudget(BatchPolicy(60, 1))
    assert not one.halve() and one.policy == BatchPolicy(60, 1)
