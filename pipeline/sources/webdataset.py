"""WebDataset tars: one tar is one shard; members sharing a key prefix are one sample."""

from __future__ import annotations

import json
import tarfile
from typing import Iterator

import fsspec
from braceexpand import braceexpand

from ..audio import AUDIO_EXTENSIONS, SampleError
from . import RawSample, Shard, ShardError, full_url, glob_with_sizes, local_size, shard_id


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


def _to_sample(key: str, members: dict[str, bytes]) -> RawSample:
    audio_ext = next((ext for ext in members if ext.rsplit(".", 1)[-1] in AUDIO_EXTENSIONS), None)
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
    except FileNotFoundError:
        raise ShardError("missing_shard", shard.url) from None
    except OSError as error:
        raise ShardError("unreadable_shard", f"{shard.url}: {error}") from None
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
                members[ext] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as error:
        # a truncated tar loses its last sample too: it may be cut mid-member
        raise ShardError("corrupt_tar", f"{shard.url}: {error}") from None
    if current_key is not None:
        yield _to_sample(current_key, members)
