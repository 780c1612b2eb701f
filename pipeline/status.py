"""`python -m pipeline.status OUT [--json]`: how far a run is, from anywhere that can read its output folder.

It reads the run state only, and writes nothing: the lease (who drives the run, its last heartbeat, how many shards
its source lists), the summary (manifest.json and its shard list) and the commit records the summary does not hold
yet: one LIST of `_run/commits` plus those records. Of each record it keeps the few fields it reads (a digest row,
see runstate/digest.py), and of the summary its digest, not its whole shard list. An output written before the shard
count was recorded shows what it has (shards to do: unknown); one written before the digest, its shard list.

Exit status: 0; 2 when OUT is not a pipeline output (no readable manifest.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

from .runstate import DONE, FAILED, Totals, digest
from .runstate.lease import LEASE
from .runstate.records import list_records, read_records
from .runstate.summary import MANIFEST, read_manifest, read_shard_list
from .storage import Storage
from .urls import redact

EXIT_NOT_AN_OUTPUT = 2
SLOWEST = 5  # shards listed as the slowest
RECENT_S = 3600.0  # the "last hour" of throughput


# more unseen done records than this: read the digest (one read) rather than each record
READ_EACH_UP_TO = 1000


class NotAnOutput(Exception):
    pass


def _cache_path(url: str) -> str:
    root = os.environ.get("AUDIOTOK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "audiotok")
    return os.path.join(root, "status", hashlib.sha256(url.encode()).hexdigest()[:24] + ".json")


def _read_cache(url: str) -> dict:
    """The done shards' digest rows this machine has seen ({} for none, or a cache of another version)."""
    try:
        with open(_cache_path(url), "rb") as f:
            return digest.decode(f.read()) or {}
    except OSError:
        return {}


def _write_cache(url: str, done: dict) -> None:
    """Done records never change: the next status reads only the records it has not seen. A cache that cannot be
    written costs the next call time, nothing else."""
    path = _cache_path(url)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        staged = f"{path}.{os.getpid()}.tmp"
        with open(staged, "wb") as f:
            f.write(digest.encode(done.values()))
        os.replace(staged, path)
    except OSError:
        pass


def _summary_rows(storage: Storage) -> dict:
    """The last compaction's shards as digest rows: its digest, or (an output written before it, or one whose digest
    is unreadable) its whole shard list, digested here."""
    rows = digest.read_digest(storage)
    if rows is None:
        rows = {k: digest.digest_row(r) for k, r in read_shard_list(storage).items()}
    return rows


def _records(storage: Storage) -> tuple[dict, dict]:
    """shard id -> the digest row of its latest commit record, and the untrusted ones: one LIST, then the done records
    neither this machine's cache nor (when many) the summary's digest holds, and the failed ones."""
    listed = list_records(storage)
    cached = _read_cache(storage.url)
    records, unseen, failed = {}, [], []
    for shard_id, statuses in listed.items():
        if DONE not in statuses:
            failed.append((shard_id, FAILED))  # a failed record may be rewritten: read each time (few)
        elif shard_id in cached:
            records[shard_id] = cached[shard_id]
        else:
            unseen.append(shard_id)
    if len(unseen) > READ_EACH_UP_TO:
        summary = _summary_rows(storage)
        held = [k for k in unseen if summary.get(k, {}).get("status") == DONE]
        records.update((k, summary[k]) for k in held)
        unseen = sorted(set(unseen) - set(held))
    fresh, corrupt = read_records(storage, [(k, DONE) for k in unseen] + failed)
    records.update((k, digest.digest_row(r)) for k, r in fresh.items())
    if len(cached) != sum(r["status"] == DONE for r in records.values()):
        _write_cache(storage.url, {k: r for k, r in records.items() if r["status"] == DONE})
    return records, corrupt


@dataclass
class Driver:
    """The lease's holder as its file says; `alive`: its heartbeat is younger than output.lease_timeout_s."""

    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    heartbeat_age_s: float
    alive: bool


@dataclass
class Status:
    output: str
    at: float  # when this status was read
    driver: Driver | None  # None: no lease, no driver holds the output
    shards_listed: int | None  # None: written before the count was recorded
    shards_done: int
    shards_failed: int
    shards_to_do: int | None  # listed and not finished (failed shards run again on the next run, besides these)
    audio_hours_done: float
    audio_hours_to_do: float | None  # estimated: the done shards' mean audio times the shards to do
    samples: int
    error_records: int
    error_reasons: dict  # sample error records by reason
    shard_error_reasons: dict  # failed shards by reason
    realtime_last_hour: float | None  # audio seconds per second over the hour before the last heartbeat or shard
    realtime_run: float | None  # the same from the first shard's start to the last shard's end
    shards_per_hour: float | None  # over the last hour, else the whole run
    eta_s: float | None  # shards to do at shards_per_hour; None when no driver runs
    slowest: list = field(default_factory=list)  # {shard_id, seconds, audio_seconds, worker, status}
    untrusted_records: int = 0  # commit records cut short or unreadable (their shards count as not done)
    summary_at: float | None = None  # when manifest.json was last compacted

    def as_dict(self) -> dict:
        return asdict(self)


def _read_lease(storage: Storage, timeout_s: float, now: float) -> tuple[Driver, dict] | None:
    """The lease's holder, and the facts its driver reported (see Lease.report); None without a lease."""
    try:
        lease = json.loads(storage.read_bytes(LEASE))
    except (FileNotFoundError, ValueError, OSError):
        return None
    if not isinstance(lease, dict) or "heartbeat_at" not in lease:
        return None
    beat = float(lease["heartbeat_at"])
    return Driver(str(lease.get("host")), int(lease.get("pid", -1)), float(lease.get("started_at", beat)), beat,
                  now - beat, now - beat <= timeout_s), lease.get("run", {})


def _span(record: dict) -> tuple[float, float] | None:
    """(start, end) wall clock of a record; records written before `finished_at` end at start + seconds."""
    start = record.get("started_at") or 0.0
    if not start:
        return None
    return start, record.get("finished_at") or start + record.get("seconds", 0.0)


def read_status(output: str, now: float | None = None) -> Status:
    storage = Storage(output)
    now = time.time() if now is None else now
    try:
        manifest = read_manifest(storage)
    except (ValueError, OSError) as error:
        raise NotAnOutput(f"{redact(output)}: {error}") from None
    if manifest is None:
        raise NotAnOutput(f"{redact(output)} is not a pipeline output: expected {MANIFEST} and _run/ (the run state "
                          "python -m pipeline.run writes in output.dir)")
    timeout_s = float(((manifest.get("config") or {}).get("output") or {}).get("lease_timeout_s", 300.0))
    lease = _read_lease(storage, timeout_s, now)
    driver, facts = lease if lease else (None, {})
    records, corrupt = _records(storage)
    totals = Totals(records.values()).as_dict()
    listed = facts.get("shards_listed", manifest.get("shards_listed"))

    spans, recent_end = [], (now if driver and driver.alive else None)
    for record in records.values():
        span = _span(record)
        if span is not None:
            spans.append((span, record))
    first = min((s[0] for s, _ in spans), default=None)
    last = max((s[1] for s, _ in spans), default=None)
    recent_end = recent_end or last
    done = [(s, r) for s, r in spans if r["status"] == DONE]
    realtime_run = realtime_recent = shards_per_hour = None
    if done and last > first:
        realtime_run = sum(r.get("audio_seconds", 0.0) for _, r in done) / (last - first)
        window = min(RECENT_S, recent_end - first)
        recent = [r for (_, end), r in done if end > recent_end - window]
        if window > 0:
            realtime_recent = sum(r.get("audio_seconds", 0.0) for r in recent) / window
            shards_per_hour = len(recent) / window * 3600 if recent else len(done) / (last - first) * 3600
    audio = totals["audio_seconds"]
    to_do = None if listed is None else max(0, int(listed) - totals["shards_done"] - totals["shards_failed"])
    mean_audio = audio / totals["shards_done"] if totals["shards_done"] else None
    eta = (to_do / shards_per_hour * 3600 if driver and driver.alive and to_do is not None and shards_per_hour
           else None)
    slowest = sorted(records.values(), key=lambda r: (-r.get("seconds", 0.0), r["shard_id"]))[:SLOWEST]
    return Status(
        redact(output), now, driver, listed, totals["shards_done"], totals["shards_failed"], to_do, audio / 3600,
        None if to_do is None or mean_audio is None else to_do * mean_audio / 3600, totals["rows"], totals["errors"],
        totals["error_reasons"], totals["shard_error_reasons"], realtime_recent, realtime_run, shards_per_hour, eta,
        [{"shard_id": r["shard_id"], "seconds": r.get("seconds", 0.0), "audio_seconds": r.get("audio_seconds", 0.0),
          "worker": r.get("worker", ""), "status": r["status"]} for r in slowest],
        len(corrupt), manifest.get("compacted_at"))


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min" if seconds >= 3600 else f"{seconds // 60} min {seconds % 60:02d} s"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}x realtime"


def status_text(s: Status) -> str:
    d = s.driver
    if d is None:
        driver = "driver: none holds the lease (no run in progress)"
    elif d.alive:
        driver = f"driver: {d.host} pid {d.pid}, running since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(d.started_at))}, last heartbeat {_ago(d.heartbeat_age_s)} ago"
    else:
        driver = (f"driver: {d.host} pid {d.pid} holds a stale lease: no heartbeat for {_ago(d.heartbeat_age_s)} "
                  "(gone? the next run takes it over)")
    to_do = "unknown (the output predates the recorded shard count)" if s.shards_to_do is None else str(s.shards_to_do)
    audio_to_do = "" if s.audio_hours_to_do is None else f", ~{s.audio_hours_to_do:.2f} h to do (estimated)"
    lines = [
        f"output: {s.output}", driver,
        f"shards: {s.shards_done} done, {s.shards_failed} failed, {to_do} to do"
        + ("" if s.shards_listed is None else f" (of {s.shards_listed} listed)")
        + (f"; {s.untrusted_records} commit record(s) cut short or unreadable" if s.untrusted_records else ""),
        f"audio: {s.audio_hours_done:.2f} h done{audio_to_do}; {s.samples} samples encoded, {s.error_records} error records",
        f"throughput: last hour {_rate(s.realtime_last_hour)}, whole run {_rate(s.realtime_run)}"
        + ("" if s.shards_per_hour is None else f"; {s.shards_per_hour:.1f} shards/h"),
        "eta: " + (_ago(s.eta_s) if s.eta_s is not None else
                   "n/a (no driver running)" if not (d and d.alive) else "n/a (no throughput yet)"),
        "errors: " + (", ".join(f"{k}: {v}" for k, v in sorted(s.error_reasons.items(), key=lambda kv: -kv[1])) or "none")
        + "".join(f"; failed shards {k}: {v}" for k, v in s.shard_error_reasons.items()),
    ]
    if s.slowest:
        lines.append("slowest shards: " + "; ".join(
            f"{r['shard_id']} {r['seconds']:.0f} s for {r['audio_seconds']:.0f} s audio ({r['worker'] or '?'}"
            + ("" if r["status"] == DONE else ", failed") + ")" for r in s.slowest))
    return "\n".join(lines)


PARSER = argparse.ArgumentParser(prog="python -m pipeline.status", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
PARSER.add_argument("output_dir", help="output.dir of the run: a folder or an fsspec URL")
PARSER.add_argument("--json", action="store_true", help="the same as one JSON object")


def main(argv: list[str] | None = None) -> int:
    args = PARSER.parse_args(argv)
    try:
        status = read_status(args.output_dir)
    except NotAnOutput as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NOT_AN_OUTPUT
    print(json.dumps(status.as_dict(), indent=1) if args.json else status_text(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
