"""NeMo JSONL manifests: one line per row (`audio_filepath`, optional `offset` and `duration` in seconds,
`text`, any other fields), `source.lines_per_shard` lines to a shard.

A shard is a line range of one manifest, recorded in the output (`runstate.plan`) with its byte range and
a hash of its lines when first made: appended lines become new shards, and a recorded range whose lines
changed stops the run (IdentityChanged) rather than mixing two versions of the manifest.

A segment is read as if its samples (the source rate's frames from round(offset x rate), round(duration x
rate) of them; no duration: to the end) were a file of their own: only that range is read, by seeking
(formats whose seek is not exact, MPEG-2/2.5 MP3, are decoded forward from the nearest earlier position), and
the segments of one recording in a shard are read in order from one open file. A segment up to the pipeline's
whole-clip limit goes to the decoder as an array; a longer one is copied block by block into a temporary
float32 W64 file (`SpilledFile`), which the decoder reads in blocks as it would the cut file: memory is a block,
not the segment or the recording. Samples read as float32 and written as float32 are the same values, so the
codes are those of the cut file wherever the decoder's samples are (see pipeline/audio.py).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from itertools import groupby
from typing import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import soundfile
from braceexpand import braceexpand

from ..audio import BLOCK_S, BLOCKED_ABOVE_S, SampleError, SpilledFile
from ..config import ConfigError, SourceConfig
from ..failures import transient_cause
from ..runstate import IdentityChanged
from ..runstate.plan import read_plan, record_plan
from . import (RawSample, Shard, ShardError, SourceListing, full_url, glob_with_sizes, normalise_url, read_error,
               shard_from_record, shard_id, shard_record)

FIELDS = [pa.field("text", pa.string()), pa.field("audio_filepath", pa.string()), pa.field("offset", pa.float64()),
          pa.field("duration", pa.float64())]


def _manifests(path: str) -> list[str]:
    urls = []
    for expanded in braceexpand(path):
        fs, root = fsspec.core.url_to_fs(expanded)
        if any(ch in expanded for ch in "*?["):
            urls += [full_url(fs, match) for match, _ in glob_with_sizes(fs, root)]
        elif fs.isfile(root):
            urls.append(full_url(fs, root))
        else:
            raise ConfigError("source.path", f"no NeMo manifest at {expanded!r}", "a JSONL manifest, a glob, or {a,b}")
    if not urls:
        raise ConfigError("source.path", f"no NeMo manifests match {path!r}")
    return sorted(set(urls))


def _lines_hash(lines: list[bytes]) -> str:
    """Of the lines' content: a newline added after a recorded last line does not change it."""
    digest = hashlib.sha1()
    for line in lines:
        digest.update(line.rstrip(b"\r\n") + b"\n")
    return digest.hexdigest()


def _ranges(url: str, per_shard: int, recorded: list[Shard]) -> list[Shard]:
    """Check the recorded ranges of one manifest against its lines now; new ranges for the lines after them."""
    new, lines, offset, first, start = [], [], 0, 0, 0
    expect = iter(recorded)
    current = next(expect, None)

    def close() -> None:
        nonlocal current
        size = sum(len(x) for x in lines)
        if current is not None:
            _, count, at, _, sha = current.members
            if (first, len(lines), start) != (current.members[0], count, at) or _lines_hash(lines) != sha:
                raise IdentityChanged(
                    f"lines {first + 1}-{first + count} of NeMo manifest {url} changed since they were recorded as shard "
                    f"{current.id}: restore them and append new lines at the end, or start a new output.dir "
                    "(or set output.overwrite=true)")
            current = next(expect, None)
        else:
            new.append(Shard(shard_id(url, f"-{first + 1:09d}"), url, "nemo", size,
                             (first, len(lines), start, size, _lines_hash(lines))))

    with fsspec.open(url, "rb") as f:
        for number, line in enumerate(f):
            if not lines:
                first, start = number, offset
            lines.append(line)
            offset += len(line)
            if len(lines) == (current.members[1] if current is not None else per_shard):
                close()
                lines = []
    if lines:
        close()  # a recorded range still open here is a manifest cut short: close() says so
    if current is not None:
        raise IdentityChanged(f"NeMo manifest {url} ends before line {current.members[0] + current.members[1]}, which "
                              f"shard {current.id} recorded: restore it, or start a new output.dir")
    return new


def list_nemo(config: SourceConfig) -> SourceListing:
    manifests = _manifests(config.path)
    per_shard = config.lines_per_shard
    audio_root = normalise_url(config.audio_root) if config.audio_root else None

    def plan(storage) -> list[Shard]:
        recorded = [shard_from_record(r) for r in read_plan(storage)]
        new = []
        for url in manifests:
            new += _ranges(url, per_shard, [s for s in recorded if s.url == url])
        record_plan(storage, len(recorded), [shard_record(s) for s in new])
        return recorded + new

    identity = {"kind": "nemo", "lines_per_shard": per_shard, "audio_root": audio_root}
    return SourceListing([], identity, list(FIELDS), plan)


@dataclass
class _Segment:
    key: str
    line: int  # 1-based, for messages
    url: str  # the recording
    offset: float
    duration: float | None
    metadata: dict


def _parse(line: bytes, number: int, key: str, manifest: str, audio_root: str | None) -> _Segment | SampleError:
    where = f"{manifest} line {number}"
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
    return _Segment(key, number, url, float(offset), None if duration is None else float(duration), entry)


class _Recording:
    """One open recording, read forward segment by segment."""

    def __init__(self, url: str):
        self.handle = None if "://" not in url else fsspec.open(url, "rb").open()
        self.file = soundfile.SoundFile(self.handle if self.handle is not None else url)
        # libsndfile's MPEG-2/2.5 MP3 seek is neither exact nor always possible: decode forward instead
        self.exact_seek = not (self.file.format == "MP3" and self.file.samplerate < 32000)
        self.position = 0

    def close(self) -> None:
        self.file.close()
        if self.handle is not None:
            self.handle.close()

    def move_to(self, start: int) -> None:
        if self.exact_seek or start < self.position:
            self.file.seek(start if self.exact_seek else 0)
            self.position = start if self.exact_seek else 0
        block = max(1, round(BLOCK_S * self.file.samplerate))
        while self.position < start:
            skipped = len(self.file.read(min(block, start - self.position), dtype="float32", always_2d=True))
            if not skipped:
                raise SampleError("truncated", f"the recording ends at frame {self.position}")
            self.position += skipped

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        block, left = max(1, round(BLOCK_S * self.file.samplerate)), frames
        while left > 0:
            data = self.file.read(min(block, left), dtype="float32", always_2d=True)
            if not len(data):
                raise SampleError("truncated", f"the recording ends at frame {self.position}, before the segment does")
            self.position += len(data)
            left -= len(data)
            yield data


def _segment_audio(recording: _Recording, segment: _Segment):
    f = recording.file
    rate = f.samplerate
    start = round(segment.offset * rate)
    frames = f.frames - start if segment.duration is None else round(segment.duration * rate)
    if start + frames > f.frames or start >= f.frames:
        raise SampleError("segment_past_end", f"line {segment.line}: frames {start}-{start + frames} of {segment.url}, "
                          f"which has {f.frames} at {rate} Hz")
    recording.move_to(start)
    if frames <= BLOCKED_ABOVE_S * rate:  # as a cut file of this length would be: decoded whole
        return np.concatenate(list(recording.blocks(frames)) or [np.zeros((0, f.channels), np.float32)]), rate
    spilled = SpilledFile(io.BytesIO(b""))
    with soundfile.SoundFile(spilled.file, "w", rate, f.channels, "FLOAT", format="W64") as out:
        for data in recording.blocks(frames):
            out.write(data)
    spilled.size = spilled.file.tell()
    spilled.file.seek(0)
    return spilled


def read_nemo_shard(shard: Shard, config: SourceConfig) -> Iterator[RawSample]:
    first, count, start, size, sha = shard.members
    try:
        with fsspec.open(shard.url, "rb") as f:
            f.seek(start)
            lines = f.read(size).splitlines(keepends=True)
    except FileNotFoundError as error:
        raise read_error(error, shard.url, "missing_shard") from None
    except OSError as error:
        raise read_error(error, shard.url, "unreadable_shard") from None
    if len(lines) != count or _lines_hash(lines) != sha:
        raise ShardError("manifest_changed", f"lines {first + 1}-{first + count} of {shard.url} changed since the run "
                         "recorded them")
    audio_root = normalise_url(config.audio_root) if config.audio_root else None
    name = shard.url.rsplit("/", 1)[-1]
    segments = []
    for number, line in enumerate(lines, start=first + 1):
        if not line.strip():
            continue  # a blank line is no sample
        parsed = _parse(line, number, f"{name}:{number}", shard.url, audio_root)
        if isinstance(parsed, SampleError):
            yield RawSample(f"{name}:{number}", None, {}, parsed)
        else:
            segments.append(parsed)
    segments.sort(key=lambda s: (s.url, s.offset))
    for url, group in groupby(segments, key=lambda s: s.url):
        yield from _read_recording(url, list(group))


def _read_recording(url: str, group: list[_Segment]) -> Iterator[RawSample]:
    try:
        recording = _Recording(url)
    except Exception as error:  # a missing or unreadable recording: each of its segments is an error record
        if transient_cause(error) is not None:
            raise read_error(error, url, "unreadable_file") from None
        reason = "missing_file" if isinstance(error, FileNotFoundError) else "undecodable"
        for segment in group:
            yield RawSample(segment.key, None, segment.metadata, SampleError(reason, f"{url}: {str(error)[:200]}"))
        return
    try:
        for segment in group:
            try:
                audio = _segment_audio(recording, segment)
            except SampleError as error:
                yield RawSample(segment.key, None, segment.metadata, error)
                continue
            except (soundfile.LibsndfileError, RuntimeError) as error:  # the decoder failed mid-recording
                recording.position = recording.file.frames + 1  # unknown now: the next segment seeks or restarts
                yield RawSample(segment.key, None, segment.metadata, SampleError("undecodable", str(error)[:200]))
                continue
            yield RawSample(segment.key, audio, segment.metadata)
    finally:
        recording.close()
