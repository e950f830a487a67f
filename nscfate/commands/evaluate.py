"""``nscfate evaluate MODEL_DIR --data DIR --out OUT_DIR``: metrics, plots and a report."""

from __future__ import annotations

import argparse
import sys

from nscfate.commands import count

HELP = "evaluate a model on a labelled dataset: metrics.json, plots and a report in OUT_DIR"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR", help="model directory or registered name[@version]")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="labelled dataset (IFC export, folders, CSV), or a training run's split.json")
    parser.add_argument("--subset", choices=("train", "val", "test", "grouped_test"),
                        help="with a split.json only: which part to evaluate (default test)")
    parser.add_argument("--out", required=True, metavar="OUT_DIR", help="where metrics.json, plots and report go")
    parser.add_argument("--channel", type=int, help="with a dataset folder only: image channel of an IFC export "
                                                    "(default 1)")
    parser.add_argument("--batch-size", type=count(), default=64)
    parser.add_argument("--bootstrap", type=count(0), default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--limit", type=count(), help="evaluate a seeded random subset of this many images")


def run(args: argparse.Namespace) -> int:
    import logging

    from nscfate.errors import ModelError
    from nscfate.evaluation import evaluate

    try:
        m = evaluate(args.model, args.data, args.out, channel=args.channel, batch_size=args.batch_size,
                     n_boot=args.bootstrap, limit=args.limit, subset=args.subset,
                     progress=sys.stderr.isatty())
    except ModelError as exc:
        logging.getLogger(__name__).error("%s", exc)
        return 2
    ci = m.get("accuracy_ci95")
    interval = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and None not in ci else ""
    sys.stdout.write(f"accuracy {m['accuracy']:.4f}{interval}  balanced {m['balanced_accuracy']:.4f}  "
                     f"macro-F1 {m['macro_f1']:.4f}  macro AUC {m['macro_auc'] or float('nan'):.4f}  "
                     f"ECE {m['ece']:.4f}  (n={m['n']})\nreport: {args.out}/report.md\n")
    return 0
