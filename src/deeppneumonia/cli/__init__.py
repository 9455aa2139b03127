"""Command line: parses arguments and calls the library. No logic lives here.

One module per command group: :mod:`.data` (inspect, prepare), :mod:`.train` (pretrain, train, run),
:mod:`.evaluate` (evaluate, explain, probe), :mod:`.studies` (ablate, compare, multilabel, localize) and
:mod:`.deploy` (predict, export, serve); :mod:`.common` holds what they share.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from deeppneumonia.cli import data, deploy, evaluate, studies, train
from deeppneumonia.errors import DeepPneumoniaError

log = logging.getLogger("deeppneumonia")


def build_parser() -> argparse.ArgumentParser:
    """The ``deeppneumonia`` argument parser with every command."""
    from deeppneumonia import __version__

    parser = argparse.ArgumentParser(prog="deeppneumonia", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"deeppneumonia {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (data, train, studies, evaluate, deploy):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``deeppneumonia`` command line; returns the exit status (2 for a user-facing error)."""
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
    except ImportError as exc:  # an optional extra that a library call imported: one line, never a traceback
        from deeppneumonia.extras import as_missing_extra

        hint = as_missing_extra(exc)
        if hint is None:
            raise
        print(f"error: {hint}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment (a missing folder, permissions, a full disk), not a bug: one line
        log.debug("OS error", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        from deeppneumonia.runtime import distributed

        distributed.cleanup()


__all__ = ["build_parser", "main"]
