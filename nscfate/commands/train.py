"""``nscfate train``: train a model and export a model directory."""

from __future__ import annotations

import argparse
import shlex
import sys

HELP = "train a model (task, architecture, data, split...) and export a model directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="config file (options below override it)")
    parser.add_argument("--task", choices=("medium4", "astro_vs_oligo"))
    parser.add_argument("--arch", choices=("cnn", "mobilenet", "vgg19", "inceptionv3", "resnet18", "resnet50"))
    parser.add_argument("--data", metavar="DIR", help="dataset: IFC export, root/<class>/ folders or CSV manifest")
    parser.add_argument("--image-size", metavar="HxW", help="model input, e.g. 75x75, 60x60, 45x60")
    parser.add_argument("--split", choices=("random", "grouped"), help="how the test/val sets are drawn")
    parser.add_argument("--grouped-holdout", type=float, metavar="F",
                        help="fraction of images, in whole acquisition batches, never trained on and "
                             "reported as grouped_test next to the test set (default 0: none)")
    parser.add_argument("--subsample", type=float, metavar="F", help="use this fraction of the training images")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--steps-per-epoch", type=int, help="limit steps per epoch (default: one pass)")
    parser.add_argument("--patience", type=int, help="early stopping patience in epochs (0: off)")
    parser.add_argument("--pretrained", metavar="imagenet|PATH", help="initial backbone weights")
    parser.add_argument("--mixed-precision", choices=("auto", "on", "off"))
    parser.add_argument("--seed", type=int)
    parser.add_argument("--name", help="model name in the registry (default <arch>-<task>)")
    parser.add_argument("--version", help="model version (default 1.0.0)")
    parser.add_argument("--weights-dtype", choices=("auto", "float32", "float16"))
    parser.add_argument("--out", metavar="MODEL_DIR", help="model directory to write")
    parser.add_argument("--run-dir", metavar="DIR", help="checkpoints and logs (default MODEL_DIR.run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field, e.g. --set train.weight_decay=0 (repeatable)")
    parser.add_argument("--restart", action="store_true",
                        help="discard an existing run folder and train from scratch (default: resume it, on its "
                             "own split; a run whose training ended is exported again, not retrained)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing model directory (the run folder is resumed all the same)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def config_from_args(args: argparse.Namespace):
    """The validated :class:`nscfate.config.RunConfig` from a config file and the options."""
    from nscfate.config import load_config

    overrides = {
        "task": args.task, "out": args.out, "run_dir": args.run_dir,
        "data": {"path": args.data, "split": args.split, "grouped_holdout": args.grouped_holdout,
                 "subsample": args.subsample, "seed": args.seed},
        "model": {"arch": args.arch, "input_size": args.image_size, "pretrained": args.pretrained},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr,
                  "steps_per_epoch": args.steps_per_epoch, "early_stopping_patience": args.patience,
                  "mixed_precision": args.mixed_precision, "seed": args.seed},
        "export": {"name": args.name, "version": args.version, "weights_dtype": args.weights_dtype},
    }
    return load_config(args.config, overrides, args.set)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.print_config:
        sys.stdout.write(cfg.to_yaml())
        return 0
    from nscfate.training import train

    # The command line as typed (for the model card); None when called programmatically.
    command = "nscfate " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else None
    result = train(cfg, restart=args.restart, overwrite=args.overwrite, command=command)
    sys.stdout.write(f"{result.model_dir}\n")
    return 0
