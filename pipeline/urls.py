"""URLs as they may be written down: without what authorises reading them.

A presigned URL's query (`X-Amz-Signature`, an Azure SAS `sig`, a GCS `Signature`) and a URL's userinfo
(`user:token@`) are secrets. `redact` replaces them with a marker; what it returns is what the manifest, the run
state, error records, the rows' `source` column and the driver's log hold, and what shard ids are computed from,
so a new signature on the same object is the same shard. The real URL (`Shard.url`) is used only to read.

The query is removed from http(s) URLs, and from other schemes' where it holds `key=value` pairs (`s3://b/k?versionId=`):
elsewhere a `?` is a glob (`s3://bucket/shard-?.tar`), kept as written.
"""

from __future__ import annotations

import re

MARK = "REDACTED"
_PARTS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)([?#].*)?", re.S)
# a URL inside free text (an exception message, a traceback): up to a blank or a quote
_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def split_query(url: str) -> tuple[str, str]:
    """(the URL up to its query or fragment, the rest) where `redact` counts a query; (url, '') elsewhere."""
    parts = _PARTS.fullmatch(url)
    if parts is None or not parts[4]:
        return url, ""
    scheme, tail = parts[1].lower(), parts[4]
    if scheme in ("http", "https") or tail.startswith("#") or "=" in tail:
        return url[: len(url) - len(tail)], tail
    return url, ""


def redact(url: str) -> str:
    """`url` without its userinfo and query (each replaced by MARK); anything that is not a URL unchanged."""
    parts = _PARTS.fullmatch(url)
    if parts is None:
        return url
    base, tail = split_query(url)
    authority = parts[2]
    if "@" in authority:
        authority = f"{MARK}@{authority.rpartition('@')[2]}"
    kept = base[len(parts[1]) + 3 + len(parts[2]):]  # path, and a `?` that is a glob
    return f"{parts[1]}://{authority}{kept}" + (f"?{MARK}" if tail else "")


def redact_text(text: str) -> str:
    """Every URL in `text` redacted: for messages and tracebacks, which quote URLs as the client saw them."""
    return _IN_TEXT.sub(lambda found: redact(found[0]), text) if "://" in text else text


def redact_tree(value):
    """Every string in a JSON-like value (dicts, lists, strings) passed through `redact_text`."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_tree(item) for item in value)
    return value
