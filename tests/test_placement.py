"""The codec on a device that is not the host, proven on a machine without one.

The codec is built for `meta` (tensors with shapes and no data) under `demo.traffic.DeviceTraffic`, which
refuses any op whose tensors sit on two devices, as CUDA does ("Input type (torch.FloatTensor) and weight type
(torch.cuda.FloatTensor) should be the same"), and counts what crosses between host and device. Codes from
meta are placeholders; the other tests check their values on CPU."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from codec import BatchPolicy, calibrate, calibration
from codec.codec import Codec, CodecIdentity
from codec.conventions import AUTHORS, MODEL_CARD
from codec.memory import release_device_memory
from codec.presets import build_random_model
from demo.traffic import DeviceTraffic

SR = 24000
# windows of 2 s, and the acoustic encoder in chunks of 0.2 s (+ 26 frames of context each side): a batch of
# clips over ~2.3 s runs both, so the masks meet chunk and window seams
SMALL = dict(window_s=2.0, context_s=0.4, acoustic_chunk_s=0.2)


def clips(*seconds: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(s * SR) + 37 * i)).astype(np.float32) for i, s in enumerate(seconds)]


@pytest.fixture(scope="module")
def host_model():
    return build_random_model("tiny", 0)  # on the host, as the loader builds it; the codec moves it


@pytest.fixture(scope="module", params=[MODEL_CARD, AUTHORS])
def meta_codec(request, host_model):
    mode = DeviceTraffic("meta")
    with mode:
        codec = Codec(copy.deepcopy(host_model), CodecIdentity("random:tiny", "seed=0", "", None, "random"), torch.device("meta"),
                      convention=request.param, **SMALL)
    return codec, mode.traffic


class _NoMemoryLimit:
    """A device memory reader that makes calibration run each candidate's worst-case batch."""

    def total(self):
        return 1 << 40

    def reset(self):
        pass

    def peak(self):
        return 0


def test_codec_on_a_device_never_meets_a_host_tensor(meta_codec, monkeypatch):
    """Construction (padding-mask probe, frame rules, fast ops, staging), a batch of unequal clips, a long clip
    in windows, the acoustic chunks, calibration's worst case, the out-of-memory retry's clip-by-clip encode and
    `decode`: every op sees one device (DeviceTraffic raises MixedDevices otherwise)."""
    codec, _ = meta_codec
    assert next(codec.model.parameters()).device.type == "meta"
    with DeviceTraffic("meta"):
        waves = clips(0.6, 2.5, 5.3, 1.7)  # 5.3 s: three windows; a window and the 2.5 s clip run in chunks
        codes = codec.encode(waves, 2.0, max_clips=8)
        assert [c.shape for c in codes] == [(8, codec.num_frames(w.size)) for w in waves]
        codec.encode(waves[:1], 2.0, max_clips=1)  # what the out-of-memory retry runs, after releasing memory
        release_device_memory(codec.device)
        monkeypatch.setattr(calibration, "calibration_clips", lambda seconds: clips(0.7, 1.1))
        calibrate(codec, 2.0, candidates=(BatchPolicy(4, 2),), memory=_NoMemoryLimit())
        (audio,) = codec.decode([np.zeros((8, 20), np.int16)], lengths=[19000])
        assert audio.shape == (19000,)


def test_a_batch_reads_no_device_value_and_copies_back_once(meta_codec):
    """Per batch: one blocking device-to-host copy (the codes), the audio and one table of lengths to the device,
    no value read (`.item()`, `bool(t)`, `nonzero`, boolean-mask indexing: each waits on the GPU). HuBERT's own
    padding path reads two values per batch; the padding masks build theirs from the lengths instead."""
    codec, _ = meta_codec
    paths = 1 if codec.convention == MODEL_CARD else 2  # the authors' acoustic path may read other samples
    mode = DeviceTraffic("meta")
    with mode:
        codec.encode(clips(0.6, 1.3, 1.9, 1.6), 2.0, max_clips=8)  # one batch, no clip in windows
    t = mode.traffic
    assert (t.d2h_blocking, t.d2h_non_blocking, t.value_reads) == (1, 0, 0), mode.reads
    assert 2 <= t.h2d_pinned + t.h2d_pageable <= paths + 1


@pytest.mark.parametrize("dtype, allow_tf32", [("float32", True), ("bfloat16", False), ("bfloat16", True)])
def test_quantizer_runs_in_ieee_float32_whatever_math_the_encoders_use(tiny_codec, dtype, allow_tf32):
    """codec.allow_tf32 and bf16 autocast are for the encoders; the fusion and RVQ (projection, distances,
    argmin) see TF32 off and no autocast, and the process's flags are as they were after the encode."""
    codec, saved = tiny_codec, (tiny_codec.dtype, tiny_codec.allow_tf32)
    codec.dtype, codec.allow_tf32 = getattr(torch, dtype), allow_tf32  # as load_codec(dtype=, allow_tf32=) sets them
    seen = {}

    def record(name):
        def hook(module, args):
            seen[name] = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                          torch.is_autocast_enabled("cpu"))
        return hook

    handles = [codec.model.quantizer.quantizers[0].project_in.register_forward_pre_hook(record("quantizer")),
               codec.model.semantic_model.feature_projection.register_forward_pre_hook(record("encoder"))]
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        codec.encode(clips(0.5, 0.7), 2.0, max_clips=2)
    finally:
        for handle in handles:
            handle.remove()
        codec.dtype, codec.allow_tf32 = saved
    assert seen["quantizer"] == (False, False, False)
    assert seen["encoder"] == (allow_tf32, allow_tf32, dtype == "bfloat16")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


@pytest.mark.parametrize("convention", [MODEL_CARD, AUTHORS])
def test_batches_on_the_shape_grid_give_each_clip_its_own_codes(host_model, convention):
    """On the grid a batch is padded past its longest clip (frames rounded up, a clip count from a small set):
    the masks must keep that padding out of the codes, for the longest clip too."""
    from codec.batching import GRID_COUNTS

    model = copy.deepcopy(host_model)
    identity = CodecIdentity("random:tiny", "seed=0", "", None, "random")
    gridded = Codec(model, identity, torch.device("cpu"), convention=convention, shape_grid=True)
    waves = clips(0.45, 1.37, 0.93, 1.12, 0.61, seed=3)
    shapes = []
    plan = gridded._plan
    gridded._plan = lambda semantic, *rest: shapes.append(tuple(semantic.shape)) or plan(semantic, *rest)
    got = gridded.encode(waves, 2.0, max_clips=8)
    (alone,) = gridded.encode(waves[1:2], 2.0)  # one clip, 35 frames padded to 36: nothing else to mask against
    assert all(rows in GRID_COUNTS for rows, _, _ in shapes) and any(t % 960 == 0 and t > 960 * 34 for _, _, t in shapes)
    gridded.shape_grid = False
    np.testing.assert_array_equal(alone, gridded.encode(waves[1:2], 2.0)[0])
    for wave, codes in zip(waves, got):
        np.testing.assert_array_equal(codes, gridded.encode([wave], 2.0, max_clips=1)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 exists on CUDA only")
def test_quantizer_codes_from_fixed_embeddings_are_equal_with_tf32_on_and_off():
    from codec import load_codec

    codec = load_codec("random:tiny", device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    channels = codec.model.fc.in_features
    embeddings = torch.randn(4, channels, 200, device="cuda", generator=generator)
    halves = (embeddings[:, :16], embeddings[:, 16:])  # rejoined by the fusion: where it splits does not matter
    codes = {}
    for tf32 in (False, True):
        codec.allow_tf32 = tf32
        with torch.inference_mode():
            codes[tf32] = codec._codes(halves, 2.0).cpu()
    assert torch.equal(codes[False], codes[True])
