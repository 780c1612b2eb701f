"""The authors' own tokenizer (boson-ai's `HiggsAudioTokenizer`, `boson-multimodal` 0.1.1 on PyPI) as the
reference for codes: loaded from the unpacked wheel, none of its code copied here.

`bash jobs/dev.sh setup` (and so CI) downloads the wheel with `pip download --no-deps` into
`.cache/boson-multimodal/` (it pins an old transformers, so it is never installed). Its tokenizer module
imports a few packages that only its training and other classes use; they get stand-ins here:
`audiotools` (DAC's training base classes), `vector_quantize_pytorch` (an FSQ quantizer the released RVQ
does not use). Its HuBERT teacher comes from the hub (`bosonai/hubert_base`), out of reach here, so
`AutoModel.from_pretrained` is answered with `HubertModel(HubertConfig())`, HuBERT base.

`random_authors_tokenizer(seed)` builds it with the release's constructor arguments and random weights
that move the codes in every part: weight-norm gains, Snake alphas and codebooks are randomised (fresh,
the gains are ||v|| and the alphas 1, and the codebooks zeros), and the acoustic path is scaled to the
semantic path's magnitude, as the project's `random:` presets are.
"""

from __future__ import annotations

import glob
import os
import sys
import types
import zipfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEEL_DIR = os.environ.get("AUDIOTOK_REFERENCE_WHEELS") or os.path.join(ROOT, ".cache", "boson-multimodal")
WHEEL_PATTERN = "boson_multimodal-0.1.1-*.whl"

# the release's config.json (the authors' constructor arguments)
RELEASED_CONFIG = {"n_filters": 32, "D": 256, "codebook_dim": 64, "target_bandwidths": [0.5, 1, 1.5, 2, 4],
                   "ratios": [8, 5, 4, 2, 3], "sample_rate": 24000, "bins": 1024, "n_q": 8,
                   "semantic_techer": "hubert_base_general"}


class ReferenceMissing(RuntimeError):
    pass


def wheel_path() -> str:
    found = sorted(glob.glob(os.path.join(WHEEL_DIR, WHEEL_PATTERN)))
    if not found:
        raise ReferenceMissing(
            f"the authors' tokenizer wheel ({WHEEL_PATTERN}) is not in {WHEEL_DIR}: run `bash jobs/dev.sh setup` "
            "(it runs `pip download --no-deps boson-multimodal==0.1.1` there), or set AUDIOTOK_REFERENCE_WHEELS")
    return found[-1]


def _stand_ins() -> None:
    """Modules the tokenizer imports for classes the released RVQ tokenizer never builds."""
    if "audiotools" not in sys.modules:
        audiotools = types.ModuleType("audiotools")
        audiotools.AudioSignal = type("AudioSignal", (), {})
        ml = types.ModuleType("audiotools.ml")
        ml.BaseModel = torch.nn.Module
        audiotools.ml = ml
        sys.modules.update({"audiotools": audiotools, "audiotools.ml": ml})
    if "vector_quantize_pytorch" not in sys.modules:
        vq = types.ModuleType("vector_quantize_pytorch")

        class ResidualFSQ:  # the FSQ branch (`bins` a list) is not the release's
            def __init__(self, *args, **kwargs):
                raise NotImplementedError("stand-in: the released tokenizer uses RVQ")

        vq.ResidualFSQ = ResidualFSQ
        sys.modules["vector_quantize_pytorch"] = vq


def authors_module():
    """`boson_multimodal.audio_processing.higgs_audio_tokenizer`, imported from the unpacked wheel."""
    name = "boson_multimodal.audio_processing.higgs_audio_tokenizer"
    if name in sys.modules:
        return sys.modules[name]
    wheel = wheel_path()
    unpacked = os.path.join(WHEEL_DIR, "unpacked-" + os.path.basename(wheel)[: -len(".whl")])
    if not os.path.isdir(unpacked):
        staged = f"{unpacked}.tmp-{os.getpid()}"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(staged)
        os.replace(staged, unpacked)
    _stand_ins()
    # its DAC modules import each other as the top-level package `dac`
    for path in (unpacked, os.path.join(unpacked, "boson_multimodal", "audio_processing", "descriptaudiocodec")):
        if path not in sys.path:
            sys.path.insert(0, path)
    import importlib

    return importlib.import_module(name)


def _hubert_base(*args, **kwargs):
    from transformers import HubertConfig, HubertModel

    return HubertModel(HubertConfig())


@torch.no_grad()
def random_authors_tokenizer(seed: int = 0, config: dict | None = None):
    """The authors' HiggsAudioTokenizer with the release's arguments and random, non-degenerate weights."""
    module = authors_module()
    torch.manual_seed(seed)
    original = module.AutoModel.from_pretrained
    module.AutoModel.from_pretrained = _hubert_base
    try:
        model = module.HiggsAudioTokenizer(**(config or RELEASED_CONFIG), device="cpu")
    finally:
        module.AutoModel.from_pretrained = original
    model.eval()
    generator = torch.Generator().manual_seed(seed + 1)
    for name, tensor in model.state_dict().items():
        if name.endswith(".weight_g"):
            tensor.mul_(0.5 + torch.rand(tensor.shape, generator=generator))
        elif name.endswith(".alpha"):
            tensor.copy_(0.5 + 1.5 * torch.rand(tensor.shape, generator=generator))
    probe = 0.1 * torch.randn(2, 1, 4 * 24000, generator=generator)
    semantic = model.encoder_semantic(model.get_regress_target(probe).transpose(1, 2))
    acoustic = model.encoder(probe)
    last = model.encoder.block[-1]  # the encoder's final convolution, under weight norm
    scale = (semantic.std() / acoustic.std()).item()
    last.weight_g.mul_(scale)
    last.bias.mul_(scale)
    residual = model.fc_prior(torch.cat([model.encoder(probe), semantic], dim=1).transpose(1, 2)).transpose(1, 2)
    for layer in model.quantizer.vq.layers:
        projected = layer.project_in(residual.transpose(1, 2)).reshape(-1, layer.project_in.out_features)
        mean, std = projected.mean(0), projected.std(0)
        codebook = layer._codebook
        codebook.embed.copy_(mean + std * torch.randn(codebook.embed.shape, generator=generator))
        codebook.embed_avg.copy_(codebook.embed)
        codebook.inited.fill_(1.0)
        residual = residual - layer.decode(layer.encode(residual))
    return model


def save_release(model, folder: str, config: dict | None = None) -> str:
    """The model as the authors' release stores it: config.json (constructor arguments) + model.pth."""
    import json

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config or RELEASED_CONFIG, f)
    torch.save(model.state_dict(), os.path.join(folder, "model.pth"))
    return folder


def authors_codes(model, waveform: np.ndarray, sample_rate: int, loudness_lufs: float | None = None) -> np.ndarray:
    """What the authors' `encode` returns for a mono float32 clip at `sample_rate`: [8, frames] int."""
    waveform = np.asarray(waveform, np.float32)
    if loudness_lufs is None:
        return model.encode(waveform, sr=sample_rate).cpu().numpy()
    # pyloudnorm's gain is a numpy float64: numpy 1 (the authors' environment) keeps the float32 clip float32,
    # numpy 2 promotes it to float64 and their float32 model refuses the tensor. Cast back as numpy 1 would.
    import pyloudnorm.normalize

    original = pyloudnorm.normalize.loudness
    pyloudnorm.normalize.loudness = lambda data, *args, **kwargs: original(data, *args, **kwargs).astype(data.dtype)
    try:
        codes = model.encode(waveform, sr=sample_rate, loudness_normalize=True, loudness_threshold=loudness_lufs)
    finally:
        pyloudnorm.normalize.loudness = original
    return codes.cpu().numpy()
