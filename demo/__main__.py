"""Write the offline demo's synthetic WebDataset where configs/demo.yaml reads it (`bash jobs/dev.sh demo` runs this)."""

from __future__ import annotations

import argparse
import sys

from .synth import ensure_demo_webdataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("urls", nargs="+", help="local tar paths, brace patterns allowed: demo_data/demo-{000..003}.tar")
    args = parser.parse_args(argv)
    try:
        written = ensure_demo_webdataset(args.urls)
    except ValueError as error:
        print(f"python -m demo: {error}", file=sys.stderr)
        return 2
    print(f"demo corpus: {'wrote ' + str(len(written)) + ' tars' if written else 'already there'} ({' '.join(args.urls)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
