"""Give an existing model directory the plots its card carries (held-out confusion matrix, ROC curves,
calibration; the grouped split's confusion matrix), for models exported before ``nscfate train`` drew
them.

The held-out images come from the training run's split manifest (``split.json``). When the run folder
is gone, ``--rebuild-split`` splits the data again from the model's own ``config.json`` (the split is
seeded) and proceeds only if the rebuilt manifest has the hash recorded in the model's metadata, i.e.
the same files with the same bytes in the same subsets. Predictions go through the Predictor, i.e. the
stored (possibly float16) weights, while training evaluated the float32 model before export: the
confusion matrices may therefore differ from the ones in the model's ``metrics.json`` by an image on a
decision boundary, no more than ``--tolerance`` images per split, and the card says so. The model
directory gets the plots (``nscfate.modeldir.attach_plots``) and is registered again when it lies under
the registry root.

    python scripts/card_plots.py models/resnet50-medium4 --rebuild-split
    python scripts/card_plots.py MODEL_DIR --split RUN_DIR/split.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

log = logging.getLogger("card_plots")


def rebuild_split(info, out: Path) -> Path:
    """Split the model's training data again from its config; the manifest path (hash checked)."""
    from nscfate.config import load_config
    from nscfate.training import load_splits, write_manifest

    cfg = load_config(overrides=info.config)
    digest = write_manifest(out, load_splits(cfg).parts(), cfg)
    want = info.metadata.get("training_data", {}).get("manifest_sha256")
    if digest != want:
        raise SystemExit(f"the rebuilt split of {cfg.data.path} has manifest hash {digest}, the model was "
                         f"trained on {want}: not the same data (regenerate it exactly first)")
    log.info("rebuilt the split of %s: manifest hash %s matches the model's", cfg.data.path, digest)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="model directory")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", type=Path, help="the training run's split.json")
    src.add_argument("--rebuild-split", action="store_true", help="split the data again from the model's config")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--tolerance", type=int, default=2,
                    help="images per split whose predicted class may differ from training's evaluation")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from nscfate.evaluation import card_plots, predict_samples
    from nscfate.metrics import confusion_matrix
    from nscfate.modeldir import attach_plots, read_model_dir
    from nscfate.predictor import Predictor
    from nscfate.registry import Registry
    from nscfate.training import read_manifest

    info = read_model_dir(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        split = rebuild_split(info, Path(tmp) / "split.json") if args.rebuild_split else args.split
        predictor = Predictor.from_directory(args.model, batch_size=args.batch_size)
        predictions, moved = {}, {}
        for subset in ("test", "grouped_test"):
            samples = [s for s in read_manifest(split, subset) if s.label in predictor.classes]
            if not samples:
                continue
            labels, probs, _, refused = predict_samples(predictor, samples, args.batch_size)
            if refused:
                raise SystemExit(f"{len(refused)} {subset} image(s) could not be read, e.g. {refused[0]}")
            cm = confusion_matrix(labels, probs.argmax(axis=1), len(predictor.classes))
            recorded = np.asarray(info.metrics.get(subset, {}).get("confusion_matrix"))
            if cm.shape != recorded.shape:
                raise SystemExit(f"{subset}: the model's metrics.json has no {cm.shape} confusion matrix")
            moved[subset] = int(np.abs(cm - recorded).sum()) // 2
            if moved[subset] > args.tolerance:
                raise SystemExit(f"{subset}: the predictions give confusion matrix {cm.tolist()}, the model's "
                                 f"metrics.json records {recorded.tolist()}")
            log.info("%s: %d images, confusion matrix %s the recorded one (%d image(s) moved)", subset,
                     len(labels), "equals" if not moved[subset] else "differs from", moved[subset])
            predictions[subset] = (labels, probs)
    differ = [f"{n} image(s) of `{s}`" for s, n in moved.items() if n]
    note = (f"Drawn after export by `scripts/card_plots.py` from the stored weights "
            f"({info.metadata.get('weights_dtype', 'float32')}) on the held-out images of the training split"
            + (" (rebuilt from the model's config; its manifest hash matches the one above)" if args.rebuild_split
               else "") + ". "
            + (f"Against the float32 evaluation in the tables above, {' and '.join(differ)} changed predicted "
               "class (on a decision boundary)." if differ else "They agree image for image with the tables above."))
    info = attach_plots(args.model, card_plots(predictions, predictor.classes, predictor.display_names), note)
    log.info("attached %d plots to %s", len(info.plots), args.model)
    registry = Registry()
    if args.model.resolve().is_relative_to(registry.root.resolve()):
        registry.add(args.model, default=registry.get().name == info.name)
        log.info("registered %s@%s again in %s", info.name, info.version, registry.file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
