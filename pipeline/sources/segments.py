"""Segments of recordings (NeMo lines, Lhotse cuts) read as if their samples were files of their own.

A segment is the recording's frames from round(offset x rate), round(duration x rate) of them (no duration: to
the end), at the recording's own rate. Only that range is read, by seeking (WAV, FLAC, Ogg and MPEG-1 MP3 seek
exactly in libsndfile; MPEG-2/2.5 MP3 does not, and is decoded forward from the previous segment's end), and the
segments of one recording in a shard are read in order from one open file. A segment up to the pipeline's
whole-clip limit goes to the decoder as an array; a longer one is copied block by block into a temporary float32
W64 file (`SpilledFile`), which the decoder reads in blocks as it would the cut file: memory is a block, not the
segment or the recording. Samples read as float32 and written as float32 are the same values, so the codes are
those of the cut file wherever the decoder's samples are (see pipeline/audio/decode.py).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from itertools import groupby
from typing import Iterator

import numpy as np
import soundfile

from ..audio.decode import BLOCK_S, BLOCKED_ABOVE_S, SampleError, SpilledFile
from ..failures import transient_cause
from ..reads import Reads
from .base import RawSample, ShardError, read_error


@dataclass
class Segment:
    key: str
    where: str  # the manifest line it came from, for messages
    url: str  # the recording: a local path or a URL
    offset: float
    duration: float | None  # None: to the end
    metadata: dict
    channels: list | None = None  # the recording's channels to keep (None: all, downmixed by the decoder)


def read_segments(segments: list[Segment], reads: Reads) -> Iterator[RawSample]:
    """The segments' samples, grouped by recording (each opened once), in order of offset within it; a remote
    recording read through `reads` (retried where it fails, resumed where it broke)."""
    ordered = sorted(segments, key=lambda s: (s.url, s.offset))
    for url, group in groupby(ordered, key=lambda s: s.url):
        yield from _read_recording(url, list(group), reads)


class _Recording:
    """One open recording, read forward segment by segment."""

    def __init__(self, url: str, reads: Reads):
        self.url = url
        self.handle = reads.open(url) if "://" in url else open(url, "rb")
        try:
            self.file = soundfile.SoundFile(self.handle)
        except BaseException:
            self.handle.close()
            self.check()
            raise
        # libsndfile's MPEG-2/2.5 MP3 seek is neither exact nor always possible: decode forward instead
        self.exact_seek = not (self.file.format == "MP3" and self.file.samplerate < 32000)
        self.position = 0

    def close(self) -> None:
        self.file.close()
        self.handle.close()

    def check(self) -> None:
        """Raise what a read of the store last gave up on: libsndfile's read callbacks cannot raise, so such a
        read reaches the decoder as a short one (a `truncated` record) unless it is raised here."""
        failure = getattr(getattr(self.handle, "raw", None), "failure", None)
        if failure is not None:
            raise read_error(failure, self.url, "unreadable_file")

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

    def blocks(self, frames: int, channels: list | None) -> Iterator[np.ndarray]:
        block, left = max(1, round(BLOCK_S * self.file.samplerate)), frames
        while left > 0:
            data = self.file.read(min(block, left), dtype="float32", always_2d=True)
            if not len(data):
                raise SampleError("truncated", f"the recording ends at frame {self.position}, before the segment does")
            self.position += len(data)
            left -= len(data)
            yield data if channels is None else data[:, channels]


def _segment_audio(recording: _Recording, segment: Segment):
    f = recording.file
    rate = f.samplerate
    start = round(segment.offset * rate)
    frames = f.frames - start if segment.duration is None else round(segment.duration * rate)
    if start + frames > f.frames or start >= f.frames:
        raise SampleError("segment_past_end", f"{segment.where}: frames {start}-{start + frames} of {segment.url}, "
                          f"which has {f.frames} at {rate} Hz")
    if segment.channels is not None and not all(0 <= c < f.channels for c in segment.channels):
        raise SampleError("bad_segment", f"{segment.where}: channels {segment.channels} of a {f.channels}-channel file")
    recording.move_to(start)
    width = f.channels if segment.channels is None else len(segment.channels)
    blocks = recording.blocks(frames, segment.channels)
    if frames <= BLOCKED_ABOVE_S * rate:  # as a cut file of this length would be: decoded whole
        return np.concatenate(list(blocks) or [np.zeros((0, width), np.float32)]), rate
    spilled = SpilledFile(io.BytesIO(b""))
    with soundfile.SoundFile(spilled.file, "w", rate, width, "FLOAT", format="W64") as out:
        for data in blocks:
            out.write(data)
    spilled.size = spilled.file.tell()
    spilled.file.seek(0)
    return spilled


def _read_recording(url: str, group: list[Segment], reads: Reads) -> Iterator[RawSample]:
    try:
        recording = _Recording(url, reads)
    except ShardError:  # the recording changed while it was read
        raise
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
                recording.check()
            except SampleError as error:
                recording.check()
                yield RawSample(segment.key, None, segment.metadata, error)
                continue
            except (soundfile.LibsndfileError, RuntimeError) as error:  # the decoder failed mid-recording
                recording.check()
                recording.position = recording.file.frames + 1  # unknown now: the next segment seeks or restarts
                yield RawSample(segment.key, None, segment.metadata, SampleError("undecodable", str(error)[:200]))
                continue
            yield RawSample(segment.key, audio, segment.metadata)
    finally:
        recording.close()
