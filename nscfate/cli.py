"""The ``nscfate`` command line.

Each subcommand lives in ``nscfate/commands/<name>.py`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import nothing heavy at module
level (TensorFlow, OpenCV, matplotlib are imported inside ``run``), so ``nscfate --help`` is instant.
Bad input (an ``nscfate.errors.InputError``), a broken model directory (``ModelError``) and a file
that cannot be read or written (``OSError``: a missing output folder, an output path that is a file)
end with a one-line message and exit status 2, never a traceback (``-v`` adds it to the log).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from nscfate import __version__
from nscfate.errors import NscFateError

#: Subcommands in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("synth", "inspect", "audit", "train", "evaluate", "predict", "explain", "models")

log = logging.getLogger("nscfate")


def get_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nscfate",
        description="Predict neural stem cell differentiation condition from single-cell brightfield images.",
    )
    parser.add_argument("--version", action="version", version=f"nscfate {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"nscfate.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # TensorFlow's C++ start-up chatter is not for users.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    parser = get_arg_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    configure_logging(args.verbose, args.quiet)
    try:
        return int(args._run(args) or 0)
    except (NscFateError, OSError) as exc:
        log.debug("details", exc_info=True)
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.warning("interrupted" + ("; run the same command again to resume from the last finished epoch"
                                     if args.command == "train" else ""))
        return 130
