"""The one tokenizer interface the pipeline, the readers and the report depend on, and the registry of its kinds.

A tokenizer kind is a subclass of `Tokenizer` registered by its name (`class X(Tokenizer, kind="x")`), as a
source kind is (`pipeline.sources.base`). `codec.model` picks the kind by its prefix: `x:REST` goes to kind `x`
when one is registered, every other spec (a hub id, a folder, `random:tiny`) to the default kind. So a second
tokenizer is one new module, not a fork, and every spec that worked before goes where it went.

The driver `resolve`s the spec once and cheaply (no weights): the `Resolved` facts it records in the manifest,
and a pinned `checkpoint` every actor `load`s, so all of them load the same files. Nothing here imports torch,
Ray or an implementation: a decode task or a reader pays for what it uses only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..kinds import register

if TYPE_CHECKING:
    import numpy as np

_KINDS: dict[str, type[Tokenizer]] = {}  # kind name -> its class, filled by Tokenizer.__init_subclass__
_DEFAULT: list[str] = []  # the kind of every spec without a registered prefix


class TokenizerSpecError(ValueError):
    """`codec.model` cannot be used as given: the message says what was found and what is expected."""


@dataclass(frozen=True)
class Resolved:
    """What the driver knows of `codec.model` before any weights load: the manifest's facts, and the pinned
    `checkpoint` (the kind's own, picklable) every actor loads."""

    kind: str
    checkpoint: Any
    identity: dict  # the manifest's `codec`: traces the codes to the weights, as the kind writes it
    sample_rate: int
    hop_length: int
    codebook_size: int
    bandwidths: list  # kbps, as the checkpoint lists them
    codebooks_per_bandwidth: dict  # float kbps -> codebooks the codes have at it
    origin: str  # one line for the run's start: where the weights come from, in which format, their hash
    notes: tuple = ()  # what loading changes or drops (e.g. a conversion's)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length


class Tokenizer(ABC):
    """A loaded tokenizer: exact batched encode, decode, its batch policy and memory. Every kind sets these
    attributes: `identity` (`.as_dict()`: the manifest's `codec`), `device` (a torch device), `sample_rate`,
    `hop_length`, `frame_rate`, `bandwidths`, `convention`, `policy` (a `BatchPolicy` the actor may replace) and
    `encoded_frames` (frames computed, padding and context included: the padding efficiency's numerator)."""

    KIND: ClassVar[str] = ""
    # codec.convention's values for this kind (which codes a clip has), each with what it means
    CONVENTIONS: ClassVar[dict[str, str]] = {}
    CARD_TITLE: ClassVar[str] = "Audio codec tokens"  # the dataset card's (pipeline.reading.card) title and tags
    CARD_TAGS: ClassVar[list[str]] = ["audio-tokens"]

    def __init_subclass__(cls, kind: str = "", default: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        if not kind:
            return  # a base of kinds, not one
        register(_KINDS, kind, cls, "tokenizer")
        if default:
            _DEFAULT[:] = [kind]

    # ---- the kind: resolve a spec, load, read back what an output recorded -------------------------------
    @classmethod
    @abstractmethod
    def resolve(cls, spec: str, revision: str | None = None, seed: int = 0) -> Resolved:
        """The facts of `spec` without loading weights; TokenizerSpecError when it cannot be used. The identity's
        `spec` is `spec` as given, prefix included: the readers find the kind again by it."""

    @classmethod
    @abstractmethod
    def load(cls, model: str | Resolved, settings, device: str) -> Tokenizer:
        """The tokenizer `model` names (a spec, or what the driver resolved), under `settings` (the config's `codec`
        section, `pipeline.config.CodecConfig`: this package is below the config, which checks conventions by it),
        on `device` (a torch device name, or 'auto')."""

    @classmethod
    @abstractmethod
    def from_identity(cls, identity: dict, convention: str, device: str = "auto") -> Tokenizer:
        """The tokenizer an output's manifest records (its `codec` identity), to decode its codes."""

    @classmethod
    @abstractmethod
    def decode_snippet(cls, identity: dict, num_codebooks: int) -> str:
        """A Markdown Python block for the dataset card that loads the tokenizer `identity` records and decodes
        one row of the output (`ORG/NAME` standing for it)."""

    @classmethod
    def resamples_to_ceil(cls, convention: str) -> bool:
        """Whether audio resampled to this tokenizer's rate holds ceil(n x new / old) samples under `convention`
        (zero-padded), rather than the resampler's own count."""
        return False

    @staticmethod
    @abstractmethod
    def is_out_of_memory(error: BaseException) -> bool:
        """Whether `error` is an allocation failure (the batch may fit smaller), not a bug or bad input."""

    # ---- a loaded tokenizer ----------------------------------------------------------------------------
    @abstractmethod
    def num_codebooks(self, bandwidth: float) -> int:
        """Codebooks the codes have at `bandwidth` kbps; the interface's input error for one it lacks."""

    @abstractmethod
    def encode(self, waveforms: list, bandwidth: float, max_batch_seconds: float | None = None,
               max_clips: int | None = None) -> list[np.ndarray]:
        """Codes [codebooks, frames] (int16) per mono float32 waveform at `sample_rate` (an array or a
        `FileWave`), each equal to encoding the clip alone; the interface's input error names a bad clip."""

    @abstractmethod
    def decode(self, codes_list: list, lengths: list[int] | None = None,
               clip_samples: list[int] | None = None) -> list[np.ndarray]:
        """Audio at `sample_rate` per code array, trimmed (or zero-padded) to `lengths[i]` samples when given;
        `clip_samples[i]`: the encoded clip's whole length, where the codes are its first frames."""

    @abstractmethod
    def frames_reaching(self, samples: int, clip_samples: int) -> int:
        """Frames of the codes of a `clip_samples`-sample clip that reach into its first `samples` samples."""

    @abstractmethod
    def policy_with(self, max_batch_seconds: float | None, max_clips: int | None):
        """This tokenizer's `policy` with whichever of the two limits are given replaced."""

    @abstractmethod
    def calibrate(self, bandwidth: float) -> tuple[Any, list[dict]]:
        """(the fastest batch policy that fits this device's memory, the table of what each candidate measured)."""

    @abstractmethod
    def release_memory(self) -> None:
        """Give back what a failed pass left on the device; call it outside the `except` that caught the failure
        (its traceback holds the pass's tensors)."""


def kinds() -> dict[str, type[Tokenizer]]:
    return dict(_KINDS)


def kind_of(spec: str) -> str:
    """The kind `codec.model` names: its prefix before ':' when that is a registered kind, else the default."""
    prefix = spec.split(":", 1)[0] if ":" in spec else ""
    if prefix in _KINDS:
        return prefix
    if not _DEFAULT:
        raise TokenizerSpecError(f"{spec!r} names no tokenizer kind and none is the default; kinds: {list(_KINDS)}")
    return _DEFAULT[0]


def tokenizer_class(spec: str) -> type[Tokenizer]:
    """The class of the kind `spec` (a `codec.model`) names."""
    return _KINDS[kind_of(spec)]


def resolve_tokenizer(spec: str, revision: str | None = None, seed: int = 0) -> Resolved:
    return tokenizer_class(spec).resolve(spec, revision, seed)


def load_tokenizer(model: str | Resolved, settings, device: str | None = None) -> Tokenizer:
    """The tokenizer of `model` (a spec, or what the driver resolved) under the `codec` settings; `device`
    (default codec.device): where this process may run it."""
    cls = _KINDS[model.kind] if isinstance(model, Resolved) else tokenizer_class(model)
    return cls.load(model, settings, device or settings.device)


def tokenizer_from_identity(identity: dict, convention: str, device: str = "auto") -> Tokenizer:
    """The tokenizer an output's manifest records (its `codec` identity), by the kind its spec names."""
    return tokenizer_class(identity["spec"]).from_identity(identity, convention, device)
