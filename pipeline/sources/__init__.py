"""Sources: list the shards of a dataset and read each shard's samples."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import fsspec
import pyarrow as pa

from ..config import AudioConfig, ConfigError, SourceConfig
from ..failures import PERMANENT, TRANSIENT, transient_cause, transient_reason
from ..reads import Reads
from ..urls import redact, split_query


class ShardError(Exception):
    """A whole shard cannot be read: missing, truncated, not the format it claims (permanent), or the
    store or network failed while reading it (transient: worth another try)."""

    def __init__(self, reason: str, detail: str = "", kind: str = PERMANENT):
        self.reason = reason
        self.detail = detail
        self.kind = kind  # failures.TRANSIENT | PERMANENT | UNEXPECTED
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ObjectChanged(ShardError):
    """An object that changed while its shard read it (another ETag or size on a resumed read): the shard fails
    as `changed`, never mixing two versions."""

    def __init__(self, detail: str):
        super().__init__("changed", detail, PERMANENT)


def transient_error(error: BaseException, where: str) -> ShardError | None:
    """`error` as the shard's transient failure when a retry can change it (failures.transient_cause: the store,
    the network, a full disk, no memory left), else None. A sample lost to such a cause would be lost for good:
    a done shard never runs again."""
    cause = transient_cause(error)
    if cause is None:
        return None
    return ShardError(transient_reason(cause), f"{where}: {type(cause).__name__}: {str(cause)[:200]}", TRANSIENT)


def read_error(error: BaseException, url: str, reason: str) -> ShardError:
    """A shard's I/O error as a ShardError: transient (transient_error) when a retry can change it, else `reason`."""
    if isinstance(error, ShardError):  # an ObjectChanged raised by a read
        return error
    return transient_error(error, url) or ShardError(reason, f"{url}: {str(error)[:200]}")


@dataclass(frozen=True)
class Shard:
    """The unit of work and of resume."""

    id: str  # stable across runs: names the output files
    url: str
    kind: str  # webdataset | hf-arrow | hf-parquet | files | nemo | lhotse-cuts | lhotse-shar
    size: int = 0  # bytes, where listing tells it for free (0: unknown)
    members: tuple = ()  # what a recorded shard holds (files: its files; nemo: its line range), see runstate.plan

    @property
    def source(self) -> str:
        """The URL as it is written down (manifest, run state, error records, rows): `url` without its secrets."""
        return redact(self.url)

    @property
    def file_name(self) -> str:
        """The last segment of the URL's path, without query: the prefix of keys that name their manifest and line."""
        return split_query(self.source)[0].rstrip("/").rsplit("/", 1)[-1]


def shard_record(shard: Shard) -> dict:
    """A recorded shard as runstate.plan stores it: its URL without secrets (see shard_from_record)."""
    return {"id": shard.id, "url": shard.source, "kind": shard.kind, "size": shard.size, "members": shard.members}


def shard_from_record(record: dict, real_urls: dict[str, str] | None = None) -> Shard:
    """A recorded shard, read from the real URL that the current configuration gives for its recorded (redacted)
    one, `real_urls` ({redacted: real}, see by_redacted); a URL the configuration does not name is read as recorded."""
    def frozen(value):  # JSON lists back to the tuples a Shard holds
        return tuple(frozen(v) for v in value) if isinstance(value, list) else value

    url = (real_urls or {}).get(record["url"], record["url"])
    return Shard(record["id"], url, record["kind"], int(record["size"]), frozen(record["members"]))


def by_redacted(urls) -> dict[str, str]:
    """{redacted URL: real URL}: how a recorded plan finds the real URL of a shard (shard_from_record)."""
    return {redact(url): url for url in urls}


def distinct_shards(shards: list[Shard]) -> None:
    """A ConfigError where two URLs differ only in what is not written down (their query or credentials): they
    would be one shard id, and the second would be skipped as done."""
    seen: dict[str, str] = {}
    for shard in shards:
        other = seen.setdefault(shard.id, shard.url)
        if other != shard.url:
            raise ConfigError("source.urls", f"two inputs are one shard {shard.id} ({shard.source}): they differ only "
                              "in their query strings or credentials, which are not recorded (they may be secrets)",
                              "give each object its own path")


@dataclass
class RawSample:
    key: str
    audio: Any = None  # bytes, an audio.SpilledFile (a large member, in a temporary file), or (array, sample_rate)
    metadata: dict = field(default_factory=dict)
    error: Exception | None = None  # set when the sample is known bad before decoding


def _protocol(fs) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def _is_local(fs) -> bool:
    return _protocol(fs) in ("file", "local")


def full_url(fs, path: str) -> str:
    """A path that fsspec returned (protocol stripped) as the URL to open it again. One file has one URL:
    a local file is its normalised absolute path however it was spelled (relative, file://, with ..)."""
    if _is_local(fs):
        return os.path.normpath(path)
    return path if "://" in path else f"{_protocol(fs)}://{path}"  # http(s) paths keep their scheme


def normalise_url(url: str) -> str:
    fs, path = fsspec.core.url_to_fs(url)
    return full_url(fs, path)


def glob_with_sizes(fs, pattern: str, reads: Reads | None = None) -> list[tuple[str, int]]:
    """Sorted matches of a glob with their sizes, which the listing returns anyway (also on object stores);
    the listing retried by `reads` (None: the default settings)."""
    found = (reads or Reads()).call(fs.glob, pattern, detail=True)
    return [(path, int(found[path].get("size") or 0)) for path in sorted(found)]


def local_size(fs, path: str) -> int:
    """A local file's size; 0 elsewhere, where asking would cost a request per shard."""
    return int(fs.size(path) or 0) if _is_local(fs) and fs.isfile(path) else 0


def largest_first(shards) -> list[Shard]:
    """Dispatch order: the biggest shards first, so the run does not end on one actor finishing a big shard
    while the others idle (longest-processing-time-first). Unknown sizes keep their listed order, last."""
    return sorted(shards, key=lambda shard: -shard.size)


def is_pattern(url: str) -> bool:
    """A glob (`*?[`), not counting an http(s) URL's query."""
    return any(ch in split_query(url)[0] for ch in "*?[")


def shard_id(url: str, suffix: str = "") -> str:
    """Readable and stable: the file name, plus a hash of the full URL so equal names don't collide. Of the URL as
    redacted (pipeline.urls): a new signature on a presigned URL is the same shard."""
    url = redact(url)
    name = split_query(url)[0].rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"\.(tar|arrow|parquet)$", "", name)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]
    digest = hashlib.sha1(f"{url}{suffix}".encode()).hexdigest()[:10]
    return f"{name}{suffix}-{digest}"


@dataclass
class SourceListing:
    shards: list[Shard]
    identity: dict  # the settings that decide which samples a shard id denotes and how keys are formed
    fields: list  # pyarrow fields of the metadata columns the source declares (the output schema adds them)
    # sources whose shards are recorded in the output (files, nemo): plan(storage) -> the shards, the recorded
    # ones as they were plus new ones, recorded now; called once the run state holds the output
    plan: Any = None

    def settle(self, storage) -> list[Shard]:
        return self.plan(storage) if self.plan is not None else self.shards


def list_shards(config: SourceConfig) -> SourceListing:
    if config.kind == "files":
        from .files import list_files

        return list_files(config)
    if config.kind == "nemo":
        from .nemo import list_nemo

        return list_nemo(config)
    if config.kind == "lhotse":
        from .lhotse import list_lhotse

        return list_lhotse(config)
    if config.kind == "webdataset":
        from .webdataset import list_tar_shards

        return SourceListing(list_tar_shards(config.urls, Reads.of(config)), {"kind": "webdataset"},
                             [pa.field("text", pa.string())])
    from .hf import list_hf_shards

    return list_hf_shards(config)


def read_shard(shard: Shard, config: SourceConfig, max_file_bytes: int = AudioConfig.max_file_bytes,
               reads=None) -> Iterator[RawSample]:
    """`max_file_bytes`: audio.max_file_bytes, the largest audio file or member a sample may be (tars and HF
    cells; the files, nemo and lhotse readers open each file where it is). `reads`: a pipeline.reads.Reads that
    retries and counts the shard's remote reads (None: a new one of `config`'s settings)."""
    reads = reads if reads is not None else Reads.of(config)
    if shard.kind == "files":
        from .files import read_files_shard

        return read_files_shard(shard, reads)
    if shard.kind == "nemo":
        from .nemo import read_nemo_shard

        return read_nemo_shard(shard, config, reads)
    if shard.kind.startswith("lhotse-"):
        from .lhotse import read_lhotse_shard

        return read_lhotse_shard(shard, reads)
    if shard.kind == "webdataset":
        from .webdataset import read_tar_shard

        return read_tar_shard(shard, config.max_text_bytes, max_file_bytes, reads)
    from .hf import read_hf_shard

    return read_hf_shard(shard, config, max_file_bytes, reads)
