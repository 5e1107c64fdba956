"""``python -m stpn_analysis report RUNS_DIR [--out DIR]``.

Bad input (no such directory, no readable run) is a user error, not a bug: it is printed as one
line and the exit status is 1, with no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stpn_analysis.report import write_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stpn_analysis", description="Tables and figures from STPN runs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser(
        "report", help="write summary.csv, summary.md and figures/*.png from a runs directory"
    )
    report.add_argument("runs_dir", metavar="RUNS_DIR", help="e.g. runs/ or runs/ar")
    report.add_argument("--out", metavar="DIR", default=None, help="output dir (default RUNS_DIR)")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.runs_dir, args.out)
    except (ValueError, OSError) as exc:
        print(f"stpn_analysis: error: {exc}", file=sys.stderr)
        return 1
    print(paths["summary_md"].read_text(), end="")
    tables = [paths["summary_csv"], paths["summary_md"]]
    if "generalisation_md" in paths:
        print("\n" + paths["generalisation_md"].read_text(), end="")
        tables += [paths["generalisation_csv"], paths["generalisation_md"]]
    print(f"\ntables: {', '.join(map(str, tables))}")
    figures = [path for name, path in paths.items() if path.suffix == ".png"]
    print(f"figures ({len(figures)}) in {figures[0].parent if figures else '-'}:")
    for path in figures:
        print(f"  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
