"""The scheduler's failure policy on a real local Ray runtime, with scripted actors in place of codec actors.

Each shard's URL names how its actor behaves (`script:transient-2/name` fails transiently twice, then
succeeds); attempts are counted in files, so behaviour can span actors. The worker's side (which real
errors are transient) is tested end to end in test_failures.py.
"""

import json
import os
import time

import pyarrow as pa
import pytest

from pipeline.config import load_config
from pipeline.driver import ActorSetup, ActorStartFailed
from pipeline.driver.deadlines import Deadlines
from pipeline.driver.policy import Retries
from pipeline.telemetry.events import (ActorGivenUp, ActorLost, ActorSick, ActorStartFailure, ActorStartRetry, ActorsWaiting,
                             ShardRetry)
from pipeline.runstate import RunState, ShardRecord
from pipeline.driver import GuardTripped, Scheduler, actor_options, threads_to_lend
from pipeline.schema import column_lines, output_schema, schema_to_text
from pipeline.sources import Shard
from pipeline.storage import Storage
from tests.scripted_actor import ScriptedActor


def run(tmp_path, behaviours: dict, *overrides, events=None, start_plan=None):
    # scripted actors need next to no memory: reserve little, so the 2 CPUs alone decide how many run
    if start_plan is not None:
        os.makedirs(tmp_path / "out" / "script", exist_ok=True)
        (tmp_path / "out" / "script" / "start-plan.json").write_text(json.dumps(start_plan))
    config = load_config(None, ["source.kind=webdataset", "source.urls=[x.tar]", f"output.dir={tmp_path}/out",
                                "ray.retry_backoff_s=0.1", "ray.progress_interval_s=0.5",
                                "ray.memory_per_actor_gb=0.1", *overrides])
    storage = Storage(config.output.dir)
    schema = output_schema([])
    header = {"identity": {"test": True}, "codec": {}, "bandwidth": 2.0, "num_codebooks": 8, "frame_rate": 25.0,
              "codebook_size": 1024, "config": {}, "output_schema": schema_to_text(schema),
              "output_columns": column_lines(schema)}
    state = RunState.open(storage, header, config.output)
    shards = [Shard(name, f"script:{how}/{name}", "webdataset") for name, how in behaviours.items()]
    seen = events if events is not None else []
    scheduler = Scheduler(config, state, storage, shards, seen.append,
                          ActorSetup(None, pa.schema([]), {}), [], ScriptedActor)
    try:
        scheduler.run()
    finally:
        state.close()
    return {k: r for k, r in state.records.items()}, seen


def calls(tmp_path, shard_id) -> list[str]:
    return open(tmp_path / "out" / "script" / f"{shard_id}.log").read().split()


def test_transient_failures_are_retried_on_another_actor_and_permanent_ones_are_not(tmp_path, ray_local):
    records, events = run(tmp_path, {"a": "ok", "b": "ok", "flaky": "transient-2", "down": "transient-9",
                                     "broken": "permanent"}, "ray.max_attempts=3", "guard.min_shards=10",
                          "ray.max_consecutive_failures=10", "ray.retry_backoff_s=2")  # both actors up by the retries
    assert records["flaky"].status == "done" and records["flaky"].attempts == 3
    assert records["down"].status == "failed" and records["down"].attempts == 3
    assert records["down"].reason == "transient_io"
    assert records["broken"].status == "failed" and records["broken"].attempts == 1
    assert len(calls(tmp_path, "broken")) == 1  # a permanent failure is not tried again
    flaky = calls(tmp_path, "flaky")
    assert all(a.split(":")[0] != b.split(":")[0] for a, b in zip(flaky, flaky[1:])), flaky  # another actor each time
    assert [i.attempt for i in events if isinstance(i, ShardRetry) and i.shard == "flaky"] == [1, 2]


def test_unexpected_error_is_retried_once_then_fails_with_its_traceback(tmp_path, ray_local):
    records, _ = run(tmp_path, {"bug": "unexpected", "fine": "ok"})
    assert len(calls(tmp_path, "bug")) == 2 and records["bug"].status == "failed"
    errors = [json.loads(line) for line in open(tmp_path / "out" / "errors" / "bug.jsonl")]
    assert errors[0]["key"] is None and "ZeroDivisionError" in errors[0]["detail"]
    assert "scripted bug in bug" in errors[0]["detail"] and "_act" in errors[0]["detail"]  # the traceback's frames


def test_only_the_shard_that_kills_its_actor_is_charged(tmp_path, ray_local):
    records, events = run(tmp_path, {"poison": "kill", "neighbour": "slow-1.5"}, "ray.num_actors=1",
                          "ray.max_attempts=2", "guard.min_shards=10")
    lost = [i for i in events if isinstance(i, ActorLost)]
    assert sorted(lost[0].lost) == ["neighbour", "poison"] and lost[0].charged is None
    assert all(i.charged == "poison" for i in lost[1:]) and len(lost) == 3  # alone, it kills: charged twice
    assert records["neighbour"].status == "done" and records["neighbour"].attempts == 1
    assert records["poison"].status == "failed" and records["poison"].reason == "actor_lost"


def test_actor_failing_shards_in_a_row_is_replaced(tmp_path, ray_local):
    shards = {f"s{i}": "sick-actor" for i in range(8)}
    records, events = run(tmp_path, shards, "ray.num_actors=1", "ray.max_consecutive_failures=3", "ray.max_attempts=3")
    sick = [i for i in events if isinstance(i, ActorSick)]
    assert len(sick) == 1 and sick[0].failures == 3 and "cuda_error" in sick[0].last
    assert all(r.status == "done" for r in records.values()) and len(records) == 8


def test_hung_shard_is_bounded_by_its_time_limit(tmp_path, ray_local):
    start = time.time()
    records, events = run(tmp_path, {"stuck": "hang", "fine": "slow-0.5"}, "ray.num_actors=1",
                          "ray.shard_timeout_s=3", "ray.max_attempts=2", "guard.min_shards=10")
    assert time.time() - start < 60
    assert records["stuck"].status == "failed" and records["stuck"].reason == "timeout"
    assert records["fine"].status == "done" and records["fine"].attempts == 1
    assert [i.charged for i in events if isinstance(i, ActorLost)] == ["stuck", "stuck"]


def test_guard_stops_when_most_finished_shards_fail(tmp_path, ray_local):
    behaviours = {f"bad{i}": "permanent" for i in range(6)}
    behaviours.update(ok0="slow-2", ok1="slow-2")
    with pytest.raises(GuardTripped, match=r"of \d+ finished shards failed .* most common: corrupt_tar"):
        run(tmp_path, behaviours, "guard.min_shards=4", "guard.max_failed_shard_fraction=0.5")


def test_guard_counts_this_runs_outcomes_so_a_rerun_after_fixing_the_source_completes(tmp_path, ray_local):
    """Rerun after a guard-tripped run: the failed records of the run before are what this run redoes, not
    failures of its own; one still broken shard finishing first must not stop it."""
    broken = {f"bad{i}": "permanent" for i in range(5)}
    with pytest.raises(GuardTripped):
        run(tmp_path, {**broken, "ok": "slow-3"}, "guard.min_shards=4", "guard.max_failed_shard_fraction=0.5")
    fixed = {"bad0": "permanent", **{f"bad{i}": "slow-1" for i in range(1, 5)}, "ok": "slow-1"}
    records, _ = run(tmp_path, fixed, "guard.min_shards=4", "guard.max_failed_shard_fraction=0.5")
    assert records["bad0"].status == "failed" and records["bad0"].reason == "corrupt_tar"
    assert all(records[k].status == "done" for k in fixed if k != "bad0"), records


def test_actor_killed_while_loading_is_counted_backed_off_and_then_given_up(tmp_path, ray_local, monkeypatch):
    """A host OOM kill during model load raises no Python error: each one is counted and waits out a backoff;
    the run goes on once an actor comes up, and stops saying why when none ever does."""
    events: list = []
    records, _ = run(tmp_path / "a", {"a": "ok", "b": "ok"}, "ray.num_actors=1", events=events,
                     start_plan={"lost": 2})
    retries = [i for i in events if isinstance(i, ActorStartRetry)]
    assert [(i.cause, i.count) for i in retries] == [("lost", 1), ("lost", 2)]
    assert all(i.delay > 0 for i in retries) and not [i for i in events if isinstance(i, ActorStartFailure)]
    assert all(r.status == "done" for r in records.values()) and len(records) == 2

    monkeypatch.setattr("pipeline.driver.pool.START_RETRIES", 2)
    events = []
    with pytest.raises(ActorStartFailed, match="died while loading with no Python error"):
        run(tmp_path / "b", {"a": "ok"}, "ray.num_actors=1", events=events, start_plan={"lost": 99})
    assert [i.cause for i in events if isinstance(i, ActorGivenUp)] == ["lost"]


def test_transient_start_errors_do_not_count_toward_the_two_strike_stop(tmp_path, ray_local):
    """Three 429s while loading and one real constructor error: only the latter counts, once, so the run goes on."""
    events: list = []
    records, _ = run(tmp_path, {"a": "ok", "b": "ok"}, "ray.num_actors=1", events=events,
                     start_plan={"transient": 3, "permanent": 1})
    assert [i.cause for i in events if isinstance(i, ActorStartRetry)] == ["transient"] * 3
    failed = [i for i in events if isinstance(i, ActorStartFailure)]
    assert len(failed) == 1 and failed[0].replacing and "cannot load" in failed[0].error
    assert all(r.status == "done" for r in records.values()) and len(records) == 2


def test_actor_on_another_device_gives_up_its_place_and_the_run_goes_on(tmp_path, ray_local):
    """Another GPU model would change codes: that actor's place is given up at once, with why, and the run
    finishes on the other actor instead of stopping after its replacement fails the same way."""
    events: list = []
    records, _ = run(tmp_path, {"a": "ok", "b": "ok"}, "ray.num_actors=2", events=events,
                     start_plan={"wrong_device": 1})
    given_up = [i for i in events if isinstance(i, ActorGivenUp)]
    assert [(i.cause, i.left) for i in given_up] == [("wrong_device", 1)]
    assert "another device than the run's" in given_up[0].why and "device differs" in given_up[0].error
    assert not [i for i in events if isinstance(i, ActorStartFailure)]
    assert all(r.status == "done" for r in records.values()) and len(records) == 2


def test_shard_whose_actor_never_answers_is_timed_out_from_dispatch(tmp_path, ray_local):
    """progress() hangs too, so the actor never says it started the shard: the clock runs from dispatch. (Left
    alone the shard would end done after 30 s.)"""
    records, events = run(tmp_path, {"mute": "mute-30"}, "ray.num_actors=1", "ray.shard_timeout_s=2",
                          "ray.max_attempts=1", "guard.min_shards=10")
    assert records["mute"].status == "failed" and records["mute"].reason == "timeout"
    assert [i.charged for i in events if isinstance(i, ActorLost)] == ["mute"]


def test_retries_come_due_in_not_before_order_and_skip_only_the_actor_they_failed_on():
    retries, shards = Retries(), {name: Shard(name, name, "webdataset") for name in "abcd"}
    for name, not_before in (("a", 50.0), ("b", 10.0), ("c", 30.0), ("d", 20.0)):
        retries.push(shards[name], not_before)
    assert retries.next_due_in(0.0) == 10.0 and retries.take(5.0, busy=False) == (None, False)
    taken = [retries.take(100.0, busy=False)[0].id for _ in range(4)]
    assert taken == ["b", "d", "c", "a"] and len(retries) == 0
    retries.push(shards["a"], 1.0)
    retries.push(shards["b"], 2.0)
    assert retries.take(3.0, busy=False, skip=lambda s: s.id == "a")[0].id == "b"  # "a" failed on this actor
    assert retries.take(3.0, busy=False)[0].id == "a"  # another actor takes it
    retries.push(shards["c"], 1.0, suspect=True)
    assert retries.take(3.0, busy=True) == (None, True)  # a suspect waits for an empty actor, which takes it alone
    assert retries.take(3.0, busy=False)[0].id == "c"


def test_time_limit_follows_the_audio_a_shard_has_encoded_at_the_measured_speed():
    """Without a size (a brace-expanded URL) a shard of hours of audio on CPU must not fail at the floor while it
    makes progress; speeds come from done shards."""
    config = load_config(None, ["source.kind=webdataset", "source.urls=[x.tar]", "output.dir=x"]).ray
    deadlines, floor = Deadlines(config), config.shard_timeout_min_s
    for i in range(3):
        shard = Shard(f"done{i}", "u", "webdataset")
        deadlines.dispatch(shard.id, 0.0)
        deadlines.finish(shard, ShardRecord(shard.id, "u", "done", audio_seconds=600.0, seconds=60.0))
    long = Shard("long", "u", "webdataset")
    deadlines.dispatch(long.id, 0.0)
    assert deadlines.limit(long) == floor
    deadlines.progress({"long": 10 * floor})  # encoded at the measured 10 audio seconds per second: on time
    assert deadlines.limit(long) == 4 * floor and deadlines.overdue(long, 2 * floor) is None
    assert deadlines.overdue(long, 5 * floor) == 4 * floor


def test_brace_expanded_http_tars_are_sized_for_time_limits_and_largest_first(tmp_path):
    from pipeline.sources import largest_first
    from pipeline.sources.webdataset import list_tar_shards
    from tests.httpserver import TroubleServer

    served = tmp_path / "served"
    served.mkdir()
    for i, size in enumerate((3000, 9000, 5000)):
        (served / f"t-{i}.tar").write_bytes(b"\0" * size)
    with TroubleServer(str(served)) as server:
        shards = list_tar_shards([f"{server.url}/t-{{0..3}}.tar"])  # t-3.tar is missing: its own shard's error
    assert [s.size for s in shards] == [3000, 9000, 5000, 0]
    assert [s.url.rsplit("/", 1)[1] for s in largest_first(shards)] == ["t-1.tar", "t-2.tar", "t-0.tar", "t-3.tar"]


def test_actors_waiting_for_resources_are_reported_while_the_others_work(tmp_path, ray_local):
    # enough work (20 x 0.5 s on 2 actors) for warnings after both startable actors are up, however slow they start
    behaviours = {f"s{i}": "slow-0.5" for i in range(20)}
    records, events = run(tmp_path, behaviours, "ray.num_actors=3", "ray.pending_actor_warn_s=1")
    waiting = [i for i in events if isinstance(i, ActorsWaiting)]  # 2 CPUs, 3 one-CPU actors: one cannot start
    assert any(w.count == 1 and w.running == 2 for w in waiting), waiting
    assert all(r.status == "done" for r in records.values()) and len(records) == 20


def test_idle_actors_cores_go_to_the_busy_one_in_the_tail(tmp_path, ray_local):
    """Two one-CPU actors, one long shard and short ones: once the short ones are done, the actor still
    encoding gets the idle actor's core instead of leaving it idle until the job ends."""
    records, events = run(tmp_path, {"long": "slow-4", "short0": "slow-0.2", "short1": "slow-0.2"},
                          "ray.num_actors=2", "ray.cpus_per_actor=1")
    assert all(r.status == "done" for r in records.values())
    assert records["long"].threads == 2, records
    assert records["short0"].threads == 1 and records["short1"].threads == 1  # nothing lent while both were busy


def test_last_shards_are_not_queued_behind_a_busy_actor(tmp_path, ray_local):
    """Three shards on two actors: the third goes to whichever actor frees first, not as a second shard
    queued on an actor that still encodes its first (which leaves the other actor idle)."""
    records, _ = run(tmp_path, {"a-long": "slow-3", "b-short": "slow-0.3", "c-next": "slow-0.3"}, "ray.num_actors=2")
    long_worker = records["a-long"].worker
    assert [records[k].worker != long_worker for k in ("b-short", "c-next")] == [True, True], records


def test_fewer_shards_than_actor_places_get_fewer_bigger_actors():
    """On CPU, one shard on a 16-core node gets one 16-core actor, not one 1-core actor and 15 idle cores; the
    cores per actor never exceed what lets every shard's actor fit on the nodes."""
    config = load_config(None, ["source.kind=webdataset", "source.urls=[x.tar]", "output.dir=/tmp/x",
                                "ray.memory_per_actor_gb=1", "codec.device=cpu"])
    node = {"CPU": 16, "memory": 64 * 2**30}
    assert actor_options(config, [node], pending=1) == (1, {"num_gpus": 0, "num_cpus": 16, "memory": 2**30})
    count, options = actor_options(config, [node, node], pending=3)
    assert (count, options["num_cpus"]) == (3, 8)  # 2 + 1 actors of 8 cores fit on two 16-core nodes; of 9, two
    assert actor_options(config, [node], pending=100)[1]["num_cpus"] == 1  # enough shards: one core each
    assert actor_options(config, [node], pending=100)[0] == 16


def test_threads_are_lent_within_a_node_only():
    # two nodes: node a has one busy and one idle actor, node b one busy actor
    assert threads_to_lend([("a", 1, True), ("a", 1, False), ("b", 1, True)]) == [2, 1, 1]
    assert threads_to_lend([("a", 2, True), ("a", 2, True), ("a", 2, False)]) == [3, 3, 2]
    assert threads_to_lend([("a", 1, False), ("a", 1, False)]) == [1, 1]
