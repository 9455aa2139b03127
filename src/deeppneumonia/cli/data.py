"""`deeppneumonia data inspect | prepare`: look at a data set, build its cache."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deeppneumonia.cli.common import DEFAULT_CACHE, add_source_args


def cmd_data_inspect(args: argparse.Namespace) -> int:
    """`deeppneumonia data inspect PATH`: print counts, sizes, formats and every problem."""
    from deeppneumonia.data.sources import load_source
    from deeppneumonia.data.summary import format_summary, summarize

    manifest = load_source(args.path, args.source, strict=args.strict, patient_regex=args.patient_regex)
    summary = summarize(manifest, decode=not args.no_decode, progress=not args.quiet)
    print(format_summary(summary, max_problems=args.max_problems))
    if args.json:
        args.json.write_text(json.dumps(summary.to_dict(), indent=1))
        print(f"\nfull report: {args.json}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """`deeppneumonia data prepare PATH`: build (or reuse) the preprocessing cache."""
    from deeppneumonia.data.cache import build_cache
    from deeppneumonia.data.sources import load_source

    manifest = load_source(args.path, args.source, strict=args.strict, patient_regex=args.patient_regex)
    cache = build_cache(manifest, args.size, args.cache_dir, args.resize, args.workers, progress=not args.quiet)
    n_bad = int((~cache.valid).sum())
    print(f"cache: {cache.path}\nimages: {int(cache.valid.sum())} ready at {args.size}px ({args.resize}), "
          f"{n_bad} skipped; {len(manifest.problems)} problem(s) in total (see `deeppneumonia data inspect`)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this module's commands to the ``deeppneumonia`` parser."""
    data = sub.add_parser("data", help="inspect and prepare data sets").add_subparsers(dest="data_cmd",
                                                                                      required=True)
    p = data.add_parser("inspect", help="counts, sizes, formats and every problem in a data set")
    add_source_args(p)
    p.add_argument("--no-decode", action="store_true", help="read headers only (fast; misses truncated files)")
    p.add_argument("--json", type=Path, default=None, help="also write the full report as JSON")
    p.add_argument("--max-problems", type=int, default=50, help="problems to print (all go to --json)")
    p.set_defaults(func=cmd_data_inspect)

    p = data.add_parser("prepare", help="build the preprocessing cache (decode once, resize, memory-map)")
    add_source_args(p)
    p.add_argument("--size", type=int, default=224, help="working size in pixels (square)")
    p.add_argument("--resize", default="squash", choices=["squash", "letterbox"],
                   help="squash (stretch to a square) or letterbox (keep the aspect, pad)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="cache folder (default: ~/.cache/deeppneumonia)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.set_defaults(func=cmd_data_prepare)
