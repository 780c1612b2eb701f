"""What `codec.model` names: resolved once (by the driver, cheaply), loaded many times (by each actor).

A spec is a random preset (`random:tiny`, `random:full`), a local folder or a hub repo id, and a
folder or repo holds the tokenizer in one of two formats:
- `transformers`: `save_pretrained` output (config.json with this tokenizer's `model_type`, safetensors
  or a pytorch_model.bin), loaded with `from_pretrained`;
- `original`: the authors' release (config.json of their constructor's arguments + model.pth),
  converted by `original_format` once per node and checkpoint, into a local cache.

`resolve_checkpoint` reads only config.json and file hashes (for a hub repo, the hashes the hub
stores, never the weights) and refuses what is not a tokenizer with a `CheckpointError` that says
what it found. The `Checkpoint` it returns pins the commit, so every actor loads the same files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

from .codec import CodecIdentity
from .original_format import (CONVERTER_VERSION, ConversionError, check_original_config, convert_checkpoint,
                              is_original_config, released_config)
from .hashing import sha256_file
from .presets import build_random_model, preset_config

MODEL_TYPE = "higgs_audio_v2_tokenizer"
TRANSFORMERS = "transformers"
ORIGINAL = "original"
RANDOM = "random"
ORIGINAL_WEIGHTS = "model.pth"
_HF_WEIGHTS = re.compile(r"^(model(-\d+-of-\d+)?\.safetensors|pytorch_model(-\d+-of-\d+)?\.bin)$")


class CheckpointError(ValueError):
    """`codec.model` cannot be used as given: the message says what was found and what is expected."""


@dataclass(frozen=True)
class Checkpoint:
    spec: str
    format: str  # transformers | original | random
    repo: str | None = None  # hub repo id; None for a local folder or a preset
    commit: str | None = None  # the hub commit every actor loads
    config_sha256: str = ""
    weights: dict = field(default_factory=dict)  # weight file name -> sha256 (hub: as the hub stores it)
    seed: int = 0  # random presets
    notes: tuple = ()  # what the conversion drops (e.g. a bandwidth the original caps)

    @property
    def weights_sha256(self) -> str | None:
        if not self.weights:
            return None
        if len(self.weights) == 1:
            return next(iter(self.weights.values()))
        return hashlib.sha256("".join(f"{n}:{h}\n" for n, h in sorted(self.weights.items())).encode()).hexdigest()

    def identity(self) -> CodecIdentity:
        revision = f"seed={self.seed}" if self.format == RANDOM else self.commit
        converter = f"audiotok-original-v{CONVERTER_VERSION}" if self.format == ORIGINAL else None
        return CodecIdentity(self.spec, revision, self.config_sha256, self.weights_sha256, self.format, converter)


def resolve_checkpoint(spec: str, revision: str | None = None, seed: int = 0) -> tuple[Checkpoint, HiggsAudioV2TokenizerConfig]:
    """(checkpoint, the transformers config its model will have), without loading any weights."""
    if spec.startswith("random:"):
        if revision:
            raise CheckpointError(f"codec.revision={revision!r} applies to hub repos, not to the preset {spec!r}")
        try:
            config = preset_config(spec.split(":", 1)[1])
        except ValueError as error:
            raise CheckpointError(str(error)) from None
        return Checkpoint(spec, RANDOM, config_sha256=_config_hash(config.to_dict()), seed=seed), config
    local = Path(spec).expanduser()
    if local.is_dir():
        if revision:
            raise CheckpointError(f"codec.revision={revision!r} applies to hub repos; {spec!r} is a local folder")
        files = {p.name: p for p in local.iterdir() if p.is_file()}
        return _resolve_files(spec, files, lambda name: sha256_file(str(files[name])))
    if spec.startswith((".", "/", "~")) or local.exists() or spec.count("/") != 1:
        what = "is a file, not a folder" if local.exists() else "does not exist"
        raise CheckpointError(f"{spec!r} {what}; give a folder in either format, a hub repo id (ORG/NAME) or "
                              "random:tiny|full")
    return _resolve_hub(spec, revision)


def _resolve_files(spec: str, files: dict, file_hash, repo: str | None = None, commit: str | None = None):
    """Decide the format from config.json and check that format's weights are there."""
    where = f"hub repo {repo}@{commit[:12]}" if repo else f"folder {spec}"
    if "config.json" not in files:
        raise CheckpointError(f"{where} has no config.json (found: {sorted(files)[:10]}); a tokenizer checkpoint "
                              "has config.json plus model.safetensors (transformers) or model.pth (original release)")
    try:
        raw = json.loads(Path(files["config.json"]).read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{where}: config.json is not readable JSON ({error})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: config.json is not a JSON object")
    if raw.get("model_type") == MODEL_TYPE:
        weights = sorted(name for name in files if _HF_WEIGHTS.match(name))
        if not weights:
            raise CheckpointError(f"{where} has a transformers config.json but no weights (model.safetensors or "
                                  f"pytorch_model.bin); found: {sorted(files)[:10]}")
        config = HiggsAudioV2TokenizerConfig.from_dict(raw)
        return Checkpoint(spec, TRANSFORMERS, repo, commit, _config_hash(config.to_dict()),
                          {name: file_hash(name) for name in weights}), config
    if "model_type" in raw:
        raise CheckpointError(f"{where} holds a {raw['model_type']!r} model (config.json model_type), not the "
                              f"Higgs Audio V2 tokenizer ({MODEL_TYPE!r})")
    if not is_original_config(raw):
        raise CheckpointError(f"{where}: config.json is neither format: no model_type {MODEL_TYPE!r} (transformers) "
                              f"and not the original release's constructor arguments (ratios, n_q, ...); keys: "
                              f"{sorted(raw)[:10]}")
    try:
        notes = check_original_config(raw)
    except ConversionError as error:
        raise CheckpointError(f"{where}: {error}") from None
    if ORIGINAL_WEIGHTS not in files:
        raise CheckpointError(f"{where} has an original-format config.json but no {ORIGINAL_WEIGHTS}; "
                              f"found: {sorted(files)[:10]}")
    return Checkpoint(spec, ORIGINAL, repo, commit, _config_hash(raw), {ORIGINAL_WEIGHTS: file_hash(ORIGINAL_WEIGHTS)},
                      notes=tuple(notes)), released_config()


def _resolve_hub(repo: str, revision: str | None):
    """A hub repo at a commit: from the hub's API (online) or the local hub cache (offline), hashes included."""
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    at = f"{repo}" + (f"@{revision}" if revision else "")
    try:
        if constants.HF_HUB_OFFLINE:
            config_path = hf_hub_download(repo, "config.json", revision=revision)
            snapshot = Path(config_path).parent
            commit = snapshot.name
            files = {p.name: p for p in snapshot.iterdir()}
            return _resolve_files(repo, files, lambda name: _cached_sha256(files[name]), repo, commit)
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
        hashes = {s.rfilename: (s.lfs.sha256 if s.lfs else s.blob_id) for s in info.siblings or []}
        config_path = hf_hub_download(repo, "config.json", revision=info.sha)
        files = {name: config_path if name == "config.json" else name for name in hashes}
        return _resolve_files(repo, files, hashes.__getitem__, repo, info.sha)
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"hub repo {at} cannot be reached (HF_HUB_OFFLINE={int(constants.HF_HUB_OFFLINE)}) and is not in the local "
            f"hub cache ({constants.HF_HUB_CACHE}); download it where the hub is reachable (huggingface-cli download "
            f"{repo}) or give a local folder") from None
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise CheckpointError(f"hub repo {repo} is not found or not accessible ({type(error).__name__}); check the id "
                              "and HF_TOKEN") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"hub repo {repo} has no revision {revision!r}") from None
    except OSError as error:  # connection errors, HTTP errors
        raise CheckpointError(f"hub repo {at} cannot be read: {str(error).splitlines()[0][:200]}") from None


def _cached_sha256(path: Path) -> str:
    """A hub cache names LFS blobs by their sha256: read it from the link instead of hashing gigabytes."""
    blob = Path(os.path.realpath(path)).name
    return blob if re.fullmatch(r"[0-9a-f]{64}", blob) else sha256_file(str(path))


def _config_hash(config: dict) -> str:
    config = {k: v for k, v in config.items() if k not in ("_commit_hash", "transformers_version", "_name_or_path")}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


# ---- loading (on the actors) ------------------------------------------------------------------------
def default_cache_dir() -> str:
    return os.environ.get("AUDIOTOK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "audiotok")


def load_model(checkpoint: Checkpoint, cache_dir: str | None = None) -> HiggsAudioV2TokenizerModel:
    if checkpoint.format == RANDOM:
        return build_random_model(checkpoint.spec.split(":", 1)[1], checkpoint.seed)
    if checkpoint.format == TRANSFORMERS:
        return HiggsAudioV2TokenizerModel.from_pretrained(checkpoint.repo or checkpoint.spec, revision=checkpoint.commit)
    folder = converted_folder(checkpoint, cache_dir or default_cache_dir())
    return HiggsAudioV2TokenizerModel.from_pretrained(folder)


def _original_files(checkpoint: Checkpoint) -> tuple[str, str]:
    if checkpoint.repo is None:
        return os.path.join(checkpoint.spec, "config.json"), os.path.join(checkpoint.spec, ORIGINAL_WEIGHTS)
    from huggingface_hub import hf_hub_download

    return tuple(hf_hub_download(checkpoint.repo, name, revision=checkpoint.commit)
                 for name in ("config.json", ORIGINAL_WEIGHTS))


def converted_folder(checkpoint: Checkpoint, cache_dir: str) -> str:
    """The checkpoint converted to a `save_pretrained` folder under `cache_dir`, converting it if no process
    on this node has: actors on one node take a file lock, the first converts, the others wait and reuse."""
    key = hashlib.sha256(f"{checkpoint.config_sha256}:{checkpoint.weights_sha256}:v{CONVERTER_VERSION}".encode())
    folder = os.path.join(cache_dir, "converted", key.hexdigest()[:32])
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with open(folder + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(os.path.join(folder, "config.json")):
            config_path, weights_path = _original_files(checkpoint)
            try:
                model = convert_checkpoint(config_path, weights_path, checkpoint.weights_sha256)
            except ConversionError as error:
                raise CheckpointError(f"{checkpoint.spec}: {error}") from None
            staged = f"{folder}.tmp-{uuid.uuid4().hex}"
            model.save_pretrained(staged)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staged, folder)  # whole or absent: a converter killed mid-write leaves only a .tmp folder
    return folder
