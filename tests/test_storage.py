"""Output storage through fsspec: the object-store branch (memory://) and file:// URLs end to end."""

import os

import pyarrow.dataset as pads

from pipeline.run import run_job
from pipeline.storage import Storage
from tests.corpus import mixed_tar
from tests.test_pipeline import config_for


def test_object_store_branch_writes_whole_files(tmp_path):
    storage = Storage("memory://bucket/run")
    assert not storage.local
    local = tmp_path / "part.bin"
    local.write_bytes(b"x" * 1000)
    storage.put_file(str(local), "data/part.bin")
    assert not local.exists()  # consumed
    storage.write_bytes("manifest.json", b"{}")
    assert storage.list("data") == ["part.bin"] and storage.read_bytes("data/part.bin") == b"x" * 1000
    assert storage.exists("manifest.json") and storage.list("nothing") == []
    storage.remove("data")
    assert storage.list("data") == []


def test_file_urls_for_source_and_output(tmp_path, ray_local):
    mixed_tar(str(tmp_path / "in/u-0.tar"), "u0", 3, seed=60)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [f"file://{tmp_path}/in/u-{{0..0}}.tar"]},
                        f"output.dir=file://{tmp_path}/out_url")
    assert run_job(config).status == "complete"
    table = pads.dataset(str(tmp_path / "out_url/data"), format="parquet").to_table()
    assert sorted(table.column("key").to_pylist()) == ["u0_000", "u0_001", "u0_002"]
    assert os.path.exists(tmp_path / "out_url/manifest.json")
