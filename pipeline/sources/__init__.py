"""Sources: list the shards of a dataset and read each shard's samples, one module per kind behind one interface
(base.Source), registered by its kind name. Importing this package imports every module in it, which registers
its kinds; the entry points below serve any registered kind, so a new kind is one new module here (README
"Adding a source")."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import fields
from typing import Iterator

from omegaconf import OmegaConf

from ..reads import Reads
from .base import (MAX_FILE_BYTES, ObjectChanged, RawSample, Shard, ShardError, Source, SourceListing, by_redacted,
                   distinct_shards, full_url, glob_with_sizes, is_pattern, largest_first, local_size, normalise_url,
                   read_error, recorded_shards, shard_from_record, shard_id, shard_record, source_class, source_kinds,
                   transient_error, unknown_setting)
from .files import FilesSource
from .hf import HfSource
from .lhotse import LhotseSource
from .nemo import NemoSource
from .webdataset import WebDatasetSource

__all__ = ["MAX_FILE_BYTES", "ObjectChanged", "RawSample", "Shard", "ShardError", "Source", "SourceListing",
           "by_redacted", "distinct_shards", "full_url", "glob_with_sizes", "is_pattern", "largest_first",
           "list_shards", "local_size", "normalise_url", "read_error", "read_shard", "recorded_settings",
           "recorded_shards", "shard_from_record", "shard_id", "shard_record", "source_class", "source_from_record",
           "source_kinds", "source_of", "transient_error", "unknown_setting"]

for _module in pkgutil.iter_modules(__path__):  # a kind added as a module of its own registers here
    importlib.import_module(f"{__name__}.{_module.name}")

# the kinds whose keys the manifest's flat `source` section has always held (recorded_settings)
_FLAT_RECORD = (WebDatasetSource, HfSource, FilesSource, NemoSource, LhotseSource)


def list_shards(source: Source) -> SourceListing:
    return source.listing()


def read_shard(shard: Shard, source: Source, max_file_bytes: int = MAX_FILE_BYTES,
               reads: Reads | None = None) -> Iterator[RawSample]:
    """`max_file_bytes`: audio.max_file_bytes, the largest audio file or member a sample may be (tars and HF
    cells; the files, nemo and lhotse readers open each file where it is). `reads`: a pipeline.reads.Reads that
    retries and counts the shard's remote reads (None: a new one of `source`'s settings)."""
    return source.read(shard, max_file_bytes, reads if reads is not None else Reads.of(source))


def source_of(kind: str, **settings) -> Source:
    """The checked settings of a source of `kind`, from keyword settings (as the config's `source` keys)."""
    cls = source_class(kind)
    known = {f.name for f in fields(cls)}
    for key in settings:
        if key not in known:
            raise unknown_setting(kind, key)
    source = cls(kind=kind, **settings)
    source.check()
    return source


def source_from_record(record: dict) -> Source:
    """The source a manifest's `config.source` records, as its kind's settings: the record holds every built-in
    kind's keys (recorded_settings), of which the kind's own are taken."""
    cls = source_class(record.get("kind"))
    known = {f.name for f in fields(cls)}
    return source_of(record["kind"], **{k: v for k, v in record.items() if k in known and k != "kind"})


def recorded_settings(source: Source) -> dict:
    """The `source` section as the manifest records it: this kind's settings over every built-in kind's
    defaults, the flat section manifests held before each kind had its own settings, so that a manifest stays
    byte for byte what it was (source_from_record takes the kind's own keys back)."""
    flat: dict = {}
    for cls in _FLAT_RECORD:
        flat.update(OmegaConf.to_container(OmegaConf.structured(cls), resolve=True))
    flat.update(OmegaConf.to_container(OmegaConf.structured(source), resolve=True))
    return flat

