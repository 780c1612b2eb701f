"""Against the authors' own tokenizer code (boson-ai's HiggsAudioTokenizer from the boson-multimodal wheel, see
tests/authors_reference.py), built with the release's arguments and random weights, saved as the release is
(config.json + model.pth) and loaded by the project through its converter:

- the authors' state dict loads strictly (`semantic_model.masked_spec_embed` dropped, nothing else);
- under codec.convention=authors the pipeline's codes are what the authors' `encode` returns, frame count
  included, in every remainder class of the clip's length mod 960, at 16, 24 and 44.1 kHz input (the
  pipeline's own resampling and loudness normalisation), alone and batched, at every bandwidth;
- under model_card they are the model card's (`model.encode` on the clip zero-padded to whole hops).
"""

import numpy as np
import pytest
import torch

from codec import AUTHORS, MODEL_CARD, load_codec, reference_encode
from codec.original_format import ConversionError, convert_state_dict, released_config
from pipeline.audio.decode import to_model_audio
from tests.authors_reference import authors_codes, random_authors_tokenizer, save_release

HOP = 960
# (source rate, clip length in samples at 24 kHz): one length in each remainder class of the authors' frame
# rule, r = length mod 960: 0 | 1-118 (k frames) | 119-631 (k + 1, acoustic re-encoded with 320 zeros) | 632-959
CLIPS_24K = [(24000, 12 * HOP + r) for r in (0, 80, 118, 119, 400, 631, 632, 900)]


def speechlike(rng, samples: int) -> np.ndarray:
    envelope = np.abs(np.sin(np.linspace(0, 11, samples))) + 0.1
    return (0.15 * rng.standard_normal(samples) * envelope).astype(np.float32)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("authors")
    model = random_authors_tokenizer(seed=3)
    folder = save_release(model, str(root / "release"))
    codecs = {c: load_codec(folder, device="cpu", cache_dir=str(root / "cache"), convention=c)
              for c in (MODEL_CARD, AUTHORS)}
    return model, folder, codecs


def test_authors_state_dict_loads_strictly_dropping_only_the_unused_spec_augment_vector(release):
    model, _, codecs = release
    state = model.state_dict()
    assert "semantic_model.masked_spec_embed" in state  # what v1 of the converter refused
    expected = {k: tuple(v.shape) for k, v in codecs[AUTHORS].model.state_dict().items()}
    converted = convert_state_dict(state, expected)
    assert set(converted) == set(expected)
    for name, tensor in codecs[AUTHORS].model.state_dict().items():
        torch.testing.assert_close(converted[name], tensor, rtol=0, atol=0)
    with pytest.raises(ConversionError, match="semantic_model.bogus"):
        convert_state_dict({**state, "semantic_model.bogus": torch.zeros(3)}, expected)
    missing = dict(state)
    del missing["fc_post2.bias"]
    with pytest.raises(ConversionError, match="fc2.bias"):
        convert_state_dict(missing, expected)
    assert released_config().semantic_model_config.mask_time_prob == 0.0  # so nothing expects the vector


def _pipeline_wave(wave: np.ndarray, rate: int, loudness_lufs=None) -> np.ndarray:
    """The clip as the pipeline hands it to the codec under the authors' convention."""
    return to_model_audio(wave[:, None], rate, 24000, "HQ", 3600, loudness_lufs, ceil_length=True).wave


@pytest.mark.parametrize("rate,loudness", [(24000, None), (16000, None), (44100, -23.0)])
def test_authors_convention_gives_the_authors_codes_alone_and_batched(release, rate, loudness):
    model, _, codecs = release
    codec = codecs[AUTHORS]
    rng = np.random.default_rng(rate)
    # lengths at the source rate whose 24 kHz length (librosa's: ceil) lands in each remainder class
    sources = [speechlike(rng, -(-n * rate // 24000)) for _, n in CLIPS_24K]
    waves = [_pipeline_wave(w, rate, loudness) for w in sources]
    label = lambda r: 0 if r == 0 else 1 if r <= 118 else 2 if r <= 631 else 3  # noqa: E731
    assert {label(w.size % HOP) for w in waves} == {0, 1, 2, 3}
    reference = [authors_codes(model, w, rate, loudness) for w in sources]
    alone = [codec.encode([w], 2.0)[0] for w in waves]
    for wave, ref, got in zip(waves, reference, alone):
        assert got.shape == ref.shape, (wave.size % HOP, got.shape, ref.shape)
        np.testing.assert_array_equal(got, ref, err_msg=f"r={wave.size % HOP}")
    # every bandwidth batched against alone: tests/test_conventions.py; here the first and the last
    for bandwidth in (0.5, 2):
        batched = codec.encode(waves, bandwidth, max_batch_seconds=200.0, max_clips=16)
        k = codec.num_codebooks(bandwidth)
        for wave, ref, got in zip(waves, reference, batched):
            np.testing.assert_array_equal(got, ref[:k], err_msg=f"batched r={wave.size % HOP} {bandwidth} kbps")


def test_model_card_convention_gives_the_model_cards_codes_from_the_same_release(release):
    _, _, codecs = release
    codec = codecs[MODEL_CARD]
    rng = np.random.default_rng(5)
    waves = [speechlike(rng, n) for _, n in CLIPS_24K[:4]]
    batched = codec.encode(waves, 2.0, max_batch_seconds=200.0, max_clips=16)
    for wave, got in zip(waves, batched):
        np.testing.assert_array_equal(got, reference_encode(codec.model, wave, 2.0))
