"""No secret written: a presigned URL's signature and a URL's `user:token@` appear in no file of the output and
in nothing the CLI prints; the same object under a new signature is the same shard."""

import os

import pytest

from pipeline.config import ConfigError
from pipeline.run import main as run_main
from pipeline.sources import distinct_shards, shard_id
from pipeline.sources.webdataset import list_tar_shards
from pipeline.urls import redact, redact_text
from tests.corpus import mixed_tar
from tests.httpserver import TroubleServer
from tests.test_pipeline import config_for, read_rows, records_of

SIGNATURE, NEW_SIGNATURE, TOKEN = "SIGNATURE0SECRET", "SIGNATURE1SECRET", "TOKEN0SECRET"


def presigned(server, signature: str) -> list[str]:
    host = server.url.split("://", 1)[1]
    query = f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA{signature}&X-Amz-Signature={signature}"
    return [f"{server.url}/shard-000.tar?{query}",
            f"{server.url}/flaky-001.tar?{query}",  # answers 503 twice: retry messages quote the URL
            f"http://user:{TOKEN}@{host}/shard-002.tar",
            f"{server.url}/gone-003.tar?{query}"]  # 404: a failed shard, its error record and message quote the URL


def secrets_in(folder) -> list[str]:
    found = []
    for where, _, files in os.walk(folder):
        for name in files:
            data = open(os.path.join(where, name), "rb").read()
            found += [f"{name}: {s}" for s in (SIGNATURE, NEW_SIGNATURE, TOKEN) if s.encode() in data]
    return found


def test_presigned_url_secrets_reach_no_output_file_nor_the_log_and_a_new_signature_is_the_same_shard(
        tmp_path, ray_local, capfd):
    keys = []
    for i, name in enumerate(["shard-000.tar", "flaky-001.tar", "shard-002.tar"]):
        keys += [s.key for s in mixed_tar(str(tmp_path / "served" / name), f"s{i}", 2, seed=90 + i)]
    with TroubleServer(str(tmp_path / "served"), flaky_failures=2) as server:
        config_for(tmp_path, {"kind": "webdataset", "urls": presigned(server, SIGNATURE)})
        # rows greppable; one read try, so that flaky-001's 503s fail its shard and the retry message quotes its URL
        options = ["output.compression=none", "ray.retry_backoff_s=0.2", "ray.max_attempts=4", "source.read_attempts=1"]
        assert run_main([str(tmp_path / "run.yaml"), *options]) == 1  # gone-003 fails
        first = capfd.readouterr()
        assert any(SIGNATURE in q for q in server.queries)  # the reader used the real URL
        config_for(tmp_path, {"kind": "webdataset", "urls": presigned(server, NEW_SIGNATURE)})
        assert run_main([str(tmp_path / "run.yaml"), *options]) == 1
        second = capfd.readouterr()
    out = tmp_path / "out"
    assert secrets_in(out) == []
    assert "retry 1" in first.err and "gone-003" in first.err and "gone-003" in second.err  # URLs were printed
    for captured in (first, second):
        log = captured.out + captured.err
        assert SIGNATURE not in log and NEW_SIGNATURE not in log and TOKEN not in log
    assert "4 shards: 3 already done, 1 to run" in second.err  # a new signature: the same shards
    records = records_of(out)
    assert sorted(r.source.rsplit("/", 1)[-1] for r in records.values()) == [
        "flaky-001.tar?REDACTED", "gone-003.tar?REDACTED", "shard-000.tar?REDACTED", "shard-002.tar"]
    assert sorted(r["key"] for r in read_rows(out)) == sorted(keys)


@pytest.mark.parametrize("url, written", [
    ("https://b.s3.amazonaws.com/a/x.tar?X-Amz-Signature=S&X-Amz-Credential=C", "https://b.s3.amazonaws.com/a/x.tar?REDACTED"),
    ("http://user:token@host:8080/x.tar", "http://REDACTED@host:8080/x.tar"),
    ("https://acct.blob.core.windows.net/c/x.tar?sv=2020&sig=S", "https://acct.blob.core.windows.net/c/x.tar?REDACTED"),
    ("s3://bucket/key.tar?versionId=v", "s3://bucket/key.tar?REDACTED"),
    ("s3://bucket/shard-?.tar", "s3://bucket/shard-?.tar"),  # a glob, not a query
    ("hf://datasets/org/name@abc/f.parquet", "hf://datasets/org/name@abc/f.parquet"),
    ("/data/a?b.tar", "/data/a?b.tar"),
])
def test_urls_are_written_without_query_or_credentials(url, written):
    assert redact(url) == written and redact(written) == written
    assert redact_text(f"503, url=URL('{url}') failed") == f"503, url=URL('{written}') failed"


def test_a_new_signature_is_the_same_shard_id_and_a_clean_url_keeps_its_id():
    assert shard_id("http://h/x.tar?X-Amz-Signature=A") == shard_id("http://h/x.tar?X-Amz-Signature=B")
    assert shard_id("http://h/x.tar?X-Amz-Signature=A").startswith("x-")
    clean = "s3://bucket/x.tar"  # an output written before redaction keeps its shard ids
    import hashlib
    assert shard_id(clean) == "x-" + hashlib.sha1(clean.encode()).hexdigest()[:10]


def test_urls_differing_only_in_their_query_are_refused_not_merged():
    shards = list_tar_shards(["http://h/get.tar?object=1", "http://h/get.tar?object=2"])
    with pytest.raises(ConfigError, match="source.urls.*differ only in their query"):
        distinct_shards(shards)


def test_presigned_nemo_manifest_and_audio_paths_are_recorded_without_secrets_and_read_with_the_configs_signature(
        tmp_path):
    import json

    import soundfile
    import numpy as np

    from pipeline.config import load_config
    from pipeline.sources import list_shards, read_shard
    from pipeline.storage import Storage

    served = tmp_path / "served"
    served.mkdir()
    soundfile.write(str(served / "a.wav"), np.zeros(1600, np.float32), 16000)
    with TroubleServer(str(served)) as server:
        entry = {"audio_filepath": f"{server.url}/a.wav?X-Amz-Signature={SIGNATURE}", "text": "hi"}
        (served / "m.jsonl").write_text(json.dumps(entry) + "\n")
        storage = Storage(str(tmp_path / "out"))

        def listed(signature):
            config = load_config(None, ["source.kind=nemo", f"source.path={server.url}/m.jsonl?X-Amz-Signature={signature}",
                                        "output.dir=x"])
            return config, list_shards(config.source).settle(storage)

        config, (shard,) = listed(SIGNATURE)
        (sample,) = read_shard(shard, config.source)
        assert SIGNATURE not in sample.key and sample.metadata["audio_filepath"] == f"{server.url}/a.wav?REDACTED"
        assert secrets_in(tmp_path / "out") == []  # the recorded plan
        config, (again,) = listed(NEW_SIGNATURE)  # the recorded shard, read with the configuration's signature
        assert again.id == shard.id and again.url.endswith(NEW_SIGNATURE)
        before = len(server.queries)
        (sample,) = read_shard(again, config.source)
        assert sample.error is None and f"X-Amz-Signature={NEW_SIGNATURE}" in server.queries[before:]
