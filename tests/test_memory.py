"""Actors stream: their peak memory grows neither with the size of the dataset nor with the length of a file."""

import io
import json
import multiprocessing
import os
import pathlib
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import soundfile

from pipeline.driver.protocol import SHARDS_IN_FLIGHT
from pipeline.telemetry.events import ShardDone
from pipeline.run import run_job
from pipeline.sources import list_shards
from pipeline.actor.processor import ShardProcessor
from demo.synth import SynthSample, encode_audio, synth_clip, write_long_audio, write_tar
from tests.test_pipeline import config_for


SHARDS, CLIPS, CLIP_S = 12, 12, 25.0  # 60 min of 48 kHz stereo WAV: 12 tars of 58 MB, 29 MB per shard decoded at 24 kHz
GROWTH_MB = 60  # under what keeping each shard's decoded audio would add (6 shards x 29 MB between the two ends)


def process_all(config) -> list:
    """Every shard of the source through one actor's shard processor, two at a time as the driver gives them."""
    processor = ShardProcessor(config, cpus=1)
    with ThreadPoolExecutor(SHARDS_IN_FLIGHT) as pool:
        return list(pool.map(processor.process, list_shards(config.source).shards))


def test_actor_memory_does_not_grow_while_hundreds_of_mb_of_audio_stream_through(tmp_path):
    """The actor's shard processor reads 700 MB of WAV (350 MB of 24 kHz samples) in 12 shards, two at a time
    as an actor does; its resident memory when the last shards end is within GROWTH_MB of the first ones', so
    nothing a shard holds outlives it. Resident memory once the freed heap is handed back, not the peak: glibc
    keeps freed blocks (its mmap threshold rises to the largest block freed), so a peak hides a leak that
    fits in memory the process already holds."""
    rng = np.random.default_rng(7)
    # every clip distinct (its own gain on one of a few synthesised ones): synthesising a clip costs several times
    # what writing its WAV does, and a decoded clip takes the same memory whatever it sounds like
    bases = [synth_clip(rng, CLIP_S, 48000, 2) for _ in range(4)]
    for i in range(SHARDS):
        write_tar(str(tmp_path / f"in/s-{i:02d}.tar"), [
            SynthSample(f"s{i}_{j:02d}", {"wav": encode_audio(bases[j % 4] * (1 - (i * CLIPS + j) / 400), 48000, "wav")},
                        CLIP_S)
            for j in range(CLIPS)])
    streamed_mb = sum(f.stat().st_size for f in (tmp_path / "in").iterdir()) / 2**20
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/s-*.tar")]})
    # in a fresh process, as an actor is: this one's memory holds whatever earlier tests left in it
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        results = fresh.submit(process_all, config).result()
    assert [r.status for r in results] == ["done"] * SHARDS and sum(r.rows for r in results) == SHARDS * CLIPS
    after = [r.rss_after_mb for r in results]
    assert streamed_mb > 600 and min(after) > 100  # the audio did stream; the codec and torch are in the measurement
    assert min(after[-3:]) - max(after[:3]) < GROWTH_MB, [round(a) for a in after]


RESERVED_GB = 2.0  # the actor's Ray memory: less than a whole 30 min file decodes to on top of the model


def peak_rss_for_one_file(tmp_path, minutes: float) -> float:
    """The actor's peak RSS for a shard holding one `minutes`-long 48 kHz stereo FLAC."""
    flac = tmp_path / f"long-{minutes:g}.flac"
    write_long_audio(str(flac), minutes * 60, 48000, 2, "flac", seed=int(minutes))
    tar = tmp_path / f"long-{minutes:g}/s.tar"
    write_tar(str(tar), [SynthSample(f"long{minutes:g}", {"flac": pathlib.Path(flac)}, minutes * 60)])
    flac.unlink()
    # 30 s windows (2 s of context) keep the encode cost near the audio's and make the window's share of the
    # peak small, so growth with the file's length would stand out
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tar)]}, f"output.dir={tmp_path}/out-{minutes:g}",
                        "ray.num_actors=1", f"ray.memory_per_actor_gb={RESERVED_GB}",
                        "codec.window_s=30", "codec.context_s=2")
    results = []
    run_job(config, lambda event: results.append(event.result) if isinstance(event, ShardDone) else None)
    (result,) = results
    assert result.status == "done" and result.rows == 1 and abs(result.audio_seconds - minutes * 60) < 1
    return result.peak_rss_mb


def test_long_file_memory_is_bounded_by_the_window_not_the_length(tmp_path, ray_local):
    """The 30 min file's bytes and samples are six times the 5 min one's (itself over pipeline.audio.decode's
    BLOCKED_ABOVE_S, so decoded in blocks as well); read, decoded, resampled and encoded a block and a window at a
    time, neither shows in the actor's peak."""
    short = peak_rss_for_one_file(tmp_path, 5)
    long = peak_rss_for_one_file(tmp_path, 30)
    assert long - short < 100, (short, long)
    assert long < RESERVED_GB * 1024, (short, long)


def flac_declaring(seconds: float, rate: int = 8000) -> bytes:
    """A 1 s FLAC whose header (STREAMINFO's total samples) declares `seconds`: what a reader that trusts
    the header sees without decoding, where decoding would find 1 s."""
    data = bytearray(encode_audio(synth_clip(np.random.default_rng(0), 1.0, rate), rate, "flac"))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first, at byte 8
    fields = int.from_bytes(data[18:26], "big")  # rate (20 bits), channels (3), bits (5), total samples (36)
    fields = (fields >> 36 << 36) | int(seconds * rate)
    data[18:26] = fields.to_bytes(8, "big")
    with soundfile.SoundFile(io.BytesIO(bytes(data))) as f:
        assert f.frames == int(seconds * rate)
    return bytes(data)


def test_a_file_over_max_seconds_is_a_too_long_record_read_from_its_header(tmp_path, ray_local):
    rng = np.random.default_rng(1)
    samples = [
        SynthSample("declares_5h", {"flac": flac_declaring(5 * 3600)}, 1.0),
        SynthSample("fine", {"wav": encode_audio(synth_clip(rng, 1.0, 16000), 16000, "wav")}, 1.0),
    ]
    write_tar(str(tmp_path / "in/s.tar"), samples)
    config = config_for(tmp_path, {"kind": "webdataset", "urls": [str(tmp_path / "in/s.tar")]},
                        "audio.max_seconds=14400")
    assert run_job(config).status == "complete"
    (errors,) = [tmp_path / "out/errors" / name for name in os.listdir(tmp_path / "out/errors")]
    records = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [(r["key"], r["reason"]) for r in records] == [("declares_5h", "too_long")]
    assert "18000 s > audio.max_seconds=14400" in records[0]["detail"] and "not decoded" in records[0]["detail"]


HF_CELLS, HF_CELL_MB = 8, 72  # one row group of 576 MB, each cell over the spill threshold


def test_hf_parquet_row_group_of_large_audio_cells_is_read_in_a_few_cells_memory_not_the_row_groups(tmp_path):
    """A Parquet file as `datasets` writes an Audio column, its 8 cells of 72 MB in one row group, read by the HF
    reader in a fresh process: the reader's peak over its loaded RSS is a few cells (pyarrow reads a page,
    decompresses it and copies the value out), however many the row group holds, so less than the row group.
    Reading the row group whole (pre-buffered column chunks), or 64 rows as Python objects, costs the row group
    and more (jobs/bench_memory.py --hf-cells prints the peak in cells)."""
    from jobs.bench_memory import read_hf_cells, write_hf_cells

    path = str(tmp_path / "cells.parquet")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        fresh.submit(write_hf_cells, path, HF_CELLS, HF_CELL_MB).result()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        read = fresh.submit(read_hf_cells, path).result()
    assert read["row_groups"] == 1 and read["cell_mb"] == [HF_CELL_MB] * HF_CELLS and read["spilled"]
    grew = read["peak_mb"] - read["loaded_mb"]
    assert grew < HF_CELLS * HF_CELL_MB, f"{grew:.0f} MB over the loaded reader for cells of {HF_CELL_MB} MB"
