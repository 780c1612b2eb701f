"""CLI: `python -m pipeline.run CONFIG [key=value ...]` runs (or resumes) a tokenization job.

Exit status: 0 complete, 1 incomplete (failed shards; rerun to retry them), 2 bad config,
3 stopped: by the failure guard, changed settings or an older output, codec actors that cannot start, or a
write to output.dir that failed past output.write_attempts (rerun to go on);
4 output.dir is in use by another run (or this run's lease was taken over, or could not be renewed in time).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from datetime import timedelta

from .config import ConfigError, load_config
from .actor.side import CodecActorSide
from .driver.job import JobSummary, drive
from .driver import ActorStartFailed, GuardTripped
from .telemetry.events import (ActorGivenUp, ActorLost, ActorSick, ActorsStarted, ActorStartFailure, ActorStartRetry,
                     ActorsWaiting, CodecResolved, CorruptCommits, Event, Heartbeat, LeaseTakenOver, MetricsUnavailable,
                     OutputCleared, RunStarted, ShardDone, ShardRetry, StoreRetry, VersionsAccepted)
from .failures import FailureKind
from .runstate import DONE, IdentityChanged, LeaseHeld, LeaseLost, OutputError, StoreWriteFailed
from .telemetry.logs import DriverLog
from .storage import Storage
from .urls import redact_text


def run_job(config, on_event=lambda event: None) -> JobSummary:
    """A run of this package: the driver scheduling shards on codec actors (the one place the two sides meet)."""
    return drive(config, CodecActorSide(), on_event)


def _hms(seconds: float) -> str:
    return str(timedelta(seconds=int(max(0, seconds))))


class Progress:
    """Turns job events into progress lines on stderr (and the driver's log in the output, once it is open): a
    handler per event type (`on`); the events that are one line each are in LINES."""

    def __init__(self, stream=None, tty: bool | None = None, interval_s: float = 60.0):
        self.stream = stream  # None: whatever sys.stderr is when a line is written
        self.tty = tty  # None: whether the stream is a terminal
        self.interval_s = interval_s  # output.progress_interval_s: without a terminal, a progress line at most this often
        self.log: DriverLog | None = None
        self.started = time.time()
        self.total = self.done = 0
        self.audio = 0.0
        self._live = False  # a live progress line is on the terminal (a line said clears it first)
        self._last_line = float("-inf")

    def __call__(self, event: Event) -> None:
        self.on(event)

    @functools.singledispatchmethod
    def on(self, event: Event) -> None:
        """An event that is one line (LINES, by its type), or none."""
        line = LINES.get(type(event))
        if line is not None:
            self.say(line(event))

    @on.register(CodecResolved)
    def _codec(self, event: CodecResolved) -> None:
        for line in codec_lines(event.codec):
            self.say(line)

    @on.register(RunStarted)
    def _start(self, event: RunStarted) -> None:
        self.total = event.pending
        self.say(f"{event.shards} shards: {event.skipped} already done, {event.pending} to run")

    @on.register(ShardDone)
    def _shard_done(self, event: ShardDone) -> None:
        result = event.result
        self.done += 1
        self.audio += result.audio_seconds
        if result.status != DONE:
            self.say(f"[{self.done}/{self.total}] {result.shard_id}: FAILED ({result.error})")
        self.show_progress(event.in_flight)

    @on.register(Heartbeat)
    def _heartbeat(self, event: Heartbeat) -> None:
        self.show_progress(event.in_flight, event.audio_seconds)

    def progress_line(self, in_flight: int = 0, under_way_s: float = 0.0) -> str:
        """Shards and audio hours done and (at this run's mean audio per shard) to do, throughput and ETA."""
        elapsed = max(time.time() - self.started, 1e-9)
        audio = self.audio + under_way_s
        left = self.total - self.done
        to_do = f", ~{self.audio / self.done * left / 3600:.3f} h to do" if self.done else ""
        eta = _hms(elapsed / self.done * left) if self.done else "n/a"
        return (f"[{self.done}/{self.total} shards, {in_flight} in flight] {audio / 3600:.3f} h audio done{to_do} | "
                f"{audio / elapsed:.1f}x realtime | ETA {eta}")

    def show_progress(self, in_flight: int = 0, under_way_s: float = 0.0) -> None:
        """On a terminal, the live line redrawn; elsewhere (a Ray job's log) a plain line at most every interval_s.
        The driver's log gets the plain line at that pace either way."""
        line, now = redact_text(self.progress_line(in_flight, under_way_s)), time.time()
        stream = self.stream or sys.stderr
        tty = self.tty if self.tty is not None else stream.isatty()
        if tty:
            stream.write("\r\x1b[K" + line)
            stream.flush()
            self._live = True
        if now - self._last_line < self.interval_s:
            return
        self._last_line = now
        if not tty:
            print(line, file=stream, flush=True)
        if self.log is not None:
            self.log.write(line)

    def say(self, line: str) -> None:
        """Every line the driver prints, with URLs' secrets removed (events quote URLs and clients' messages)."""
        stream = self.stream or sys.stderr
        if self._live:  # the live progress line gives way; the next progress redraws it
            stream.write("\r\x1b[K")
            self._live = False
        print(redact_text(line), file=stream, flush=True)
        if self.log is not None:
            self.log.write(line)


def _actor_lost(e: ActorLost) -> str:
    why = "over its time limit" if e.failure == FailureKind.TIMEOUT else "lost"
    charged = f"charged to {e.charged}" if e.charged else "its shards run again, each alone, uncharged"
    return (f"codec actor {e.actor} {why} holding {', '.join(e.lost) or 'no shard'}; replaced, {charged} "
            f"({e.error[:160]})")


def _actor_start_failure(e: ActorStartFailure) -> str:
    if e.replacing:
        return f"codec actor {e.actor} failed to start; replacing it:\n{_indent(e.error)}"
    return f"codec actor {e.actor} failed to start; its replacement failed the same way: stopping"


def _actor_start_retry(e: ActorStartRetry) -> str:
    why = ("died while loading with no Python error (out of host memory?)" if e.cause == "lost" else
           "failed to start for a transient cause")
    return (f"codec actor {e.actor} {why}, {e.count} time(s) in a row; starting it again in {e.delay:.0f} s:\n"
            f"{_indent(e.error)}")


# the events that are one line for people, by type
LINES = {
    ActorsStarted: lambda e: (f"started {e.count} codec actor(s) ({e.options['num_gpus']} GPU, "
                              f"{e.options['num_cpus']} CPU each)"),
    ActorLost: _actor_lost,
    ShardRetry: lambda e: (f"shard {e.shard}: {e.failure} failure, retry {e.attempt} in {e.delay:.0f} s on another "
                           f"actor ({e.reason[:200]})"),
    ActorSick: lambda e: f"codec actor {e.actor} failed {e.failures} shards in a row; replacing it (last: {e.last})",
    ActorsWaiting: lambda e: (f"{e.count} codec actor(s) have waited {e.seconds:.0f} s for resources ({e.options} "
                              f"each); {e.running} running take the shards meanwhile; available now: {e.available}"),
    StoreRetry: lambda e: (f"output.dir: {e.what} failed (try {e.attempt}), trying again in {e.delay:.1f} s "
                           f"({e.error})"),
    MetricsUnavailable: lambda e: f"warning: metrics: {e.why}",
    LeaseTakenOver: lambda e: f"output.dir: taking over the lease ({e.note})",
    CorruptCommits: lambda e: (f"{len(e.corrupt)} commit record(s) cannot be trusted; their shards run again: "
                               + "; ".join(list(e.corrupt.values())[:3])),
    VersionsAccepted: lambda e: ("output.accept_new_versions: going on after " + "; ".join(e.changes)
                                 + " (recorded in manifest.json)"),
    OutputCleared: lambda e: f"output.overwrite: cleared {e.output} (run state, then data and errors)",
    ActorStartFailure: _actor_start_failure,
    ActorStartRetry: _actor_start_retry,
    ActorGivenUp: lambda e: f"{e.why}: given up; {e.left} codec actor place(s) go on",
}


def _indent(text: str, lines: int = 12) -> str:
    kept = text.splitlines()
    kept = kept[:2] + (["..."] if len(kept) > lines else []) + kept[max(2, len(kept) - lines + 2):]
    return "\n".join("    " + line for line in kept)


def codec_lines(codec) -> list[str]:
    """The loaded codec's facts, printed at start."""
    r = codec.resolved
    bandwidths = ", ".join(f"{b:g} kbps -> {n}" for b, n in r.codebooks_per_bandwidth.items())
    lines = [f"codec: {r.origin}",
             f"codec: {r.sample_rate} Hz, hop {r.hop_length} ({r.frame_rate:g} frames/s), "
             f"{r.codebook_size} codes per codebook; codebooks per bandwidth: {bandwidths}",
             f"codec: convention {codec.convention} ({codec.convention_meaning})"]
    return lines + [f"codec: note: {note}" for note in r.notes]


def format_summary(summary, before_job_s: float | None = None) -> str:
    t = summary.totals
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(t["error_reasons"].items(), key=lambda kv: -kv[1])) or "none"
    efficiency = f"{t['padding_efficiency']:.3f}" if t["padding_efficiency"] else "n/a"
    busy = ("" if summary.encoder_busy_share is None else
            f"; actors encoding {summary.encoder_busy_share:.1%} of their time (the rest: reading, decoding, writing)")
    return "\n".join([
        f"status: {summary.status.upper()}" + ("" if summary.status == "complete" else " (rerun the same command to retry failed shards)"),
        f"shards: {t['shards_done']} done, {t['shards_failed']} failed, {summary.shards_skipped} skipped as already done"
        + ("".join(f"; {k}: {v}" for k, v in t["shard_error_reasons"].items()))
        + f"; {t.get('read_retries', 0)} remote reads retried where they failed",
        f"samples: {t['samples_read']} read, {t['rows']} encoded, {t['errors']} errors ({reasons})",
        f"audio: {t['audio_seconds'] / 3600:.3f} h in total; this run {summary.run_audio_seconds / 3600:.3f} h in "
        f"{_hms(summary.wall_seconds)} ({summary.run_audio_seconds / max(summary.wall_seconds, 1e-9):.1f}x realtime)",
        f"tokens: {t['tokens']} ({t['frames']} frames), padding efficiency {efficiency}{busy}",
    ] + _loudness_lines(summary) + [
        f"output: {summary.output_dir}",
    ] + ([startup_line(summary.startup, before_job_s)] if summary.shards_run else [])
      + [f"actor start failure (replaced):\n{_indent(message)}" for message in summary.actor_start_failures]
      + _failed_lines(summary.failed_shards))


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), so start-up counts from the command, imports included."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def startup_line(startup: dict | None, before_job_s: float | None = None) -> str:
    if not startup:
        return "start: no batch was encoded"
    s = startup
    command = ("" if before_job_s is None else
               f"{before_job_s + s['to_first_batch_s']:.1f} s after the command (interpreter and imports {before_job_s:.1f} s), ")
    return (f"start: first batch encoded {command}{s['to_first_batch_s']:.1f} s after the job started: listing, codec, device probe and run state "
            f"{s['prepare_s']:.1f} s, Ray start {s['ray_start_s']:.1f} s, actor process {s['actor_process_s']:.1f} s, "
            f"checkpoint load {s['checkpoint_load_s']:.1f} s" + (f", calibration {s['calibrate_s']:.1f} s" if s["calibrate_s"] >= 0.05 else "")
            + f", first shard read {s['first_read_s']:.1f} s ({s['ray_up_to_first_batch_s']:.1f} s from actor creation)"
            + (f"; {calibration_text(s['calibration'])}" if s.get("calibration") else ""))


def calibration_text(table: list[dict]) -> str:
    """The batch policies an actor measured at start-up: speed, peak device memory, kept or why not."""
    rows = []
    for row in table:
        p = row["policy"]
        speed = "" if row["audio_s_per_s"] is None else f" {row['audio_s_per_s']:.0f} audio-s/s"
        peak = "" if row.get("peak_memory_mb") is None else f", peak {row['peak_memory_mb']} MB"
        rows.append(f"{p['max_batch_seconds']:g} s x {p['max_clips']} clips{speed}{peak} "
                    f"({'kept' if row.get('kept') else row.get('note', '')})")
    return "calibration: " + "; ".join(rows)


def _loudness_lines(summary) -> list[str]:
    if summary.loudness_lufs is None:
        return []
    t = summary.totals
    return [f"loudness: normalised to {summary.loudness_lufs:g} LUFS; {t.get('loudness_clipped', 0)} clips past full "
            f"scale after the gain (not limited), {t.get('loudness_unmeasured', 0)} too short (< 400 ms) or too quiet "
            "to measure (left as they were)"]


def _failed_lines(failed: list, shown: int = 20) -> list[str]:
    lines = [f"failed shard {shard}: {reason[:200]}" for shard, reason in failed[:shown]]
    if len(failed) > shown:
        lines.append(f"... and {len(failed) - shown} more failed shards (see errors/ and _run/commits/*.failed.json)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="OmegaConf dotlist, e.g. codec.bandwidth=1.0")
    args = parser.parse_args(argv)
    progress = Progress()
    try:
        config = load_config(args.config, args.overrides)
        progress.interval_s = config.output.progress_interval_s
        progress.log = open_driver_log(config.output.dir, progress.say)
        if config.codec.model.startswith("random:"):
            progress.say(f"NOTE: codec.model={config.codec.model} has random weights: the codes are meaningless "
                         "(demo/benchmark only)")
        before_job_s = process_age()
        summary = run_job(config, progress)
        progress.say(format_summary(summary, before_job_s))
        return 0 if summary.status == "complete" else 1
    except ConfigError as error:
        progress.say(f"error: {error}")
        return 2
    except ActorStartFailed as error:
        progress.say(f"error: codec actors cannot start, so nothing can run; the constructor says:\n{_indent(str(error), 40)}")
        return 3
    except (GuardTripped, IdentityChanged, OutputError, StoreWriteFailed) as error:
        progress.say(f"error: {error}")
        return 3
    except (LeaseHeld, LeaseLost) as error:
        progress.say(f"error: {error}")
        return 4
    finally:
        close_driver_log(progress.log)


def open_driver_log(output_dir: str, warn) -> DriverLog | None:
    """The driver's lines, and its process's warnings, in `_run/logs/` of the output as the run goes."""
    try:
        storage = Storage(output_dir)
    except Exception:
        return None  # the run itself says what is wrong with output.dir
    log = DriverLog(storage, on_error=lambda why: warn(f"warning: {why}"))
    logging.getLogger().addHandler(log)
    return log


def close_driver_log(log: DriverLog | None) -> None:
    if log is not None:
        logging.getLogger().removeHandler(log)
        log.close()


if __name__ == "__main__":
    sys.exit(main())
