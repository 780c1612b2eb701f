"""The Higgs Audio V2 tokenizer (this project's `codec` package) behind the pipeline's `Tokenizer` interface.

The only module of `pipeline/` that imports `codec`: everything else goes through `pipeline.tokenizer`. It is the
default kind, so every `codec.model` that worked before (a hub id, a local folder in either format, `random:tiny`,
`random:full`) comes here unchanged, and the manifest's identity and the codes are the codec's own.

Importing it costs no torch: `codec` names load on first use (PEP 562), so a decode task that only needs
`FileWave` stays light. The codec's own types the pipeline hands it (`FileWave`, `BatchPolicy`, its input error)
and its helpers the actor also needs (`release_freed_heap`, `resolve_device`) are exported from here.
"""

from __future__ import annotations

import codec
from codec import BatchPolicy, CodecInputError, FileWave
from codec.conventions import AUTHORS, MODEL_CARD, resamples_to_ceil
from codec.heap import release_freed_heap

from .base import Resolved, Tokenizer, TokenizerSpecError

__all__ = ["BatchPolicy", "CodecInputError", "FileWave", "HiggsTokenizer", "release_freed_heap", "resolve_device"]


def _seed_of(identity: dict) -> int:
    """A random preset's seed, as its identity records it (revision `seed=N`); 0 for any other checkpoint."""
    revision = str(identity.get("revision") or "")
    return int(revision.split("=", 1)[1]) if revision.startswith("seed=") else 0


def resolve_device(device: str):
    """The torch device `codec.device` names in this process ('auto': CUDA where torch sees it, else CPU)."""
    return codec.resolve_device(device)


class HiggsTokenizer(Tokenizer, kind="higgs", default=True):
    """A loaded `codec.Codec` (`.codec`), as the interface presents it."""

    CARD_TITLE = "Higgs Audio V2 codec tokens"
    CARD_TAGS = ["audio-tokens", "higgs-audio-v2"]
    CONVENTIONS = {MODEL_CARD: "zero-padded to whole hops, as the model card encodes",
                   AUTHORS: "as boson-ai's own HiggsAudioTokenizer.encode: no padding"}

    def __init__(self, loaded):
        self.codec = loaded

    # ---- the kind ------------------------------------------------------------------------------------
    @classmethod
    def resolve(cls, spec: str, revision: str | None = None, seed: int = 0) -> Resolved:
        try:
            checkpoint, config = codec.resolve_checkpoint(spec, revision, seed)
        except codec.CheckpointError as error:
            raise TokenizerSpecError(str(error)) from None
        where = f"{checkpoint.repo} @ commit {checkpoint.commit}" if checkpoint.repo else checkpoint.spec
        how = {"original": "original release format, converted on load", "transformers": "transformers format",
               "random": f"random weights, seed {checkpoint.seed}"}[checkpoint.format]
        return Resolved(
            cls.KIND, checkpoint, checkpoint.identity().as_dict(), config.sample_rate, config.hop_length,
            config.codebook_size, list(config.target_bandwidths),
            {float(b): codec.codebooks_for_bandwidth(config, b) for b in config.target_bandwidths},
            f"{where} ({how}); weights sha256 {(checkpoint.weights_sha256 or 'n/a')[:16]}", tuple(checkpoint.notes))

    @classmethod
    def load(cls, model, settings, device: str) -> HiggsTokenizer:
        c = settings
        return cls(codec.load_codec(
            model.checkpoint if isinstance(model, Resolved) else model, device=device, dtype=c.dtype, seed=c.seed,
            revision=c.revision, window_s=c.window_s, context_s=c.context_s, allow_tf32=c.allow_tf32,
            cache_dir=c.cache_dir, convention=c.convention))

    @classmethod
    def from_identity(cls, identity: dict, convention: str, device: str = "auto") -> HiggsTokenizer:
        spec = identity["spec"]
        return cls(codec.load_codec(spec, device=device, seed=_seed_of(identity),
                                    revision=None if spec.startswith("random:") else identity.get("revision"),
                                    convention=convention))

    @classmethod
    def decode_snippet(cls, identity: dict, num_codebooks: int) -> str:
        spec, revision = identity.get("spec"), identity.get("revision")
        if str(spec).startswith("random:"):
            load = f"load_codec({spec!r}, seed={_seed_of(identity)})"
        else:
            load = f"load_codec({spec!r}, revision={revision!r})"
        return f"""```python
import numpy as np
from datasets import load_dataset
from codec import load_codec   # this project's codec package (audiotok)

rows = load_dataset("ORG/NAME", split="train")   # or the output folder itself
row = rows[0]
codes = np.asarray(row["codes"], dtype=np.int64)   # [{num_codebooks}, num_frames]
codec = {load}
(audio,) = codec.decode([codes], lengths=[round(row["duration_s"] * codec.sample_rate)])   # 24 kHz mono
```
"""

    @classmethod
    def resamples_to_ceil(cls, convention: str) -> bool:
        return resamples_to_ceil(convention)

    @staticmethod
    def is_out_of_memory(error: BaseException) -> bool:
        return codec.is_out_of_memory(error)

    # ---- facts: the codec's own ---------------------------------------------------------------------------
    identity = property(lambda self: self.codec.identity)
    device = property(lambda self: self.codec.device)
    sample_rate = property(lambda self: self.codec.sample_rate)
    hop_length = property(lambda self: self.codec.hop_length)
    frame_rate = property(lambda self: self.codec.frame_rate)
    bandwidths = property(lambda self: self.codec.bandwidths)
    convention = property(lambda self: self.codec.convention)
    encoded_frames = property(lambda self: self.codec.encoded_frames)

    @property
    def policy(self) -> BatchPolicy:
        return self.codec.policy

    @policy.setter
    def policy(self, policy: BatchPolicy) -> None:
        self.codec.policy = policy

    def num_codebooks(self, bandwidth: float) -> int:
        return self.codec.num_codebooks(bandwidth)

    def frames_reaching(self, samples: int, clip_samples: int) -> int:
        # under the authors' convention a clip may be encoded after leading zeros: its frames start before it
        return -(-(samples + self.codec.layout(clip_samples).acoustic_shift) // self.hop_length)

    # ---- encode, decode, batches, memory ---------------------------------------------------------------
    def encode(self, waveforms: list, bandwidth: float, max_batch_seconds: float | None = None,
               max_clips: int | None = None) -> list:
        return self.codec.encode(waveforms, bandwidth, max_batch_seconds, max_clips)

    def decode(self, codes_list: list, lengths: list[int] | None = None,
               clip_samples: list[int] | None = None) -> list:
        return self.codec.decode(codes_list, lengths, clip_samples)

    def policy_with(self, max_batch_seconds: float | None, max_clips: int | None) -> BatchPolicy:
        return self.codec.policy_with(max_batch_seconds, max_clips)

    def calibrate(self, bandwidth: float) -> tuple[BatchPolicy, list[dict]]:
        return codec.calibrate(self.codec, bandwidth)

    def release_memory(self) -> None:
        codec.release_device_memory(self.codec.device)
