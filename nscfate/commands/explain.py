"""``nscfate explain MODEL_DIR IMAGE --out heatmap.png``: Grad-CAM overlay of one prediction."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "Grad-CAM heat map of what the model looked at for one image (overlay PNG)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR", help="model directory or registered name[@version]")
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("--out", required=True, metavar="PNG", help="overlay PNG to write")
    parser.add_argument("--class", dest="class_key", metavar="KEY",
                        help="explain this class instead of the predicted one (a class key, e.g. oligo)")


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from nscfate.errors import ConfigError, ModelError
    from nscfate.predictor import Predictor

    if Path(args.out).suffix.lower() != ".png":
        logging.getLogger(__name__).error("--out %s: the overlay is a PNG; name the file .png", args.out)
        return 2
    try:
        predictor = Predictor.load(args.model)
    except ModelError as exc:
        logging.getLogger(__name__).error("%s", exc)
        return 2
    if predictor.info.synthetic:
        logging.getLogger(__name__).warning("%s was trained on SYNTHETIC data", predictor.name)
    prepared = predictor.prepare(args.image)
    result = predictor.predict_prepared([prepared])[0]
    if args.class_key is None:
        index = result.predicted_index
    elif args.class_key in predictor.classes:
        index = predictor.classes.index(args.class_key)
    else:
        raise ConfigError(f"unknown class {args.class_key!r}; this model's classes: {', '.join(predictor.classes)}")
    Path(args.out).write_bytes(predictor.gradcam_png(prepared, class_index=index))
    sys.stdout.write(json.dumps({"file": args.image, "explained_class": predictor.classes[index],
                                 "heatmap": args.out, **result.to_dict()}) + "\n")
    return 0
