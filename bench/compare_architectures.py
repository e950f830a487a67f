"""Compare the six architectures on the same synthetic benchmark and write docs/MODELS.md.

Every architecture is trained with the same config (task, data, split, epochs, batch size, learning
rate, seed) through ``nscfate.training.train`` and exported; then measured through the one inference
path (``nscfate.Predictor``): held-out accuracy and macro AUC (from the export's metrics.json),
parameters, training throughput, and inference throughput (images/s of ``predict_prepared`` on
batches of 64 prepared images, after warm-up, best of 3).

On 2 shared CPU cores the full paper setting is out of reach, so the default is a reduced one (a
subsample of the training set, few epochs); the table says which setting produced it.

    python bench/compare_architectures.py --data /work/data/synth-bench --work /work/data/compare \
        --subsample 0.25 --epochs 4 --out docs/MODELS.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import NON_NEGATIVE, POSITIVE, float_at_least  # noqa: E402
from nscfate.architectures import ARCHITECTURES  # noqa: E402

log = logging.getLogger("compare")


def inference_rate(model_dir: Path, batch: int = 64, repeats: int = 3) -> float:
    """Images/s of Predictor.predict_prepared on a batch of golden inputs (tiled to ``batch``)."""
    from nscfate.predictor import PreparedImage, Predictor

    p = Predictor.from_directory(model_dir)
    golden = np.load(model_dir / "golden_input.npy")
    arrays = [golden[i % len(golden)] for i in range(batch)]
    prepared = [PreparedImage(array=a, image={}) for a in arrays]
    p.predict_prepared(prepared)  # warm-up at this batch size
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        p.predict_prepared(prepared)
        best = min(best, time.perf_counter() - t0)
    return batch / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True, help="folder for the trained models and runs")
    ap.add_argument("--out", default="docs/MODELS.md")
    ap.add_argument("--task", default="medium4")
    ap.add_argument("--archs", default=",".join(ARCHITECTURES))
    ap.add_argument("--image-size", default="75x75")
    ap.add_argument("--subsample", type=float_at_least(0, exclusive=True), default=0.25)
    ap.add_argument("--epochs", type=POSITIVE, default=4)
    ap.add_argument("--batch-size", type=POSITIVE, default=32)
    ap.add_argument("--lr", type=float_at_least(0, exclusive=True), default=1e-3)
    ap.add_argument("--arch-lr", default="vgg19=1e-4",
                    help="per-architecture learning rates, e.g. vgg19=1e-4 (VGG has no BatchNorm and does not "
                         "train from scratch at 1e-3)")
    ap.add_argument("--grouped-holdout", type=float_at_least(0), default=0.15)
    ap.add_argument("--seed", type=NON_NEGATIVE, default=0)
    ap.add_argument("--render-only", action="store_true", help="rewrite the Markdown from earlier results")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from nscfate.config import load_config
    from nscfate.training import train

    work = Path(args.work)
    arch_lr = {k: float(v) for k, v in (item.split("=") for item in args.arch_lr.split(",") if item)}
    rows = []
    for arch in args.archs.split(","):
        out = work / f"{arch}-{args.task}"
        results_file = work / f"{arch}.json"
        if results_file.is_file():  # finished earlier: the script resumes where it stopped
            rows.append(json.loads(results_file.read_text()))
            continue
        if args.render_only:
            continue
        cfg = load_config(overrides={
            "task": args.task, "out": str(out),
            "data": {"path": args.data, "subsample": args.subsample, "grouped_holdout": args.grouped_holdout,
                     "seed": args.seed},
            "model": {"arch": arch, "input_size": args.image_size},
            "train": {"epochs": args.epochs, "batch_size": args.batch_size,
                      "learning_rate": arch_lr.get(arch, args.lr),
                      "seed": args.seed, "early_stopping_patience": 0},
            "export": {"name": f"compare-{arch}", "version": "0.0.1", "weights_dtype": "float32"},
        })
        result = train(cfg, overwrite=True, restart=True)
        m = result.metrics
        meta = json.loads((out / "metadata.json").read_text())
        row = {
            "arch": arch,
            "learning_rate": arch_lr.get(arch, args.lr),
            "parameters": meta["parameters"],
            "test_accuracy": m["test"]["accuracy"], "test_accuracy_ci95": m["test"].get("accuracy_ci95"),
            "test_macro_auc": m["test"]["macro_auc"],
            "grouped_test_accuracy": m.get("grouped_test", {}).get("accuracy"),
            "train_images_per_second": m["training"]["train_images_per_second"],
            "inference_images_per_second": inference_rate(out),
            "n_train": meta["training_data"]["num_train"], "n_test": meta["training_data"]["num_test"],
            "n_grouped_test": meta["training_data"]["num_grouped_test"],
        }
        results_file.write_text(json.dumps(row, indent=2))
        rows.append(row)
    write_markdown(Path(args.out), rows, args)
    return 0


ARCHITECTURE_NOTES = """
## How the architectures are built

- One function, `nscfate.architectures.build_model(arch, num_classes, input_size, pretrained)`. Every
  model starts with `PercentileNormalization` (per-image 1st-99th percentile scaling, float32 even under
  mixed precision); colour backbones (MobileNet, VGG19, InceptionV3, ResNet50) add `GreyToRGB` and the
  scaling their ImageNet weights expect ([-1, 1], or caffe-style mean subtraction). The head is global
  average pooling, dropout 0.2 and a softmax over the task's classes.
- ResNet18 is written in `nscfate/resnet18.py` (basic blocks 2-2-2-2, Keras layer naming); the small
  CNN is 4 blocks of two 3x3 conv-BN-ReLU with max-pooling (32 to 256 filters).
- InceptionV3 needs 75 px a side: at 45x60 and 60x60 a bilinear `Resizing` layer inside the model
  enlarges the image (aspect kept) to 75x100 and 75x75.
- BatchNormalization momentum is 0.9 (Keras: 0.99): with short CPU schedules the 0.99 moving averages
  lag the weights so far that inference accuracy collapses to chance.
- `--pretrained imagenet` uses keras' own download path (not reachable offline); `--pretrained PATH`
  loads a local `.weights.h5`/`.h5` file of the bare backbone (tested with a file the test writes).
- Grad-CAM (`nscfate explain`) uses the last backbone feature map with both sides >= 3 px (deep
  backbones end at 1x1 or 2x2 on these small inputs).
- Shipped directories store large weights as float16 inside `model.keras`; they load into float32
  variables and the golden input/output pair must reproduce within 1e-3.
"""


def shipped_models_section() -> list[str]:
    """The shipped models, from the registry and their model directories."""
    from nscfate.registry import Registry

    lines = ["## Shipped models", "", "From `models/registry.json` (the cards in each directory give the full "
             "story and the command that reproduces the model). All were trained on the **synthetic** "
             "benchmark.", "",
             "| model | task | arch | input | test accuracy [95% CI] | grouped-test accuracy | test macro AUC "
             "| size |", "|---|---|---|---|---|---|---|---|"]
    reg = Registry()
    from nscfate.modeldir import dir_size, read_model_dir

    for card in reg.list():
        info = read_model_dir(reg.get(f"{card['name']}@{card['version']}").path, check=False)
        test, grouped = info.metrics.get("test", {}), info.metrics.get("grouped_test", {})
        ci = test.get("accuracy_ci95")
        acc = f"{test.get('accuracy', 0):.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        lines.append(f"| `{info.name}@{info.version}`{' (default)' if card['default'] else ''} | {info.task} | "
                     f"{info.arch} | {info.input_size[0]}x{info.input_size[1]} | {acc} | "
                     f"{grouped.get('accuracy', float('nan')):.3f} | {test.get('macro_auc', float('nan')):.3f} | "
                     f"{dir_size(info.path) / 1e6:.1f} MB |")
    reports = sorted((Path(__file__).resolve().parent.parent / "docs" / "evaluation").glob("*/report.md"))
    if reports:
        lines += ["", "Evaluation reports (`nscfate evaluate`: metrics with 95% intervals (Wilson for accuracy, "
                  "bootstrap for the others), confusion matrix, one-vs-rest ROC, reliability diagram):", ""]
        lines += [f"- [{r.parent.name}](evaluation/{r.parent.name}/report.md)" for r in reports]
    return lines + [""]


def write_markdown(path: Path, rows: list[dict], args) -> None:
    def f(v, d=3):
        return "-" if v is None else f"{v:.{d}f}"

    import keras
    import tensorflow as tf

    n = rows[0] if rows else {}
    lines = [
        "# Models",
        "",
        "## The six architectures on the synthetic benchmark",
        "",
        "Generated by `bench/compare_architectures.py` (do not edit by hand). Command:",
        "",
        "```bash",
        "python bench/compare_architectures.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "render_only"),
        "```",
        "",
        f"**Reduced setting** (2 shared CPU cores): task `{args.task}`, input {args.image_size}, "
        f"{n.get('n_train', '?')} training images (subsample {args.subsample} of the training split), "
        f"{args.epochs} epochs, batch {args.batch_size}, AdamW peak lr {args.lr} (per-architecture exceptions: "
        f"{args.arch_lr or 'none'}) with warm-up + cosine, "
        f"no early stopping, random initialisation (no ImageNet weights offline), seed {args.seed}. "
        f"Test: {n.get('n_test', '?')} images (random split); grouped test: {n.get('n_grouped_test', '?')} "
        f"images of whole acquisition batches never seen in training. The ranking reflects this short "
        "schedule from random initialisation, not the architectures' ceilings (MobileNet and VGG19 learn slowest "
        "from scratch); the shipped ResNet50, trained 12 epochs on the full training split, reaches the accuracy "
        "in the next section.",
        "",
        "| architecture | parameters | peak lr | test accuracy [95% CI] | test macro AUC | grouped-test accuracy "
        "| train images/s | inference images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = r.get("test_accuracy_ci95")
        acc = f(r["test_accuracy"]) + (f" [{f(ci[0])}, {f(ci[1])}]" if ci else "")
        lines.append(f"| {r['arch']} | {r['parameters']:,} | {r.get('learning_rate', args.lr):g} | {acc} | {f(r['test_macro_auc'])} | "
                     f"{f(r['grouped_test_accuracy'])} | {f(r['train_images_per_second'], 1)} | "
                     f"{f(r['inference_images_per_second'], 1)} |")
    lines += [
        "",
        f"Throughput measured on {platform.machine()} CPU ({os.cpu_count()} cores shared with other jobs, so "
        f"indicative only), TensorFlow {tf.__version__}, Keras {keras.__version__}; training = images/s over the "
        "run; inference = `Predictor.predict_prepared` on batches of 64, best of 3 after warm-up.",
        "",
    ]
    lines += shipped_models_section() + ARCHITECTURE_NOTES.splitlines()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    log.info("wrote %s", path)


if __name__ == "__main__":
    raise SystemExit(main())
