"""Which codes a clip has: the frame count and the input each encoder path sees, under a named convention.

- `model_card` (the default): the clip zero-padded to a whole number of hops (960 samples), `model.encode`
  on a batch of one, as transformers' feature extractor feeds it in the model card.
- `authors`: what the authors' own `HiggsAudioTokenizer.encode` (boson-ai's `boson-multimodal`) returns: no
  padding. Each path then has its own frame count: the DAC encoder's conv arithmetic on the clip, and HuBERT's
  (the clip resampled to 16 kHz, 160 samples of padding on each side, every `semantic_downsample_factor`-th
  frame). Where they differ, the authors encode the acoustic path again with 160 x semantic_downsample_factor
  (320) zeros on each side of the clip and cut both paths to the shorter.

`FrameRules.layout(n)` says, for a clip of n samples, what each path reads and how many frames come out;
`Codec` batches clips of any mix of layouts and returns each clip's codes as if it were encoded alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MODEL_CARD = "model_card"
AUTHORS = "authors"
CONVENTIONS = (MODEL_CARD, AUTHORS)

# transformers' tokenizer and the authors' both pad the 16 kHz signal by this much on each side before HuBERT
SEMANTIC_PAD = 160
# the authors' acoustic re-encode pads the 24 kHz clip by this much per semantic downsampling step, each side
AUTHORS_REENCODE_PAD = 160


def resampled_size(size: int, orig_rate: int, new_rate: int) -> int:
    """Samples that torchaudio's resampling of `size` samples returns."""
    return math.ceil(new_rate * size / orig_rate)


@dataclass(frozen=True)
class ClipLayout:
    """How one clip goes through the model: the semantic path reads its first `semantic_samples` samples
    (zeros past its end); the acoustic path reads `acoustic_shift` zeros, then the clip, zeros up to
    `acoustic_samples` in all; `frames` frames of codes come out."""

    semantic_samples: int
    acoustic_shift: int
    acoustic_samples: int
    frames: int


class FrameRules:
    def __init__(self, model, acoustic_chain, semantic_chain):
        config = model.config
        self.hop = config.hop_length
        self.sample_rate, self.semantic_rate = config.sample_rate, config.semantic_sample_rate
        self.factor = config.semantic_downsample_factor
        self._hubert_frames = model.semantic_model._get_feat_extract_output_lengths
        self._acoustic, self._semantic = acoustic_chain, semantic_chain
        self.reencode_pad = AUTHORS_REENCODE_PAD * self.factor

    def acoustic_frames(self, samples: int) -> int:
        return self._acoustic.output_length(samples)

    def semantic_frames(self, samples: int) -> int:
        """Frames of the semantic path for `samples` samples at the codec's rate (zeros past them alone)."""
        speech = resampled_size(samples, self.sample_rate, self.semantic_rate) + 2 * SEMANTIC_PAD
        hubert = int(self._hubert_frames(speech))
        return self._semantic.output_length(math.ceil(max(hubert, 0) / self.factor))

    def layout(self, samples: int, convention: str) -> ClipLayout:
        """Raises ValueError for a clip too short to give a frame under `convention`."""
        if convention == MODEL_CARD:
            padded = math.ceil(samples / self.hop) * self.hop
            return ClipLayout(padded, 0, padded, padded // self.hop)
        if convention != AUTHORS:
            raise ValueError(f"unknown convention {convention!r}; one of {CONVENTIONS}")
        acoustic, semantic = self.acoustic_frames(samples), self.semantic_frames(samples)
        if min(acoustic, semantic) < 1:
            raise ValueError(f"{samples} samples are too short for the authors' encode (acoustic {acoustic}, "
                             f"semantic {semantic} frames)")
        if acoustic == semantic:
            return ClipLayout(samples, 0, samples, acoustic)
        shifted = samples + 2 * self.reencode_pad
        return ClipLayout(samples, self.reencode_pad, shifted, min(self.acoustic_frames(shifted), semantic))


def resamples_to_ceil(convention: str) -> bool:
    """Whether a clip resampled to the codec's rate holds ceil(n x new / old) samples, zero-padded: librosa's
    `resample` (fix_length), the authors' preprocessing. Under model_card the clip is what soxr returns."""
    return convention == AUTHORS
