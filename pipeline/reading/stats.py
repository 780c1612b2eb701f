"""What an output holds, in one pass over its rows: per source and per category totals, lengths,
codebook usage, the run's shard timings, and (for the fidelity audit) a seeded sample of rows per group."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict

import numpy as np

from .dataset import list_units, read_unit, row_codes
from .fidelity import Reservoir, RowRef
from ..runstate import Totals, read_run
from ..schema import CODES, DURATION_S, KEY, METADATA, SOURCE
from ..storage import Storage

NO_CATEGORY = "(none)"


class NotAnOutput(Exception):
    """The folder is not a pipeline output this reader can read (no manifest, not JSON, an older schema)."""


def open_run(output_dir: str):
    """read_run, with every way of not being an output as NotAnOutput (a clear message, no traceback)."""
    from ..runstate import OutputError

    try:
        return read_run(Storage(output_dir))
    except (FileNotFoundError, NotADirectoryError, ValueError, OutputError) as error:
        raise NotAnOutput(str(error)) from None


def row_category(row: dict) -> str | None:
    """The `category` column, else the WebDataset `metadata` JSON's `category`, else None."""
    category = row.get("category")
    if category is None and row.get(METADATA):
        try:
            meta = json.loads(row[METADATA])
        except ValueError:
            meta = None
        category = meta.get("category") if isinstance(meta, dict) else None
    return None if category is None else str(category)


def collect(output_dir: str, audit_rows: int = 0, seed: int = 0) -> dict:
    """Everything the summary and the report show. audit_rows > 0: also choose that many rows per category
    and per source (uniformly at random, seeded) for the fidelity audit."""
    run = open_run(output_dir)
    manifest = run.manifest
    size = manifest["codebook_size"]
    usage = np.zeros((manifest["num_codebooks"], size), np.int64)
    per_source = defaultdict(lambda: {"samples": 0, "seconds": 0.0, "tokens": 0})
    per_category = defaultdict(lambda: {"samples": 0, "seconds": 0.0, "tokens": 0})
    by_category, by_source = Reservoir(audit_rows, seed), Reservoir(audit_rows, seed)
    durations = []
    for _, name, group in list_units([output_dir]):
        table = read_unit(output_dir, name, group)
        rows = table.select([c for c in table.column_names if c != CODES]).to_pylist()
        for index, (row, codes) in enumerate(zip(rows, row_codes(table))):
            category = row_category(row)
            source = os.path.basename(row[SOURCE])
            for bucket in (per_source[source], per_category[category or NO_CATEGORY]):
                bucket["samples"] += 1
                bucket["seconds"] += row[DURATION_S]
                bucket["tokens"] += codes.size
            durations.append(row[DURATION_S])
            for k in range(min(codes.shape[0], usage.shape[0])):
                usage[k] += np.bincount(codes[k].astype(np.int64), minlength=size)[:size]
            if audit_rows:
                ref = RowRef(output_dir, name, group, index, row[KEY], row[SOURCE], float(row[DURATION_S]))
                by_category.offer(category or NO_CATEGORY, ref)
                by_source.offer(source, ref)
    has_category = any(name != NO_CATEGORY for name in per_category)
    return {
        "output_dir": output_dir,
        "codec": manifest["codec"],
        "bandwidth": manifest["bandwidth"],
        "num_codebooks": manifest["num_codebooks"],
        "manifest": manifest,
        "records": run.records,
        "shard_ids": {r.source: shard_id for shard_id, r in run.records.items()},
        "totals": Totals(run.records.values()).as_dict(),
        "per_source": dict(per_source),
        "per_category": dict(per_category),
        "durations": np.array(durations, dtype=np.float64),
        "usage": usage,
        # the audit groups by category when rows have one, else by source
        "audit": (by_category.kept, "category") if has_category else (by_source.kept, "source"),
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
    if t.get("shard_error_reasons"):
        lines.append("failed shards by reason: " + ", ".join(
            f"{k} {v}" for k, v in Counter(t["shard_error_reasons"]).most_common()))
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


def fidelity_text(result) -> str:
    """The audit's per-group means, one line per group and codebook count."""
    lines = [f"fidelity audit ({result.per_row} row(s) per {result.grouped_by}, first {result.max_seconds:g} s of each; "
             f"SI-SNR dB, higher is better; log-mel distance dB, lower is better):"]
    if str(result.codec.get("spec", "")).startswith("random:"):
        lines.append("  (random codec weights: the reconstructions are meaningless, the numbers with them)")
    for group, entry in result.per_group().items():
        lines.append(f"  {group}: {entry['rows']} row(s), {entry['seconds']:.1f} s")
        for k, m in entry["levels"].items():
            lines.append(f"    {k} codebooks ({result.bandwidths[k]:g} kbps): SI-SNR {m['si_snr_db']:.2f} dB, "
                         f"mel distance {m['mel_distance_db']:.2f} dB")
    return "\n".join(lines)
