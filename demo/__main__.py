"""Write the offline demo's synthetic WebDataset where configs/demo.yaml reads it (`bash jobs/dev.sh demo` runs this)."""

from __future__ import annotations

import argparse
import sys

from .synth import ensure_demo_webdataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("urls", nargs="+", help="local tar paths, brace patterns allowed: demo_data/demo-{000..003}.tar")
    urls = parser.parse_args(argv).urls
    try:
        written = ensure_demo_webdataset(urls)
    except ValueError as error:
        sys.exit(f"python -m demo: {error}")  # exit status 1, the message on stderr
    print(f"demo corpus: {f'wrote {len(written)} tars' if written else 'already there'} ({' '.join(urls)})")


if __name__ == "__main__":
    main()
