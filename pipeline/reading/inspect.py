"""`python -m pipeline.reading.inspect OUTPUT_DIR`: what a run produced, as a summary and an HTML report.

    python -m pipeline.reading.inspect outputs/demo                     # summary + outputs/demo/report.html
    python -m pipeline.reading.inspect outputs/demo --decode KEY -o x.wav  # listen to one sample

The summary covers samples, hours and tokens per source and per category, errors by reason, the
length distribution, and per-codebook usage and entropy. Decoding uses the codec the manifest
records (spec, revision or seed), so it matches the codes.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from collections import Counter, defaultdict

import numpy as np

from .dataset import list_units, read_unit, row_codes
from ..runstate import OutputError, Totals, read_run
from ..storage import Storage


def collect(output_dir: str) -> dict:
    run = read_run(Storage(output_dir))
    manifest = run.manifest
    size = manifest["codebook_size"]
    usage = np.zeros((manifest["num_codebooks"], size), np.int64)
    per_source = defaultdict(lambda: {"samples": 0, "seconds": 0.0, "tokens": 0})
    per_category = defaultdict(lambda: {"samples": 0, "seconds": 0.0, "tokens": 0})
    durations = []
    for _, name, group in list_units([output_dir]):
        table = read_unit(output_dir, name, group)
        rows = table.select([c for c in table.column_names if c != "codes"]).to_pylist()
        for row, codes in zip(rows, row_codes(table)):
            category = row.get("category") or json.loads(row.get("metadata") or "{}").get("category") or "(none)"
            for bucket in (per_source[os.path.basename(row["source"])], per_category[str(category)]):
                bucket["samples"] += 1
                bucket["seconds"] += row["duration_s"]
                bucket["tokens"] += codes.size
            durations.append(row["duration_s"])
            for k in range(min(codes.shape[0], usage.shape[0])):
                usage[k] += np.bincount(codes[k].astype(np.int64), minlength=size)[:size]
    totals = Totals(run.records.values()).as_dict()
    return {
        "output_dir": output_dir,
        "codec": manifest["codec"],
        "bandwidth": manifest["bandwidth"],
        "num_codebooks": manifest["num_codebooks"],
        "totals": totals,
        "per_source": dict(per_source),
        "per_category": dict(per_category),
        "durations": np.array(durations),
        "usage": usage,
    }


def entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / max(1, counts.sum())
    return float(-(p * np.log2(p)).sum())


def summary_text(stats: dict) -> str:
    t = stats["totals"]
    lines = [
        f"output: {stats['output_dir']}",
        f"codec: {stats['codec']['spec']} ({stats['codec'].get('revision')}), {stats['bandwidth']} kbps, "
        f"{stats['num_codebooks']} codebooks",
        f"samples: {t['rows']} encoded, {t['errors']} errors; shards: {t['shards_done']} done, {t['shards_failed']} failed",
        f"audio: {t['audio_seconds'] / 3600:.3f} h; tokens: {t['tokens']}",
        "errors by reason: " + (", ".join(f"{k} {v}" for k, v in Counter(t["error_reasons"]).most_common()) or "none"),
    ]
    for title, table in (("per source", stats["per_source"]), ("per category", stats["per_category"])):
        lines.append(f"{title}:")
        for name, b in sorted(table.items()):
            lines.append(f"  {name}: {b['samples']} samples, {b['seconds'] / 3600:.3f} h, {b['tokens']} tokens")
    d = stats["durations"]
    if d.size:
        q = np.percentile(d, [0, 10, 50, 90, 100])
        lines.append("length (s): min {:.2f}  p10 {:.2f}  median {:.2f}  p90 {:.2f}  max {:.2f}".format(*q))
    lines.append("codebook usage (entries used / size, entropy in bits of log2(size)):")
    for k, counts in enumerate(stats["usage"]):
        size = counts.size
        lines.append(f"  codebook {k}: {int((counts > 0).sum())}/{size} used, "
                     f"entropy {entropy_bits(counts):.2f} / {np.log2(size):.0f} bits")
    return "\n".join(lines)


def _svg_bars(values, labels, width=560, height=160, title="") -> str:
    values = np.asarray(values, float)
    top = values.max() if values.size and values.max() > 0 else 1.0
    bar = width / max(1, len(values))
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - v / top * (height - 20):.1f}" width="{max(bar - 1, 0.5):.1f}" '
        f'height="{v / top * (height - 20):.1f}" fill="#4a7ab5"><title>{html.escape(str(lab))}: {v:g}</title></rect>'
        for i, (v, lab) in enumerate(zip(values, labels))
    )
    return (f'<figure><figcaption>{html.escape(title)}</figcaption><svg width="{width}" height="{height}" '
            f'xmlns="http://www.w3.org/2000/svg">{rects}</svg></figure>')


def report_html(stats: dict) -> str:
    parts = [f"<h1>audiotok report</h1><pre>{html.escape(summary_text(stats))}</pre>"]
    d = stats["durations"]
    if d.size:
        counts, edges = np.histogram(d, bins=30)
        parts.append(_svg_bars(counts, [f"{a:.1f}-{b:.1f}s" for a, b in zip(edges, edges[1:])], title="clip length (s)"))
    for name in ("per_source", "per_category"):
        table = stats[name]
        parts.append(_svg_bars([b["seconds"] / 3600 for b in table.values()], list(table), title=f"hours {name.replace('_', ' ')}"))
    entropies = [entropy_bits(c) for c in stats["usage"]]
    parts.append(_svg_bars(entropies, [f"codebook {k}" for k in range(len(entropies))], title="entropy per codebook (bits)"))
    for k, counts in enumerate(stats["usage"]):
        parts.append(_svg_bars(np.sort(counts)[::-1], range(counts.size), title=f"codebook {k}: entry use, sorted"))
    reasons = Counter(stats["totals"]["error_reasons"])
    if reasons:
        parts.append(_svg_bars(list(reasons.values()), list(reasons), title="errors by reason"))
    return "<!doctype html><meta charset='utf-8'><title>audiotok report</title>" + "".join(parts)


def decode_key(output_dir: str, key: str, out_path: str) -> float:
    """Decode one sample's codes to a 24 kHz WAV with the manifest's codec; returns its seconds."""
    import soundfile

    from codec import load_codec

    identity = read_run(Storage(output_dir)).manifest["codec"]
    for _, name, group in list_units([output_dir]):
        table = read_unit(output_dir, name, group)
        keys = table.column("key").to_pylist()
        if key in keys:
            row = keys.index(key)
            (codes,) = row_codes(table.slice(row, 1))
            seed = int(identity["revision"].split("=")[1]) if str(identity.get("revision", "")).startswith("seed=") else 0
            revision = None if identity["spec"].startswith("random:") else identity.get("revision")
            codec = load_codec(identity["spec"], device="auto", seed=seed, revision=revision)
            length = int(round(table.column("duration_s")[row].as_py() * codec.sample_rate))
            (audio,) = codec.decode([codes], lengths=[min(length, codes.shape[1] * codec.hop_length)])
            soundfile.write(out_path, audio, codec.sample_rate)
            return audio.size / codec.sample_rate
    raise KeyError(f"no sample with key {key!r} in {output_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.reading.inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    parser.add_argument("--report", help="HTML report path (default OUTPUT_DIR/report.html when local)")
    parser.add_argument("--decode", metavar="KEY", help="decode this sample's codes to audio")
    parser.add_argument("-o", "--out", default=None, help="WAV path for --decode (default KEY.wav)")
    args = parser.parse_args(argv)
    try:
        if args.decode:
            out = args.out or f"{args.decode.replace('/', '_')}.wav"
            seconds = decode_key(args.output_dir, args.decode, out)
            print(f"wrote {out} ({seconds:.2f} s at 24 kHz)")
            return 0
        stats = collect(args.output_dir)
    except (FileNotFoundError, KeyError, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary_text(stats))
    report = args.report or (os.path.join(args.output_dir, "report.html") if "://" not in args.output_dir else "report.html")
    with open(report, "w") as f:
        f.write(report_html(stats))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
