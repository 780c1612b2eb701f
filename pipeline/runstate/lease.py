"""One writer per output folder: a lease file with its holder (host, pid), start time and heartbeat.

Taken with a create-if-absent write (O_EXCL locally; a conditional PUT where the object store has one:
S3 and GCS through s3fs/gcsfs). A lease whose holder is a process that no longer exists on this host is
taken over at once; one whose heartbeat is older than `timeout_s` is taken over with a note. A driver
that finds its lease taken by another, or cannot renew it before it expires, stops (`LeaseLost`) rather than
writing beside another.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from ..telemetry.events import LeaseTakenOver
from .retry import RetriedStorage, StoreWriteFailed

LEASE = "_run/lease.json"


class LeaseHeld(RuntimeError):
    """Another live run holds the output folder."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (its heartbeat stalled past the timeout), or could not be renewed in time."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    def __init__(self, storage: RetriedStorage, timeout_s: float, on_event=lambda event: None):
        self.storage, self.timeout_s, self.on_event = storage, timeout_s, on_event
        now = time.time()
        self.mine = {"holder": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                     "started_at": now, "heartbeat_at": now, "run": {}}
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        try:
            lease = json.loads(self.storage.read_bytes(LEASE))
            return lease if isinstance(lease, dict) and "holder" in lease else None
        except FileNotFoundError:
            raise
        except (OSError, ValueError):
            return None  # torn or foreign: treated as stale below

    def acquire(self) -> None:
        try:
            self.storage.create(LEASE, json.dumps(self.mine).encode())
        except FileExistsError:
            self._take_over()
        interval = max(0.5, min(30.0, self.timeout_s / 4))
        self._thread = threading.Thread(target=self._beat, args=(interval,), name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _take_over(self) -> None:
        try:
            other = self._read()
        except FileNotFoundError:  # released between our create and our read: create it once more
            try:
                return self.storage.create(LEASE, json.dumps(self.mine).encode())
            except FileExistsError:
                raise LeaseHeld(f"output.dir {self.storage.url}: another run took the lease at the same time") from None
        if other is not None and other.get("holder") == self.mine["holder"]:
            return  # our own create succeeded although the store answered with an error, and was retried
        now = time.time()
        if other is None:
            note = "an unreadable lease file"
        elif other.get("host") == self.mine["host"] and not _pid_alive(int(other.get("pid", -1))):
            note = f"the previous run (pid {other.get('pid')} on this host) is gone"
        elif now - float(other.get("heartbeat_at", 0)) > self.timeout_s:
            note = (f"the lease of {other.get('host')} pid {other.get('pid')} has had no heartbeat for "
                    f"{now - float(other.get('heartbeat_at', 0)):.0f} s > output.lease_timeout_s={self.timeout_s:g}")
        else:
            age = now - float(other.get("heartbeat_at", now))
            raise LeaseHeld(
                f"output.dir {self.storage.url} is being written by another run ({other.get('host')} pid "
                f"{other.get('pid')}, since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(other.get('started_at', 0)))}, "
                f"heartbeat {age:.0f} s ago). Wait for it to finish, stop it, or use another output.dir; a lease "
                f"without a heartbeat for output.lease_timeout_s={self.timeout_s:g} s is taken over.")
        self.storage.write_bytes(LEASE, json.dumps(self.mine).encode())
        if (self._read() or {}).get("holder") != self.mine["holder"]:  # another taker won the race
            raise LeaseHeld(f"output.dir {self.storage.url}: another run took over the lease at the same time")
        self.on_event(LeaseTakenOver(note))

    def _beat(self, interval: float) -> None:
        """Renew every `interval`; after a failure (any exception: an error that ended this thread would leave the
        driver writing on unleased), try again sooner. A lease not renewed by one interval before it would expire
        is given up (`lost`): the driver stops before another run may take it over."""
        renewed, wait = self.mine["heartbeat_at"], interval  # as the lease file says: what another run reads
        while not self._stop.wait(wait):
            deadline = renewed + self.timeout_s - interval
            try:
                self._renew(deadline)
                renewed, wait = self.mine["heartbeat_at"], interval
            except LeaseLost as error:
                self.lost = str(error)
                return
            except Exception as error:
                if time.time() >= deadline:
                    self.lost = (f"this run could not renew its lease on {self.storage.url} for "
                                 f"{time.time() - renewed:.0f} s and stops before output.lease_timeout_s="
                                 f"{self.timeout_s:g} passes and another run may take it over; the last error: "
                                 f"{type(error).__name__}: {str(error)[:300]}")
                    return
                wait = interval / 4

    def _renew(self, until: float) -> None:
        try:
            current = self._read()
        except FileNotFoundError:
            current = None
        if current is not None and current.get("holder") != self.mine["holder"]:
            raise LeaseLost(f"the lease on {self.storage.url} was taken over by {current.get('host')} pid "
                            f"{current.get('pid')}: this run's heartbeat stalled past output.lease_timeout_s")
        self.mine["heartbeat_at"] = time.time()
        self.storage.write_bytes(LEASE, json.dumps(self.mine).encode(), until=until)  # retried, never past expiry

    def report(self, facts: dict) -> None:
        """Facts about the run (shards listed, ...) carried by the next heartbeats, for `pipeline.status`."""
        self.mine["run"] = dict(self.mine["run"], **facts)  # one key replaced: the beat may be writing `mine`

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost:
            return
        try:
            if (self._read() or {}).get("holder") == self.mine["holder"]:
                self.storage.remove_file(LEASE)
        except (OSError, StoreWriteFailed):
            pass  # a lease left behind: the next run on this host takes it over at once (this process is gone)
