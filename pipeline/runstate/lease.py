"""One writer per output folder: a lease file with its holder (host, pid), start time and heartbeat.

Taken with a create-if-absent write (O_EXCL locally; a conditional PUT where the object store has one:
S3 and GCS through s3fs/gcsfs). A lease whose holder is a process that no longer exists on this host is
taken over at once; one whose heartbeat is older than `timeout_s` is taken over with a note. A driver
that finds its lease taken by another stops (`LeaseLost`) rather than writing beside it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from ..storage import Storage

LEASE = "_run/lease.json"


class LeaseHeld(RuntimeError):
    """Another live run holds the output folder."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (its heartbeat stalled past the timeout)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    def __init__(self, storage: Storage, timeout_s: float, on_event=lambda kind, info: None):
        self.storage, self.timeout_s, self.on_event = storage, timeout_s, on_event
        now = time.time()
        self.mine = {"holder": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                     "started_at": now, "heartbeat_at": now}
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
        self.on_event("lease_taken_over", {"note": note})

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                current = self._read()
            except FileNotFoundError:
                current = None
            if current is not None and current.get("holder") != self.mine["holder"]:
                self.lost = (f"the lease on {self.storage.url} was taken over by {current.get('host')} pid "
                             f"{current.get('pid')}: this run's heartbeat stalled past output.lease_timeout_s")
                return
            self.mine["heartbeat_at"] = time.time()
            try:
                self.storage.write_bytes(LEASE, json.dumps(self.mine).encode())
            except OSError:
                pass  # a transient store error: the next beat tries again, well within the timeout

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
        except (FileNotFoundError, OSError):
            pass
