"""The ``nscfate`` subcommands: each module adds its options (``add_arguments``) and runs (``run``)."""

from __future__ import annotations

import argparse


def count(minimum: int = 1):
    """An argparse ``type`` for whole numbers of at least ``minimum``: ``--max-images -1`` is a usage
    error, not a traceback from deep inside the command."""
    def parse(text: str) -> int:
        value = int(text)  # argparse reports a ValueError as "invalid int value"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = "int"
    return parse
