"""NeMo JSONL manifests: one line per row (`audio_filepath`, optional `offset` and `duration` in seconds,
`text`, any other fields), in recorded line ranges of `source.lines_per_shard` lines (see lines.py); each
line's segment is read as its own file would be (see segments.py). A line that cannot be used (not JSON, no
`audio_filepath`, a negative offset or duration, a path outside `source.audio_root`) is an error record naming
the manifest and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator, Optional

import pyarrow as pa

from ..audio.decode import SampleError
from ..failures import ConfigError
from ..reads import Reads
from ..urls import redact
from .base import RawSample, Shard, Source, SourceListing, normalise_url
from .lines import check_lines_per_shard, line_range_plan, manifests, read_line_range
from .segments import Segment, read_segments

FIELDS = [pa.field("text", pa.string()), pa.field("audio_filepath", pa.string()), pa.field("offset", pa.float64()),
          pa.field("duration", pa.float64())]


def list_nemo(config: NemoSource) -> SourceListing:
    reads = Reads.of(config)
    plan = line_range_plan(manifests(config.path, "NeMo manifest", reads), config.lines_per_shard, "nemo", reads)
    audio_root = normalise_url(config.audio_root) if config.audio_root else None
    identity = {"kind": "nemo", "lines_per_shard": config.lines_per_shard, "audio_root": audio_root}
    return SourceListing([], identity, list(FIELDS), plan)


def _parse(line: bytes, where: str, key: str, manifest: str, audio_root: str | None) -> Segment | SampleError:
    try:
        entry = json.loads(line)
    except ValueError as error:
        return SampleError("bad_manifest_line", f"{where}: not JSON ({error})")
    if not isinstance(entry, dict):
        return SampleError("bad_manifest_line", f"{where}: a JSON {type(entry).__name__}, not an object")
    path = entry.get("audio_filepath")
    if not isinstance(path, str) or not path:
        return SampleError("missing_field", f"{where}: no audio_filepath")
    offset, duration = entry.get("offset", 0.0) or 0.0, entry.get("duration")
    for name, value in (("offset", offset), ("duration", duration)):
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0):
            return SampleError("bad_segment", f"{where}: {name} {value!r} is not a number >= 0")
    relative = "://" not in path and not path.startswith("/")
    url = normalise_url(f"{manifest.rsplit('/', 1)[0]}/{path}" if relative else path)
    if audio_root is not None and not url.startswith(audio_root.rstrip("/") + "/"):
        return SampleError("outside_audio_root", f"{where}: {path} is outside source.audio_root {audio_root}")
    metadata = dict(entry, audio_filepath=redact(path))  # the row keeps the path, not what authorises reading it
    return Segment(key, where, url, float(offset), None if duration is None else float(duration), metadata)


def read_nemo_shard(shard: Shard, config: NemoSource, reads: Reads | None = None) -> Iterator[RawSample]:
    """The shard's lines as segments; the manifest's and the recordings' reads retried by `reads`."""
    reads = reads or Reads.of(config)
    lines = read_line_range(shard, reads)
    first = shard.members[0]
    audio_root = normalise_url(config.audio_root) if config.audio_root else None
    name = shard.file_name
    segments = []
    for number, line in enumerate(lines, start=first + 1):
        if not line.strip():
            continue  # a blank line is no sample
        parsed = _parse(line, f"{shard.url} line {number}", f"{name}:{number}", shard.url, audio_root)
        if isinstance(parsed, SampleError):
            yield RawSample(f"{name}:{number}", None, {}, parsed)
        else:
            segments.append(parsed)
    yield from read_segments(segments, reads)


@dataclass
class NemoSource(Source, kind="nemo"):
    path: Optional[str] = None  # JSONL manifest(s): a path or fsspec URL, globs and {a,b} allowed
    lines_per_shard: int = 1000  # manifest lines per shard (the line ranges are recorded in the output)
    audio_root: Optional[str] = None  # audio_filepath must lie under this folder or URL (None: anywhere)

    def check(self) -> None:
        super().check()
        if not self.path:
            raise ConfigError("source.path", "no NeMo manifest given", "a JSONL manifest path or URL, globs allowed")
        check_lines_per_shard(self)

    def listing(self) -> SourceListing:
        return list_nemo(self)

    def read(self, shard: Shard, max_file_bytes: int, reads: Reads) -> Iterator[RawSample]:
        return read_nemo_shard(shard, self, reads)
