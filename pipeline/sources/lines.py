"""JSONL manifests in line ranges (NeMo manifests, Lhotse CutSets): `lines_per_shard` lines to a shard, each
range recorded in the output (`runstate.plan`) with its byte range and a hash of its lines when first made.

Appended lines become new shards and a partial last range stays as it was; a recorded range whose lines
changed (edited, removed, the manifest cut short) stops the run (IdentityChanged) rather than mixing two
versions of the manifest. A worker reads only its byte range: a seek in a plain file; in a compressed one
(`.gz`, by fsspec's inference) byte offsets are of the decompressed text, which is decompressed up to them.
The driver streams each manifest once per run and holds one tuple per range.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import fsspec
from braceexpand import braceexpand
from fsspec.compression import compr
from fsspec.utils import infer_compression

from ..failures import ConfigError
from ..reads import Reads
from ..runstate import IdentityChanged
from ..runstate.plan import read_plan, record_plan
from .base import (Shard, ShardError, by_redacted, full_url, glob_with_sizes, is_pattern, read_error, shard_from_record,
                   shard_id, shard_record)


def manifests(path: str, what: str, reads: Reads) -> list[str]:
    """The manifest URLs of `source.path`: one path or URL, a glob, or brace alternatives."""
    urls = []
    for expanded in braceexpand(path):
        fs, root = fsspec.core.url_to_fs(expanded)
        if is_pattern(expanded):
            urls += [full_url(fs, match) for match, _ in glob_with_sizes(fs, root, reads)]
        elif reads.kind(fs, root) == "file":
            urls.append(full_url(fs, root))
        else:
            raise ConfigError("source.path", f"no {what} at {expanded!r}", "a JSONL manifest, a glob, or {a,b}")
    if not urls:
        raise ConfigError("source.path", f"no {what}s match {path!r}")
    return sorted(set(urls))


def _lines_hash(lines: list[bytes]) -> str:
    """Of the lines' content: a newline added after a recorded last line does not change it."""
    digest = hashlib.sha1()
    for line in lines:
        digest.update(line.rstrip(b"\r\n") + b"\n")
    return digest.hexdigest()


def opened(url: str, reads: Reads):
    """A manifest as a binary file, decompressed as its name says (`.gz`, ...), its reads retried by `reads`."""
    raw = reads.open(url)
    compression = infer_compression(url)
    return compr[compression](raw, mode="rb") if compression else raw


def _ranges(url: str, per_shard: int, kind: str, recorded: list[Shard], reads: Reads) -> list[Shard]:
    """Check the recorded ranges of one manifest against its lines now; new ranges for the lines after them.
    A range's members: (first line, 0-based; line count; byte offset; byte length; hash of its lines)."""
    new, lines, offset, first, start = [], [], 0, 0, 0
    expect = iter(recorded)
    current = next(expect, None)

    def close() -> None:
        nonlocal current
        size = sum(len(x) for x in lines)
        if current is None:
            new.append(Shard(shard_id(url, f"-{first + 1:09d}"), url, kind, size,
                             (first, len(lines), start, size, _lines_hash(lines))))
            return
        at_line, count, at_byte, _, sha = current.members
        if (first, len(lines), start) != (at_line, count, at_byte) or _lines_hash(lines) != sha:
            raise IdentityChanged(
                f"lines {at_line + 1}-{at_line + count} of manifest {url} changed since they were recorded as shard "
                f"{current.id}: restore them and append new lines at the end, or start a new output.dir "
                "(or set output.overwrite=true)")
        current = next(expect, None)

    with opened(url, reads) as f:
        for number, line in enumerate(f):
            if not lines:
                first, start = number, offset
            lines.append(line)
            offset += len(line)
            if len(lines) == (current.members[1] if current is not None else per_shard):
                close()
                lines = []
    if lines:
        close()  # a recorded range still open here is a manifest cut short: close() says so
    if current is not None:
        raise IdentityChanged(f"manifest {url} ends before line {current.members[0] + current.members[1]}, which "
                              f"shard {current.id} recorded: restore it, or start a new output.dir")
    return new


def line_range_plan(urls: list[str], per_shard: int, kind: str, reads: Reads) -> Callable:
    """A SourceListing's plan: the recorded ranges of `urls` as they were, plus new ones (recorded now)."""

    def plan(storage) -> list[Shard]:
        real = by_redacted(urls)  # the plan holds URLs without secrets: the configuration's have them
        recorded = [shard_from_record(r, real) for r in read_plan(storage)]
        new = []
        for url in urls:
            new += _ranges(url, per_shard, kind, [s for s in recorded if s.url == url], reads)
        record_plan(storage, len(recorded), [shard_record(s) for s in new])
        return recorded + new

    return plan


def read_line_range(shard: Shard, reads: Reads) -> list[bytes]:
    """A shard's lines, as recorded; a range that no longer matches its hash fails the shard (`manifest_changed`)."""
    first, count, start, size, sha = shard.members
    try:
        with opened(shard.url, reads) as f:
            f.seek(start)
            lines = f.read(size).splitlines(keepends=True)
    except FileNotFoundError as error:
        raise read_error(error, shard.url, "missing_shard") from None
    except OSError as error:
        raise read_error(error, shard.url, "unreadable_shard") from None
    if len(lines) != count or _lines_hash(lines) != sha:
        raise ShardError("manifest_changed", f"lines {first + 1}-{first + count} of {shard.url} changed since the run "
                         "recorded them")
    return lines


def check_lines_per_shard(source) -> None:
    """`source.lines_per_shard` (of a manifest kind: nemo, lhotse) is 1 or more, or a ConfigError."""
    if source.lines_per_shard < 1:
        raise ConfigError("source.lines_per_shard", f"{source.lines_per_shard}", "use 1 or more (default 1000)")

