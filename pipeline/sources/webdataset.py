"""WebDataset tars: one tar is one shard; members sharing a key prefix are one sample."""

from __future__ import annotations

import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import fsspec
import pyarrow as pa
from braceexpand import braceexpand

from ..audio.decode import AUDIO_EXTENSIONS, SPILL_ABOVE_BYTES, SampleError, SpilledFile
from ..failures import ConfigError
from ..reads import Reads
from .base import (MAX_FILE_BYTES, RawSample, Shard, ShardError, Source, SourceListing, _is_local, check_urls,
                   full_url, glob_with_sizes, is_pattern, local_size, read_error, shard_id)


INFO_CONCURRENCY = 32  # fs.info requests in flight at once while listing remote tars named one by one


def _sizes_by_info(named: list[tuple[object, str]], reads: Reads) -> list[int]:
    """Sizes of remote files named one by one (brace patterns: no listing told them), asked concurrently; 0 for
    one the store does not answer for (a missing tar is its own shard's error, not the listing's). The driver's
    time limits and largest-first order use them."""
    def size(item) -> int:
        fs, path = item
        try:
            return int(reads.call(fs.info, path).get("size") or 0)
        except Exception:  # any client's error: the size stays unknown
            return 0

    if not named:
        return []
    with ThreadPoolExecutor(min(INFO_CONCURRENCY, len(named))) as pool:
        return list(pool.map(size, named))


def list_tar_shards(urls: list[str], reads: Reads | None = None) -> list[Shard]:
    """The tars of `urls`; a listing that finds none, or only local paths none of which exists, is a config
    error before anything starts (a missing remote path is its shard's error). `reads` retries the listing."""
    reads = reads or Reads()
    expanded, missing, unsized = [], [], []
    for pattern in urls:
        for url in braceexpand(pattern):
            fs, path = fsspec.core.url_to_fs(url)
            if is_pattern(url):
                expanded += [(full_url(fs, match), size) for match, size in glob_with_sizes(fs, url, reads)]
            else:
                expanded.append((full_url(fs, path), local_size(fs, path)))
                if _is_local(fs) and not fs.exists(path):
                    missing.append(url)
                elif not _is_local(fs):
                    unsized.append((len(expanded) - 1, fs, path))
    for (i, _, _), size in zip(unsized, _sizes_by_info([(fs, path) for _, fs, path in unsized], reads)):
        expanded[i] = (expanded[i][0], size)
    if not expanded:
        raise ConfigError("source.urls", f"{urls} match no file", "check the paths and patterns")
    if len(missing) == len(expanded):
        raise ConfigError("source.urls", f"none of the {len(missing)} paths exists (the first: {missing[0]!r})",
                          "check the paths: they are looked for where the driver runs, relative ones from its working directory")
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


TEXT_MEMBERS = ("txt", "json")  # the members a row keeps (as `text` and `metadata`); others are never read


@dataclass
class _Sample:
    """The members of one key so far, and the first reason it cannot be a row."""

    key: str
    members: dict = field(default_factory=dict)  # ext -> bytes | SpilledFile | None (a member not read)
    problem: SampleError | None = None

    def fail(self, reason: str, detail: str) -> None:
        self.problem = self.problem or SampleError(reason, detail)


@dataclass(frozen=True)
class _Limits:
    max_text_bytes: int
    max_file_bytes: int


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, ext: str, sample: _Sample, limits: _Limits):
    """A member's content, bounded by the limits: audio spilled to disk when large, text up to
    `source.max_text_bytes`, anything else not read at all (None)."""
    if _is_audio(ext):
        if info.size > limits.max_file_bytes:
            sample.fail("file_too_large", f"{info.name}: {info.size} bytes > audio.max_file_bytes={limits.max_file_bytes}")
            return None
        stream = tar.extractfile(info)
        return SpilledFile(stream) if info.size > SPILL_ABOVE_BYTES else stream.read()
    if ext in TEXT_MEMBERS:
        if info.size > limits.max_text_bytes:
            sample.fail("metadata_too_large", f"{info.name}: {info.size} bytes > source.max_text_bytes="
                                              f"{limits.max_text_bytes} (not read)")
            return None
        return tar.extractfile(info).read()
    return None


def _close(members: dict) -> None:
    for value in members.values():
        if isinstance(value, SpilledFile):
            value.close()


def _to_sample(sample: _Sample) -> RawSample:
    key, members = sample.key, sample.members
    if sample.problem is not None:
        _close(members)  # a spilled member of a sample that cannot be a row gives its disk back now
        return RawSample(key, None, {}, sample.problem)
    audio_ext = next((ext for ext in members if _is_audio(ext)), None)
    metadata = {}
    if "txt" in members:
        metadata["text"] = members["txt"].decode("utf-8", errors="replace")
    if "json" in members:
        raw = members["json"].decode("utf-8", errors="replace")
        try:
            json.loads(raw)
        except ValueError:
            _close(members)
            return RawSample(key, None, metadata, SampleError("bad_metadata", "the .json member is not JSON"))
        metadata["metadata"] = raw
    if audio_ext is None:
        found = ", ".join(sorted(members)) or "nothing"
        return RawSample(key, None, metadata, SampleError("no_audio", f"no audio member (found {found})"))
    return RawSample(key, members[audio_ext], metadata)


def _open(url: str, reads: Reads):
    try:
        return reads.open(url)
    except FileNotFoundError as error:
        raise read_error(error, url, "missing_shard") from None
    except Exception as error:  # OSError, and client errors that are not (aiohttp's)
        raise read_error(error, url, "unreadable_shard") from None


def _tar_mode(stream) -> str:
    """Random access where the file allows it (local files, object stores, HTTP with ranges): a member no field
    uses is then passed over by a seek, never read; a stream (HTTP without a length) is read through."""
    return "r:*" if stream.seekable() else "r|*"


def _linked(url: str, offset: int, link: tarfile.TarInfo, ext: str, sample: _Sample, limits: _Limits, reads: Reads):
    """A hard link's content: its target, an earlier member of the same tar, read by a second pass over the
    tar up to it (a stream cannot seek back; hard links are rare, GNU tar writes them for hard-linked files)."""
    with _open(url, reads) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if info.offset == offset:
                return _read_member(tar, info, ext, sample, limits)
    raise tarfile.ReadError(f"hard link {link.name}: its target is gone on a second read")


def read_tar_shard(shard: Shard, max_text_bytes: int = Source.max_text_bytes,
                   max_file_bytes: int = MAX_FILE_BYTES, reads: Reads | None = None) -> Iterator[RawSample]:
    """Every member is part of a row or of an error record: a name repeated within a sample is
    `duplicate_member`, a hard link reads as its target, symlinks and devices are `unsupported_member`;
    folders hold no sample and are passed over. A remote tar is streamed through `reads` (pipeline/reads.py):
    a broken stream resumes at the byte reached."""
    limits = _Limits(max_text_bytes, max_file_bytes)
    reads = reads or Reads()
    stream = _open(shard.url, reads)
    sample: _Sample | None = None
    files: dict[str, int] = {}  # name -> offset of the last regular member of that name (hard-link targets)
    try:
        with stream, tarfile.open(fileobj=stream, mode=_tar_mode(stream)) as tar:
            for info in tar:
                if info.isdir():
                    continue
                key, ext = _split_member(info.name)
                if sample is None or key != sample.key:
                    if sample is not None:
                        yield _to_sample(sample)
                    sample = _Sample(key)
                if ext in sample.members:
                    sample.fail("duplicate_member", f"{info.name} appears twice in a row")
                    continue
                if info.isfile():
                    files[info.name] = info.offset
                    sample.members[ext] = _read_member(tar, info, ext, sample, limits)
                elif info.islnk() and info.linkname in files:
                    sample.members[ext] = _linked(shard.url, files[info.linkname], info, ext, sample, limits,
                                                    reads)
                else:
                    what = (f"a hard link to {info.linkname!r}, no earlier file of this tar" if info.islnk() else
                            f"a symlink to {info.linkname!r}" if info.issym() else
                            "a FIFO" if info.isfifo() else "a device" if info.isdev() else f"of tar type {info.type!r}")
                    sample.fail("unsupported_member", f"{info.name} is {what}")
                    sample.members[ext] = None
    except ShardError:
        raise
    except Exception as error:  # tarfile.TarError, EOFError, OSError, a client's read error
        # a truncated tar loses its last sample too: it may be cut mid-member
        if sample is not None:
            _close(sample.members)
        raise read_error(error, shard.url, "corrupt_tar") from None
    if sample is not None:
        yield _to_sample(sample)


@dataclass
class WebDatasetSource(Source, kind="webdataset"):
    # tars: brace-expandable paths, globs or fsspec URLs; a list, or one string
    urls: Any = field(default_factory=list)

    def check(self) -> None:
        super().check()
        check_urls(self)
        if not self.urls:
            raise ConfigError("source.urls", "no shard URLs given",
                              "list tar paths, e.g. ['data/shard-{000..009}.tar']")

    def listing(self) -> SourceListing:
        return SourceListing(list_tar_shards(self.urls, Reads.of(self)), {"kind": "webdataset"},
                             [pa.field("text", pa.string())])

    def read(self, shard: Shard, max_file_bytes: int, reads: Reads) -> Iterator[RawSample]:
        return read_tar_shard(shard, self.max_text_bytes, max_file_bytes, reads)

    def shard_again(self, shard_id: str, url: str, recorded: dict[str, Shard]) -> Shard:
        return Shard(shard_id, url, "webdataset")  # a tar is its own shard
