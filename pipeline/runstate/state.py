"""The run state of one output folder: lease, identity check, commit records and the summary, in one owner.

    state = RunState.open(storage, header, config.output, on_event)   # lease, identity, what is done
    state.done(shard_id); state.commit(result); state.totals()        # per shard: O(1) in the shard count
    state.close()                                                     # final summary, lease released

Readers use `read_run`, which merges the summary with the commit records written since.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..telemetry.events import CorruptCommits, OutputCleared, VersionsAccepted
from ..schema import SCHEMA_VERSION, schema_from_text
from ..storage import Storage
from ..urls import redact_tree
from .digest import DIGEST
from .identity import IdentityChanged, check_identity, fingerprint
from .lease import LEASE, Lease
from .plan import PLAN
from .records import COMMITS, DONE, FAILED, ShardRecord, list_records, read_records, record_path, write_record
from .retry import RetriedStorage, WriteRetry
from .summary import MANIFEST, SHARD_LIST, Totals, read_manifest, read_shard_list, write_summary

RUN_STATE = (MANIFEST, SHARD_LIST, DIGEST, COMMITS, PLAN)  # removed first on overwrite, then the data
OUTPUT_FOLDERS = ("data", "errors")


class OutputError(RuntimeError):
    """output.dir cannot be used as asked: an older output schema, or data without run state."""


@dataclass
class RunView:
    manifest: dict
    records: dict[str, ShardRecord]  # shard id -> its latest trusted commit record
    corrupt: dict  # shard id -> why its record is not trusted (the shard counts as not done)
    summary_stale: bool  # the summary disagrees with the commit records

    def done(self) -> dict[str, ShardRecord]:
        return {k: r for k, r in self.records.items() if r.status == DONE}


def _load(storage: Storage) -> tuple[dict, dict, bool, set]:
    """Records from the summary plus the commit records it does not hold yet."""
    summary = read_shard_list(storage)
    listed = list_records(storage)
    records, wanted = {}, []
    for shard_id, statuses in listed.items():
        status = DONE if DONE in statuses else FAILED
        held = summary.get(shard_id)
        if status == DONE and held is not None and held.status == DONE:
            records[shard_id] = held  # a done record never changes: the summary's copy is it
        else:
            wanted.append((shard_id, status))
    fresh, corrupt = read_records(storage, wanted)
    records.update(fresh)
    stale = set(summary) != set(records) or any(summary[k].status != r.status for k, r in records.items())
    failed_files = {k for k, statuses in listed.items() if FAILED in statuses}
    return records, corrupt, stale, failed_files


def _old_schema_message(url: str, manifest: dict) -> str:
    return (f"{url} was written by an older audiotok (output schema {manifest.get('schema_version')}, this one writes "
            f"{SCHEMA_VERSION}: one schema per run, commit records under _run/). Its files stay readable as they are; "
            "to go on, start a new output.dir, or set output.overwrite=true to replace it")


def read_run(storage: Storage) -> RunView:
    """An output as readers see it; FileNotFoundError when the folder is not an output, OutputError when it is
    one of an older schema."""
    manifest = read_manifest(storage)
    if manifest is None:
        raise FileNotFoundError(f"no manifest.json in {storage.url}: not a pipeline output folder")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise OutputError(_old_schema_message(storage.url, manifest))
    records, corrupt, stale, _ = _load(storage)
    return RunView(manifest, records, corrupt, stale)


class RunState:
    def __init__(self, storage: Storage, header: dict, lease: Lease, summary_interval_s: float, on_event):
        self.storage, self.header, self.lease = storage, header, lease
        self.summary_interval_s, self.on_event = summary_interval_s, on_event
        self.records: dict[str, ShardRecord] = {}
        self.corrupt: dict = {}
        self._failed_files: set = set()
        self._totals = Totals()
        self._compacted = time.time()

    @classmethod
    def open(cls, storage: Storage, header: dict, output, on_event=lambda event: None) -> "RunState":
        """Take the lease, check or record the identity, learn what is done. `header`: what this run is
        (identity inputs, codec, schema, config); an existing output keeps its own header."""
        storage = RetriedStorage(storage, WriteRetry.of(output), on_event)  # every write of the run state
        lease = Lease(storage, output.lease_timeout_s, on_event)
        lease.acquire()
        try:
            state = cls(storage, redact_tree(header), lease, output.summary_interval_s, on_event)
            state._open(output.overwrite, output.accept_new_versions)
            return state
        except BaseException:
            lease.release()
            raise

    def _open(self, overwrite: bool, accept_new_versions: bool) -> None:
        current = self.header
        existing = read_manifest(self.storage)
        if existing is not None:
            try:
                if existing.get("schema_version") != SCHEMA_VERSION:
                    raise OutputError(_old_schema_message(self.storage.url, existing))
                accepted = check_identity(existing["identity"], self.header["identity"], accept_new_versions)
            except (OutputError, IdentityChanged):
                if not overwrite:
                    raise
                self._clear()
                existing = None
        elif any(self.storage.list(folder) for folder in (*OUTPUT_FOLDERS, COMMITS)):
            if not overwrite:
                raise OutputError(f"{self.storage.url} holds data/, errors/ or commit records but no manifest.json "
                                  "(an overwrite that was killed, or another tool's folder): set output.overwrite=true "
                                  "to clear it, or use another output.dir")
            self._clear()
        if existing is None:
            self.header = dict(self.header, schema_version=SCHEMA_VERSION, fingerprint=fingerprint(self.header["identity"]),
                               created_at=time.time(), identity_changes=[])
            write_summary(self.storage, self.header, {})
        else:
            self.header = {k: v for k, v in existing.items()
                           if k not in ("totals", "shard_count", "shard_list", "compacted_at")}
            if accepted:  # library versions only, opted in: recorded, and the output goes on under them
                self.header["identity_changes"] = self.header.get("identity_changes", []) + [
                    {"at": time.time(), "changes": accepted}]
                self.header["identity"] = current["identity"]
                self.header["fingerprint"] = fingerprint(current["identity"])
                self.on_event(VersionsAccepted(accepted))
            self.records, self.corrupt, stale, self._failed_files = _load(self.storage)
            self._totals = Totals(self.records.values())
            if self.corrupt:
                self.on_event(CorruptCommits(dict(self.corrupt)))
            if stale or accepted:
                self.compact()  # a summary that disagrees with the commit records is rebuilt
        for folder in (*OUTPUT_FOLDERS, COMMITS, "_run"):
            self.storage.remove_stale_temporaries(folder)

    def _clear(self) -> None:
        # run state first: a kill part-way leaves data without a manifest, which the next run refuses
        # to mix with (and overwrite=true finishes clearing), never a manifest claiming deleted files
        for path in (*RUN_STATE, *OUTPUT_FOLDERS):
            self.storage.remove(path)
        self.on_event(OutputCleared(self.storage.url))

    @property
    def schema(self):
        return schema_from_text(self.header["output_schema"])

    def done(self, shard_id: str) -> bool:
        record = self.records.get(shard_id)
        return record is not None and record.status == DONE

    def totals(self) -> dict:
        return self._totals.as_dict()

    def commit(self, result: ShardRecord) -> None:
        """Record a finished shard (its data and error files are already written); URLs in it without secrets."""
        self.lease.check()
        result.finished_at = time.time()
        record = ShardRecord.from_dict(redact_tree(result.to_dict()))
        shard_id = record.shard_id
        write_record(self.storage, record)
        old = self.records.get(shard_id)
        if old is not None:
            self._totals.add(old, -1)
        self.records[shard_id] = record
        self._totals.add(record)
        self.corrupt.pop(shard_id, None)
        if record.status == FAILED:
            self._failed_files.add(shard_id)
        elif shard_id in self._failed_files:
            self.storage.remove_file(record_path(shard_id, FAILED))  # the done record wins even if this is cut short
            self._failed_files.discard(shard_id)
        if time.time() - self._compacted >= self.summary_interval_s:
            self.compact()

    def compact(self) -> dict:
        totals = write_summary(self.storage, self.header, self.records)
        self._compacted = time.time()
        return totals

    def announce(self, shards_listed: int, pending: int) -> None:
        """How many shards the source lists, for `pipeline.status`: in the lease's heartbeat now, in the summary at
        its next compaction (kept there by later runs until they announce their own)."""
        self.header["shards_listed"] = shards_listed
        self.lease.report({"shards_listed": shards_listed, "pending_at_start": pending})

    def check_lease(self) -> None:
        self.lease.check()

    def close(self) -> None:
        """The final summary (not after a lost lease, nor once a write failed: the commit records are the truth
        and the next run rebuilds the summary from them), then the lease released."""
        try:
            if not self.lease.lost and self.storage.failed is None:
                self.compact()
        finally:
            self.lease.release()


__all__ = ["LEASE", "OutputError", "RunState", "RunView", "read_run"]
