"""Which library decodes which format: one entry per format, chosen by speed per core (jobs/bench_decode.py).

A file's format is read from its first bytes, not its name. libsndfile decodes the lossless formats (the samples
the pipeline has always given), MP3 (as fast as ffmpeg here) and everything not named here; ffmpeg's decoders, in
process through PyAV, decode Vorbis and Opus, which they decode faster, and AAC in MP4/M4A, which libsndfile
cannot read at all. Lossy decoders differ in the
last bits, so each format's decoder and its library's version are part of the output's identity
(`library_versions`): a rerun with another decoder is refused as a library upgrade is.
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass


class Format(enum.Enum):
    WAV = "wav"
    FLAC = "flac"
    MP3 = "mp3"
    VORBIS = "vorbis"
    OPUS = "opus"
    MP4 = "mp4"  # AAC (or another codec) in an MP4/M4A container
    OTHER = "other"  # whatever libsndfile reads: AIFF, AU, W64, Ogg FLAC, ...; or no audio at all


class Decoder(enum.Enum):
    SOUNDFILE = "soundfile"  # libsndfile
    PYAV = "pyav"  # ffmpeg's decoders


@dataclass(frozen=True)
class Library:
    module: str
    package: str  # what pip installs


LIBRARIES = {Decoder.SOUNDFILE: Library("soundfile", "soundfile"), Decoder.PYAV: Library("av", "av")}

DECODERS = {
    Format.WAV: Decoder.SOUNDFILE,
    Format.FLAC: Decoder.SOUNDFILE,
    Format.MP3: Decoder.SOUNDFILE,
    Format.VORBIS: Decoder.PYAV,
    Format.OPUS: Decoder.PYAV,
    Format.MP4: Decoder.PYAV,
    Format.OTHER: Decoder.SOUNDFILE,
}


def sniff(head: bytes) -> Format:
    """The format of a file from its first bytes (pipeline/audio/containers.py's HEAD_BYTES)."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return Format.WAV
    if head[:4] == b"fLaC":
        return Format.FLAC
    if head[:4] == b"OggS":
        first_packet = head[28:28 + 8]  # after the first page's header and its one lacing value
        if first_packet.startswith(b"OpusHead"):
            return Format.OPUS
        if first_packet.startswith(b"\x01vorbis"):
            return Format.VORBIS
        return Format.OTHER
    if head[4:8] == b"ftyp":
        return Format.MP4
    if head[:3] == b"ID3" or _mpeg_layer3_sync(head):
        return Format.MP3
    return Format.OTHER


def _mpeg_layer3_sync(head: bytes) -> bool:
    # an MPEG audio frame header: 11 sync bits, a version other than 'reserved', layer III (AAC's ADTS has layer 0)
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x18 != 0x08 \
        and head[1] & 0x06 == 0x02


def decoder_for(fmt: Format) -> Decoder:
    return DECODERS[fmt]


class DecoderMissing(ImportError):
    """A decoder library the registry names is not installed on this node. An ImportError, not a decoder's error:
    it is no sample's fault."""


def require(decoder: Decoder):
    """The decoder's library module; DecoderMissing naming the package to install when it is not there."""
    library = LIBRARIES[decoder]
    try:
        return importlib.import_module(library.module)
    except ImportError as error:
        raise DecoderMissing(f"the audio decoder library {decoder.value!r} is not installed on this node ({error}): "
                             f"pip install {library.package} (pyproject.toml's dependencies), then start again") from None


def _version(decoder: Decoder) -> str:
    module = require(decoder)
    if decoder is Decoder.SOUNDFILE:
        return f"soundfile {module.__version__} (libsndfile {module.__libsndfile_version__})"
    return f"av {module.__version__} (FFmpeg {module.ffmpeg_version_info})"


def decoder_versions() -> dict:
    """Per format, the decoder and its library's version: recorded in the identity. Raises DecoderMissing, naming
    the package, when one is not installed: a start-up error, not one failure per sample."""
    versions = {decoder: _version(decoder) for decoder in set(DECODERS.values())}
    return {fmt.value: versions[decoder] for fmt, decoder in DECODERS.items()}
