"""Lhotse CutSets, read with the `lhotse` library itself (`pip install -e ".[lhotse]"`): a CutSet manifest
(`cuts.jsonl` / `.jsonl.gz`) in recorded line ranges of `source.lines_per_shard` cuts (see lines.py), or a
Shar folder, one shard per Shar shard (`cuts.NNNNNN.jsonl.gz` and the fields' files of the same index).

Each cut is a row keyed by its `id`, with its supervisions' `text` (joined by spaces), `speaker` and `language`
(distinct values joined by commas) and, in `metadata`, its recording id, start and duration. A cut whose
recording is one file or URL is read as a segment, `[start, start + duration)` of the cut's channels, exactly as
NeMo segments are (see segments.py); a relative path is taken from the manifest's folder. Any other recording
(Shar's in-memory audio, several sources, a command) is loaded by lhotse: Shar audio that is the whole cut goes
to the decoder as the file bytes it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator, Optional

import fsspec
import numpy as np
import pyarrow as pa

from ..audio.decode import SampleError
from ..failures import ConfigError
from ..reads import Reads
from .base import (RawSample, Shard, Source, SourceListing, full_url, glob_with_sizes, normalise_url, read_error,
                   shard_id, transient_error)
from .lines import check_lines_per_shard, line_range_plan, manifests, read_line_range
from .segments import Segment, read_segments

FIELDS = [pa.field("text", pa.string()), pa.field("speaker", pa.string()), pa.field("language", pa.string())]
CUTS, SHAR = "lhotse-cuts", "lhotse-shar"


def _require_lhotse() -> None:
    try:
        import lhotse  # noqa: F401
    except ImportError:
        raise ConfigError("source.kind", "lhotse sources need the lhotse library", 'pip install -e ".[lhotse]"') from None


def list_lhotse(config: LhotseSource) -> SourceListing:
    _require_lhotse()
    reads = Reads.of(config)
    fs, root = fsspec.core.url_to_fs(config.path)
    if reads.kind(fs, root) != "directory":
        plan = line_range_plan(manifests(config.path, "Lhotse CutSet", reads), config.lines_per_shard, CUTS, reads)
        return SourceListing([], {"kind": "lhotse", "format": "cuts", "lines_per_shard": config.lines_per_shard},
                             list(FIELDS), plan)
    shards = _shar_shards(fs, root, reads)
    if not shards:
        raise ConfigError("source.path", f"{config.path!r} is a folder without Shar cuts (cuts.NNNNNN.jsonl.gz)",
                          "a Lhotse Shar folder, or a CutSet manifest cuts.jsonl(.gz)")
    # Shar shards are fixed files, like tars: new shards are new indices, so nothing needs recording
    return SourceListing(shards, {"kind": "lhotse", "format": "shar"}, list(FIELDS))


def _shar_shards(fs, root: str, reads: Reads) -> list[Shard]:
    """A Shar folder's shards: one per index that has cuts, with its fields' files (FIELD.NNNNNN.EXT)."""
    by_index: dict[str, dict[str, tuple[str, int]]] = {}
    for path, size in glob_with_sizes(fs, f"{root}/*.*.*", reads):
        field, index = path.rsplit("/", 1)[-1].split(".")[:2]
        by_index.setdefault(index, {})[field] = (full_url(fs, path), size)
    shards = []
    for index in sorted(by_index):
        fields = by_index[index]
        if "cuts" not in fields:
            continue
        members = tuple(sorted((field, url) for field, (url, _) in fields.items()))
        shards.append(Shard(shard_id(fields["cuts"][0]), fields["cuts"][0], SHAR,
                            sum(size for _, size in fields.values()), members))
    return shards

def _joined(values, separator: str) -> str | None:
    distinct = list(dict.fromkeys(v for v in values if v))
    return separator.join(distinct) if distinct else None


def _metadata(cut) -> dict:
    supervisions = list(cut.supervisions)
    return {"text": _joined((s.text for s in supervisions), " "),
            "speaker": _joined((s.speaker for s in supervisions), ","),
            "language": _joined((s.language for s in supervisions), ","),
            "recording_id": cut.recording_id, "start": float(cut.start), "duration": float(cut.duration)}


def _file_segment(cut, where: str, folder: str | None, metadata: dict) -> Segment | None:
    """The cut as a segment of its recording's one file or URL; None when lhotse must load it."""
    sources = cut.recording.sources
    if folder is None or len(sources) != 1 or sources[0].type not in ("file", "url"):
        return None
    source = sources[0]
    path = str(source.source)
    url = normalise_url(path if "://" in path or path.startswith("/") else f"{folder}/{path}")
    wanted = cut.channel if isinstance(cut.channel, list) else [cut.channel]
    if any(c not in source.channels for c in wanted):
        return None
    channels = None if list(wanted) == list(source.channels) else [source.channels.index(c) for c in wanted]
    return Segment(cut.id, where, url, float(cut.start), float(cut.duration), metadata, channels)


def _loaded(cut, metadata: dict, reads: Reads) -> RawSample:
    """A cut lhotse loads: Shar audio that is the whole cut as its file bytes, anything else as lhotse's samples."""
    sources = cut.recording.sources
    whole = cut.start == 0 and abs(cut.duration - cut.recording.duration) < 0.5 / cut.sampling_rate
    if whole and len(sources) == 1 and sources[0].type == "memory" and len(cut.recording.channel_ids) == 1:
        return RawSample(cut.id, bytes(sources[0].source), metadata)
    try:
        samples = reads.call(cut.load_audio)  # [channels, samples]; lhotse reads it whole: retried whole
    except Exception as error:  # lhotse raises many types for unreadable audio; each costs one row ...
        transient = transient_error(error, f"cut {cut.id}")
        if transient is not None:  # ... unless a retry could load it (the store, a full disk, no memory left)
            raise transient from None
        return RawSample(cut.id, None, metadata, SampleError("undecodable", f"{type(error).__name__}: {str(error)[:200]}"))
    return RawSample(cut.id, (np.asarray(samples, np.float32).T, cut.sampling_rate), metadata)


def _rows(cuts, folder: str | None, reads: Reads) -> Iterator[RawSample]:
    """(key, where, cut or SampleError) -> rows: lhotse-loaded cuts first, then the file segments, by recording."""
    segments = []
    for key, where, cut in cuts:
        if isinstance(cut, SampleError):
            yield RawSample(key, None, {}, cut)
            continue
        metadata = _metadata(cut)
        if not cut.has_recording:
            yield RawSample(cut.id, None, metadata, SampleError("no_recording", f"{where}: cut {cut.id} has no recording"))
            continue
        segment = _file_segment(cut, where, folder, metadata)
        if segment is None:
            yield _loaded(cut, metadata, reads)
        else:
            segments.append(segment)
    yield from read_segments(segments, reads)


def _parsed_lines(shard: Shard, reads: Reads) -> Iterator[tuple[str, str, object]]:
    """(key, where, cut): a line that is not a cut keys its error record MANIFEST_NAME:LINE."""
    from lhotse.serialization import deserialize_item

    name = shard.file_name
    for number, line in enumerate(read_line_range(shard, reads), start=shard.members[0] + 1):
        if not line.strip():
            continue
        where = f"{shard.url} line {number}"
        try:
            cut = deserialize_item(json.loads(line))
            yield cut.id, where, cut
        except Exception as error:  # not JSON, or not a cut lhotse reads (lhotse raises many types)
            yield f"{name}:{number}", where, SampleError("bad_manifest_line",
                                                         f"{where}: {type(error).__name__}: {str(error)[:200]}")


def _shar_cuts(shard: Shard) -> Iterator[tuple[str, str, object]]:
    from lhotse import CutSet

    try:
        for cut in CutSet.from_shar(fields={field: [url] for field, url in shard.members}):
            yield cut.id, f"{shard.url} cut {cut.id}", cut
    except Exception as error:  # a missing or corrupt Shar file: the whole shard
        raise read_error(error, shard.url, "corrupt_shar") from None


def read_lhotse_shard(shard: Shard, reads: Reads | None = None) -> Iterator[RawSample]:
    """Cuts as rows; recordings, manifest lines and cuts lhotse loads read through `reads` (retried where they
    fail). A Shar shard's own files are lhotse's to read: a failure there fails the shard (retried whole)."""
    reads = reads or Reads()
    if shard.kind == SHAR:
        return _rows(_shar_cuts(shard), None, reads)
    return _rows(_parsed_lines(shard, reads), shard.url.rsplit("/", 1)[0], reads)


@dataclass
class LhotseSource(Source, kind="lhotse"):
    path: Optional[str] = None  # a CutSet manifest cuts.jsonl(.gz) or a Shar folder: a path or fsspec URL
    lines_per_shard: int = 1000  # CutSet manifests: cuts per shard (the line ranges are recorded in the output)

    def check(self) -> None:
        super().check()
        if not self.path:
            raise ConfigError("source.path", "no Lhotse CutSet given", "a cuts.jsonl(.gz) manifest or a Shar folder")
        check_lines_per_shard(self)

    def listing(self) -> SourceListing:
        return list_lhotse(self)

    def read(self, shard: Shard, max_file_bytes: int, reads: Reads) -> Iterator[RawSample]:
        return read_lhotse_shard(shard, reads)

    def shard_again(self, shard_id: str, url: str, recorded: dict[str, Shard]) -> Shard | None:
        """A CutSet manifest's line range from the recorded plan; a Shar shard from its folder, as listed."""
        if shard_id in recorded:
            return recorded[shard_id]
        fs, path = fsspec.core.url_to_fs(url)
        return next((s for s in _shar_shards(fs, path.rsplit("/", 1)[0], Reads.of(self)) if s.url == url), None)
