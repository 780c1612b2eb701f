"""Output storage through fsspec: local folders and object stores alike, every write atomic.

Local files are written under a hidden temporary name and renamed; object stores get one PUT
of a finished local file (a PUT is atomic there). Readers therefore never see a partial file.
Hidden names (leading '.') are skipped by pyarrow, datasets and polars readers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
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
        return self.fs.exists(self.path(relative))

    def read_bytes(self, relative: str) -> bytes:
        return self.fs.cat_file(self.path(relative))

    def list(self, folder: str) -> list[str]:
        """Names in `folder` (relative), hidden ones included; empty when it does not exist."""
        target = self.path(folder)
        if not self.fs.exists(target):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(target, detail=False))

    def remove(self, relative: str) -> None:
        if self.fs.exists(self.path(relative)):
            self.fs.rm(self.path(relative), recursive=True)

    def write_bytes(self, relative: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(delete=False) as tmp:
            tmp.write(data)
        self.put_file(tmp.name, relative)

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

