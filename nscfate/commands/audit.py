"""``nscfate audit DATA``: look for shortcuts (background-only, crop-size-only baselines)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from nscfate.commands import count

HELP = ("check a dataset for shortcuts (can background or crop size alone predict the labels?) and for copies "
        "of one picture (every image is hashed)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA", help="dataset: IFC export, root/<class>/ folders or CSV manifest")
    parser.add_argument("--task", default="medium4", choices=("medium4", "astro_vs_oligo"))
    parser.add_argument("--channel", type=int, default=1)
    parser.add_argument("--max-images", type=count(), default=4000, help="images used (class-stratified, seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a shortcut is found, 3 when there are too few images to tell")


def run(args: argparse.Namespace) -> int:
    from nscfate.audit import audit, format_report
    from nscfate.data import describe_copies

    report = audit(args.data, task=args.task, channel=args.channel, max_images=args.max_images, seed=args.seed)
    sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n" if args.json else format_report(report))
    for warning in report.warnings:
        logging.getLogger("nscfate.audit").warning("%s", warning)
    if report.copies.get("images"):
        logging.getLogger("nscfate.audit").warning("%s", describe_copies(report.copies))
    if not args.strict:
        return 0
    return 1 if report.flagged else 3 if not report.conclusive else 0
