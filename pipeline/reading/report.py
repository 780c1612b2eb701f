"""The HTML report: matplotlib figures (PNG) and, after a fidelity audit, audio players and spectrograms.

`write_report(path, stats, fidelity)` writes `path` (e.g. OUT/report.html) and its files in
`<stem>_files/` beside it (figures, and the audited examples as WAV). Everything is drawn into a
temporary folder first and moved into place at the end, so an error leaves the previous report (or
none), never half of a new one. matplotlib (Agg) and librosa are imported here only when drawing.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import tempfile
import time
from collections import Counter

import numpy as np

from .stats import entropy_bits, summary_text
from ..runstate import DONE, ShardRecord
from ..runstate.records import shard_log_path
from ..storage import Storage
from ..urls import redact

TOP_BARS = 25  # bar charts show the largest groups; the rest are summed in the title
BLUE, ORANGE, GREY = "#3b6ea8", "#d9822b", "#8a8f98"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.dpi": 110, "savefig.dpi": 110, "font.size": 10, "axes.titlesize": 12, "axes.titleweight": "bold",
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "axes.axisbelow": True, "savefig.bbox": "tight",
    })
    return plt


def _save(plt, fig, folder: str, name: str) -> str:
    fig.savefig(os.path.join(folder, name))
    plt.close(fig)
    return name


def _audio_unit(seconds_max: float) -> tuple[float, str]:
    """Divisor and unit name that keep audio amounts readable (seconds for a demo, hours for a corpus)."""
    if seconds_max < 120:
        return 1.0, "s"
    if seconds_max < 2 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _top(table: dict, value, n: int = TOP_BARS) -> tuple[list[str], list[dict], dict | None]:
    """The n largest groups, and the sums of the rest (None when there is no rest)."""
    items = sorted(table.items(), key=lambda kv: -value(kv[1]))
    head, rest = items[:n], items[n:]
    other = {key: sum(v[key] for _, v in rest) for key in rest[0][1]} if rest else None
    return [k for k, _ in head], [v for _, v in head], other


def _hbars(ax, labels: list[str], values: list[float], texts: list[str], color=BLUE) -> None:
    y = np.arange(len(labels))
    bars = ax.barh(y, values, color=color, height=0.7)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    ax.bar_label(bars, labels=texts, padding=4, fontsize=9)
    top = max(values) if values and max(values) > 0 else 1.0
    ax.set_xlim(0, top * 1.3)  # room for the value labels


def plot_audio_per(plt, table: dict, what: str, folder: str, name: str) -> str | None:
    if not table:
        return None
    labels, buckets, other = _top(table, lambda b: b["seconds"])
    scale, unit = _audio_unit(max(b["seconds"] for b in buckets))
    values = [b["seconds"] / scale for b in buckets]
    texts = [f"{v:.3g} {unit} · {b['samples']:,} clips" for v, b in zip(values, buckets)]
    fig, ax = plt.subplots(figsize=(10, 0.9 + 0.32 * len(labels)))
    _hbars(ax, labels, values, texts)
    ax.set_xlabel(f"audio ({unit})")
    title = f"Audio per {what}"
    if other:  # a bar for the rest would dwarf the others
        rest_scale, rest_unit = _audio_unit(other["seconds"])
        title += (f": the largest {len(labels)} of {len(table):,}\n(the other {len(table) - len(labels):,}: "
                  f"{other['seconds'] / rest_scale:.3g} {rest_unit}, {other['samples']:,} clips)")
    ax.set_title(title)
    return _save(plt, fig, folder, name)


def plot_lengths(plt, durations: np.ndarray, folder: str) -> str | None:
    d = durations[durations > 0]
    if not d.size:
        return None
    fig, ax = plt.subplots(figsize=(10, 3.6))
    spread = d.max() / d.min()
    log_x = spread > 20
    bins = np.geomspace(d.min(), d.max(), 41) if log_x and d.size > 1 else min(40, max(5, d.size))
    counts, _, _ = ax.hist(d, bins=bins, color=BLUE, edgecolor="white", linewidth=0.5)
    if log_x:
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if counts.max() > 50 * max(1, np.median(counts[counts > 0])):
        ax.set_yscale("log")
    else:
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for q, style in ((50, "--"), (90, ":")):
        v = np.percentile(d, q)
        ax.axvline(v, color=ORANGE, linestyle=style, linewidth=1.5, label=f"p{q}: {v:.2f} s")
    ax.legend(frameon=False)
    ax.set_xlabel("clip length (s" + (", log scale)" if log_x else ")"))
    ax.set_ylabel("clips")
    scale, unit = _audio_unit(d.sum())
    ax.set_title(f"Clip length ({d.size:,} clips, {d.sum() / scale:.3g} {unit})")
    return _save(plt, fig, folder, "clip_lengths.png")


def plot_errors(plt, totals: dict, folder: str) -> str | None:
    reasons = [(f"sample: {k}", v) for k, v in Counter(totals["error_reasons"]).most_common()]
    reasons += [(f"shard: {k or 'unknown'}", v) for k, v in Counter(totals.get("shard_error_reasons", {})).most_common()]
    if not reasons:
        return None
    labels, values = [r for r, _ in reasons], [v for _, v in reasons]
    fig, ax = plt.subplots(figsize=(10, 0.9 + 0.32 * len(labels)))
    _hbars(ax, labels, values, [f"{v:,}" for v in values],
           color=[ORANGE if r.startswith("sample") else "#b5443b" for r in labels])
    ax.set_xlabel("count (samples, or failed shards)")
    ax.set_title(f"Errors by reason ({totals['errors']:,} samples, {totals['shards_failed']:,} failed shards)")
    return _save(plt, fig, folder, "errors_by_reason.png")


def plot_codebooks(plt, usage: np.ndarray, folder: str) -> str | None:
    if not usage.size or usage.sum() == 0:
        return None
    books, size = usage.shape
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    colors = plt.cm.viridis(np.linspace(0, 0.9, books))
    rank = np.arange(1, size + 1)
    for k in range(books):
        total = usage[k].sum()
        if total:
            share = np.sort(usage[k])[::-1] / total * 100
            left.plot(rank[share > 0], share[share > 0], color=colors[k], linewidth=1.4, label=f"codebook {k}")
    left.axhline(100 / size, color=GREY, linestyle="--", linewidth=1, label=f"uniform ({100 / size:.2g}%)")
    left.set_yscale("log")
    left.set_xlabel("entry rank (most used first)")
    left.set_ylabel("share of uses (%, log scale)")
    left.set_title("Entry use per codebook, sorted")
    left.legend(fontsize=8, ncol=2, frameon=False)
    entropies = [entropy_bits(c) for c in usage]
    bars = right.bar(np.arange(books), entropies, color=colors)
    right.bar_label(bars, labels=[f"{e:.2f}" for e in entropies], padding=2, fontsize=8)
    right.bar_label(bars, labels=[f"{int((c > 0).sum())}/{size} used" for c in usage], label_type="center",
                    rotation=90, fontsize=8, color="white")
    right.axhline(np.log2(size), color=GREY, linestyle="--", linewidth=1, label=f"max {np.log2(size):.0f} bits")
    right.set_ylim(0, np.log2(size) * 1.25)
    right.set_xticks(np.arange(books), [str(k) for k in range(books)])
    right.set_xlabel("codebook")
    right.set_ylabel("entropy (bits)")
    right.set_title("Entropy and entries used per codebook")
    right.legend(fontsize=8, frameon=False, loc="upper right")
    fig.tight_layout()
    return _save(plt, fig, folder, "codebook_usage.png")


def _finish_times(done: list[ShardRecord]) -> tuple[np.ndarray | None, str]:
    if done and all(r.finished_at for r in done):
        return np.array([r.finished_at for r in done], float), ""
    if done and all(r.started_at for r in done):
        return (np.array([r.started_at + r.seconds for r in done], float),
                "finish = start + shard seconds: this output's records have no finished_at")
    return None, "no throughput plot: this output's commit records have no start or finish times"


def throughput(records: dict[str, ShardRecord], bins: int = 60) -> dict | None:
    """Over the run, from the done commit records: `finish` (s since the first shard began, sorted), `done`
    (audio seconds finished by then), and `rate` (audio s per wall s in each of `bins` intervals of `edges`),
    each shard's audio spread evenly over its processing time (`seconds`, ending at its finish);
    `note` says when finish times are estimated. None when the records hold no times."""
    done = [r for r in records.values() if r.status == DONE]
    finish, note = _finish_times(done)
    if finish is None:
        return {"note": note}
    order = np.argsort(finish)
    finish = finish[order]
    audio = np.array([done[i].audio_seconds for i in order], float)
    busy = np.array([max(done[i].seconds, 1e-9) for i in order], float)
    begin = finish - busy
    t0 = begin.min()
    begin, finish = begin - t0, finish - t0
    edges = np.linspace(0.0, max(finish.max(), 1e-9), bins + 1)
    # each shard adds audio/busy per second over [begin, finish]: its overlap with every interval
    overlap = np.clip(np.minimum(finish[:, None], edges[None, 1:]) - np.maximum(begin[:, None], edges[None, :-1]), 0, None)
    rate = (overlap * (audio / busy)[:, None]).sum(axis=0) / np.diff(edges)
    return {"finish": finish, "done": np.cumsum(audio), "edges": edges, "rate": rate, "note": note}


def plot_throughput(plt, records: dict, folder: str) -> tuple[str | None, str]:
    """Cumulative audio and throughput over the run; (file, note)."""
    series = throughput(records)
    if "finish" not in series:
        return None, series["note"]
    finish, edges = series["finish"], series["edges"]
    time_scale, time_unit = _audio_unit(edges[-1])
    scale, unit = _audio_unit(series["done"][-1])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.6), sharex=True)
    top.step(np.r_[0, finish] / time_scale, np.r_[0, series["done"]] / scale, where="post", color=BLUE, linewidth=1.6)
    top.set_ylabel(f"audio done ({unit})")
    top.set_title(f"Throughput: {finish.size:,} shards, {series['done'][-1] / scale:.3g} {unit} of audio in "
                  f"{edges[-1] / time_scale:.3g} {time_unit}")
    bottom.stairs(series["rate"], edges / time_scale, color=ORANGE, linewidth=1.6, fill=True, alpha=0.35)
    bottom.stairs(series["rate"], edges / time_scale, color=ORANGE, linewidth=1.6)
    bottom.set_ylabel("audio s per wall s\n(x realtime)")
    bottom.set_xlabel(f"wall-clock time since the first shard began ({time_unit}; time between reruns included)")
    bottom.set_xlim(0, edges[-1] / time_scale)
    bottom.set_ylim(0, None)
    note = series["note"]
    if note:
        bottom.text(0.01, 0.95, note, transform=bottom.transAxes, fontsize=8, va="top", color="#b5443b")
    fig.tight_layout()
    return _save(plt, fig, folder, "throughput.png"), ("each shard's audio is spread over its processing time. "
                                                       + note).strip()


# ---- fidelity ------------------------------------------------------------------------------------


def _level_label(k: int, kbps: float) -> str:
    return f"{k}\n({kbps:g} kbps)"


def plot_fidelity(plt, result, folder: str) -> str | None:
    groups = result.per_group()
    if not groups:
        return None
    levels = result.codebook_levels
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    colors = plt.cm.tab10(np.arange(len(groups)) % 10)
    for color, (group, entry) in zip(colors, groups.items()):
        ks = list(entry["levels"])
        label = f"{group} ({entry['rows']})"
        left.plot(ks, [entry["levels"][k]["si_snr_db"] for k in ks], marker="o", color=color, label=label)
        right.plot(ks, [entry["levels"][k]["mel_distance_db"] for k in ks], marker="o", color=color, label=label)
    for ax, title, ylabel in ((left, "SI-SNR (higher is better)", "SI-SNR (dB)"),
                              (right, "Log-mel distance (lower is better)", "mean |Δ log-mel| (dB)")):
        ax.set_xticks(levels, [_level_label(k, result.bandwidths[k]) for k in levels])
        ax.set_xlabel("codebooks decoded (bandwidth)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    fig.suptitle(f"Reconstruction vs original, mean per {result.grouped_by}", fontweight="bold")
    fig.tight_layout()
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=9,
               title=f"{result.grouped_by} (rows)", title_fontsize=9)
    return _save(plt, fig, folder, "fidelity.png")


def plot_spectrograms(plt, example, rate: int, folder: str, name: str) -> str:
    import librosa.display

    from .fidelity import MEL_BANDS, MEL_FFT, MEL_HOP, MEL_RANGE_DB, log_mel_db

    original, reconstruction = log_mel_db(example.original, rate), log_mel_db(example.reconstruction, rate)
    top = original.max()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, mel, title in ((axes[0], original, "original"), (axes[1], reconstruction, "reconstruction")):
        image = librosa.display.specshow(mel, sr=rate, hop_length=MEL_HOP, n_fft=MEL_FFT, x_axis="s", y_axis="mel",
                                         ax=ax, vmin=top - MEL_RANGE_DB, vmax=top, cmap="magma")
        ax.set_title(f"{title} ({MEL_BANDS} mel bands)")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("frequency (Hz)")
        ax.grid(False)
    axes[1].set_ylabel("")
    fig.colorbar(image, ax=axes, format="%+.0f dB", label="power (dB)", pad=0.015)
    return _save(plt, fig, folder, name)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


# ---- HTML ----------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1120px;margin:24px auto;padding:0 20px;
color:#1f2328;line-height:1.45}
h1{margin-bottom:4px}h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:36px}
.sub{color:#57606a;margin-top:0}
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:10px;margin:16px 0}
.fact{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:8px 12px}
.fact b{display:block;font-size:1.3em}.fact span{color:#57606a;font-size:.85em}
figure{margin:18px 0}figure img{width:100%;border:1px solid #eaeef2;border-radius:4px}
figcaption{color:#57606a;font-size:.9em}
pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:10px;overflow-x:auto;font-size:.85em}
table{border-collapse:collapse;margin:10px 0;font-size:.9em}th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
.note{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:8px 12px}
.example{border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;margin:16px 0}
.players{display:flex;gap:24px;flex-wrap:wrap}.players div{flex:1;min-width:280px}audio{width:100%}
"""


def _figure(files: str, name: str | None, alt: str, caption: str = "") -> str:
    if not name:
        return ""
    src = html.escape(f"{files}/{name}")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{src}" alt="{html.escape(alt)}">{cap}</figure>'


def _facts(stats: dict) -> str:
    t = stats["totals"]
    seconds = t["audio_seconds"]
    scale, unit = _audio_unit(seconds)
    facts = [
        (f"{seconds / scale:.3g} {unit}", "audio encoded"), (f"{t['rows']:,}", "clips encoded"),
        (f"{t['errors']:,}", "sample errors"), (f"{t['shards_done']:,} / {t['shards_done'] + t['shards_failed']:,}",
                                                 "shards done / finished"),
        (f"{t['tokens']:,}", "tokens"), (f"{stats['num_codebooks']} @ {stats['bandwidth']:g} kbps", "codebooks"),
        (f"{t.get('read_retries', 0):,}", "reads retried"),  # outputs written before the count: 0
    ]
    return '<div class="facts">' + "".join(
        f'<div class="fact"><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>' for v, k in facts) + "</div>"


def _fidelity_table(result) -> str:
    levels = result.codebook_levels
    head = "<tr><th rowspan=2>" + html.escape(result.grouped_by) + "</th><th rowspan=2>rows</th><th rowspan=2>seconds</th>"
    head += "".join(f"<th colspan=2>{k} codebooks ({result.bandwidths[k]:g} kbps)</th>" for k in levels) + "</tr><tr>"
    head += "<th>SI-SNR dB</th><th>mel dist. dB</th>" * len(levels) + "</tr>"
    body = ""
    for group, entry in result.per_group().items():
        cells = "".join(f"<td>{entry['levels'][k]['si_snr_db']:.2f}</td><td>{entry['levels'][k]['mel_distance_db']:.2f}</td>"
                        for k in levels)
        body += f"<tr><td>{html.escape(group)}</td><td>{entry['rows']}</td><td>{entry['seconds']:.1f}</td>{cells}</tr>"
    return f"<table>{head}{body}</table>"


def _fidelity_section(plt, result, folder: str, files: str) -> str:
    from .stats import fidelity_text

    parts = [f"<h2>Fidelity audit</h2><p>{result.per_row} row(s) per {html.escape(result.grouped_by)}, chosen at "
             f"random; each original re-read from its source and decoded and resampled to {result.sample_rate} Hz "
             f"as the run did; the codes decoded with the manifest's codec, with all stored codebooks and with the "
             f"first codebooks of each lower bandwidth; clips longer than {result.max_seconds:g} s are scored on their "
             "first part. SI-SNR: scale-invariant signal-to-noise ratio (higher is better). Mel distance: mean "
             "absolute difference of the log-mel spectrograms (lower is better).</p>"]
    if str(result.codec.get("spec", "")).startswith("random:"):
        parts.append(f'<p class="note">This output was encoded with <b>random codec weights</b> '
                     f'({html.escape(result.codec["spec"])}): the reconstructions are noise and the numbers '
                     "say nothing about a real codec.</p>")
    parts.append(_fidelity_table(result))
    parts.append(_figure(files, plot_fidelity(plt, result, folder), "fidelity per group and bandwidth"))
    parts.append(f"<details><summary>as text</summary><pre>{html.escape(fidelity_text(result))}</pre></details>")
    audio_dir = os.path.join(folder, "audio")
    os.makedirs(audio_dir, exist_ok=True)
    import soundfile

    for i, example in enumerate(result.examples):
        score, stem = example.score, f"{i:02d}_{_safe(example.score.row.key)}"
        wavs = {}
        for what, audio in (("original", example.original), ("reconstruction", example.reconstruction)):
            wavs[what] = f"audio/{stem}_{what}.wav"
            soundfile.write(os.path.join(folder, wavs[what]), np.clip(audio, -1, 1), result.sample_rate, subtype="PCM_16")
        spectrogram = plot_spectrograms(plt, example, result.sample_rate, folder, f"spectrogram_{stem}.png")
        full = score.scores[max(score.scores)]
        players = "".join(
            f'<div><b>{what}</b><br><audio controls preload="none" src="{html.escape(files + "/" + wavs[what])}">'
            f"</audio></div>" for what in ("original", "reconstruction"))
        parts.append(
            f'<div class="example"><h3>{html.escape(score.row.key)}</h3><p class="sub">{html.escape(result.grouped_by)} '
            f"<b>{html.escape(score.group)}</b> · {score.seconds:.2f} s scored · source "
            f"{html.escape(os.path.basename(score.row.source))} · with {max(score.scores)} codebooks: SI-SNR "
            f"{full['si_snr_db']:.2f} dB, mel distance {full['mel_distance_db']:.2f} dB</p>"
            f'<div class="players">{players}</div>'
            + _figure(files, spectrogram, f"spectrograms of {score.row.key}",
                      "mel spectrograms on one colour scale (the original's peak and 80 dB below)") + "</div>")
    return "".join(parts)


FAILED_SHOWN = 50  # failed shards listed with their logs


def _log_href(output_dir: str, shard_id: str, report_dir: str | None) -> str | None:
    """Where the report links a shard's log: a path relative to the report for a local output, else its URL (without
    secrets); None when the output has none (written before logs were kept)."""
    path = shard_log_path(shard_id)
    if not Storage(output_dir).exists(path):
        return None
    if "://" in output_dir:
        return redact(f"{output_dir.rstrip('/')}/{path}")
    full = os.path.join(os.path.abspath(output_dir), path)
    return os.path.relpath(full, report_dir) if report_dir else full


def _failed_shards(stats: dict, report_dir: str | None) -> str:
    failed = sorted(((k, r) for k, r in stats["records"].items() if r.status != DONE), key=lambda kr: kr[0])
    if not failed:
        return ""
    rows = []
    for shard_id, record in failed[:FAILED_SHOWN]:
        href = _log_href(stats["output_dir"], shard_id, report_dir)
        link = f'<a href="{html.escape(href)}">log</a>' if href else "no log"
        rows.append(f"<tr><td>{html.escape(shard_id)}</td><td>{html.escape(record.error[:200])}</td>"
                    f"<td>{link}</td></tr>")
    more = f"<p>... and {len(failed) - FAILED_SHOWN} more failed shards.</p>" if len(failed) > FAILED_SHOWN else ""
    return ("<h3>Failed shards</h3><table><tr><th>shard</th><th>why</th><th>its log</th></tr>" + "".join(rows)
            + "</table>" + more)


def build(stats: dict, folder: str, files: str, fidelity=None, report_dir: str | None = None) -> str:
    """Draw every figure into `folder` and return the HTML, which refers to them as `files/NAME`; `report_dir`:
    where the report will be, for links into a local output (None: absolute paths)."""
    plt = _pyplot()
    t = stats["totals"]
    throughput, note = plot_throughput(plt, stats["records"], folder)
    errors = plot_errors(plt, t, folder)
    parts = [
        f"<h1>audiotok report</h1><p class='sub'>{html.escape(stats['output_dir'])} · codec "
        f"{html.escape(stats['codec']['spec'])} ({html.escape(str(stats['codec'].get('revision')))}) · written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
        _facts(stats),
        "<h2>Audio</h2>",
        _figure(files, plot_audio_per(plt, stats["per_category"], "category", folder, "audio_per_category.png"),
                "audio per category", "category: the `category` column, or the metadata JSON's; (none) where absent"),
        _figure(files, plot_audio_per(plt, stats["per_source"], "source", folder, "audio_per_source.png"),
                "audio per source shard", "source: the input shard's file name"),
        _figure(files, plot_lengths(plt, stats["durations"], folder), "clip length histogram"),
        "<h2>Errors</h2>",
        _figure(files, errors, "errors by reason") if errors else "<p>No errors: every sample read was encoded and "
                                                                  "no shard failed.</p>",
        _failed_shards(stats, report_dir),
        "<h2>Codebooks</h2>",
        _figure(files, plot_codebooks(plt, stats["usage"], folder), "codebook usage",
                "a codebook whose curve falls steeply uses few of its entries; entropy near log2(size) means "
                "nearly uniform use"),
        "<h2>Run</h2>",
        _figure(files, throughput, "throughput over the run", note) if throughput else f"<p>{html.escape(note)}</p>",
    ]
    if fidelity is not None:
        parts.append(_fidelity_section(plt, fidelity, folder, files))
    parts.append(f"<h2>Summary</h2><pre>{html.escape(summary_text(stats))}</pre>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>audiotok report</title>"
            f"<style>{CSS}</style></head><body>" + "".join(parts) + "</body></html>")


def files_folder(report_path: str) -> str:
    """Where the report's figures and audio go: `<stem>_files` beside it (report.html -> report_files)."""
    stem = os.path.splitext(os.path.abspath(report_path))[0]
    return f"{stem}_files"


def write_report(report_path: str, stats: dict, fidelity=None) -> str:
    """Write the report and its files, all or nothing; returns the files folder."""
    final_dir = files_folder(report_path)
    parent, files = os.path.dirname(final_dir), os.path.basename(final_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".report-", dir=parent)
    try:
        folder = os.path.join(staging, files)
        os.makedirs(folder)
        page = build(stats, folder, files, fidelity, os.path.dirname(os.path.abspath(report_path)))
        staged_html = os.path.join(staging, "report.html")
        with open(staged_html, "w", encoding="utf-8") as f:
            f.write(page)
        old = os.path.join(staging, "old")
        if os.path.exists(final_dir):
            os.replace(final_dir, old)
        os.replace(folder, final_dir)
        os.replace(staged_html, report_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final_dir
