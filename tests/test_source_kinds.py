"""Source kinds behind one interface: a kind is one module (a Source subclass registered by its name), its settings
are validated against its own keys, and nothing outside pipeline/sources/ tells kinds apart. No Ray, no codec."""

from __future__ import annotations

import ast
import json
import pathlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pytest

from pipeline.config import ConfigError, as_dict, load_config
from pipeline.sources import (RawSample, Shard, Source, SourceListing, base, list_shards, read_shard,
                              recorded_settings, source_from_record, source_kinds, source_of)
from pipeline.storage import Storage

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_a_kind_defined_in_a_new_module_is_configured_listed_read_and_recorded_with_no_other_change(tmp_path,
                                                                                                   monkeypatch):
    monkeypatch.setattr(base, "_KINDS", dict(base._KINDS))  # the test's kind leaves the registry with the test

    @dataclass
    class ToneSource(Source, kind="tones"):  # clips of a sine each, made in memory
        clips: int = 0
        hz: float = 440.0

        def check(self) -> None:
            super().check()
            if self.clips < 1:
                raise ConfigError("source.clips", f"{self.clips}", "use 1 or more")

        def listing(self) -> SourceListing:
            return SourceListing([Shard(f"tones-{i}", f"tones://{i}", "tones") for i in range(self.clips)],
                                 {"kind": "tones", "hz": self.hz}, [])

        def read(self, shard: Shard, max_file_bytes: int, reads) -> Iterator[RawSample]:
            wave = np.sin(2 * np.pi * self.hz * np.arange(2400) / 24000).astype(np.float32)
            yield RawSample(shard.id, (wave, 24000))

        def shard_again(self, shard_id: str, url: str, recorded: dict) -> Shard:
            return Shard(shard_id, url, "tones")

    config = load_config(None, ["source.kind=tones", "source.clips=2", "source.hz=100", f"output.dir={tmp_path}"])
    assert isinstance(config.source, ToneSource) and config.source.hz == 100.0
    listing = list_shards(config.source)
    shards = listing.settle(Storage(str(tmp_path)))
    assert [s.id for s in shards] == ["tones-0", "tones-1"] and listing.identity == {"kind": "tones", "hz": 100.0}
    (sample,) = read_shard(shards[1], config.source)
    assert sample.key == "tones-1" and sample.audio[0].shape == (2400,)
    # the manifest records its settings, and the fidelity audit finds its kind and a shard again from that record
    again = source_from_record(json.loads(json.dumps(as_dict(config)))["source"])
    assert again == config.source and again.shard_again("tones-1", "tones://1", {}) == shards[1]
    with pytest.raises(ConfigError) as error:
        load_config(None, ["source.kind=tones", f"output.dir={tmp_path}"])
    assert error.value.key == "source.clips"


@pytest.mark.parametrize("overrides, key, fix", [
    (["source.kind=webdataset", "source.urls=a.tar", "source.files_per_shard=3"], "source.files_per_shard",
     "source.kind=files"),
    (["source.kind=nemo", "source.path=m.json", "source.split=dev"], "source.split", "source.kind=hf"),
    (["source.kind=hf", "source.path=o/n", "source.colour=red"], "source.colour", "its settings are audio_column"),
    (["source.kind=files"], "source.urls", "globs of audio files"),
    (["source.kind=lhotse"], "source.path", "a cuts.jsonl(.gz) manifest or a Shar folder"),
    (["source.urls=a.tar"], "source.kind", "use one of ["),
])
def test_a_key_of_another_kind_or_a_missing_required_key_names_the_key_and_the_fix(tmp_path, overrides, key, fix):
    (tmp_path / "run.yaml").write_text(f"output:\n  dir: {tmp_path}/out\n")
    for path, dotlist in ((None, overrides + ["output.dir=x"]), (str(tmp_path / "run.yaml"), overrides)):
        with pytest.raises(ConfigError) as error:
            load_config(path, dotlist)
        assert error.value.key == key and f"'{key}'" in str(error.value) and fix in str(error.value)


# The flat `source` section every manifest recorded before each kind had its own settings
FLAT_KEYS = {"kind", "urls", "path", "split", "revision", "audio_column", "key_column", "files_per_shard",
             "lines_per_shard", "audio_root", "max_text_bytes", "read_attempts", "read_backoff_s", "read_budget_s",
             "read_stall_s"}


@pytest.mark.parametrize("kind, settings", [("webdataset", {"urls": "a.tar"}), ("files", {"urls": ["a/*.flac"]}),
                                            ("nemo", {"path": "m.json", "audio_root": "/a"}),
                                            ("lhotse", {"path": "c.jsonl"}), ("hf", {"path": "o/n", "split": "dev"})])
def test_the_manifest_records_the_flat_source_section_as_before_and_reads_back_the_kind(kind, settings):
    source = source_of(kind, **settings)
    record = recorded_settings(source)
    assert set(record) == FLAT_KEYS and record["kind"] == kind
    assert source_from_record(record) == source


def test_keys_that_built_in_kinds_share_default_alike_so_one_flat_record_holds_them():
    defaults: dict = {}
    for cls in source_kinds().values():
        for key, value in recorded_settings(cls()).items():
            if key != "kind":
                assert defaults.setdefault(key, value) == value, key


def _kind_tests(path: pathlib.Path, kinds: set[str]) -> list[str]:
    """Comparisons with a kind name (`x == "files"`, `x in ("hf", ...)`, `x.startswith("lhotse")`) in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                items = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                names += [i.value for i in items if isinstance(i, ast.Constant)]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("startswith", "endswith"):
            names += [a.value for a in node.args if isinstance(a, ast.Constant)]
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n!r}" for n in names if n in kinds]
    return found


def test_no_module_outside_the_sources_tells_source_kinds_apart():
    kinds = set(source_kinds()) | {"hf-arrow", "hf-parquet", "lhotse-cuts", "lhotse-shar", "lhotse-"}
    files = [p for folder in ("pipeline", "jobs", "demo") for p in (ROOT / folder).rglob("*.py")
             if "sources" not in p.relative_to(ROOT).parts]
    assert files and [hit for p in files for hit in _kind_tests(p, kinds)] == []
