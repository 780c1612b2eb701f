"""The CLI's progress: one live line on a terminal; without one (a Ray job's log) a plain line at most every
output.progress_interval_s."""

import io

from pipeline.telemetry import events
from pipeline.telemetry.events import Event, Heartbeat, RunStarted, ShardDone
from pipeline.run import LINES, Progress
from pipeline.runstate import ShardRecord


def feed(progress: Progress) -> None:
    progress(RunStarted(shards=4, pending=4, skipped=0))
    for i in range(3):
        record = ShardRecord(f"s{i}", f"/in/s{i}.tar", "done", rows=5, audio_seconds=1800.0)
        progress(ShardDone(record, in_flight=1))
    progress(Heartbeat(in_flight=1, audio_seconds=60.0, samples=2))


def test_without_a_terminal_progress_is_one_plain_line_per_interval_and_failures_are_said():
    stream = io.StringIO()
    progress = Progress(stream, tty=False, interval_s=3600)
    feed(progress)
    progress(ShardDone(ShardRecord("bad", "/in/bad.tar", "failed", reason="corrupt_tar", detail="cut"), in_flight=0))
    lines = stream.getvalue().splitlines()
    assert lines[1] == "[1/4 shards, 1 in flight] 0.500 h audio done, ~1.500 h to do | " + lines[1].split("| ", 1)[1]
    assert [line for line in lines if "h audio done" in line] == [lines[1]]  # the rest within the interval: silent
    assert lines[-1] == "[4/4] bad: FAILED (corrupt_tar: cut)" and "\r" not in stream.getvalue()


def test_on_a_terminal_one_live_line_is_redrawn_and_gives_way_to_a_line_said():
    stream = io.StringIO()
    progress = Progress(stream, tty=True, interval_s=3600)
    feed(progress)
    progress.say("codec actor 0 lost")
    text = stream.getvalue()
    assert text.count("\r\x1b[K[") == 4  # three shards and a heartbeat: the same line, redrawn
    assert "[3/4 shards, 1 in flight] 1.517 h audio done, ~0.500 h to do" in text and "ETA" in text
    assert text.endswith("\r\x1b[Kcodec actor 0 lost\n") and text.count("\n") == 2  # the start line, the said line


def test_every_event_type_has_a_progress_handler_so_none_is_silently_dropped():
    kinds = {v for v in vars(events).values() if isinstance(v, type) and issubclass(v, Event) and v is not Event}
    handled = set(Progress.__dict__["on"].dispatcher.registry) | set(LINES)
    assert len(kinds) == 18 and kinds <= handled, kinds - handled
