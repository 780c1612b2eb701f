"""codec.convention: batched codes equal each clip alone under both conventions, in every remainder class of
the clip's length mod 960 and at every bandwidth; the authors' frame rule; config and output identity.

The authors' own tokenizer as the reference for the codes themselves is in test_authors_reference.py."""

import numpy as np
import pytest
import torch

from codec import AUTHORS, MODEL_CARD, load_codec
from codec.conventions import resamples_to_ceil
from pipeline.audio.decode import decode_bytes, to_model_audio
from pipeline.config import ConfigError, load_config
from pipeline.run import run_job
from pipeline.runstate import IdentityChanged
from pipeline.runstate.identity import check_identity
from demo.synth import SynthSample, encode_audio, synth_clip, write_tar
from tests.test_pipeline import config_for, read_rows

HOP = 960
# one length in each remainder class of the authors' frame rule (issue 18), and its edges: r = 0;
# 1-118 (k frames); 119-631 (k + 1, acoustic path re-encoded with 320 zeros each side); 632-959 (k + 1)
REMAINDERS = (0, 1, 60, 118, 119, 320, 631, 632, 959)


def clip(rng, samples: int) -> np.ndarray:
    return (0.2 * rng.standard_normal(samples) * np.abs(np.sin(np.linspace(0, 7, samples)))).astype(np.float32)


@pytest.fixture(scope="module")
def codecs():
    return {c: load_codec("random:tiny", device="cpu", seed=2, convention=c) for c in (MODEL_CARD, AUTHORS)}


def test_authors_frame_count_follows_their_rule_in_every_remainder_class(codecs):
    codec = codecs[AUTHORS]
    for k in (3, 20):
        for r in REMAINDERS:
            layout = codec.layout(k * HOP + r)
            assert layout.frames == (k if r <= 118 else k + 1), r
            assert layout.acoustic_shift == (320 if 119 <= r <= 631 else 0), r
            assert layout.semantic_samples == k * HOP + r
    assert codecs[MODEL_CARD].layout(3 * HOP + 1).frames == 4


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: cuBLAS/cuDNN kernels are checked where a GPU is"))])
@pytest.mark.parametrize("convention", [MODEL_CARD, AUTHORS])
def test_batched_codes_equal_each_clip_alone_in_every_remainder_class_and_bandwidth(codecs, convention, device):
    """Catches a mask that follows the wrong length at some layer (the rows of a batch then see their batch
    mates' padding) and a layout that is applied alone but not in batches (or the other way round); on a GPU
    also kernels picked by shape that change codes."""
    codec = codecs[convention] if device == "cpu" else load_codec("random:tiny", device=device, seed=2,
                                                                  convention=convention)
    rng = np.random.default_rng(7)
    waves = [clip(rng, k * HOP + r) for k, r in zip((2, 7, 4, 9, 3, 6, 5, 8, 2), REMAINDERS)]
    for bandwidth in (0.5, 1, 1.5, 2):
        alone = [codec.encode([w], bandwidth)[0] for w in waves]
        batched = codec.encode(waves, bandwidth, max_batch_seconds=100.0, max_clips=16)
        for r, wave, a, b in zip(REMAINDERS, waves, alone, batched):
            assert a.shape == b.shape == (codec.num_codebooks(bandwidth), codec.num_frames(wave.size)), r
            np.testing.assert_array_equal(a, b, err_msg=f"{convention} r={r} {bandwidth} kbps")


def test_authors_windowed_clip_batched_equals_alone_and_keeps_their_frame_count():
    """A clip longer than codec.window_s is windowed as under the model card; its last window must still read
    to the clip's end (past its last whole hop) and, in the re-encode class, its shifted acoustic input."""
    codec = load_codec("random:tiny", device="cpu", seed=2, window_s=1.0, context_s=0.5, convention=AUTHORS)
    rng = np.random.default_rng(8)
    long_shifted, long_short = clip(rng, 130 * HOP + 400), clip(rng, 110 * HOP + 50)
    short = clip(rng, 12 * HOP + 700)
    alone = [codec.encode([w], 2.0)[0] for w in (long_shifted, long_short, short)]
    batched = codec.encode([long_shifted, long_short, short], 2.0, max_batch_seconds=100.0, max_clips=16)
    assert [a.shape[1] for a in alone] == [131, 110, 13]
    for a, b in zip(alone, batched):
        np.testing.assert_array_equal(a, b)


def test_authors_and_model_card_codes_differ_where_their_padding_does(codecs):
    """The two conventions are not the same codes under another name: outside r = 0 they differ."""
    rng = np.random.default_rng(9)
    exact, padded = clip(rng, 20 * HOP), clip(rng, 20 * HOP + 60)
    card, authors = codecs[MODEL_CARD], codecs[AUTHORS]
    np.testing.assert_array_equal(card.encode([exact], 2.0)[0], authors.encode([exact], 2.0)[0])
    a, b = card.encode([padded], 2.0)[0], authors.encode([padded], 2.0)[0]
    assert a.shape[1] == 21 and b.shape[1] == 20
    assert not np.array_equal(a[:, :20], b)


def test_authors_convention_refuses_a_clip_too_short_for_a_frame(codecs):
    from codec import CodecInputError

    with pytest.raises(CodecInputError, match="too short for the authors' encode"):
        codecs[AUTHORS].encode([clip(np.random.default_rng(0), 500)], 2.0)
    assert codecs[MODEL_CARD].encode([clip(np.random.default_rng(0), 500)], 2.0)[0].shape[1] == 1


def test_decode_lines_up_a_clip_the_authors_encoded_with_leading_zeros(codecs):
    """In the re-encode class the acoustic codes start 320 samples before the clip: decoding must cut them, or
    every reconstruction (inspect --decode, the fidelity audit) is 13 ms late."""
    codec = codecs[AUTHORS]
    samples = 10 * HOP + 400
    (codes,) = codec.encode([clip(np.random.default_rng(3), samples)], 2.0)
    (raw,) = codec.decode([codes])
    (aligned,) = codec.decode([codes], lengths=[samples])
    assert aligned.size == samples
    np.testing.assert_array_equal(aligned, raw[320 : 320 + samples])
    # the first frames of that clip: the clip's own length decides the shift, not the samples asked for
    (first,) = codec.decode([codes[:, :4]])
    (short,) = codec.decode([codes[:, :4]], lengths=[2 * HOP], clip_samples=[samples])
    np.testing.assert_array_equal(short, first[320 : 320 + 2 * HOP])


def test_unknown_convention_is_a_config_error_naming_the_key_and_values(tmp_path):
    with pytest.raises(ConfigError, match=r"codec.convention.*model_card, authors"):
        load_config(None, ["source.kind=webdataset", "source.urls=[a.tar]", f"output.dir={tmp_path}",
                           "codec.convention=padded"])


def test_an_output_written_before_the_option_reads_as_model_card_and_refuses_authors():
    recorded = {"codec": {"spec": "random:tiny"}, "bandwidth": 2.0}
    assert check_identity(recorded, {**recorded, "convention": "model_card"}, False) == []
    with pytest.raises(IdentityChanged, match="convention: 'model_card' -> 'authors'"):
        check_identity(recorded, {**recorded, "convention": "authors"}, False)


def test_pipeline_under_authors_writes_their_frame_rule_from_other_rates_and_refuses_a_switch(tmp_path, ray_local):
    """End to end: 44.1 and 16 kHz files resampled to librosa's length (the authors' preprocessing), codes as
    the codec gives them alone; a rerun under the model card is an identity change."""
    rng = np.random.default_rng(11)
    samples = [SynthSample(f"k{i}", {"flac": encode_audio(synth_clip(rng, seconds, rate), rate, "flac")}, seconds)
               for i, (seconds, rate) in enumerate([(1.03, 44100), (0.77, 16000), (1.51, 44100), (2.0, 24000)])]
    write_tar(str(tmp_path / "in/a.tar"), samples)
    source = {"kind": "webdataset", "urls": [str(tmp_path / "in/a.tar")]}
    summary = run_job(config_for(tmp_path, source, "codec.convention=authors"))
    assert summary.status == "complete"
    codec = load_codec("random:tiny", device="cpu", convention=AUTHORS)
    rows = {row["key"]: row for row in read_rows(tmp_path / "out")}
    assert resamples_to_ceil(AUTHORS)
    for sample in samples:
        array, rate = decode_bytes(sample.members["flac"])
        wave = to_model_audio(array, rate, 24000, "HQ", 3600, ceil_length=True).wave
        assert wave.size == -(-array.shape[0] * 24000 // rate)
        (expected,) = codec.encode([wave], 2.0)
        got = np.array(rows[sample.key]["codes"])
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(IdentityChanged, match="convention"):
        run_job(config_for(tmp_path, source, "codec.convention=model_card", name="again.yaml"))


def test_blocked_decode_pads_to_librosas_length_as_the_whole_file_path_does(tmp_path):
    """A file over the blocked-decode threshold is resampled in a stream: under the authors' convention it must
    end at the same ceil length as a clip decoded whole, or long files get other frame counts than short ones."""
    from pipeline.audio.decode import decode_audio

    rate = 22050  # 94,108 frames: soxr returns 102,430 samples at 24 kHz, librosa 102,431
    data = encode_audio(synth_clip(np.random.default_rng(12), 5.0, rate)[:94108], rate, "flac")
    whole = decode_audio(data, 24000, "HQ", 3600.0, ceil_length=True).wave
    blocked = decode_audio(data, 24000, "HQ", 3600.0, blocked_above_s=0.5, ceil_length=True).wave
    frames = decode_bytes(data)[0].shape[0]
    assert whole.size == blocked.size == -(-frames * 24000 // rate)
    np.testing.assert_array_equal(blocked[0 : blocked.size], whole)


def test_audit_and_inspect_load_the_manifests_convention():
    from pipeline.reading.fidelity import manifest_convention

    assert manifest_convention({"identity": {"convention": "authors"}}) == AUTHORS
    assert manifest_convention({"identity": {"bandwidth": 2.0}}) == MODEL_CARD  # written before the option
