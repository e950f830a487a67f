"""``nscfate models``: list the registered (shipped) models."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "list the registered models (name, version, task, architecture, held-out accuracy)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the model cards as a JSON list")
    parser.add_argument("--root", default=None,
                        help="registry folder (default: $NSCFATE_MODELS_DIR, else the models/ folder shipped "
                             "with nscfate, whatever the current folder)")
    parser.add_argument("--register", metavar="MODEL_DIR", default=None,
                        help="add a model directory that lies under the registry folder")
    parser.add_argument("--default", action="store_true", help="with --register: make it the default model")


def run(args: argparse.Namespace) -> int:
    import logging

    from nscfate.errors import ModelError
    from nscfate.registry import Registry

    log = logging.getLogger(__name__)
    if args.default and not args.register:
        log.error("--default goes with --register MODEL_DIR (it makes that model the default)")
        return 2
    try:
        registry = Registry(args.root)
    except ModelError as exc:
        log.error("%s", exc)
        return 2
    if args.register:
        try:
            before = {e.ref: e.path for e in registry.entries}
            entry = registry.add(args.register, default=args.default)
        except ModelError as exc:  # not under the registry folder, not a model directory, ...: the user's to fix
            log.error("%s", exc)
            return 2
        if before.get(entry.ref) not in (None, entry.path):
            log.warning("%s was registered from %s; it now points to %s", entry.ref, before[entry.ref], entry.path)
        sys.stdout.write(f"registered {entry.ref} ({entry.path})\n")
        return 0
    cards = registry.list()
    if args.json:
        sys.stdout.write(json.dumps(cards, indent=2) + "\n")
        return 0
    if not cards:
        sys.stdout.write(f"no models registered in {registry.file}\n")
        return 0
    rows = [("", "model", "task", "arch", "test acc", "grouped acc", "data")]
    for c in cards:
        acc = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        rows.append(("*" if c["default"] else "", f"{c['name']}@{c['version']}", c["task"], c["arch"],
                     acc(c["test_accuracy"]), acc(c["grouped_test_accuracy"]),
                     "synthetic" if c["synthetic_training_data"] else "real"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")
    sys.stdout.write("(* default)\n")
    return 0
