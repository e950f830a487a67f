"""``nscfate synth``: write the synthetic IFC-like benchmark (see ``nscfate.synth``)."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "generate the synthetic IFC-like brightfield benchmark in the real export layout"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 1,3,7; got {text!r}") from None


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip().lower() for v in text.split(",") if v.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nscfate.synth import CONFOUNDS, DEFAULT_DAYS, DEFAULT_MEDIA, DEFAULT_REPLICATES, FORMATS

    parser.add_argument("--out", required=True, help="output directory (created; per-medium folders inside)")
    parser.add_argument("--per-class", type=int, required=True, help="images per medium")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0); the output is a function of it")
    parser.add_argument("--days", type=_int_list, default=DEFAULT_DAYS,
                        help=f"days in culture, comma-separated (default {','.join(map(str, DEFAULT_DAYS))}); "
                             "class cues grow with the day")
    parser.add_argument("--replicates", type=int, default=DEFAULT_REPLICATES,
                        help=f"acquisition batches per day (default {DEFAULT_REPLICATES}: A-E)")
    parser.add_argument("--media", type=_str_list, default=DEFAULT_MEDIA,
                        help=f"medium keys, comma-separated (default {','.join(DEFAULT_MEDIA)})")
    parser.add_argument("--confound", choices=CONFOUNDS, default=None,
                        help="tie a nuisance to the class: 'background' reproduces the real oligo background shortcut")
    parser.add_argument("--format", choices=FORMATS, default="tif", help="tif (OME-TIFF, default) or bmp (24-bit grey)")
    parser.add_argument("--with-markers", action="store_true",
                        help="also write fluorescence marker channels Ch2-Ch4 (they encode the label)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (output does not depend on it)")


def run(args: argparse.Namespace) -> int:
    from nscfate.synth import SynthConfig, write_dataset

    config = SynthConfig(per_class=args.per_class, seed=args.seed, media=args.media, days=args.days,
                         replicates=args.replicates, confound=args.confound, format=args.format,
                         with_markers=args.with_markers)
    summary = write_dataset(config, args.out, jobs=max(1, args.jobs))
    sys.stdout.write(json.dumps({"out": args.out, "images": summary["images"], "files": summary["files"],
                                 "seconds": round(summary["seconds"], 2),
                                 "images_per_second": round(summary["images"] / max(summary["seconds"], 1e-9))})
                     + "\n")
    return 0
