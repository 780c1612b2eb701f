"""An HF audio cell as what the decoder takes: the datasets `Audio` struct, raw bytes, a path (read bounded by
`audio.max_file_bytes`, a store's failure retried by the shard's reads), or an array with its rate (laid out as
frames by channels). What cannot be one is that row's SampleError, never the shard's."""

from __future__ import annotations

import os
import stat

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..audio.decode import SPILL_ABOVE_BYTES, SampleError, SpilledFile
from ..reads import Reads
from .base import ShardError, _is_local, transient_error

MAX_CHANNELS = 64  # an audio array's channel axis is at most this long, and its frame axis longer


def _read_audio_file(path: str, max_file_bytes: int, reads: Reads) -> bytes | SpilledFile:
    """A path cell's file: opened only if it is a regular file (or an object-store object) of at most
    `max_file_bytes`; a large one is spilled to disk as a tar's large member is. A store or network failure
    is retried where it happens (`reads`), then the shard's; anything else wrong with the path is this row's error
    record."""
    try:
        fs, inner = reads.filesystem(path)
    except (ValueError, ImportError) as error:  # an unknown protocol; a filesystem whose driver is not installed
        raise SampleError("unreadable_audio_path", f"{path}: {type(error).__name__}: {str(error)[:160]}") from None
    try:
        if _is_local(fs):
            return _read_local_file(path, inner, max_file_bytes)
        info = reads.call(fs.info, inner)
        if info.get("type") != "file":
            raise SampleError("not_a_regular_file", f"{path} is a {info.get('type')}, not a file")
        size = int(info.get("size") or 0)
        _require_file_size(path, size, max_file_bytes)
        with reads.open(path, (fs, inner, info)) as f:
            if size:
                return _read_or_spill(f, size)
            data = f.read(max_file_bytes + 1)  # a server that tells no size: read no more than the limit allows
            _require_file_size(path, len(data), max_file_bytes)
            return data
    except (SampleError, ShardError):
        raise
    except Exception as error:  # OSError, and client errors that are not
        transient = transient_error(error, path)  # the store, the network, a full TMPDIR: the shard's, retried
        if transient is not None:
            raise transient from None
        raise SampleError("missing_audio_file", f"{path}: {str(error)[:200]}") from None


def _read_local_file(path: str, inner: str, max_file_bytes: int) -> bytes | SpilledFile:
    # O_NONBLOCK: a FIFO opens without waiting for a writer (and is then refused); no effect on regular files
    fd = os.open(inner, os.O_RDONLY | os.O_NONBLOCK)
    try:
        status = os.fstat(fd)  # of what was opened, so a path swapped after a check cannot slip through
        if not stat.S_ISREG(status.st_mode):
            kind = "FIFO" if stat.S_ISFIFO(status.st_mode) else "folder" if stat.S_ISDIR(status.st_mode) else "special file"
            raise SampleError("not_a_regular_file", f"{path} is a {kind}")
        _require_file_size(path, status.st_size, max_file_bytes)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        return _read_or_spill(f, status.st_size)


def _require_file_size(path: str, size: int, max_file_bytes: int) -> None:
    if size > max_file_bytes:
        raise SampleError("file_too_large", f"{path}: {size} bytes > audio.max_file_bytes={max_file_bytes}")


def _read_or_spill(f, size: int) -> bytes | SpilledFile:
    return SpilledFile(f) if size > SPILL_ABOVE_BYTES else f.read()


def _is_binary(kind) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)


def _is_list(kind) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _field(cell: pa.StructScalar, name: str) -> pa.Scalar | None:
    """A struct cell's field, None when the struct has no such field or it is null."""
    if cell.type.get_field_index(name) < 0 or not cell[name].is_valid:
        return None
    return cell[name]


def audio_value(cell: pa.Scalar, max_file_bytes: int, reads: Reads):
    """Audio cell -> bytes, a SpilledFile or (array, rate): the datasets Audio struct, raw bytes, a path, or
    array+rate. What cannot be one is this row's SampleError."""
    kind = cell.type
    if cell.is_valid and _is_binary(kind):
        return _bytes_value(cell)
    if cell.is_valid and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return _read_audio_file(cell.as_py(), max_file_bytes, reads)
    if cell.is_valid and pa.types.is_struct(kind):
        data, array, path = _field(cell, "bytes"), _field(cell, "array"), _field(cell, "path")
        if data is not None and _is_binary(data.type) and data.as_buffer().size:
            return _bytes_value(data)
        if array is not None and _is_list(array.type):
            rate = _field(cell, "sampling_rate")
            return _array_value(array, None if rate is None else rate.as_py())
        if path is not None and path.as_py():
            return _read_audio_file(str(path.as_py()), max_file_bytes, reads)
    raise SampleError("no_audio", f"audio cell holds {kind if cell.is_valid else 'null'}")


def _bytes_value(cell: pa.Scalar) -> bytes | SpilledFile:
    """A bytes cell: a large one copied from Arrow's buffer to a temporary file, as a tar's large member is."""
    buffer = cell.as_buffer()
    return SpilledFile(pa.BufferReader(buffer)) if buffer.size > SPILL_ABOVE_BYTES else buffer.to_pybytes()


def _array_value(cell: pa.Scalar, rate) -> tuple[np.ndarray, int]:
    samples = _ndarray(cell)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not np.isfinite(rate) or rate <= 0:
        raise SampleError("bad_sample_rate", f"sampling_rate {rate!r}")
    return _frames_by_channels(samples), rate


def _ndarray(cell: pa.Scalar) -> np.ndarray:
    """A (nested) list cell as a float32 array of its shape, from Arrow's buffers: no Python float per sample."""
    values = cell.values
    shape = [len(values)]
    while _is_list(values.type):
        lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
        if values.null_count or (lengths.size and lengths.min() != lengths.max()):
            raise SampleError("bad_array", "audio array: its lists are ragged or null")
        shape.append(int(lengths[0]) if lengths.size else 0)
        values = values.flatten()
    try:
        if values.null_count:
            raise ValueError("it holds nulls")
        return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(shape)
    except (pa.ArrowException, ValueError, TypeError) as error:  # strings, nested structs, nulls
        raise SampleError("bad_array", f"audio array: {str(error)[:160]}") from None


def _frames_by_channels(samples: np.ndarray) -> np.ndarray:
    """[frames] or [frames, channels], as audio.to_model_audio takes it. `datasets` and torchaudio lay out
    multichannel audio as [channels, frames], others as [frames, channels]: a 2-D array is read by which axis
    is short (at most MAX_CHANNELS) and which long; a shape that says neither (both short, both long, more
    than two axes) is this row's error record, never a clip read the wrong way round."""
    if samples.ndim == 1:
        return samples
    if samples.ndim == 2:
        first, second = samples.shape
        if first <= MAX_CHANNELS < second:
            return samples.T
        if second <= MAX_CHANNELS < first:
            return samples
    raise SampleError("bad_shape", f"audio array of shape {list(samples.shape)}: neither [channels, frames] nor "
                                   f"[frames, channels] with at most {MAX_CHANNELS} channels")
