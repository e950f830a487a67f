"""``nscfate inspect``: what is in a dataset (counts per class, group and channel; image sizes)."""

from __future__ import annotations

import argparse
import json
import sys

from nscfate.commands import count

HELP = ("summarise a dataset: counts per class, group and channel, copies of one picture (every image is "
        "hashed), image sizes and bit depths")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="dataset directory (IFC export or class folders) or CSV manifest")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--max-images", type=count(), default=None,
                        help="decode at most this many images (random sample) for the size statistics")
    parser.add_argument("--seed", type=int, default=0, help="seed of that sample")


def run(args: argparse.Namespace) -> int:
    from nscfate.data import inspect_dataset

    report = inspect_dataset(args.data, max_images=args.max_images, seed=args.seed)
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else format_report(report))
    return 0


#: Rows a table prints; the rest is summed up in one line (--json has them all).
MAX_ROWS = 40


def _table(title: str, counts: dict, total: int) -> list[str]:
    shown = dict(list(counts.items())[:MAX_ROWS])
    width = max([len(str(k)) for k in shown] + [len(title)])
    lines = [f"{title:<{width}}  {'count':>8}  {'share':>6}"]
    lines += [f"{str(k):<{width}}  {v:>8}  {v / max(total, 1):>6.1%}" for k, v in shown.items()]
    if len(counts) > MAX_ROWS:
        rest = sum(counts.values()) - sum(shown.values())
        lines.append(f"... {len(counts) - MAX_ROWS} more {title}s ({rest} images; --json lists them all)")
    return lines


def format_report(r: dict) -> str:
    """The human-readable summary printed by ``nscfate inspect``."""
    from nscfate.data import describe_copies

    lines = [f"dataset: {r['source']}", f"images (brightfield): {r['images']}   files (all channels): {r['files']}", ""]
    lines += _table("class", r["classes"], r["images"]) + [""]
    lines += _table("group", r["groups"], r["images"])
    if r["images"] and len(r["groups"]) > r["images"] / 2:
        lines.append("(most images are a group of their own: the names carry no acquisition batch; see docs/DATA.md)")
    lines.append("")
    lines += _table("channel", {("brightfield 1" if k == "1" else "unnamed" if k == "none" else f"marker {k}"): v
                                for k, v in r["channels"].items()}, r["files"]) + [""]
    lines += [describe_copies(r["copies"]), ""]
    if r["height"]:
        lines.append(f"{'size (px), ' + str(r['decoded']) + ' decoded':<24}  {'min':>5}  {'median':>6}  {'max':>5}")
        for dim in ("height", "width"):
            s = r[dim]
            lines.append(f"{dim:<24}  {s['min']:>5}  {s['median']:>6g}  {s['max']:>5}")
    lines.append("bit depths: " + ", ".join(f"{k} x{v}" for k, v in r["bit_depths"].items()))
    lines.append("formats: " + ", ".join(f"{k} x{v}" for k, v in r["formats"].items()))
    if r["unreadable"]:
        lines.append("UNREADABLE: " + ", ".join(f"{k} x{v}" for k, v in r["unreadable"].items()))
    return "\n".join(lines) + "\n"
