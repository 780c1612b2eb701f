"""The tokenizer as released: both checkpoint formats, the hub cache layout, refusals, start-up failures.

The original-format checkpoint is written here from a table of the release's key names taken from the
documentation of transformers' conversion script (`convert_higgs_audio_v2_tokenizer_to_hf.py`),
written in the opposite direction to the project's mapping and sharing no code with it: a wrong
mapping in `codec.original_format` makes these tests fail instead of agreeing with itself.
"""

import hashlib
import json
import os
import re
import shutil
import threading

import numpy as np
import pytest
import torch

from codec import CheckpointError, load_codec, reference_encode, resolve_checkpoint
from codec import checkpoint as checkpoint_module
from codec.original_format import ConversionError, convert_state_dict
from codec.presets import build_random_model
from pipeline.run import main as run_main
from pipeline.runstate import read_run
from pipeline.storage import Storage
from demo.synth import random_sample, write_tar

INNER = ["snake1", "conv1", "snake2", "conv2"]  # a DAC residual unit's block.0-3

# transformers name -> the release's name (the conversion script's table, read right to left)
HF_TO_ORIGINAL = [
    (r"^acoustic_encoder\.conv1\.", lambda m: "encoder.block.0."),
    (r"^acoustic_encoder\.block\.(\d+)\.res_unit([123])\.(\w+)\.",
     lambda m: f"encoder.block.{int(m[1]) + 1}.block.{int(m[2]) - 1}.block.{INNER.index(m[3])}."),
    (r"^acoustic_encoder\.block\.(\d+)\.snake1\.", lambda m: f"encoder.block.{int(m[1]) + 1}.block.3."),
    (r"^acoustic_encoder\.block\.(\d+)\.conv1\.", lambda m: f"encoder.block.{int(m[1]) + 1}.block.4."),
    (r"^acoustic_encoder\.snake1\.", lambda m: "encoder.block.6."),
    (r"^acoustic_encoder\.conv2\.", lambda m: "encoder.block.7."),
    (r"^acoustic_decoder\.conv1\.", lambda m: "decoder_2.model.0."),
    (r"^acoustic_decoder\.block\.(\d+)\.snake1\.", lambda m: f"decoder_2.model.{int(m[1]) + 1}.block.0."),
    (r"^acoustic_decoder\.block\.(\d+)\.conv_t1\.", lambda m: f"decoder_2.model.{int(m[1]) + 1}.block.1."),
    (r"^acoustic_decoder\.block\.(\d+)\.res_unit([123])\.(\w+)\.",
     lambda m: f"decoder_2.model.{int(m[1]) + 1}.block.{int(m[2]) + 1}.block.{INNER.index(m[3])}."),
    (r"^acoustic_decoder\.snake1\.", lambda m: "decoder_2.model.6."),
    (r"^acoustic_decoder\.conv2\.", lambda m: "decoder_2.model.7."),
    (r"^quantizer\.quantizers\.(\d+)\.codebook\.", lambda m: f"quantizer.vq.layers.{m[1]}._codebook."),
    (r"^quantizer\.quantizers\.(\d+)\.", lambda m: f"quantizer.vq.layers.{m[1]}."),
    (r"^fc\.", lambda m: "fc_prior."),
    (r"^fc1\.", lambda m: "fc_post1."),
    (r"^fc2\.", lambda m: "fc_post2."),
    (r"^((?:en|de)coder_semantic\..*\.?conv[12]?)\.(weight|bias)$", lambda m: f"{m[1]}.conv.{m[2]}"),
]

# The release as its authors' config.json describes it.
RELEASED_ORIGINAL_CONFIG = {"n_filters": 32, "D": 256, "codebook_dim": 64, "target_bandwidths": [0.5, 1, 1.5, 2, 4],
                            "ratios": [8, 5, 4, 2, 3], "sample_rate": 24000, "bins": 1024, "n_q": 8,
                            "semantic_techer": "hubert_base_general"}


def original_name(name: str) -> str:
    for pattern, replace in HF_TO_ORIGINAL:
        match = re.match(pattern, name)
        if match:
            return name[: match.start()] + replace(match) + name[match.end():]
    assert name.startswith("semantic_model."), f"no release name for {name}"
    return name  # HuBERT keeps transformers' names


def original_state_dict(model) -> dict:
    """The model's weights in the release's layout: DAC convolutions split into weight norm's g and v."""
    out = {}
    for name, tensor in model.state_dict().items():
        key = original_name(name)
        if name.startswith(("acoustic_encoder.", "acoustic_decoder.")) and name.endswith(".weight"):
            base = key[: -len(".weight")]
            out[base + ".weight_g"] = tensor.double().norm(dim=list(range(1, tensor.dim())), keepdim=True).float()
            out[base + ".weight_v"] = tensor.clone()
        else:
            out[key] = tensor.clone()
    # in the release, not in its forward pass: the conversion skips it
    out["fc1.weight"], out["fc1.bias"] = torch.randn(768, 1024), torch.randn(768)
    return out


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """One full-size random model written in both formats."""
    root = tmp_path_factory.mktemp("checkpoints")
    model = build_random_model("full", seed=5)
    hf_folder, original_folder = root / "transformers", root / "original"
    model.save_pretrained(hf_folder)
    original_folder.mkdir()
    (original_folder / "config.json").write_text(json.dumps(RELEASED_ORIGINAL_CONFIG))
    torch.save(original_state_dict(model), original_folder / "model.pth")
    return {"model": model, "hf": str(hf_folder), "original": str(original_folder), "root": root}


def clips(seed=0, seconds=(0.7, 2.3, 4.1)):
    rng = np.random.default_rng(seed)
    return [(0.2 * rng.standard_normal(int(s * 24000)) * np.abs(np.sin(np.linspace(0, 9, int(s * 24000)))))
            .astype(np.float32) for s in seconds]


def test_original_release_converts_to_the_models_weights_and_codes(released, tmp_path):
    original = load_codec(released["original"], device="cpu", cache_dir=str(tmp_path))
    hf = load_codec(released["hf"], device="cpu")
    expected = released["model"].state_dict()
    converted = original.model.state_dict()
    assert set(converted) == set(expected)
    merged = {k for k in expected if k.startswith(("acoustic_encoder.", "acoustic_decoder.")) and k.endswith(".weight")}
    for name, tensor in expected.items():
        if name in merged:
            # g * v / |v| with g = |w| and v = w: w again, up to the rounding of g to float32 and of the
            # merge's result (half an ulp each): within 2 ulps of each weight
            got, want = converted[name].numpy(), tensor.numpy()
            assert (np.abs(got - want) <= 2 * np.spacing(np.abs(want))).all(), name
        else:
            assert torch.equal(converted[name], tensor), name
    waves = clips()
    differing = total = 0
    for wave, a, b in zip(waves, original.encode(waves, 2.0), hf.encode(waves, 2.0)):
        np.testing.assert_array_equal(b, reference_encode(released["model"], wave, 2.0))
        differing += int((a != b).sum())
        total += a.size
    # the merge's float rounding (a relative 1e-7 on the DAC weights) flips no token of these clips
    assert total == 8 * sum(-(-w.size // 960) for w in waves)
    assert differing == 0
    assert original.identity.format == "original" and original.identity.converter
    assert original.identity.weights_sha256 == hashlib.sha256(
        open(os.path.join(released["original"], "model.pth"), "rb").read()).hexdigest()


def test_conversion_runs_once_per_node_for_concurrent_actors(released, tmp_path, monkeypatch):
    checkpoint, _ = resolve_checkpoint(released["original"])
    calls = []
    real = checkpoint_module.convert_checkpoint
    monkeypatch.setattr(checkpoint_module, "convert_checkpoint", lambda *a: calls.append(a) or real(*a))
    folders = []
    threads = [threading.Thread(target=lambda: folders.append(checkpoint_module.converted_folder(checkpoint, str(tmp_path))))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(folders)) == 1 and len(folders) == 3
    assert [n for n in os.listdir(tmp_path / "converted") if ".tmp-" in n] == []


def fake_hub_cache(cache, repo, commit, files: dict) -> None:
    """A hub cache as huggingface_hub lays it out: blobs named by sha256, snapshots/COMMIT/NAME -> blob."""
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "blobs").mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        digest = hashlib.sha256(open(source, "rb").read()).hexdigest()
        shutil.copyfile(source, base / "blobs" / digest)
        os.symlink(os.path.join("..", "..", "blobs", digest), snapshot / name)


def test_default_hub_repo_in_its_release_layout_loads_offline(released, tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "bosonai/higgs-audio-v2-tokenizer", commit,
                   {n: os.path.join(released["original"], n) for n in ("config.json", "model.pth")})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert constants.HF_HUB_OFFLINE
    from pipeline.config import CodecConfig

    # the weights' hash is the one the hub cache names the blob by: the driver never reads the weights
    monkeypatch.setattr(checkpoint_module, "sha256_file", lambda path: pytest.fail(f"hashed {path}"))
    checkpoint, config = resolve_checkpoint(CodecConfig().model)
    monkeypatch.undo()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert (checkpoint.format, checkpoint.repo, checkpoint.commit) == ("original", CodecConfig().model, commit)
    assert checkpoint.weights_sha256 == hashlib.sha256(
        open(os.path.join(released["original"], "model.pth"), "rb").read()).hexdigest()
    assert list(config.target_bandwidths) == [0.5, 1, 1.5, 2] and config.hop_length == 960
    assert checkpoint.notes  # the release's 4 kbps is capped at 8 codebooks: said, not silently dropped
    codec = load_codec(checkpoint, device="cpu", cache_dir=str(tmp_path / "converted"))
    wave = clips(seconds=(1.3,))[0]
    np.testing.assert_array_equal(codec.encode([wave], 1.0)[0], reference_encode(released["model"], wave, 1.0))
    with pytest.raises(CheckpointError, match="no revision|cannot be reached"):
        resolve_checkpoint(CodecConfig().model, revision="v9")


@pytest.fixture
def weights(released):
    return torch.load(os.path.join(released["original"], "model.pth"), weights_only=True)


@pytest.fixture(scope="module")
def expected_shapes(released):
    return {k: tuple(v.shape) for k, v in released["model"].state_dict().items()}


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("quantizer.vq.layers.3._codebook.embed"), r"lacks 1 weight.*quantizer\.quantizers\.3\.codebook\.embed"),
    (lambda sd: sd.__setitem__("encoder.block.9.alpha", torch.ones(1)), r"encoder\.block\.9\.alpha"),
    (lambda sd: sd.__setitem__("fc_post2.weight", torch.ones(3, 3)), r"fc_post2\.weight \(-> fc2\.weight\) has shape \(3, 3\)"),
    (lambda sd: sd.pop("encoder.block.7.weight_v"), r"encoder\.block\.7\.weight_g without"),
])
def test_strict_load_names_the_key_that_does_not_fit(weights, expected_shapes, change, message):
    change(weights)
    with pytest.raises(ConversionError, match=message):
        convert_state_dict(weights, expected_shapes)


def write_folder(path, config: dict | None, files=()):
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    for name in files:
        (path / name).write_bytes(b"x" * 16)
    return str(path)


@pytest.mark.parametrize("layout, found", [
    ("missing", "does not exist"),
    ("no_config", "has no config.json"),
    ("other_model", "holds a 'wav2vec2' model"),
    ("foreign_config", "neither format"),
    ("hf_no_weights", "no weights"),
    ("original_no_weights", "no model.pth"),
    ("original_16k", "sample_rate=16000"),
    ("original_other_bandwidths", "target_bandwidths"),
    ("hub_not_cached", "cannot be reached"),
])
def test_codec_model_that_is_not_a_tokenizer_is_a_config_error(tmp_path, capsys, layout, found):
    folder = tmp_path / "ckpt"
    spec = {
        "missing": lambda: str(tmp_path / "nowhere"),
        "no_config": lambda: write_folder(folder, None, ["model.pth"]),
        "other_model": lambda: write_folder(folder, {"model_type": "wav2vec2"}, ["model.safetensors"]),
        "foreign_config": lambda: write_folder(folder, {"hidden_size": 3}, ["model.pth"]),
        "hf_no_weights": lambda: write_folder(folder, {"model_type": "higgs_audio_v2_tokenizer"}, ["README.md"]),
        "original_no_weights": lambda: write_folder(folder, RELEASED_ORIGINAL_CONFIG),
        "original_16k": lambda: write_folder(folder, {k: v for k, v in RELEASED_ORIGINAL_CONFIG.items()
                                                      if k != "sample_rate"}, ["model.pth"]),
        "original_other_bandwidths": lambda: write_folder(folder, dict(RELEASED_ORIGINAL_CONFIG, target_bandwidths=[1, 2]),
                                                          ["model.pth"]),
        "hub_not_cached": lambda: "nobody/not-a-cached-repo",
    }[layout]()
    tar = tmp_path / "a.tar"
    write_tar(str(tar), [random_sample(np.random.default_rng(0), "k", 0.5)])
    code = run_main(["configs/demo.yaml", f"source.urls=[{tar}]",
                     f"output.dir={tmp_path / 'out'}", f"codec.model={spec}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "config key 'codec.model'" in err and found in err, err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_original_format_end_to_end_and_actor_start_failure_stops_the_run(released, tmp_path, ray_local, capsys):
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    samples = [random_sample(rng, f"s{i}", s) for i, s in enumerate((0.6, 1.7))]
    tar = tmp_path / "a.tar"
    write_tar(str(tar), samples)
    common = ["configs/demo.yaml", f"source.urls=[{tar}]",
              f"codec.cache_dir={tmp_path / 'cache'}", "ray.num_actors=1", "codec.bandwidth=1.0"]
    code = run_main(common + [f"output.dir={tmp_path / 'out'}", f"codec.model={released['original']}"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "original release format, converted on load" in err and "1 kbps -> 4" in err
    table = pq.read_table(next((tmp_path / "out" / "data").glob("*.parquet")))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["codec"]["format"] == "original" and manifest["codec"]["converter"]
    codec = load_codec(released["hf"], device="cpu")
    from pipeline.audio.decode import decode_bytes, to_model_audio

    for key, codes in zip(table.column("key").to_pylist(), table.column("codes").to_pylist()):
        sample = next(s for s in samples if s.key == key)
        member = next(v for k, v in sample.members.items() if k not in ("json", "txt"))
        wave = to_model_audio(*decode_bytes(member), 24000, "HQ", 1e9).wave
        np.testing.assert_array_equal(np.array(codes), reference_encode(codec.model, wave, 1.0))

    # a model.pth that resolves (it exists, config is right) but cannot be loaded: every actor dies in
    # its constructor; the run stops with the constructor's message instead of failing shard after shard
    broken = tmp_path / "broken"
    shutil.copytree(released["original"], broken, ignore=shutil.ignore_patterns("model.pth"))
    (broken / "model.pth").write_bytes(b"not a torch file")
    code = run_main(common + [f"output.dir={tmp_path / 'out2'}", f"codec.model={broken}"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.count("failed to start") == 2 and "replacing it" in err and "failed the same way" in err
    assert "is not a readable torch state dict" in err and 'File "' in err and "in __init__" in err  # the traceback
    assert read_run(Storage(str(tmp_path / "out2"))).records == {}  # no shard was charged for the actors' deaths
