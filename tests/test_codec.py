import numpy as np
import pytest
import torch
import torchaudio

from codec import BatchPolicy, CodecInputError, FileWave, load_codec, plan_batches, reference_encode
from codec.codec import resampled_range
from codec.waves import CHECK_CHUNK
from codec.windowing import split_into_pieces

HOP = 960


@pytest.fixture(scope="module")
def codec():
    return load_codec("random:tiny", device="cpu", window_s=2.0, context_s=1.0)


def noise(rng, n):
    # speech-like envelope so that frames differ in level, not just in noise
    envelope = 0.05 + 0.3 * np.abs(np.sin(np.linspace(0, rng.uniform(2, 20), n)))
    return (envelope * rng.standard_normal(n)).astype(np.float32)


def random_mix(seed):
    rng = np.random.default_rng(seed)
    lengths = [1, 500, HOP, 3 * HOP, 24000 + 17] + [int(rng.integers(100, 24000 * 2)) for _ in range(5)]
    rng.shuffle(lengths)
    return rng, [noise(rng, n) for n in lengths]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_codes_equal_canonical_codes(codec, seed):
    rng, waves = random_mix(seed)
    budget = float(rng.uniform(1.0, 12.0))
    got = codec.encode(waves, 2.0, max_batch_seconds=budget, max_clips=int(rng.integers(2, 8)))
    for wave, codes in zip(waves, got):
        expected = reference_encode(codec.model, wave, 2.0)
        assert codes.dtype == np.int16
        assert codes.shape == (8, -(-wave.size // HOP))
        np.testing.assert_array_equal(codes, expected)


def test_plain_zero_padding_changes_codes(codec):
    # The property above is not free: the unmasked model gives other codes in a padded batch.
    _, waves = random_mix(0)
    total = max(w.size for w in waves)
    total = -(-total // HOP) * HOP
    batch = torch.zeros(len(waves), 1, total)
    for i, w in enumerate(waves):
        batch[i, 0, : w.size] = torch.from_numpy(w)
    with torch.inference_mode():
        plain = codec.model.encode(batch, bandwidth=2.0, return_dict=False).numpy()
    agreement = [
        (plain[i, :, : -(-w.size // HOP)] == reference_encode(codec.model, w, 2.0)).mean()
        for i, w in enumerate(waves)
        if w.size < total - HOP
    ]
    assert min(agreement) < 0.9


def reference_embeddings(model, wave):
    padded = np.pad(wave, (0, -(-wave.size // HOP) * HOP - wave.size))
    audio = torch.from_numpy(padded)[None, None]
    with torch.inference_mode():
        semantic = model.encoder_semantic(model._extract_semantic_features(audio).transpose(1, 2))
        acoustic = model.acoustic_encoder(audio)
    return acoustic[0].numpy(), semantic[0].numpy()


def test_each_path_matches_single_clip_embeddings(codec):
    _, waves = random_mix(3)
    got = codec.embeddings(waves, max_batch_seconds=30.0, max_clips=10)
    for wave, (acoustic, semantic) in zip(waves, got):
        ref_acoustic, ref_semantic = reference_embeddings(codec.model, wave)
        for name, a, b in (("acoustic", acoustic, ref_acoustic), ("semantic", semantic, ref_semantic)):
            scale = np.abs(b).max()
            assert a.shape == b.shape, name
            np.testing.assert_allclose(a, b, atol=1e-4 * scale, rtol=0, err_msg=name)


def test_unmasked_acoustic_path_differs(codec):
    # Without the convolution masks the acoustic embedding of a padded clip drifts: the check above can fail.
    rng = np.random.default_rng(4)
    short, long = noise(rng, 5 * HOP), noise(rng, 40 * HOP)
    ref_acoustic, _ = reference_embeddings(codec.model, short)
    handles = codec._masks._handles
    saved = codec._masks._valid
    with torch.inference_mode():
        audio = torch.zeros(2, 1, 40 * HOP)
        audio[0, 0, : short.size] = torch.from_numpy(short)
        audio[1, 0] = torch.from_numpy(long)
        unmasked = codec.model.acoustic_encoder(audio)[0, :, :5].numpy()
    assert handles and saved == {}
    assert np.abs(unmasked - ref_acoustic).max() > 1e-3 * np.abs(ref_acoustic).max()


@pytest.mark.parametrize("bandwidth,count", [(0.5, 2), (1, 4), (1.5, 6), (2, 8)])
def test_bandwidth_picks_codebook_count(codec, bandwidth, count):
    assert codec.num_codebooks(bandwidth) == count
    (codes,) = codec.encode([noise(np.random.default_rng(5), 3000)], bandwidth)
    assert codes.shape == (count, 4)
    assert codes.max() < 1024 and codes.min() >= 0


def test_bad_bandwidth_lists_valid_ones(codec):
    with pytest.raises(CodecInputError, match=r"0\.75.*\[0\.5, 1, 1\.5, 2\]"):
        codec.encode([noise(np.random.default_rng(0), 1000)], 0.75)


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.zeros(0, np.float32), "clip 1: empty"),
        (np.array([0.0, np.nan, 0.1], np.float32), "clip 1: 1 non-finite samples \\(NaN\\)"),
        (np.array([0.0, np.inf], np.float32), "clip 1: 1 non-finite samples \\(inf\\)"),
        (np.zeros(100, np.float64), "clip 1: expected dtype float32"),
        (np.zeros((2, 100), np.float32), "clip 1: expected a 1-D mono waveform"),
        ([0.1, 0.2], "clip 1: expected a numpy array"),
    ],
)
def test_bad_input_names_clip_and_problem(codec, bad, message):
    with pytest.raises(CodecInputError, match=message):
        codec.encode([np.zeros(100, np.float32), bad], 1.0)


def test_random_presets_are_deterministic_and_use_the_codebook():
    rng = np.random.default_rng(6)
    waves = [noise(rng, 24000 * 3)]
    a = load_codec("random:tiny", device="cpu", seed=3).encode(waves, 2.0)[0]
    b = load_codec("random:tiny", device="cpu", seed=3).encode(waves, 2.0)[0]
    c = load_codec("random:tiny", device="cpu", seed=4).encode(waves, 2.0)[0]
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.5
    assert all(len(np.unique(row)) > 20 for row in a)


def test_identity_names_spec_and_config(codec):
    identity = codec.identity.as_dict()
    assert identity["spec"] == "random:tiny" and identity["revision"] == "seed=0"
    assert len(identity["config_sha256"]) == 64
    assert codec.sample_rate == 24000 and codec.hop_length == HOP and codec.frame_rate == 25


def test_decode_returns_each_clip_at_its_length(codec):
    rng = np.random.default_rng(7)
    waves = [noise(rng, n) for n in (700, 24000, 5 * HOP)]
    codes = codec.encode(waves, 1.0)
    audio = codec.decode(codes)
    assert [a.shape for a in audio] == [(HOP,), (25 * HOP,), (5 * HOP,)]
    trimmed = codec.decode(codes, lengths=[w.size for w in waves])
    assert [a.size for a in trimmed] == [w.size for w in waves]
    assert all(a.dtype == np.float32 and np.isfinite(a).all() and a.std() > 0 for a in audio)


def test_windowed_long_encode_matches_single_pass(codec):
    rng = np.random.default_rng(8)
    wave = noise(rng, 24000 * 9 + 123)  # window 2 s, context 1 s -> five windows, four seams
    (windowed,) = codec.encode([wave], 2.0)
    single = reference_encode(codec.model, wave, 2.0)
    assert len(split_into_pieces(0, single.shape[1], codec.window_frames, codec.context_frames)) == 5
    assert windowed.shape == single.shape
    assert (windowed == single).mean() >= 0.99
    seams = [50 * k + d for k in range(1, 5) for d in (-1, 0)]
    assert (windowed[:, seams] == single[:, seams]).mean() >= 0.9


def file_wave(samples: np.ndarray, chunk: int = 10_000) -> FileWave:
    wave = FileWave()
    for start in range(0, samples.size, chunk):
        wave.append(samples[start : start + chunk])
    return wave


def test_a_file_backed_wave_gets_the_codes_of_the_same_array(codec):
    rng = np.random.default_rng(9)
    arrays = [noise(rng, 24000 * 9 + 123), noise(rng, 24000 + 17)]  # five windows; one pass
    expected = codec.encode(arrays, 2.0)
    for got, want in zip(codec.encode([file_wave(a) for a in arrays], 2.0), expected):
        np.testing.assert_array_equal(got, want)
    # the windows' statistics, from many chunks of a FileWave and from the array in one
    size = codec.num_frames(arrays[0].size) * HOP
    chunked = codec._clip_group_norm_stats(file_wave(arrays[0]), size, chunk=700)
    whole = codec._clip_group_norm_stats(arrays[0], size, chunk=10**9)
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_semantic_resampling_by_ranges_equals_resampling_the_whole_clip():
    wave = noise(np.random.default_rng(10), 24000 * 3 - 17)
    size = wave.size + 17
    whole = torchaudio.functional.resample(torch.from_numpy(np.pad(wave, (0, 17))), 24000, 16000)
    n = whole.numel()
    for start, stop in [(-160, 1000), (0, n), (12345, 23456), (12346, 12349), (n - 500, n + 160), (-5, 3), (n, n + 9)]:
        expected = torch.zeros(stop - start)
        expected[max(start, 0) - start : min(stop, n) - start] = whole[max(start, 0) : min(stop, n)]
        # the same input around each sample; the convolution's rounding may differ in the last bit with the length
        torch.testing.assert_close(resampled_range(file_wave(wave), size, 24000, 16000, start, stop), expected,
                                   rtol=0, atol=1e-6 * whole.abs().max().item(), msg=str((start, stop)))


def test_non_finite_samples_of_a_file_wave_are_counted_across_chunks(codec):
    samples = noise(np.random.default_rng(11), CHECK_CHUNK + 1000)
    samples[[3, CHECK_CHUNK + 5]] = [np.nan, np.inf]
    with pytest.raises(CodecInputError, match=r"clip 0: 2 non-finite samples \(NaN\)"):
        codec.encode([file_wave(samples)], 1.0)


def test_plan_batches_respects_budget_and_covers_all():
    rng = np.random.default_rng(9)
    lengths = [int(x) for x in rng.integers(1, 24000 * 20, 200)]
    policy = BatchPolicy(max_batch_seconds=60.0, max_clips=7)
    batches = plan_batches(lengths, 24000, policy)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for batch in batches:
        assert len(batch) <= 7
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 60 * 24000
    with pytest.raises(ValueError, match="max_clips"):
        BatchPolicy(max_batch_seconds=1.0, max_clips=0)


def test_fast_ops_are_bit_identical_to_stock_layers(codec):
    audio = torch.from_numpy(noise(np.random.default_rng(10), 20 * HOP))[None, None]
    with torch.inference_mode():
        stock = codec.model.acoustic_encoder(audio)
        with codec._fast_ops.active():
            fast = codec.model.acoustic_encoder(audio)
    assert codec._fast_ops.enabled is False
    assert torch.equal(stock, fast)


class FakeDevice:
    """Stands in for the codec's encode and the device's memory (of `total_mb`; None: a CPU, no device memory): the
    peak since `reset` is `mb_per_clip` per clip of the largest batch encoded; the candidate of `slow_clips` clips
    takes 0.3 s more per call, a margin no timing noise can hide; `fails`: clips -> the error that candidate raises.
    Only the calibration's own logic runs."""

    def __init__(self, codec, monkeypatch, total_mb: int | None, mb_per_clip: int, slow_clips: int, fails: dict = {}):
        import time

        self.total_mb, self.mb_per_clip, self.largest = total_mb, mb_per_clip, 0

        def encode(waves, bandwidth, max_batch_seconds=None, max_clips=None):
            if max_clips in fails:
                raise fails[max_clips]
            self.largest = max(self.largest, min(len(waves), max_clips))
            time.sleep(0.3 if max_clips == slow_clips else 0.0)
            return [np.zeros((8, 1), np.int16) for _ in waves]

        monkeypatch.setattr(codec, "encode", encode)

    def total(self):
        return None if self.total_mb is None else self.total_mb * 2**20

    def reset(self):
        self.largest = 0

    def peak(self):
        return None if self.total_mb is None else self.largest * self.mb_per_clip * 2**20


@pytest.mark.parametrize("slow", [0, 1])
def test_calibration_keeps_the_candidate_that_is_really_faster(codec, monkeypatch, slow):
    from codec import calibrate

    candidates = (BatchPolicy(10.0, 1), BatchPolicy(10.0, 4))
    device = FakeDevice(codec, monkeypatch, total_mb=None, mb_per_clip=0, slow_clips=candidates[slow].max_clips)
    best, table = calibrate(codec, 2.0, candidates=candidates, seconds=6.0, memory=device)
    assert [row["policy"] for row in table] == [c.__dict__ for c in candidates]
    assert best == candidates[1 - slow]


def test_calibration_skips_a_faster_policy_whose_peak_memory_leaves_less_than_the_headroom_free(tiny_codec, monkeypatch):
    calibrated_with_headroom(tiny_codec, monkeypatch)


def calibrated_with_headroom(tiny_codec, monkeypatch) -> list[dict]:
    """The calibration table of a faster policy left out for the headroom (checked here)."""
    from codec import calibrate

    # 480 s budgets admit 4 window-long (120 s) clips: each candidate's worst-case batch is 1 or 4 clips
    candidates = (BatchPolicy(480.0, 1), BatchPolicy(480.0, 4))
    # 4 clips x 220 MB = 880 MB of 1000: fits, but leaves 12% free, under the 15% headroom
    device = FakeDevice(tiny_codec, monkeypatch, total_mb=1000, mb_per_clip=220, slow_clips=1)
    best, table = calibrate(tiny_codec, 2.0, candidates=candidates, seconds=2.0, memory=device, headroom=0.15)
    assert best == candidates[0]
    assert [(row["peak_memory_mb"], row["kept"]) for row in table] == [(220, True), (880, False)]
    # the one left out was the faster: without the headroom it would have been kept
    assert table[1]["audio_s_per_s"] > table[0]["audio_s_per_s"] and "less than 15%" in table[1]["note"]
    return table


def test_calibration_survives_an_allocation_runtime_error_and_keeps_a_policy_that_fits(tiny_codec, monkeypatch):
    from codec import calibrate

    cublas = RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
    device = FakeDevice(tiny_codec, monkeypatch, total_mb=None, mb_per_clip=0, slow_clips=0, fails={4: cublas})
    best, table = calibrate(tiny_codec, 2.0, candidates=(BatchPolicy(10.0, 1), BatchPolicy(10.0, 4)), seconds=2.0,
                            memory=device)
    assert best == BatchPolicy(10.0, 1) and table[1]["audio_s_per_s"] is None
    assert table[1]["note"].startswith("out of memory (CUDA error: CUBLAS_STATUS_ALLOC_FAILED")


def test_plan_batches_pads_no_more_than_greedy_filling():
    from codec.batching import BATCH_OVERHEAD_SHARE

    rng = np.random.default_rng(11)
    lengths = [int(x * 24000) for x in np.clip(rng.lognormal(np.log(4.0), 0.8, 400), 0.5, 30)]
    policy = BatchPolicy(max_batch_seconds=120.0, max_clips=16)
    overhead = BATCH_OVERHEAD_SHARE * 120 * 24000

    def cost(batches):
        return sum(len(b) * max(lengths[i] for i in b) + overhead for b in batches)

    order = sorted(range(400), key=lambda i: lengths[i], reverse=True)
    greedy, current = [], []
    for i in order:  # fill each batch to the first limit it hits
        if current and (len(current) == 16 or (len(current) + 1) * lengths[current[0]] > 120 * 24000):
            greedy.append(current)
            current = []
        current.append(i)
    greedy.append(current)
    planned = plan_batches(lengths, 24000, policy)
    assert cost(planned) <= cost(greedy)
    efficiency = sum(lengths) / sum(len(b) * max(lengths[i] for i in b) for b in planned)
    assert efficiency > 0.9


def test_chunked_acoustic_path_equals_single_pass():
    # chunks of 10 frames with 26 frames of context: clips over ~2.5 s run in several chunks
    chunked = load_codec("random:tiny", device="cpu", acoustic_chunk_s=0.4)
    assert chunked.acoustic_chunk_frames == 10 and chunked.acoustic_context_frames > 10
    rng = np.random.default_rng(12)
    waves = [noise(rng, n) for n in (24000 * 5 + 7, 24000 * 3, 700, 24000 * 4 - 960)]
    got = chunked.encode(waves, 2.0, max_batch_seconds=30.0, max_clips=4)
    for wave, codes in zip(waves, got):
        np.testing.assert_array_equal(codes, reference_encode(chunked.model, wave, 2.0))
    for wave, (acoustic, _) in zip(waves, chunked.embeddings(waves, max_batch_seconds=30.0, max_clips=4)):
        ref_acoustic, _ = reference_embeddings(chunked.model, wave)
        np.testing.assert_allclose(acoustic, ref_acoustic, atol=1e-4 * np.abs(ref_acoustic).max(), rtol=0)


def test_staging_buffer_reused_across_batches_leaves_no_stale_samples():
    """The host buffer is reused for every batch: a shorter clip staged after a longer one must see zeros past
    its end, not the previous batch's samples (which would enter the first convolutions as audio)."""
    from codec.staging import StagingBuffer

    staging = StagingBuffer(torch.device("cpu"))
    first = staging.to_device([np.full(10, 0.5, np.float32), np.full(7, 0.25, np.float32)], 12)
    pointer = staging._buffer.data_ptr()
    second = staging.to_device([np.full(3, 1.0, np.float32)], 12)
    assert staging._buffer.data_ptr() == pointer  # reused, not allocated again
    assert second.shape == (1, 1, 12)
    np.testing.assert_array_equal(second[0, 0].numpy(), [1.0] * 3 + [0.0] * 9)
    np.testing.assert_array_equal(first[1, 0].numpy(), [0.25] * 7 + [0.0] * 5)  # not overwritten by the reuse


def test_calibration_where_every_candidate_runs_out_of_memory_halves_the_budget_instead_of_ending_the_actor(
        tiny_codec, monkeypatch):
    from codec import calibrate

    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    device = FakeDevice(tiny_codec, monkeypatch, total_mb=None, mb_per_clip=0, slow_clips=0, fails={8: oom, 16: oom})
    best, table = calibrate(tiny_codec, 2.0, candidates=(BatchPolicy(40.0, 8), BatchPolicy(80.0, 16)), seconds=2.0,
                            memory=device)
    assert best == BatchPolicy(20.0, 4)
    assert [(row["policy"]["max_clips"], row["kept"]) for row in table] == [(8, False), (16, False), (4, True)]
