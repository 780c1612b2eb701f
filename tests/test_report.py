"""The report (figures, players) and the fidelity audit: metrics on known pairs, and the CLI on a real output."""

import dataclasses
import json
import os
import re
from collections import Counter

import numpy as np
import pytest
import soundfile

from pipeline.audio.decode import decode_bytes, to_model_audio
from pipeline.reading import report as report_module
from pipeline.reading.fidelity import mel_distance_db, si_snr_db
from pipeline.reading.inspect import main as inspect_main
from pipeline.reading.stats import collect
from pipeline.runstate import ShardRecord
from demo.synth import synth_clip
from tests.corpus import mixed_tar
from tests.test_pipeline import config_for

RATE = 24000


def speech_like(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    return synth_clip(np.random.default_rng(seed), seconds, RATE)[:, 0].astype(np.float64)


def test_identical_and_scaled_audio_score_as_identical_and_the_gain_in_mel_db():
    ref = speech_like()
    assert si_snr_db(ref, ref) == float("inf") and mel_distance_db(ref, ref, RATE) == 0.0
    for gain in (0.5, 2.0, -1.0):
        assert si_snr_db(ref, gain * ref) == float("inf")  # scale-invariant, sign included
        # a power mel scales by gain^2: 10 log10(g^2) = 20 log10|g| dB in every bin
        assert mel_distance_db(ref, gain * ref, RATE) == pytest.approx(abs(20 * np.log10(abs(gain))), abs=1e-9)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0, 30.0])
def test_si_snr_recovers_the_level_of_injected_noise(snr_db):
    ref = speech_like(seed=1)
    noise = np.random.default_rng(2).standard_normal(ref.size)
    centred = ref - ref.mean()
    noise *= np.sqrt(np.dot(centred, centred) / np.dot(noise, noise) / 10 ** (snr_db / 10))
    assert si_snr_db(ref, ref + noise) == pytest.approx(snr_db, abs=0.2)
    # a gain on top changes nothing
    assert si_snr_db(ref, 3.0 * (ref + noise)) == pytest.approx(si_snr_db(ref, ref + noise), abs=1e-9)


def test_mel_distance_grows_as_the_noise_gets_louder():
    ref = speech_like(seed=3)
    noise = np.random.default_rng(4).standard_normal(ref.size) * np.std(ref)
    distances = [mel_distance_db(ref, ref + level * noise, RATE) for level in (0.01, 0.1, 1.0)]
    assert 0 < distances[0] < distances[1] < distances[2]


def test_throughput_spreads_each_shards_audio_over_its_processing_time():
    records = {
        "a": {"status": "done", "finished_at": 110.0, "seconds": 10.0, "audio_seconds": 100.0},
        "b": {"status": "done", "finished_at": 115.0, "seconds": 10.0, "audio_seconds": 50.0},
        "c": {"status": "failed", "finished_at": 200.0},
    }
    records = {k: ShardRecord.from_dict({"shard_id": k, "source": "", **r}) for k, r in records.items()}
    series = report_module.throughput(records, bins=3)
    np.testing.assert_allclose(series["edges"], [0, 5, 10, 15])
    np.testing.assert_allclose(series["rate"], [10.0, 15.0, 5.0])  # a: 10 x realtime over 0-10 s, b: 5 x over 5-15 s
    np.testing.assert_allclose(series["done"], [100.0, 150.0])
    assert series["note"] == ""
    older = {k: dataclasses.replace(r, finished_at=0.0, started_at=r.finished_at - 10.0)
             for k, r in records.items() if r.status == "done"}
    series = report_module.throughput(older, bins=3)
    np.testing.assert_allclose(series["rate"], [10.0, 15.0, 5.0])
    assert "no finished_at" in series["note"]


# ---- on a real output ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    from pipeline.run import run_job

    tmp = tmp_path_factory.mktemp("report")
    samples = {}
    for i in range(2):
        samples.update({s.key: s for s in mixed_tar(str(tmp / f"in/r-{i}.tar"), f"r{i}", 5, seed=70 + i, max_seconds=1.5)})
    config = config_for(tmp, {"kind": "webdataset", "urls": [str(tmp / "in/r-{0..1}.tar")]})
    assert run_job(config).status == "complete"
    return config.output.dir, samples, tmp


def categories_of(samples) -> Counter:
    return Counter(json.loads(s.members["json"])["category"] for s in samples.values())


def test_report_draws_each_figure_and_keeps_the_summary(output, capsys):
    out, samples, _ = output
    assert inspect_main([out]) == 0
    page = open(os.path.join(out, "report.html")).read()
    images = re.findall(r'<img src="report_files/([^"]+)"', page)
    assert {"audio_per_category.png", "audio_per_source.png", "clip_lengths.png", "codebook_usage.png",
            "throughput.png"} <= set(images)
    for name in images:
        assert open(os.path.join(out, "report_files", name), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"samples: {len(samples)} encoded" in page and "No errors" in page


def test_fidelity_audits_n_rows_per_category_with_players_and_metrics(output, capsys):
    out, samples, _ = output
    assert inspect_main([out, "--fidelity", "1"]) == 0
    text = capsys.readouterr().out
    page = open(os.path.join(out, "report.html")).read()
    categories = categories_of(samples)
    assert len(categories) >= 2
    for category, count in categories.items():
        assert f"  {category}: {min(1, count)} row(s)" in text  # N rows per category
        row = re.search(rf"<tr><td>{category}</td><td>(\d+)</td>(.*?)</tr>", page)
        assert row and int(row.group(1)) == 1 and len(re.findall(r"<td>-?[\d.]+</td>", row.group(2))) == 1 + 2 * 4
    for k, kbps in ((2, 0.5), (4, 1), (6, 1.5), (8, 2)):  # every bandwidth whose codebooks are stored
        assert f"{k} codebooks ({kbps:g} kbps)" in page
    players = re.findall(r'<audio controls preload="none" src="report_files/(audio/(\d+)_(.+?)_(original|reconstruction)'
                         r'\.wav)">', page)
    assert len(players) == 2 * len(categories)  # one example per category: original and reconstruction
    assert "random codec weights" in page
    for path, _, key, what in players:
        audio, rate = soundfile.read(os.path.join(out, "report_files", path), dtype="float32")
        assert rate == RATE and audio.size > 0
        if what == "original":  # re-read from the tar and decoded as the pipeline did (to PCM 16 precision)
            array, source_rate = decode_bytes(next(v for e, v in samples[key].members.items() if e not in ("txt", "json")))
            expected = to_model_audio(array, source_rate, RATE, "HQ", 3600).wave
            assert audio.size == expected.size and np.abs(audio - np.clip(expected, -1, 1)).max() <= 1.5 / 32768
        spectrogram = f"spectrogram_{path.split('/')[1].rsplit('_', 1)[0]}.png"
        assert spectrogram in page and os.path.exists(os.path.join(out, "report_files", spectrogram))


def test_moved_source_stops_the_audit_with_exit_3_and_leaves_the_report_as_it_was(output, capsys):
    out, _, tmp = output
    assert inspect_main([out]) == 0
    before = open(os.path.join(out, "report.html")).read()
    figures = sorted(os.listdir(os.path.join(out, "report_files")))
    os.rename(tmp / "in", tmp / "in-moved")
    try:
        assert inspect_main([out, "--fidelity", "1"]) == 3
    finally:
        os.rename(tmp / "in-moved", tmp / "in")
    error = capsys.readouterr().err
    assert "cannot read source shard" in error and str(tmp / "in") in error and "missing_shard" in error
    assert open(os.path.join(out, "report.html")).read() == before
    assert sorted(os.listdir(os.path.join(out, "report_files"))) == figures
    assert not [n for n in os.listdir(out) if n.startswith(".report-")]


def test_a_failure_while_drawing_leaves_the_previous_report_untouched(output, tmp_path, monkeypatch):
    out, _, _ = output
    stats = collect(out)
    target = tmp_path / "r.html"
    report_module.write_report(str(target), stats)
    before = target.read_text()
    files = tmp_path / "r_files"
    figures = {p.name: p.stat().st_mtime_ns for p in files.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(report_module, "plot_codebooks", broken)
    with pytest.raises(RuntimeError):
        report_module.write_report(str(target), stats)
    assert target.read_text() == before
    assert {p.name: p.stat().st_mtime_ns for p in files.iterdir()} == figures  # none redrawn in place
    assert sorted(os.listdir(tmp_path)) == ["r.html", "r_files"]  # no staging folder left


def test_not_an_output_and_an_unknown_key_exit_2_and_write_nothing(output, tmp_path, capsys):
    out, _, _ = output
    assert inspect_main([str(tmp_path)]) == 2
    assert "not a pipeline output folder" in capsys.readouterr().err and os.listdir(tmp_path) == []
    assert inspect_main([str(tmp_path / "absent")]) == 2
    wav = tmp_path / "x.wav"
    assert inspect_main([out, "--decode", "no-such-key", "-o", str(wav)]) == 2
    assert "no sample with key 'no-such-key'" in capsys.readouterr().err and not wav.exists()
    with pytest.raises(SystemExit) as exit_:
        inspect_main([out, "--fidelity", "0"])
    assert exit_.value.code == 2


def test_audit_picks_rows_per_source_when_no_row_has_a_category(output, tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    out, samples, _ = output
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for path in (copy / "data").glob("*.parquet"):
        table = pq.read_table(path)
        table = table.set_column(table.schema.get_field_index("metadata"), "metadata", pa.array(["{}"] * len(table)))
        pq.write_table(table, path)
    chosen, grouped_by = collect(str(copy), audit_rows=2)["audit"]
    assert grouped_by == "source"
    assert {name: len(rows) for name, rows in chosen.items()} == {"r-0.tar": 2, "r-1.tar": 2}
    assert all(os.path.basename(r.source) == name for name, rows in chosen.items() for r in rows)
    chosen, grouped_by = collect(out, audit_rows=2)["audit"]
    assert grouped_by == "category" and set(chosen) == set(categories_of(samples))


def test_audit_compares_against_the_loudness_normalised_audio_the_codec_was_given():
    """With audio.loudness_lufs on, the codec encoded the normalised clip: the audit's original must be that
    clip, not the file as it is (else every metric also counts the loudness gain)."""
    from pipeline.audio.decode import decode_audio
    from pipeline.reading.fidelity import RowRef, _decode_original
    from pipeline.sources import RawSample
    from demo.synth import encode_audio

    data = encode_audio(0.02 * synth_clip(np.random.default_rng(3), 3.0, 16000), 16000, "wav")
    manifest = {"config": {"audio": {"resampler_quality": "HQ", "max_seconds": 3600.0, "loudness_lufs": -23.0}}}
    row = RowRef("out", "data/s.parquet", 0, 0, "k", "s.tar", 3.0)
    original = _decode_original(RawSample("k", data), row, "s.tar", manifest, 24000, 30.0).audio
    normalised = decode_audio(data, 24000, "HQ", 3600.0, loudness_lufs=-23.0).wave
    np.testing.assert_array_equal(original, normalised)
    assert not np.allclose(original, decode_audio(data, 24000, "HQ", 3600.0).wave)  # the gain is not nothing
