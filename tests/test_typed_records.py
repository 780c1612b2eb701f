"""Typed records read what older code wrote: status, failure kind and reason are `str` enums that serialize as the
strings records held before, every reason the pipeline can write is a `Reason`, and a real output written before
the run state held `ShardRecord`s (tests/data/pre_typed_output, see make_pre_typed_output.py) reads, resumes and
re-serializes byte for byte."""

import ast
import json
import pathlib

import pytest

from pipeline.audio.decode import SampleError
from pipeline.failures import FailureKind, Reason
from pipeline.runstate import ShardRecord
from pipeline.runstate.records import Status
from pipeline.sources import ShardError

ROOT = pathlib.Path(__file__).resolve().parent.parent

# call -> the position of its reason argument; `reason=` keywords and `reason = ...` assignments count too
REASON_ARGUMENT = {"SampleError": 0, "ShardError": 0, "ClipFailure": 0, "read_error": 2, "add_error": 1, "fail": 0,
                   "publish_shard_failure": 3, "charge": 3}


def reason_literals() -> dict[str, str]:
    """Every string literal in pipeline/ written where a sample's or shard's failure reason goes -> a file using it."""
    found = {}
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            spots = []
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if name in REASON_ARGUMENT and len(node.args) > REASON_ARGUMENT[name]:
                    spots.append(node.args[REASON_ARGUMENT[name]])
                spots += [k.value for k in node.keywords if k.arg == "reason"]
            elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "reason" for t in node.targets):
                spots.append(node.value)
            for spot in spots:
                for c in ast.walk(spot):
                    if isinstance(c, ast.Constant) and isinstance(c.value, str):
                        found.setdefault(c.value, str(path.relative_to(ROOT)))
    return found


def test_every_failure_reason_written_in_the_pipeline_is_a_reason_member():
    literals = reason_literals()
    assert len(literals) > 30  # the scan finds the sources' and decoders' reasons, not nothing
    unknown = {text: where for text, where in literals.items() if text not in set(Reason)}
    assert not unknown, f"add these to failures.Reason: {unknown}"


def test_errors_given_a_plain_reason_hold_the_enum_and_an_unknown_reason_is_refused():
    assert SampleError("too_long", "x").reason is Reason.TOO_LONG
    error = ShardError("corrupt_tar", "cut", "transient")
    assert error.reason is Reason.CORRUPT_TAR and error.kind is FailureKind.TRANSIENT and str(error) == "corrupt_tar: cut"
    with pytest.raises(ValueError):
        SampleError("not_a_reason")


def test_enum_fields_serialize_as_the_strings_a_commit_record_held():
    typed = ShardRecord("s", "/in/s.tar", Status.FAILED, reason=Reason.TIMEOUT, failure=FailureKind.TIMEOUT,
                        error_reasons={Reason.NO_AUDIO: 1})
    plain = ShardRecord.from_dict(json.loads(json.dumps(typed.to_dict())))
    assert json.dumps(typed.to_dict(), sort_keys=True) == json.dumps(plain.to_dict(), sort_keys=True)
    assert '"status": "failed"' in json.dumps(typed.to_dict()) and '"failure": "timeout"' in json.dumps(typed.to_dict())
    assert plain.status is Status.FAILED and plain.reason is Reason.TIMEOUT and plain.failure is FailureKind.TIMEOUT
    # comparisons, f-strings and str() (metrics tags, file names) as before
    assert plain.status == "failed" and f"{plain.reason}" == "timeout" and str(plain.status) == "failed"
    older = ShardRecord.from_dict({"shard_id": "o", "source": "x", "status": "failed", "reason": "since_renamed",
                                   "failure": "since_renamed_too"})
    # a reason or kind an older version wrote is kept as it was, not a record that cannot be read
    assert (older.reason, older.failure) == ("since_renamed", "since_renamed_too")


# ---- an output written before the run state held ShardRecords ----------------------------------------------

PRE_TYPED = ROOT / "tests" / "data" / "pre_typed_output"
def output_settings():
    """The output settings of a resume (tests/test_runstate.py's helper imports the driver: seconds)."""
    from pipeline.config import load_config

    return load_config(None, ["source.kind=webdataset", "source.urls=[a.tar]", "output.dir=x"]).output


DONE_SHARD, FAILED_SHARDS = "good-84ed3679c8", {"cut-70f76425f0": "corrupt_tar", "missing-09966d2d0f": "missing_shard"}


@pytest.fixture
def pre_typed(tmp_path, monkeypatch):
    """A copy of the old output (status caches, and a resume rewrites the summary), and status's cache kept here."""
    import shutil

    monkeypatch.setenv("AUDIOTOK_CACHE", str(tmp_path / "cache"))
    return pathlib.Path(shutil.copytree(PRE_TYPED, tmp_path / "out"))


def test_status_of_an_output_written_before_typed_records_counts_what_it_did(pre_typed):
    from pipeline.status import read_status, status_text

    s = read_status(str(pre_typed))
    assert (s.shards_listed, s.shards_done, s.shards_failed, s.shards_to_do) == (3, 1, 2, 0)
    assert (s.samples, s.error_records, s.error_reasons) == (2, 1, {"no_audio": 1})
    assert s.shard_error_reasons == {"corrupt_tar": 1, "missing_shard": 1}
    assert "1 done, 2 failed, 0 to do (of 3 listed)" in status_text(s)


def test_run_state_of_an_older_output_loads_shard_records_with_enums_and_a_resume_redoes_no_done_shard(pre_typed):
    from pipeline.runstate import RunState, read_run
    from pipeline.storage import Storage

    view = read_run(Storage(str(pre_typed)))
    assert all(isinstance(r, ShardRecord) for r in view.records.values()) and not view.corrupt
    assert view.records[DONE_SHARD].status is Status.DONE and view.records[DONE_SHARD].error_reasons == {"no_audio": 1}
    for shard_id, reason in FAILED_SHARDS.items():
        record = view.records[shard_id]
        assert record.status is Status.FAILED and record.reason is Reason(reason)
        assert record.failure is FailureKind.PERMANENT and record.error.startswith(f"{reason}: ")
    manifest = json.loads((pre_typed / "manifest.json").read_text())
    header = {k: v for k, v in manifest.items() if k not in ("totals", "shard_count", "shard_list", "compacted_at")}
    state = RunState.open(Storage(str(pre_typed)), header, output_settings())
    try:
        assert all(isinstance(r, ShardRecord) for r in state.records.values())
        pending = sorted(k for k in view.records if not state.done(k))
        assert pending == sorted(FAILED_SHARDS)  # the done shard is not run again; the failed ones are
        assert state.totals() == manifest["totals"]
    finally:
        state.close()  # compacts: the summary is written again from the loaded records


def test_older_records_loaded_and_written_again_are_the_same_bytes(pre_typed):
    from pipeline.runstate import RunState
    from pipeline.runstate.records import COMMITS, record_bytes
    from pipeline.storage import Storage

    commits = sorted((PRE_TYPED / COMMITS).glob("*.json"))
    assert len(commits) == 3
    for path in commits:
        assert record_bytes(ShardRecord.from_dict(json.loads(path.read_bytes()))) == path.read_bytes(), path.name
    manifest = json.loads((pre_typed / "manifest.json").read_text())
    header = {k: v for k, v in manifest.items() if k not in ("totals", "shard_count", "shard_list", "compacted_at")}
    RunState.open(Storage(str(pre_typed)), header, output_settings()).close()  # a resume's final summary
    for name in ("_run/shards.jsonl", "_run/digest.json"):
        assert (pre_typed / name).read_bytes() == (PRE_TYPED / name).read_bytes(), name
    rewritten = json.loads((pre_typed / "manifest.json").read_text())
    assert rewritten.pop("compacted_at") > manifest.pop("compacted_at") and rewritten == manifest


def test_actor_setup_reaches_the_codec_actors_constructor_under_the_names_it_was_given():
    import inspect

    from pipeline.actor.ray_actor import CodecActor
    from pipeline.driver import ActorSetup

    setup = ActorSetup(resolved="resolved", schema="schema", versions={"torch": "x"}, device={"name": "cpu"})
    init = inspect.signature(CodecActor.__ray_actor_class__.__init__)
    bound = init.bind("self", "config", "actor-0", *setup.args()).arguments
    assert {k: bound[k] for k in ("resolved", "schema", "versions", "device")} == vars(setup)
