"""Output storage through fsspec: local folders and object stores alike, every write atomic.

Local files are written under a hidden temporary name and renamed; object stores get one PUT
of a finished local file (a PUT is atomic there). Readers therefore never see a partial file.
Hidden names (leading '.') are skipped by pyarrow, datasets and polars readers.
"""

from __future__ import annotations

import os
import shutil
import uuid

import fsspec


class Storage:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, relative: str) -> bool:
        self.fs.invalidate_cache(self.path(relative))
        return self.fs.exists(self.path(relative))

    def read_bytes(self, relative: str) -> bytes:
        return self.fs.cat_file(self.path(relative))

    def list(self, folder: str) -> list[str]:
        """Names in `folder` (relative), hidden ones included; empty when it does not exist."""
        target = self.path(folder)
        self.fs.invalidate_cache(target)  # object-store listings are cached per process; another may have written
        if not self.fs.exists(target):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(target, detail=False))

    def remove(self, relative: str) -> None:
        if self.fs.exists(self.path(relative)):
            self.fs.rm(self.path(relative), recursive=True)

    def remove_file(self, relative: str) -> None:
        """Delete one file; absent already is fine (a retried delete, a concurrent cleanup)."""
        try:
            self.fs.rm_file(self.path(relative))
        except (FileNotFoundError, NotADirectoryError):  # a parent that is a file holds nothing to remove either
            pass

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Replace `relative` with `data` atomically: a staged file renamed over it (local), one PUT (object store)."""
        final = self.path(relative)
        if not self.local:
            self.fs.pipe_file(final, data)
            return
        folder = final.rsplit("/", 1)[0]
        os.makedirs(folder, exist_ok=True)
        staged = f"{folder}/.tmp-{uuid.uuid4().hex}-{final.rsplit('/', 1)[-1]}"
        with open(staged, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, final)

    def create(self, relative: str, data: bytes) -> None:
        """Write `relative` only if it does not exist (FileExistsError otherwise): O_EXCL locally, a conditional
        PUT (If-None-Match) on stores that have one (S3, GCS through their fsspec drivers)."""
        final = self.path(relative)
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        try:
            self.fs.pipe_file(final, data, mode="create")
        except (TypeError, NotImplementedError):  # a driver without conditional writes: check, then write
            if self.fs.exists(final):
                raise FileExistsError(final) from None
            self.fs.pipe_file(final, data)

    def read_many(self, relatives: list[str]) -> dict[str, bytes | Exception]:
        """Several small files in one call (concurrent on object stores); a file that cannot be read maps to its error."""
        if not relatives:
            return {}
        paths = {self.path(r): r for r in relatives}
        found = self.fs.cat(list(paths), on_error="return")
        return {paths[p]: found.get(p, FileNotFoundError(p)) for p in paths}

    def put_file(self, local_path: str, relative: str) -> None:
        """Move a finished local file to `relative`, atomically; the local file is consumed."""
        final = self.path(relative)
        folder = final.rsplit("/", 1)[0]
        try:
            if self.local:
                os.makedirs(folder, exist_ok=True)
                staged = f"{folder}/.tmp-{uuid.uuid4().hex}-{final.rsplit('/', 1)[-1]}"
                shutil.copyfile(local_path, staged)
                with open(staged, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(staged, final)
            else:
                self.fs.makedirs(folder, exist_ok=True)
                self.fs.put_file(local_path, final)
        finally:
            os.unlink(local_path)

    def remove_stale_temporaries(self, folder: str) -> int:
        """Delete '.tmp-*' files a killed process left behind; returns how many."""
        stale = [name for name in self.list(folder) if name.startswith(".tmp-")]
        for name in stale:
            self.fs.rm(self.path(folder, name))
        return len(stale)

