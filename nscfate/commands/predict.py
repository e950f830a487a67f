"""``nscfate predict IMAGE... --model MODEL``: predict the differentiation condition of cell images."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from nscfate.commands import count

HELP = "predict the differentiation condition of single-cell brightfield images"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files (PNG, JPEG, BMP, TIFF), or folders: every image in them. Brightfield "
                             "only: IFC marker-channel files (*_Ch2 .. *_Ch4) are skipped in folders and refused "
                             "when named (the markers define the label)")
    parser.add_argument("--model", "-m", default=None,
                        help="model directory or registered name[@version] (default: the registry's default)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line: the prediction, or {file, error} for a refused file")
    parser.add_argument("--batch-size", type=count(), default=64, help="images per model call (default 64)")


def run(args: argparse.Namespace) -> int:
    from nscfate.data import BRIGHTFIELD_CHANNEL, IMAGE_EXTENSIONS, file_channel, image_files
    from nscfate.errors import ImageError, ModelError
    from nscfate.predictor import Predictor

    if args.batch_size < 1:
        log.error("--batch-size must be at least 1")
        return 2
    paths, skipped = [], 0
    for arg in args.images:  # folders are expanded before the model loads, so a wrong one fails fast
        if os.path.isdir(arg):
            found = image_files(arg)
            if not found:
                log.error("%s: a folder with no image files (%s) in it", arg, ", ".join(IMAGE_EXTENSIONS))
                return 2
            # an IFC export holds every channel of every cell; the model reads brightfield only
            kept = [p for p in found if file_channel(p) in (None, BRIGHTFIELD_CHANNEL)]
            if not kept:
                log.error("%s: a folder with no brightfield images in it (only marker-channel files, e.g. %s)",
                          arg, os.path.basename(found[0]))
                return 2
            skipped += len(found) - len(kept)
            paths.extend(kept)
        else:
            paths.append(arg)
    if skipped:
        log.info("skipped %d marker-channel files in the folders (brightfield Ch%d only)", skipped, BRIGHTFIELD_CHANNEL)
    try:
        predictor = Predictor.load(args.model, batch_size=args.batch_size)
    except ModelError as exc:  # a broken model directory is the caller's to fix: no traceback
        log.error("%s", exc)
        return 2
    if predictor.info.synthetic:
        log.warning("%s %s was trained on SYNTHETIC data: its predictions say nothing about real cells",
                    predictor.name, predictor.version)
    refused = 0
    results = predictor.predict_many(paths)  # a marker-channel file named here is refused in its place
    for path, result in zip(paths, results):
        if isinstance(result, ImageError):
            refused += 1
            record = {"file": path, "error": {"code": result.code, "message": str(result)}}
            if not args.json:
                log.error("%s", result)
        else:
            record = {"file": path, **result.to_dict()}
        if args.json:
            sys.stdout.write(json.dumps(record) + "\n")
        elif "error" not in record:
            probs = "  ".join(f"{k}={p:.3f}" for k, p in record["probabilities"].items())
            sys.stdout.write(f"{path}\t{record['predicted_class']}\t{record['confidence']:.3f}\t{probs}\n")
            for warning in record["warnings"]:
                sys.stdout.write(f"  warning: {warning}\n")
    sys.stdout.flush()
    if refused:
        log.warning("%d of %d files refused", refused, len(paths))
    return 1 if refused else 0
