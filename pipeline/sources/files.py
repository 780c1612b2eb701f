"""Audio files (a folder or a bucket): `source.urls` globs, grouped `source.files_per_shard` to a shard.

A file's key is its path relative to its pattern's fixed prefix (everything before the first `*?[{`, up to
the last `/`), without the extension. A `.txt` or `.json` file of the same stem that the patterns also match
is the row's `text` or `metadata` (so `data/**` or `data/**/*.{flac,txt,json}`).

The grouping is not a function of the listing (a file added in the middle of the sort order would move every
later file to another shard), so it is recorded in the output (`runstate.plan`) when a shard is first made: a
rerun keeps every recorded shard as it was and groups only the files no shard holds yet into new shards. A
file that vanished from a done shard changes nothing already written; from a shard still to run, it is an
error record. The driver holds the listing (paths, sizes, sidecar names) and the recorded shards, no more.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import fsspec
import pyarrow as pa
from braceexpand import braceexpand

from ..audio.decode import AUDIO_EXTENSIONS, SPILL_ABOVE_BYTES, SampleError, SpilledFile
from ..failures import ConfigError, transient_cause
from ..reads import Reads
from ..runstate.plan import read_plan, record_plan
from ..urls import redact
from .base import (RawSample, Shard, Source, SourceListing, by_redacted, check_urls, full_url, glob_with_sizes,
                   local_size, normalise_url, read_error, shard_from_record, shard_record)

SIDECARS = ("txt", "json")
_GLOB = "*?[{"


def key_root(pattern: str) -> str:
    """The folder a pattern's keys are relative to: its fixed prefix, up to the last '/' (normalised)."""
    prefix = pattern[:min((pattern.index(ch) for ch in _GLOB if ch in pattern), default=len(pattern))]
    folder = prefix.rsplit("/", 1)[0] if "/" in prefix else "."
    return normalise_url(folder or "/")


def _split(rel: str) -> tuple[str, str]:
    """'a/b/x.flac' -> ('a/b/x', 'flac'); a name without a dot has no extension."""
    folder, _, name = rel.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return rel, ""
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _listing(patterns: list[str], reads: Reads) -> tuple[dict, dict]:
    """(root, relative path) -> size of every audio file matched; (root, stem) -> sidecar extensions matched."""
    audio, sidecars = {}, {}
    for pattern in patterns:
        root = key_root(pattern)
        for expanded in braceexpand(pattern):
            fs, path = fsspec.core.url_to_fs(expanded)
            found = glob_with_sizes(fs, path, reads) if any(ch in expanded for ch in "*?[") else [(path, local_size(fs, path))]
            for match, size in found:
                url = full_url(fs, match)
                if not url.startswith(root.rstrip("/") + "/"):
                    continue
                rel = url[len(root.rstrip("/")) + 1:]
                stem, ext = _split(rel)
                if ext in AUDIO_EXTENSIONS:
                    audio[(root, rel)] = size
                elif ext in SIDECARS:
                    sidecars.setdefault((root, stem), set()).add(ext)
    return audio, sidecars


def list_files(config: FilesSource) -> SourceListing:
    audio, sidecars = _listing(config.urls, Reads.of(config))
    if not audio:
        raise ConfigError("source.urls", f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) match {config.urls}",
                          "globs of audio files, e.g. ['data/**/*.{flac,txt}'] (brace expansion and ** work)")
    per_shard = config.files_per_shard

    def plan(storage) -> list[Shard]:
        real = by_redacted({root for root, _ in audio})  # the plan holds roots without secrets
        recorded = [shard_from_record(r, real) for r in read_plan(storage)]
        held = {(s.url, m[0]) for s in recorded for m in s.members}
        fresh = sorted(k for k in audio if k not in held)
        new: list[Shard] = []
        start = 0
        while start < len(fresh):
            root = fresh[start][0]
            end = start
            while end < len(fresh) and end - start < per_shard and fresh[end][0] == root:
                end += 1  # a shard holds files of one root: its url is that root
            members = tuple((rel, audio[(root, rel)], ",".join(sorted(sidecars.get((root, _split(rel)[0]), ()))))
                            for _, rel in fresh[start:end])
            new.append(_shard(len(recorded) + len(new), root, members))
            start = end
        record_plan(storage, len(recorded), [shard_record(s) for s in new])
        return recorded + new

    # files_per_shard decides which files a new shard holds; keys come from the patterns' roots, recorded per shard
    identity = {"kind": "files", "files_per_shard": per_shard}
    return SourceListing([], identity, [pa.field("text", pa.string())], plan)


def _shard(index: int, root: str, members: tuple) -> Shard:
    digest = hashlib.sha1(f"{redact(root)}/{members[0][0]}".encode()).hexdigest()[:10]
    return Shard(f"files-{index:06d}-{digest}", root, "files", size=sum(m[1] for m in members), members=members)


def _open_bytes(url: str, size: int, reads: Reads):
    with reads.open(url) as stream:
        return SpilledFile(stream) if size > SPILL_ABOVE_BYTES else stream.read()


def _sample(root: str, rel: str, size: int, sidecar_exts: str, reads: Reads) -> RawSample:
    key, _ = _split(rel)
    metadata: dict = {}
    url, audio = f"{root}/{rel}", None
    try:
        audio = _open_bytes(url, size, reads)
        for ext in filter(None, sidecar_exts.split(",")):
            url = f"{root}/{key}.{ext}"
            text = _open_bytes(url, 0, reads).decode("utf-8", errors="replace")
            if ext == "json":
                json.loads(text)  # a row's metadata must stay JSON
                metadata["metadata"] = text
            else:
                metadata["text"] = text
    except (ValueError, OSError) as error:
        if isinstance(audio, SpilledFile):
            audio.close()  # a sidecar failed: the spilled audio's disk space goes now
        if isinstance(error, ValueError):
            return RawSample(key, None, metadata, SampleError("bad_metadata", f"{url} is not JSON"))
        if transient_cause(error) is not None:
            raise read_error(error, url, "unreadable_file") from None  # the store failed: retry the shard
        reason = "missing_file" if isinstance(error, FileNotFoundError) else "unreadable_file"
        return RawSample(key, None, metadata, SampleError(reason, f"{url}: {str(error)[:200]}"))
    except Exception as error:  # a client's own error type (aiohttp's 503): the store failed past its retries
        if isinstance(audio, SpilledFile):
            audio.close()
        if transient_cause(error) is None:
            raise
        raise read_error(error, url, "unreadable_file") from None
    return RawSample(key, audio, metadata)


def read_files_shard(shard: Shard, reads: Reads | None = None) -> Iterator[RawSample]:
    """Each file read through `reads` (pipeline/reads.py): retried where it fails, resumed where it broke."""
    reads = reads or Reads()
    for rel, size, sidecar_exts in shard.members:
        yield _sample(shard.url, rel, int(size), sidecar_exts, reads)


@dataclass
class FilesSource(Source, kind="files"):
    # audio files: globs, brace-expandable, of paths or fsspec URLs; a list, or one string
    urls: Any = field(default_factory=list)
    files_per_shard: int = 1000  # audio files grouped into one shard (the grouping is recorded in the output)

    def check(self) -> None:
        super().check()
        check_urls(self)
        if not self.urls:
            raise ConfigError("source.urls", "no audio files given",
                              "globs of audio files, e.g. ['data/**/*.{flac,txt}']")
        if self.files_per_shard < 1:
            raise ConfigError("source.files_per_shard", f"{self.files_per_shard}", "use 1 or more (default 1000)")

    def listing(self) -> SourceListing:
        return list_files(self)

    def read(self, shard: Shard, max_file_bytes: int, reads: Reads) -> Iterator[RawSample]:
        return read_files_shard(shard, reads)

    def vanished(self, recorded: list[Shard], done: set[str]) -> list[str]:
        """Files of done shards that the source no longer holds: one listing per shard root, as the driver's
        own listing, not a request per file."""
        wanted: dict[str, list[tuple[str, str]]] = {}  # root -> (shard, relative path)
        for shard in recorded:
            if shard.id in done:
                wanted.setdefault(shard.url, []).extend((shard.id, member[0]) for member in shard.members)
        problems = []
        for root, members in sorted(wanted.items()):
            fs, path = fsspec.core.url_to_fs(root)
            fs.invalidate_cache(path)
            present = {p.rstrip("/")[len(path.rstrip("/")) + 1:] for p in fs.find(path)} if fs.exists(path) else set()
            problems += [f"source gone: {root}/{rel} (shard {shard} is done; its rows stay as written)"
                         for shard, rel in members if rel not in present]
        return problems
