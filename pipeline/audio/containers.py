"""Does a file hold all the audio its container declares? Read from the container's own bytes.

libsndfile decodes a cut file without complaint, returning what is there: for WAV, W64, RF64, AIFF, 8SVX, AVR,
AU and NIST it shrinks the length to the bytes present, and an Ogg file (Vorbis, Opus) declares no length beyond
its last page. So the declared length is read here from the header (the data chunk's size against the bytes
after it), and an Ogg stream must end on a whole page carrying the end-of-stream flag. MAT4 and MAT5 (a
samplerate matrix, then the wave's), VOC (sized blocks), WVE and MPC2K (a frame count in the header) are read
the same way, and MP4/M4A's top-level boxes must each fit in the file. FLAC and MP3 declare their length where
their decoder reads it, and pipeline/audio/decode.py compares the decoded length with it. Containers whose header
declares no length (IRCAM, PAF, PVF, raw) are decoded and measured, as is a data chunk that does not start within
the first HEAD_BYTES.
"""

from __future__ import annotations

import os

HEAD_BYTES = 1 << 16  # where the data chunk must start to be checked (chunks before it: fmt, LIST, ...)
OGG_MAX_PAGE = 27 + 255 + 255 * 255  # the largest Ogg page: its header, 255 lacing values, 255 full segments

# a data size of 0 or all ones means "streamed, size unknown", not a truncated file
_STREAMED_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}
_OGG_END_OF_STREAM = 0x04


def head_and_tail(data: bytes | None = None, fd: int | None = None, size: int = 0) -> tuple[bytes, bytes, int]:
    """The first HEAD_BYTES and the last OGG_MAX_PAGE bytes of `data`, or of the open file `fd` of `size` bytes
    (read with pread: the file's position, which the decoder uses, does not move)."""
    if data is not None:
        return bytes(data[:HEAD_BYTES]), bytes(data[-OGG_MAX_PAGE:]), len(data)
    tail_at = max(0, size - OGG_MAX_PAGE)
    return os.pread(fd, HEAD_BYTES, 0), os.pread(fd, size - tail_at, tail_at), size


def truncation(head: bytes, tail: bytes, size: int) -> str:
    """What is missing from a file whose container declares more than it holds; '' when nothing is (or the
    container declares no length)."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64"):
        return _riff(head, size)
    if head[:4] == b"riff":
        return _w64(head, size)
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return _chunks(head, size, 12, "big", b"SSND", "AIFF sound data chunk")
    if head[:4] == b"FORM" and head[8:12] in (b"8SVX", b"16SV"):
        return _chunks(head, size, 12, "big", b"BODY", "8SVX body chunk")
    if head[:4] == b"2BIT":
        return _avr(head, size)
    if head[:4] == b".snd":
        return _au(head, size)
    if head[:7] == b"NIST_1A":
        return _nist(head, size)
    if head[:4] == b"OggS":
        return _ogg(tail)
    if head[4:8] == b"ftyp":
        return _mp4(head, tail, size)
    if head[:10] == b"MATLAB 5.0":
        return _mat5(head, size)
    if head[:20] == b"Creative Voice File\x1a":
        return _voc(head, size)
    if head[:16] == b"ALawSoundFile**\x00":
        # Psion WVE: A-law, one byte per sample, the sample count at 18 (big-endian), data after a 32-byte header
        return _missing("WVE sample data", int.from_bytes(head[18:22], "big"), size - 32)
    if head[:2] == b"\x01\x04" and len(head) >= 42:
        return _mpc2k(head, size)
    return _mat4(head, size)


def _missing(what: str, declared: int, present: int) -> str:
    return f"{what} declares {declared} bytes, {present} present" if declared > present else ""


def _chunks(head: bytes, size: int, pos: int, order: str, data_id: bytes, what: str, data_size: int | None = None) -> str:
    """Walk 4-byte-id chunks with 4-byte sizes (RIFF, AIFF) to the data chunk and compare its size with the bytes
    after its header. `data_size`: RF64's real size of a data chunk whose own field is all ones."""
    while pos + 8 <= len(head):
        chunk, declared = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], order)
        if chunk == data_id:
            if data_size is not None and declared == 0xFFFFFFFF:
                declared = data_size
            elif declared in _STREAMED_SIZES:
                return ""
            return _missing(what, declared, size - pos - 8)
        pos += 8 + declared + (declared & 1)
    return ""


def _riff(head: bytes, size: int) -> str:
    order = "big" if head[:4] == b"RIFX" else "little"
    data_size = None
    if head[:4] == b"RF64" and head[12:16] == b"ds64":
        data_size = int.from_bytes(head[28:36], "little")  # ds64: RIFF size, then the data size (64 bits each)
    return _chunks(head, size, 12, order, b"data", "WAV data chunk", data_size)


def _w64(head: bytes, size: int) -> str:
    # Sony Wave64: 16-byte GUID ids (the data chunk's starts with b"data"), 8-byte sizes that include the
    # 24-byte chunk header, chunks 8-byte aligned; the file starts with the riff GUID, its size and the wave GUID
    pos = 40
    while pos + 24 <= len(head):
        chunk, declared = head[pos:pos + 16], int.from_bytes(head[pos + 16:pos + 24], "little")
        if declared < 24:
            return ""
        if chunk[:4] == b"data":
            return _missing("W64 data chunk", declared - 24, size - pos - 24)
        pos += (declared + 7) & ~7
    return ""


def _avr(head: bytes, size: int) -> str:
    # Audio Visual Research: a 128-byte big-endian header; mono flag (0 / all ones) at 12, bits per sample at 14,
    # frames at 26
    channels = 2 if head[12:14] == b"\xff\xff" else 1
    bits, frames = int.from_bytes(head[14:16], "big"), int.from_bytes(head[26:30], "big")
    return _missing("AVR sample data", frames * channels * (bits // 8), size - 128)


def _au(head: bytes, size: int) -> str:
    offset, declared = int.from_bytes(head[4:8], "big"), int.from_bytes(head[8:12], "big")
    return "" if declared == 0xFFFFFFFF else _missing("AU data", declared, size - offset)


def _nist(head: bytes, size: int) -> str:
    lines = head.split(b"end_head")[0].decode("latin-1").split("\n")
    fields = {}
    for line in lines[2:]:
        parts = line.split()
        if len(parts) == 3:
            fields[parts[0]] = parts[2]
    try:
        header = int(lines[1])
        declared = int(fields["sample_count"]) * int(fields.get("channel_count", 1)) * int(fields["sample_n_bytes"])
    except (IndexError, KeyError, ValueError):
        return ""
    if fields.get("sample_coding", "pcm") != "pcm":
        return ""  # compressed: the data is not count x channels x bytes long
    return _missing("NIST sample data", declared, size - header)


def _ogg(tail: bytes) -> str:
    """The stream must end on a whole page with the end-of-stream flag: a cut mid-page leaves a part of a page
    after the last whole one, a cut between pages a last page without the flag. Bytes after the last page that
    are no page (an ID3 tag some tools append) are passed over, as libsndfile does."""
    at = tail.rfind(b"OggS")
    while at >= 0:
        end = _ogg_page_end(tail, at)
        if end is not None:  # else: part of a page, or the four bytes inside a page's data
            if tail.startswith(b"OggS", end):
                return "the Ogg stream ends inside a page"  # a page follows this whole one, and it is not whole
            if tail[at + 5] & _OGG_END_OF_STREAM:
                return ""
            return "the Ogg stream ends without its end-of-stream page"
        at = tail.rfind(b"OggS", 0, at)
    return "the Ogg stream ends inside a page"


def _ogg_page_end(data: bytes, at: int) -> int | None:
    """Where the page starting at `at` ends, if all of it is in `data`."""
    if at + 27 > len(data):
        return None
    segments = data[at + 26]
    lacing = data[at + 27:at + 27 + segments]
    end = at + 27 + segments + sum(lacing)
    return end if len(lacing) == segments and end <= len(data) else None


def _mp4(head: bytes, tail: bytes, size: int) -> str:
    """ISO base media (MP4, M4A): the top-level boxes (ftyp, moov, mdat, ...: a 4-byte big-endian size, the type;
    size 1: a 64-bit size follows the type; 0: to the end of the file) must fit in the file, a cut one declaring
    more bytes than are left. Each box's header is read where it lies in the head or the tail; one in between
    ends the walk (what follows it is the decoder's to judge: a file cut just after a box has lost its moov or
    mdat, and ffmpeg cannot read it)."""
    tail_at, pos = size - len(tail), 0
    while pos + 8 <= size:
        header = head[pos:pos + 16] if pos < len(head) else tail[pos - tail_at:pos - tail_at + 16] if pos >= tail_at else b""
        if len(header) < 8:
            return ""
        declared = int.from_bytes(header[:4], "big")
        if declared == 1 and len(header) == 16:
            declared = int.from_bytes(header[8:16], "big")
        if declared < 8:  # 0: the last box, to the end of the file; others: not a box, the decoder's to refuse
            return ""
        if pos + declared > size:
            return _missing(f"MP4 {header[4:8].decode('latin-1')} box", declared, size - pos)
        pos += declared
    return ""


_MAT5_MATRIX = 14  # miMATRIX: an element holding elements
_MAT4_BYTES = {0: 8, 1: 4, 2: 4, 3: 2, 4: 2, 5: 1}  # the P digit of a MAT4 matrix type MOPT: its element size


def _mat4(head: bytes, size: int) -> str:
    """MAT4 has no magic: libsndfile's own rule is a first 1 x 1 double matrix named "samplerate", then the
    wave's matrix (channels x frames); the type field's byte order tells the file's (M digit 0 little, 1 big)."""
    for order, machine in (("little", 0), ("big", 1)):
        if int.from_bytes(head[:4], order) == machine * 1000 and head[20:31] == b"samplerate\x00":
            break
    else:
        return ""
    pos = 20 + int.from_bytes(head[16:20], order) + 8
    if pos + 20 > len(head):
        return ""
    kind, rows, cols, imaginary, name = (int.from_bytes(head[pos + i:pos + i + 4], order) for i in range(0, 20, 4))
    element = _MAT4_BYTES.get(kind // 10 % 10)
    if element is None or kind // 1000 != machine:
        return ""
    data_at = pos + 20 + name
    return _missing("MAT4 wave matrix", rows * cols * element * (2 if imaginary else 1), size - data_at)


def _mat5(head: bytes, size: int) -> str:
    """A 128-byte text header ending in the byte-order mark ("IM": little-endian), then data elements (4-byte type,
    4-byte size, data padded to 8 bytes). A matrix's own size is not trusted (libsndfile writes it 8 bytes over):
    the elements inside it are walked, and the wave's data element is the one a cut file comes short of."""
    order = "little" if head[126:128] == b"IM" else "big"
    pos, ends = 128, [len(head)]
    while pos + 8 <= ends[-1]:
        kind, declared = int.from_bytes(head[pos:pos + 4], order), int.from_bytes(head[pos + 4:pos + 8], order)
        if kind == _MAT5_MATRIX:
            ends.append(min(len(head), pos + 8 + declared))
            pos += 8
            continue
        if kind >> 16:  # a small element: size in the upper half of the type word, data in the 4 bytes after it
            pos += 8
        elif pos + 8 + declared > size:
            return _missing("MAT5 data element", declared, size - pos - 8)
        else:
            pos += 8 + ((declared + 7) & ~7)
        while len(ends) > 1 and pos >= ends[-1]:
            ends.pop()
    return ""


def _voc(head: bytes, size: int) -> str:
    # Creative Voice: blocks from the offset at 20, each a type byte and a 3-byte little-endian size; type 0 ends
    pos = int.from_bytes(head[20:22], "little")
    while pos + 4 <= len(head) and head[pos] != 0:
        declared = int.from_bytes(head[pos + 1:pos + 4], "little")
        if pos + 4 + declared > size:
            return _missing("VOC data block", declared, size - pos - 4)
        pos += 4 + declared
    return ""


def _mpc2k(head: bytes, size: int) -> str:
    # Akai MPC 2000: a 42-byte header; 16-bit samples, a stereo flag at 21, the sample end (frames) at 30
    channels = 2 if head[21] else 1
    return _missing("MPC2K sample data", int.from_bytes(head[30:34], "little") * channels * 2, size - 42)
