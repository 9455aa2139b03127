"""Command line: parses arguments and calls the library. No logic lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from deeppneumonia.errors import DeepPneumoniaError

log = logging.getLogger("deeppneumonia")

DEFAULT_CACHE = Path.home() / ".cache" / "deeppneumonia"


def _add_source_args(p: argparse.ArgumentParser) -> None:
    from deeppneumonia.data.sources import SOURCE_KINDS

    p.add_argument("path", type=Path, help="data folder or generic CSV file")
    p.add_argument("--source", default="auto", choices=SOURCE_KINDS, help="layout (default: detect)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad file or row instead of skipping")
    p.add_argument("--patient-regex", default=None, help="class-per-folder: regex whose first group is the patient")


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    from deeppneumonia.data.sources import load_source
    from deeppneumonia.data.summary import format_summary, summarize

    manifest = load_source(args.path, args.source, strict=args.strict, patient_regex=args.patient_regex)
    summary = summarize(manifest, decode=not args.no_decode, progress=not args.quiet)
    print(format_summary(summary, max_problems=args.max_problems))
    if args.json:
        args.json.write_text(json.dumps(summary.to_dict(), indent=1))
        print(f"\nfull report: {args.json}")
    return 0


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from deeppneumonia.data.cache import build_cache
    from deeppneumonia.data.sources import load_source

    manifest = load_source(args.path, args.source, strict=args.strict, patient_regex=args.patient_regex)
    cache = build_cache(manifest, args.size, args.cache_dir, args.resize, args.workers, progress=not args.quiet)
    n_bad = int((~cache.valid).sum())
    print(f"cache: {cache.path}\nimages: {int(cache.valid.sum())} ready at {args.size}px ({args.resize}), "
          f"{n_bad} skipped; {len(manifest.problems)} problem(s) in total (see `deeppneumonia data inspect`)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from deeppneumonia import __version__

    parser = argparse.ArgumentParser(prog="deeppneumonia", description=__doc__)
    parser.add_argument("--version", action="version", version=f"deeppneumonia {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect and prepare data sets").add_subparsers(dest="data_cmd",
                                                                                      required=True)
    p = data.add_parser("inspect", help="counts, sizes, formats and every problem in a data set")
    _add_source_args(p)
    p.add_argument("--no-decode", action="store_true", help="read headers only (fast; misses truncated files)")
    p.add_argument("--json", type=Path, default=None, help="also write the full report as JSON")
    p.add_argument("--max-problems", type=int, default=50, help="problems to print (all go to --json)")
    p.set_defaults(func=_cmd_data_inspect)

    p = data.add_parser("prepare", help="build the preprocessing cache (decode once, resize, memory-map)")
    _add_source_args(p)
    p.add_argument("--size", type=int, default=224, help="working size in pixels (square)")
    p.add_argument("--resize", default="squash", choices=["squash", "letterbox"])
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.set_defaults(func=_cmd_data_prepare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.quiet = args.quiet or not sys.stderr.isatty()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except DeepPneumoniaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
