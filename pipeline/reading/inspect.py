"""`python -m pipeline.reading.inspect OUTPUT_DIR`: what a run produced, as a summary and an HTML report.

    python -m pipeline.reading.inspect outputs/demo                      # summary + outputs/demo/report.html
    python -m pipeline.reading.inspect outputs/demo --fidelity 3         # + audit 3 rows per category
    python -m pipeline.reading.inspect outputs/demo --decode KEY -o x.wav  # listen to one sample

The summary covers samples, hours and tokens per source and per category, errors by reason, the
length distribution, per-codebook usage and entropy, and throughput over the run; the report draws
them (figures in report_files/ beside report.html). --fidelity N re-reads N rows per category from
the source the manifest records, decodes their codes with the manifest's codec, and scores the
reconstructions (SI-SNR, log-mel distance) at each bandwidth the codes allow, with players and
spectrograms in the report. Decoding uses the codec the manifest records (spec, revision or seed),
so it matches the codes.

Exit status: 0 done; 2 bad arguments, not an output folder, or a --decode key not in it;
3 the fidelity audit cannot read an audited row's original audio (its source shard moved, was
deleted, or changed since the run). On an error no report or WAV is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

from .dataset import list_units, read_unit, row_codes
from .fidelity import AUDIT_MAX_SECONDS, SourceUnavailable, audit, codec_from_manifest
from .stats import NotAnOutput, collect, fidelity_text, open_run, summary_text
from ..schema import DURATION_S, KEY

EXIT_BAD_INPUT = 2
EXIT_SOURCE_UNAVAILABLE = 3


class KeyNotInOutput(LookupError):
    pass


def decode_key(output_dir: str, key: str, out_path: str) -> float:
    """Decode one sample's codes to a 24 kHz WAV with the manifest's codec; returns its seconds."""
    import soundfile

    manifest = open_run(output_dir).manifest
    for _, name, group in list_units([output_dir]):
        table = read_unit(output_dir, name, group)
        keys = table.column(KEY).to_pylist()
        if key in keys:
            row = keys.index(key)
            (codes,) = row_codes(table.slice(row, 1))
            codec = codec_from_manifest(manifest)
            # the clip's length at the codec's rate, from its duration: it also tells the codec whether the
            # authors' convention encoded the clip with leading zeros (cut off again here)
            length = int(round(table.column(DURATION_S)[row].as_py() * codec.sample_rate))
            (audio,) = codec.decode([codes], lengths=[length])
            folder = os.path.dirname(os.path.abspath(out_path))
            staged = os.path.join(folder, f".tmp-{uuid.uuid4().hex}.wav")
            try:
                soundfile.write(staged, audio, codec.sample_rate)
                os.replace(staged, out_path)
            finally:
                if os.path.exists(staged):
                    os.unlink(staged)
            return audio.size / codec.sample_rate
    raise KeyNotInOutput(f"no sample with key {key!r} in {output_dir}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.reading.inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    parser.add_argument("--report", help="HTML report path (default OUTPUT_DIR/report.html when local, else "
                                         "./report.html); its figures and audio go to <stem>_files/ beside it")
    parser.add_argument("--decode", metavar="KEY", help="decode this sample's codes to audio")
    parser.add_argument("-o", "--out", default=None, help="WAV path for --decode (default KEY.wav)")
    parser.add_argument("--fidelity", metavar="N", type=_positive, default=0,
                        help="audit N rows per category (per source without categories): original vs reconstruction")
    parser.add_argument("--seed", type=int, default=0, help="which rows the audit picks")
    parser.add_argument("--fidelity-seconds", type=float, default=AUDIT_MAX_SECONDS,
                        help=f"score at most this much of each audited clip (default {AUDIT_MAX_SECONDS:g})")
    args = parser.parse_args(argv)
    try:
        if args.decode:
            out = args.out or f"{args.decode.replace('/', '_')}.wav"
            seconds = decode_key(args.output_dir, args.decode, out)
            print(f"wrote {out} ({seconds:.2f} s at 24 kHz)")
            return 0
        stats = collect(args.output_dir, audit_rows=args.fidelity, seed=args.seed)
        result = None
        if args.fidelity:
            chosen, grouped_by = stats["audit"]
            result = audit(stats["manifest"], stats["shard_ids"], chosen, grouped_by, args.fidelity,
                           max_seconds=args.fidelity_seconds)
        report = args.report or (os.path.join(args.output_dir, "report.html") if "://" not in args.output_dir
                                 else "report.html")
        from .report import write_report

        files = write_report(report, stats, result)
    except (NotAnOutput, KeyNotInOutput) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SourceUnavailable as error:
        print(f"error: fidelity audit: {error}. No report written; restore the source at the path the manifest "
              "records, or run without --fidelity", file=sys.stderr)
        return EXIT_SOURCE_UNAVAILABLE
    print(summary_text(stats))
    if result is not None:
        print(fidelity_text(result))
    print(f"report: {report} (figures and audio in {files})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
