"""What an output is: everything that decides which samples a shard id denotes, their keys, and their
codes. Recorded when the output is created and checked on every rerun."""

from __future__ import annotations

import hashlib
import json


class IdentityChanged(RuntimeError):
    """A rerun whose settings would give other shards, keys or codes than the output holds."""


def library_versions() -> dict:
    """The libraries whose versions decide the codes (the codec re-implements part of `encode`), and each audio
    format's decoder with its library's version (pipeline/audio/decoders.py; a decoder library missing here is a
    DecoderMissing naming its package)."""
    import soxr
    import torch
    import transformers

    from ..audio.decoders import decoder_versions

    return {"torch": torch.__version__, "transformers": transformers.__version__, "soxr": soxr.__version__,
            "decoders": decoder_versions()}


def fingerprint(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Keys added to the identity after outputs were written without them, with what those outputs had: such an
# output (or an identity built without the key) reads as having that value and goes on unchanged.
ADDED_KEYS = {"convention": "model_card"}


def check_identity(recorded: dict, current: dict, accept_new_versions: bool) -> list[str]:
    """Raise IdentityChanged naming what changed and how to continue; returns the version changes accepted."""
    old, new = {**ADDED_KEYS, **_flat(recorded)}, {**ADDED_KEYS, **_flat(current)}
    if "device" not in recorded:  # written before the device was recorded: goes on as it is
        new = {k: v for k, v in new.items() if not k.startswith("device.")}
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not changed:
        return []
    lines = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed]
    # another device, like another library version, may change a few tokens: the user may accept it
    versions_only = all(k.startswith(("versions.", "device.")) for k in changed)
    if versions_only and accept_new_versions:
        return lines
    if versions_only:
        fix = ("library versions and the device decide the codes: use a new output.dir, or set "
               "output.accept_new_versions=true to continue this one (the change is recorded in manifest.json under "
               "identity_changes)")
    elif changed == ["codec.revision"] and old.get("codec.spec") == new.get("codec.spec"):
        fix = (f"{new['codec.spec']} now resolves to another commit than this output's codes came from: to continue "
               f"it, pin codec.revision={old['codec.revision']}")
    elif changed == ["source.revision"]:
        fix = (f"the hub dataset now resolves to another commit: to continue this output, pin "
               f"source.revision={old['source.revision']}")
    else:
        fix = "use a new output.dir, or set output.overwrite=true to replace this output"
    raise IdentityChanged("output.dir was written with other settings; its shards, keys or codes would not match: "
                          + "; ".join(lines) + f". To go on: {fix}.")
