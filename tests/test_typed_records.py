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
    older = ShardRecord.from_dict({"shard_id": "o", "source": "x", "status": "failed", "reason": "since_renamed"})
    assert older.reason == "since_renamed"  # a reason an older version wrote is kept as it was
