"""Careless and hostile input: every tar member a row or an error record, truncation and unknown lengths
found from the decoded length, bad HF cells costing their row only, memory set by the configuration,
and config mistakes stopped before Ray starts."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import tracemalloc

import numpy as np
import pytest

from pipeline.sources import Shard
from pipeline.sources.webdataset import read_tar_shard
from tests.corpus import wav_bytes


def clip(seconds: float = 0.2, rate: int = 16000) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def shard_of(path) -> Shard:
    return Shard("s", str(path), "webdataset")


def by_key(samples) -> dict:
    return {s.key: s for s in samples}


# -- tar members ---------------------------------------------------------------------------------------------


def test_tar_member_repeated_in_a_row_is_a_duplicate_member_record_not_silently_replaced(tmp_path):
    wav = wav_bytes(clip(), 16000)
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        add(tar, "a.wav", wav)
        add(tar, "a.wav", wav)
        add(tar, "b.wav", wav)
    samples = by_key(read_tar_shard(shard_of(tmp_path / "s.tar")))
    assert samples["a"].error.reason == "duplicate_member" and samples["a"].audio is None
    assert samples["b"].audio == wav and samples["b"].error is None


def test_tar_hard_link_reads_as_its_target_and_symlinks_and_fifos_are_unsupported_member_records(tmp_path):
    wav = wav_bytes(clip(), 16000)
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        add(tar, "dir", type=tarfile.DIRTYPE)  # a folder holds no sample: no record
        add(tar, "dir/a.wav", wav)
        add(tar, "dir/a.txt", b"hello")
        add(tar, "dir/b.wav", type=tarfile.LNKTYPE, linkname="dir/a.wav")  # what GNU tar writes for a hard link
        add(tar, "dir/b.txt", type=tarfile.LNKTYPE, linkname="dir/a.txt")
        add(tar, "dir/c.wav", type=tarfile.SYMTYPE, linkname="a.wav")
        add(tar, "dir/d.wav", type=tarfile.FIFOTYPE)
        add(tar, "dir/e.wav", type=tarfile.LNKTYPE, linkname="elsewhere.wav")
    samples = by_key(read_tar_shard(shard_of(tmp_path / "s.tar")))
    assert sorted(samples) == ["dir/a", "dir/b", "dir/c", "dir/d", "dir/e"]
    assert samples["dir/b"].audio == wav and samples["dir/b"].metadata == {"text": "hello"}
    for key in ("dir/c", "dir/d", "dir/e"):
        assert samples[key].error.reason == "unsupported_member", key


def test_gz_tar_with_a_huge_text_member_is_a_metadata_too_large_record_read_in_bounded_memory(tmp_path):
    wav = wav_bytes(clip(), 16000)
    huge = 48 << 20  # compresses to a few tens of kB: the input's size says nothing about its content's
    path = tmp_path / "s.tar.gz"
    with gzip.open(path, "wb", compresslevel=1) as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        add(tar, "a.wav", wav)
        add(tar, "a.txt", b"x" * huge)
        add(tar, "b.wav", wav)
        add(tar, "b.jpg", b"y" * huge)  # a member no row keeps: never read
    assert os.path.getsize(path) < huge // 100
    tracemalloc.start()
    try:
        samples = by_key(read_tar_shard(shard_of(path), max_text_bytes=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert samples["a"].error.reason == "metadata_too_large" and "source.max_text_bytes" in samples["a"].error.detail
    assert samples["b"].audio == wav and samples["b"].error is None
    assert peak < huge // 4, f"{peak / 2**20:.0f} MiB traced while reading"
