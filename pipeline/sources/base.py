"""What every source kind shares: the interface a kind implements (`Source`: its settings, listing and reader,
registered by its kind name), the shard and sample it yields, and the listing helpers kinds reuse.

A kind is one module: a dataclass subclassing `Source` with `kind="NAME"`, its own keys as fields (the config's
`source` section is validated against that class once `source.kind` names it) and its methods. See README
"Adding a source".
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Iterator

import fsspec
from omegaconf import MISSING

from ..failures import TRANSIENT, ConfigError, ObjectChanged, ShardError, transient_cause, transient_reason
from ..kinds import register
from ..reads import Reads
from ..runstate.plan import read_plan
from ..urls import redact, split_query


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


MAX_FILE_BYTES = 8 << 30  # audio.max_file_bytes' default: the largest audio file or member a sample may be
_KINDS: dict[str, type[Source]] = {}  # kind name -> its class, filled by Source.__init_subclass__


@dataclass
class Source:
    """A source kind's settings (the config's `source` section) and what it does with them: list the shards
    (`listing`), read a shard's samples (`read`), and find a done shard again for the fidelity audit
    (`shard_again`). Here: the keys every kind shares, and their checks; a kind adds its own keys as fields."""

    kind: str = MISSING  # a registered kind's name (source_kinds())
    # a tar's .txt/.json member or an HF metadata cell larger than this is an error record, never read into a row:
    # memory is set by the configuration, not by what a file claims to hold
    max_text_bytes: int = 4 << 20
    # every remote read (an audio file, a path cell, a recording, a tar or Parquet stream, a listing): tries on a
    # transient error (5xx, throttling, reset, timeout, a short body), the first delay doubling per try (jittered);
    # no try starts once a read has spent read_budget_s; a read with no byte for read_stall_s is cut and retried.
    # Only a read that used its tries fails its shard (transient). How reads are retried decides no code: not in
    # the output's identity. See pipeline/reads.py
    read_attempts: int = 5
    read_backoff_s: float = 1.0
    read_budget_s: float = 600.0
    read_stall_s: float = 60.0

    KIND: ClassVar[str] = ""  # the name a subclass registered (class keyword `kind`)

    def __init_subclass__(cls, kind: str = "", **kwargs):
        super().__init_subclass__(**kwargs)
        if not kind:
            return  # a base of kinds, not one
        register(_KINDS, kind, cls, "source")

    def __post_init__(self):
        if self.kind == MISSING and self.KIND:  # built in Python: HfSource(path=...) is of kind hf
            self.kind = self.KIND

    def check(self) -> None:
        """A ConfigError naming the key and the fix for a bad setting; a kind checks its own keys after these."""
        if self.read_attempts < 1:
            raise ConfigError("source.read_attempts", f"{self.read_attempts}", "use 1 or more (1: no retry; default 5)")
        if self.read_backoff_s < 0:
            raise ConfigError("source.read_backoff_s", f"{self.read_backoff_s}", "use 0 or more seconds (default 1)")
        for key in ("read_budget_s", "read_stall_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"source.{key}", f"{getattr(self, key)}", "use more than 0 seconds")
        if self.max_text_bytes < 1:
            raise ConfigError("source.max_text_bytes", "must be >= 1")

    def listing(self) -> SourceListing:
        """The shards, or how to settle them once the run state holds the output (SourceListing.plan)."""
        raise NotImplementedError(f"source kind {self.kind!r} lists no shards")

    def read(self, shard: Shard, max_file_bytes: int, reads: Reads) -> Iterator[RawSample]:
        """One shard's samples, a RawSample each (a bad sample is one with `error`); a shard that cannot be read
        raises ShardError. `max_file_bytes`: audio.max_file_bytes; `reads`: retries and counts remote reads."""
        raise NotImplementedError(f"source kind {self.kind!r} reads no shards")

    def shard_again(self, shard_id: str, url: str, recorded: dict[str, Shard]) -> Shard | None:
        """The shard a done row was read from, from what its output holds (the shard id, its source URL and the
        recorded plan), for the fidelity audit to read the row's original again; None: it cannot be found. Here:
        a kind whose listing records its shards (recorded_shards)."""
        return recorded.get(shard_id)

    def vanished(self, recorded: list[Shard], done: set[str]) -> list[str]:
        """`verify --sources`: a line per source file of a done shard that is gone from the source. Here: none
        (a kind that cannot tell without reading every shard again says nothing)."""
        return []


def source_kinds() -> dict[str, type[Source]]:
    """The registered kinds, by name (the built-in ones once pipeline.sources is imported)."""
    return dict(_KINDS)


def source_class(kind) -> type[Source]:
    """The class of `source.kind`, or a ConfigError naming the kinds there are."""
    if isinstance(kind, str) and kind in _KINDS:
        return _KINDS[kind]
    problem = "not given" if kind is None or kind == MISSING else f"{kind!r} is not a source kind"
    raise ConfigError("source.kind", problem, f"use one of {list(_KINDS)}")


def unknown_setting(kind: str, key: str) -> ConfigError:
    """The error for `source.KEY` that kind `kind` has no such setting of: which kinds have it, or which keys it has."""
    owners = [name for name, cls in _KINDS.items() if key in {f.name for f in fields(cls)}]
    if owners:
        return ConfigError(f"source.{key}", f"is a setting of source kind {' or '.join(owners)}, not of {kind}",
                           f"remove it, or set source.kind={owners[0]}")
    keys = sorted(f.name for f in fields(source_class(kind)))
    return ConfigError(f"source.{key}", f"is no setting of source kind {kind}", f"its settings are {', '.join(keys)}")


def check_urls(source) -> None:
    """`source.urls` (of a kind that has it) as a list of strings, one string being a list of one; or a
    ConfigError."""
    urls = [source.urls] if isinstance(source.urls, str) else source.urls
    if not isinstance(urls, (list, tuple)) or not all(isinstance(u, str) for u in urls):
        raise ConfigError("source.urls", f"{source.urls!r} is not a URL or a list of URLs",
                          "e.g. 'data/shard-{000..009}.tar' or ['a.tar', 's3://bucket/b-*.tar']")
    source.urls = list(urls)


def recorded_shards(storage) -> dict[str, Shard]:
    """shard id -> the shard as the output's recorded plan holds it (runstate.plan), URLs as recorded."""
    return {record["id"]: shard_from_record(record) for record in read_plan(storage)}
