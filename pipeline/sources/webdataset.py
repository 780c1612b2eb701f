"""WebDataset tars: one tar is one shard; members sharing a key prefix are one sample."""

from __future__ import annotations

import json
import tarfile
from typing import Iterator

import fsspec
from braceexpand import braceexpand

from ..audio import AUDIO_EXTENSIONS, SampleError, SpilledFile
from . import RawSample, Shard, ShardError, full_url, glob_with_sizes, local_size, read_error, shard_id

# Audio members larger than this are copied to a temporary file in chunks, not read into memory: an
# hour of 48 kHz stereo FLAC is hundreds of MB, held per sample in flight.
SPILL_ABOVE_BYTES = 64 << 20


def list_tar_shards(urls: list[str]) -> list[Shard]:
    expanded = []
    for pattern in urls:
        for url in braceexpand(pattern):
            fs, path = fsspec.core.url_to_fs(url)
            if any(ch in url for ch in "*?["):
                expanded += [(full_url(fs, match), size) for match, size in glob_with_sizes(fs, url)]
            else:
                expanded.append((full_url(fs, path), local_size(fs, path)))
    seen, shards = set(), []
    for url, size in expanded:
        if url not in seen:
            seen.add(url)
            shards.append(Shard(shard_id(url), url, "webdataset", size=size))
    return shards


def _split_member(name: str) -> tuple[str, str]:
    # webdataset convention: the key is everything before the first dot of the file name
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _is_audio(ext: str) -> bool:
    return ext.rsplit(".", 1)[-1] in AUDIO_EXTENSIONS


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, ext: str) -> bytes | SpilledFile:
    stream = tar.extractfile(info)
    if info.size > SPILL_ABOVE_BYTES and _is_audio(ext):
        return SpilledFile(stream)
    return stream.read()


def _to_sample(key: str, members: dict[str, bytes | SpilledFile]) -> RawSample:
    audio_ext = next((ext for ext in members if _is_audio(ext)), None)
    metadata = {}
    if "txt" in members:
        metadata["text"] = members["txt"].decode("utf-8", errors="replace")
    if "json" in members:
        raw = members["json"].decode("utf-8", errors="replace")
        try:
            json.loads(raw)
        except ValueError:
            return RawSample(key, None, metadata, SampleError("bad_metadata", "the .json member is not JSON"))
        metadata["metadata"] = raw
    if audio_ext is None:
        found = ", ".join(sorted(members)) or "nothing"
        return RawSample(key, None, metadata, SampleError("no_audio", f"no audio member (found {found})"))
    return RawSample(key, members[audio_ext], metadata)


def read_tar_shard(shard: Shard) -> Iterator[RawSample]:
    try:
        stream = fsspec.open(shard.url, "rb").open()
    except FileNotFoundError as error:
        raise read_error(error, shard.url, "missing_shard") from None
    except Exception as error:  # OSError, and client errors that are not (aiohttp's)
        raise read_error(error, shard.url, "unreadable_shard") from None
    current_key, members = None, {}
    try:
        with stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = _split_member(info.name)
                if key != current_key:
                    if current_key is not None:
                        yield _to_sample(current_key, members)
                    current_key, members = key, {}
                members[ext] = _read_member(tar, info, ext)
    except ShardError:
        raise
    except Exception as error:  # tarfile.TarError, EOFError, OSError, a client's read error
        # a truncated tar loses its last sample too: it may be cut mid-member
        raise read_error(error, shard.url, "corrupt_tar") from None
    if current_key is not None:
        yield _to_sample(current_key, members)
