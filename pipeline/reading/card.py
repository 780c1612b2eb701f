"""`python -m pipeline.reading.card OUTPUT_DIR`: write the output's dataset card, `README.md` beside `data/`.

The card's YAML header is what the Hub and `datasets.load_dataset(OUTPUT_DIR)` read: one `default` config
whose train split is `data/*.parquet` (so `errors/` and the run state are never rows), and the features of
the run's schema as the installed `datasets` writes them. The body states what the codes are (codec, commit,
convention, bandwidth, codebooks, frame rate), how much there is (hours, rows, error records, failed shards),
where it came from (the source and its settings), what each column holds (`schema.COLUMNS`), and a snippet that
decodes one row.

Exit status: 0 written; 2 not an output folder (nothing written).
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from ..runstate import Totals
from ..schema import column_doc, schema_from_text
from ..storage import Storage
from ..tokenizer import tokenizer_class
from .stats import NotAnOutput, open_run

CARD = "README.md"
# what an output written before `codec.convention` existed followed: the model card's encode
DEFAULT_CONVENTION = "model_card"


def _features(schema) -> list:
    import datasets

    return datasets.Features.from_arrow_schema(schema.remove_metadata())._to_yaml_list()


def _header(schema, tags: list[str]) -> str:
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
        "dataset_info": {"features": _features(schema)},
        "tags": tags,
    }
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n"


def card_text(output_dir: str) -> str:
    run = open_run(output_dir)
    manifest = run.manifest
    schema = schema_from_text(manifest["output_schema"])
    totals = Totals(run.records.values()).as_dict()
    identity, codec = manifest["identity"], manifest["codec"]
    source = dict(identity.get("source", {}))
    configured = {k: v for k, v in manifest.get("config", {}).get("source", {}).items()
                  if k in ("urls", "path", "split") and v}
    facts = [
        ("codec", f"`{codec.get('spec')}` ({codec.get('format')})"),
        ("commit", f"`{codec.get('revision')}`"),
        ("weights sha256", f"`{codec.get('weights_sha256')}`"),
        ("convention", f"`{identity.get('convention', DEFAULT_CONVENTION)}`"),
        ("bandwidth", f"{manifest['bandwidth']:g} kbps"),
        ("codebooks", f"{manifest['num_codebooks']} of {manifest['codebook_size']} codes each"),
        ("frame rate", f"{manifest['frame_rate']:g} frames/s"),
        ("hours", f"{totals['audio_seconds'] / 3600:.2f}"),
        ("rows", f"{totals['rows']:,}"),
        ("error records", f"{totals['errors']:,} samples"
                          + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(totals['error_reasons'].items()))})"
                             if totals["error_reasons"] else "")),
        ("failed shards", f"{totals['shards_failed']:,} (their samples are not in `data/`)"),
        ("done shards", f"{totals['shards_done']:,}"),
        ("source", f"`{json.dumps(source, sort_keys=True)}` {json.dumps(configured, sort_keys=True)}"),
    ]
    columns = "\n".join(f"- `{f.name}` ({f.type}): {column_doc(schema, f.name)}" for f in schema)
    table = "\n".join(f"| {name} | {value} |" for name, value in facts)
    tokenizer = tokenizer_class(str(codec.get("spec")))
    return f"""{_header(schema, tokenizer.CARD_TAGS)}
# {tokenizer.CARD_TITLE}

Discrete audio tokens written by audiotok: one row per clip, `codes[k][t]` the code of codebook `k` at frame
`t` (`num_codebooks` x `num_frames`). Rows whose audio could not be encoded are not here; they are counted
below and listed in `errors/`.

| | |
| --- | --- |
{table}

## Columns

{columns}

## Decode one row

{tokenizer.decode_snippet(codec, manifest['num_codebooks'])}"""


def write_card(output_dir: str) -> str:
    """Write OUTPUT_DIR/README.md; returns its text."""
    text = card_text(output_dir)
    Storage(output_dir).write_bytes(CARD, text.encode())
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    args = parser.parse_args(argv)
    try:
        write_card(args.output_dir)
    except NotAnOutput as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.output_dir.rstrip('/')}/{CARD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
