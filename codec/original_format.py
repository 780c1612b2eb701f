"""The tokenizer as its authors released it (`config.json` + `model.pth`) -> `HiggsAudioV2TokenizerModel`.

The release (`bosonai/higgs-audio-v2-tokenizer`) stores the constructor arguments of the authors'
own `HiggsAudioTokenizer` and its state dict: DAC convolutions under weight norm (`weight_g`,
`weight_v`), DAC modules as nested `block`/`model` sequences, the semantic encoder's convolutions
wrapped in a `.conv` module, and an RVQ under `quantizer.vq.layers.N._codebook`. transformers'
conversion script (`convert_higgs_audio_v2_tokenizer_to_hf.py`) documents how that layout maps onto
`HiggsAudioV2TokenizerModel`; this module implements the same mapping in its own terms, for the one
architecture that script builds, and loads strictly: any key missing, left over or of another shape
is an error that names it.
"""

from __future__ import annotations

import json

import torch
from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

from .hashing import sha256_file

# Bump when the conversion would produce other weights: it is part of the codec identity and of
# the conversion cache key.
# 2: the release's `semantic_model.masked_spec_embed` dropped (v1 refused the authors' own state dict)
CONVERTER_VERSION = 2

# The acoustic (DAC) part of the released architecture; every other setting is the transformers default.
RELEASED_ACOUSTIC = dict(
    encoder_hidden_size=64,
    downsampling_ratios=[8, 5, 4, 2, 3],
    decoder_hidden_size=1024,
    upsampling_ratios=[8, 5, 4, 2, 3],
    hidden_size=256,
)
# 8 RVQ stages of 10 bits at 25 frames/s: 0.25 kbps per codebook.
RELEASED_BANDWIDTHS = [0.5, 1, 1.5, 2]


def released_config() -> HiggsAudioV2TokenizerConfig:
    """The architecture of the released checkpoint, as transformers' conversion builds it."""
    return HiggsAudioV2TokenizerConfig(target_bandwidths=list(RELEASED_BANDWIDTHS),
                                       acoustic_model_config=dict(RELEASED_ACOUSTIC))


# The original constructor's arguments with their defaults (a key absent from config.json takes these).
ORIGINAL_DEFAULTS = {
    "n_filters": 32, "D": 128, "target_bandwidths": [1, 1.5, 2, 4, 6], "ratios": [8, 5, 4, 2],
    "sample_rate": 16000, "bins": 1024, "n_q": 8, "codebook_dim": None, "normalize": False, "causal": False,
    "semantic_techer": "hubert_base_general", "last_layer_semantic": True, "merge_mode": "concat",
    "downsample_mode": "step_down", "semantic_mode": "classic", "vq_scale": 1, "semantic_sample_rate": None,
    "device": "cuda",
}
# What the released architecture fixes; a config.json that declares otherwise is refused, not guessed.
RELEASED_ORIGINAL = {
    "sample_rate": 24000, "ratios": [8, 5, 4, 2, 3], "D": 256, "bins": 1024, "n_q": 8, "codebook_dim": 64,
    "vq_scale": 1, "merge_mode": "concat", "downsample_mode": "step_down",
}
SEMANTIC_TEACHERS = ("hubert_base_general", "hubert_base")  # both HuBERT base (768 wide, 12 layers) at 16 kHz


class ConversionError(ValueError):
    """The original checkpoint is not the released architecture, or its weights do not fit it."""


def is_original_config(raw: dict) -> bool:
    """An original-format config.json: the authors' constructor arguments, no transformers `model_type`."""
    return "model_type" not in raw and {"ratios", "n_q"} <= set(raw)


def check_original_config(raw: dict) -> list[str]:
    """Refuse a config.json that is not the released architecture; returns notes on what is dropped."""
    unknown = sorted(set(raw) - set(ORIGINAL_DEFAULTS))
    if unknown:
        raise ConversionError(f"config.json has keys the original HiggsAudioTokenizer does not take: {unknown}")
    for key, released in RELEASED_ORIGINAL.items():
        declared = raw.get(key, ORIGINAL_DEFAULTS[key])
        if declared != released:
            raise ConversionError(
                f"config.json declares {key}={declared!r} (absent keys take the original default), but the released "
                f"architecture has {key}={released!r}; only that architecture can be converted")
    teacher = raw.get("semantic_techer", ORIGINAL_DEFAULTS["semantic_techer"])
    if teacher not in SEMANTIC_TEACHERS:
        raise ConversionError(f"config.json declares semantic_techer={teacher!r}; the released architecture uses "
                              f"HuBERT base ({' or '.join(SEMANTIC_TEACHERS)})")
    if raw.get("semantic_sample_rate") not in (None, 16000):
        raise ConversionError(f"config.json declares semantic_sample_rate={raw['semantic_sample_rate']!r}, not 16000")
    # The original quantizer caps a bandwidth's codebooks at n_q: the release's 4 kbps (16 codebooks)
    # encodes with 8, the codes of 2 kbps, so it is not offered separately.
    per_codebook = 0.25
    declared = [float(b) for b in raw.get("target_bandwidths", ORIGINAL_DEFAULTS["target_bandwidths"])]
    within = sorted(b for b in declared if b / per_codebook <= RELEASED_ORIGINAL["n_q"])
    if within != [float(b) for b in RELEASED_BANDWIDTHS]:
        raise ConversionError(f"config.json declares target_bandwidths={declared}; the released architecture "
                              f"offers {RELEASED_BANDWIDTHS} kbps (2/4/6/8 codebooks)")
    dropped = sorted(set(declared) - set(within))
    return [f"{b:g} kbps dropped: the original caps it at n_q=8 codebooks, the codes of 2 kbps" for b in dropped]


# ---- key layout --------------------------------------------------------------------------------------
_RESIDUAL_LAYERS = ("snake1", "conv1", "snake2", "conv2")  # a DAC residual unit's `block.0..3`


def _dac_block(index: int, rest: list[str], blocks: int, prefix: str, inner) -> str | None:
    """`encoder.block.I` / `decoder_2.model.I`: first conv, `blocks` strided blocks, final snake + conv."""
    if index == 0:
        return ".".join([prefix, "conv1", *rest])
    if index == blocks + 1:
        return ".".join([prefix, "snake1", *rest])
    if index == blocks + 2:
        return ".".join([prefix, "conv2", *rest])
    if 1 <= index <= blocks and len(rest) >= 2 and rest[0] == "block" and rest[1].isdigit():
        mapped = inner(int(rest[1]), rest[2:])
        return None if mapped is None else ".".join([prefix, "block", str(index - 1), mapped])
    return None


def _residual(unit: int, rest: list[str]) -> str | None:
    # rest = ['block', K, ...]: layer K of residual unit `unit` (1-based in transformers)
    if len(rest) >= 2 and rest[0] == "block" and rest[1].isdigit() and int(rest[1]) < len(_RESIDUAL_LAYERS):
        return ".".join([f"res_unit{unit}", _RESIDUAL_LAYERS[int(rest[1])], *rest[2:]])
    return None


def _encoder_inner(layer: int, rest: list[str]) -> str | None:
    # EncoderBlock: residual units 0-2, then snake (3) and the strided conv (4)
    if layer <= 2:
        return _residual(layer + 1, rest)
    name = {3: "snake1", 4: "conv1"}.get(layer)
    return None if name is None else ".".join([name, *rest])


def _decoder_inner(layer: int, rest: list[str]) -> str | None:
    # DecoderBlock: snake (0), transposed conv (1), then residual units 2-4
    if layer in (0, 1):
        return ".".join([("snake1", "conv_t1")[layer], *rest])
    if 2 <= layer <= 4:
        return _residual(layer - 1, rest)
    return None


# In the release but unused at inference, dropped as transformers' conversion script drops them: `fc1.*` (no
# module of the authors' class has it), and HuBERT's SpecAugment vector (training-time masking; transformers
# lists it in `_keys_to_ignore_on_load_unexpected`). Every other key must map, strictly.
SKIPPED_PREFIXES = ("fc1.",)
SKIPPED_KEYS = ("semantic_model.masked_spec_embed",)


def hf_key(original: str, blocks: int = len(RELEASED_ACOUSTIC["downsampling_ratios"])) -> str | None:
    """The transformers name of an original state-dict key (weight norm already merged); None: unknown."""
    parts = original.split(".")
    head = parts[0]
    if head == "semantic_model":
        return original  # HuBERT keeps transformers' own names
    if head in ("fc_prior", "fc_post1", "fc_post2"):
        return ".".join([{"fc_prior": "fc", "fc_post1": "fc1", "fc_post2": "fc2"}[head], *parts[1:]])
    if head == "encoder" and len(parts) >= 3 and parts[1] == "block" and parts[2].isdigit():
        return _dac_block(int(parts[2]), parts[3:], blocks, "acoustic_encoder", _encoder_inner)
    if head == "decoder_2" and len(parts) >= 3 and parts[1] == "model" and parts[2].isdigit():
        return _dac_block(int(parts[2]), parts[3:], blocks, "acoustic_decoder", _decoder_inner)
    if head == "quantizer" and parts[1:3] == ["vq", "layers"] and len(parts) >= 5:
        rest = ["codebook" if p == "_codebook" else p for p in parts[4:]]
        return ".".join(["quantizer", "quantizers", parts[3], *rest])
    if head in ("encoder_semantic", "decoder_semantic"):
        # the original wraps each Conv1d in a module of its own: `conv.conv.weight` -> `conv.weight`
        out: list[str] = []
        for part in parts:
            if part == "conv" and out and out[-1] in ("conv", "conv1", "conv2"):
                continue
            out.append(part)
        return ".".join(out)
    return None


def merge_weight_norm(weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
    """weight = g * v / ||v|| over every dim but the first (torch's weight_norm, dim=0); in float64 so the
    only rounding is the final cast."""
    v = weight_v.double()
    norm = v.norm(dim=list(range(1, v.dim())), keepdim=True)
    return (weight_g.double() * v / norm).to(weight_v.dtype)


def convert_state_dict(original: dict, expected: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Original state dict -> transformers state dict, checked strictly against `expected` (name -> shape)."""
    converted: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}  # transformers name -> original name, for messages
    unknown: list[str] = []

    def put(original_name: str, name: str | None, value: torch.Tensor) -> None:
        if name is None:
            unknown.append(original_name)
        else:
            converted[name], source[name] = value, original_name

    for key, value in original.items():
        if key.startswith(SKIPPED_PREFIXES) or key in SKIPPED_KEYS or key.endswith(".weight_v"):
            continue
        if key.endswith(".weight_g"):
            base = key[: -len(".weight_g")]
            if base + ".weight_v" not in original:
                raise ConversionError(f"model.pth has {key} without {base}.weight_v")
            target = hf_key(base + ".weight")
            parametrized = target and target[: -len(".weight")] + ".parametrizations.weight.original0"
            if parametrized in expected:
                # a module transformers keeps under weight norm (HuBERT's positional conv): copy g and v as they are
                put(key, parametrized, value)
                put(base + ".weight_v", parametrized[:-1] + "1", original[base + ".weight_v"])
            else:
                put(key, target, merge_weight_norm(value, original[base + ".weight_v"]))
            continue
        put(key, hf_key(key), value)
    orphans = [k for k in original if k.endswith(".weight_v") and k[: -len("_v")] + "_g" not in original]
    if unknown or orphans:
        names = unknown + orphans
        raise ConversionError(f"model.pth has {len(names)} key(s) the released layout does not have, e.g. {names[:5]}")
    unexpected = sorted(set(converted) - set(expected))
    if unexpected:
        raise ConversionError(f"model.pth key(s) {[source[k] for k in unexpected[:5]]} map to {unexpected[:5]}, which "
                              "the released architecture does not have")
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise ConversionError(f"model.pth lacks {len(missing)} weight(s) of the released architecture, e.g. {missing[:5]}")
    for name, shape in expected.items():
        if tuple(converted[name].shape) != tuple(shape):
            raise ConversionError(f"model.pth key {source[name]} (-> {name}) has shape {tuple(converted[name].shape)}, "
                                  f"the released architecture needs {tuple(shape)}")
    return converted


def load_original_state_dict(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated download, another kind of file, a pickle that would run code
        raise ConversionError(f"{path} is not a readable torch state dict ({type(error).__name__} from torch.load "
                              "with weights_only=True): a truncated or corrupt download, another kind of file, or a "
                              "pickle that holds more than tensors (not loaded, it could run code)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not hold a flat state dict of tensors")
    return state


def convert_checkpoint(config_path: str, weights_path: str, expected_weights_sha256: str | None = None):
    """Build the released architecture and load the original files into it strictly; returns the model.

    expected_weights_sha256: the hash the run recorded for model.pth; a file that changed since is refused."""
    with open(config_path) as f:
        raw = json.load(f)
    if not is_original_config(raw):
        raise ConversionError(f"{config_path} is not an original-format tokenizer config")
    check_original_config(raw)
    if expected_weights_sha256 is not None:
        actual = sha256_file(weights_path)
        if actual != expected_weights_sha256:
            raise ConversionError(f"{weights_path} changed since the run resolved it (sha256 {actual[:12]}..., "
                                  f"recorded {expected_weights_sha256[:12]}...)")
    original = load_original_state_dict(weights_path)
    model = HiggsAudioV2TokenizerModel(released_config()).eval()
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    model.load_state_dict(convert_state_dict(original, expected), strict=True)
    return model

