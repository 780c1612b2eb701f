"""A file decoded by ffmpeg's decoders in process (PyAV): its rate, channels and declared length from the
container, then its samples as float32 blocks of a bounded size.

Frames (20-120 ms each) are gathered in ffmpeg's own FIFO and taken out a block at a time, so the Python work is
per block, not per frame. ffmpeg runs its decoders without the GIL, on one thread per file (decode threads are
the actor's to choose, not ffmpeg's).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np

from .decoders import Decoder, Format, require

try:
    import av
except ImportError:  # a run refuses to start without it (pipeline.audio.decoders.decoder_versions); here, say so
    av = None

# what ffmpeg raises for a file it cannot read (an end of file before any audio is no ValueError)
ERRORS = (av.FFmpegError,) if av is not None else ()

# the demuxer for each format ffmpeg decodes here: named, not probed, so that a file is read as what it starts as
DEMUXERS = {Format.MP3: "mp3", Format.VORBIS: "ogg", Format.OPUS: "ogg", Format.MP4: "mp4"}
PLANAR_FLOAT = "fltp"  # what ffmpeg's MP3, AAC, Vorbis and Opus decoders give
# Other sample formats (integers: ALAC, FLAC in MP4), and frames of this many channels or more (PyAV 18 counts
# one plane too many for them, and reading it crashes), are converted to interleaved float32, exactly
INTERLEAVED_FLOAT = "flt"
MAX_PLANES = 8


@dataclass
class PyavInput:
    container: av.container.InputContainer
    stream: av.audio.stream.AudioStream
    rate: int
    channels: int
    declared_frames: int | None  # the container's length (MP3: its Xing/LAME header's, or a bit-rate estimate)
    # frames past which the stream holds only its codec's padding: an Ogg Vorbis stream's last granule position is
    # its exact length (what libsndfile returns), and ffmpeg decodes a short stream's last block whole past it
    end: int | None = None


    def blocks(self, frames: int) -> Iterator[list[np.ndarray]]:
        """The whole stream in order, <= `frames` at a time: each block a float32 array per channel, the block's
        own (a new frame's planes: its reader may write into them)."""
        fifo, convert, channels = av.AudioFifo(), None, 0
        write = fifo.write  # what is done per frame (20-120 ms of audio) is kept to the least
        for frame in self.container.decode(self.stream):
            if frame.layout.nb_channels != channels:
                # the FIFO copies as many planes as its first frame had: a frame with fewer would be read past
                if channels:
                    raise ValueError(f"the stream changes from {channels} to {frame.layout.nb_channels} channels")
                channels = frame.layout.nb_channels
                # chosen by the first frame: the FIFO refuses a later frame of another sample format (ValueError)
                if frame.format.name != PLANAR_FLOAT or channels >= MAX_PLANES:
                    convert = av.AudioResampler(format=INTERLEAVED_FLOAT, layout=frame.layout, rate=frame.sample_rate)
            if convert is None:
                frame.pts = None  # the FIFO checks timestamps are continuous; a gap is not ours to refuse
                write(frame)
            else:
                for part in convert.resample(frame):
                    part.pts = None
                    write(part)
            while fifo.samples >= frames:
                yield from self._within_end(_channels(fifo.read(frames)))
        rest = fifo.read()
        if rest is not None:
            yield from self._within_end(_channels(rest))

    def _within_end(self, block: list[np.ndarray]) -> Iterator[list[np.ndarray]]:
        if self.end is not None:
            keep = max(0, min(len(block[0]), self.end))
            self.end -= keep
            block = [channel[:keep] for channel in block]
        if len(block[0]):
            yield block


def _channels(frame: av.AudioFrame) -> list[np.ndarray]:
    """The frame's samples per channel: planar ones read in place (each array keeps its plane, so the frame,
    alive), interleaved ones as strided views."""
    if frame.format.is_planar:
        return [np.frombuffer(plane, np.float32, frame.samples) for plane in frame.planes]
    return list(np.frombuffer(frame.planes[0], np.float32, frame.samples * frame.layout.nb_channels)
                .reshape(frame.samples, frame.layout.nb_channels).T)


@contextlib.contextmanager
def opened(file: BinaryIO, fmt: Format) -> Iterator[PyavInput]:
    """The file's first audio stream; ffmpeg's errors (ERRORS, and ValueError) propagate: the caller records them
    as `undecodable`."""
    if av is None:
        require(Decoder.PYAV)
    with av.open(file, format=DEMUXERS[fmt], metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise ValueError(f"no audio stream in this {fmt.value} file")
        stream = container.streams.audio[0]
        context = stream.codec_context
        context.thread_count = 1
        rate, channels = int(context.sample_rate or 0), int(context.channels or 0)
        if rate <= 0 or channels <= 0:
            raise ValueError(f"{fmt.value} stream of {channels} channels at {rate} Hz")
        declared = _declared_frames(container, stream, rate)
        yield PyavInput(container, stream, rate, channels, declared, declared if fmt is Format.VORBIS else None)


def _declared_frames(container: av.container.InputContainer, stream: av.audio.stream.AudioStream,
                     rate: int) -> int | None:
    if stream.duration is not None and stream.duration > 0 and stream.time_base:
        return round(stream.duration * stream.time_base * rate)
    if container.duration is not None and container.duration > 0:
        return round(container.duration * rate / av.time_base)
    return None
