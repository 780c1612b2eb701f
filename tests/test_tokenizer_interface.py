"""The tokenizer interface (pipeline/tokenizer): one module of the pipeline reaches `codec`, and a second tokenizer
is a registered kind the pipeline finds by `codec.model`'s prefix, not a fork. No weights load, no Ray."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.tokenizer import (HiggsTokenizer, Resolved, Tokenizer, base, kind_of, load_tokenizer, resolve_tokenizer,
                                tokenizer_class, tokenizer_from_identity)

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"
DOOR = PIPELINE / "tokenizer" / "higgs.py"  # the one module of pipeline/ that imports codec
RUN = ["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x"]


def imported(path: Path) -> set[str]:
    """Every module `path` imports by absolute name, function-local imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_pipeline_module_but_the_tokenizer_door_imports_codec():
    def imports_codec(path: Path) -> bool:
        return any(name == "codec" or name.startswith("codec.") for name in imported(path))

    assert imports_codec(DOOR)  # the door is where this test says: a move would leave the test guarding nothing
    others = [str(p.relative_to(PIPELINE)) for p in sorted(PIPELINE.rglob("*.py")) if p != DOOR and imports_codec(p)]
    assert others == []


@pytest.fixture
def fake_kind():
    """A stand-in second tokenizer, registered for one test."""

    class FakeTokenizer(Tokenizer, kind="faketok"):
        CONVENTIONS = {"plain": "the clip as it is"}

        def __init__(self, model, device):
            self.model, self.device = model, device

        @classmethod
        def resolve(cls, spec, revision=None, seed=0):
            return Resolved(cls.KIND, ("pinned", spec), {"spec": spec}, 16000, 320, 2048, [1.5], {1.5: 3}, spec)

        @classmethod
        def load(cls, model, settings, device):
            return cls(model, device)

        @classmethod
        def from_identity(cls, identity, convention, device="auto"):
            return cls(identity["spec"], device)

        @classmethod
        def decode_snippet(cls, identity, num_codebooks):
            return ""

        is_out_of_memory = staticmethod(lambda error: False)
        num_codebooks = encode = decode = frames_reaching = policy_with = calibrate = release_memory = None

    try:
        yield FakeTokenizer
    finally:
        base._KINDS.pop("faketok")


def test_a_registered_kind_is_picked_by_the_spec_prefix_and_every_other_spec_stays_higgs(fake_kind):
    assert kind_of("faketok:org/model") == "faketok" and tokenizer_class("faketok:org/model") is fake_kind
    resolved = resolve_tokenizer("faketok:org/model")
    assert resolved.kind == "faketok" and resolved.checkpoint == ("pinned", "faketok:org/model")
    assert resolved.frame_rate == 50.0
    config = load_config(None, RUN + ["codec.model=faketok:org/model", "codec.convention=plain"])
    loaded = load_tokenizer(resolved, config.codec, "cpu")  # what an actor does with the driver's facts
    assert isinstance(loaded, fake_kind) and loaded.model is resolved and loaded.device == "cpu"
    assert load_tokenizer("faketok:org/model", config.codec).device == "auto"  # codec.device by default
    assert tokenizer_from_identity({"spec": "faketok:org/model"}, "plain").model == "faketok:org/model"
    for spec in ("random:tiny", "random:full", "bosonai/higgs-audio-v2-tokenizer", "/models/higgs", "./higgs",
                 "~/higgs-original", "unknownkind:x"):
        assert tokenizer_class(spec) is HiggsTokenizer, spec


def test_codec_convention_is_checked_against_the_kind_codec_model_names(fake_kind):
    with pytest.raises(ConfigError, match=r"codec\.convention.*use one of plain"):
        load_config(None, RUN + ["codec.model=faketok:org/model", "codec.convention=authors"])
    assert load_config(None, RUN + ["codec.convention=authors"]).codec.convention == "authors"  # Higgs's own


def test_a_kind_name_taken_by_another_class_is_refused(fake_kind):
    with pytest.raises(TypeError, match="faketok"):
        class Other(Tokenizer, kind="faketok"):
            pass
