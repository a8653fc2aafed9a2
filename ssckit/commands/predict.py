"""Write a checkpoint's predictions for a split.

Files: OUT/sequences/<seq>/predictions/<frame>.label (flat uint16 RAW ids through learning_map_inv, the
SemanticKITTI server format; a coarser data.grid_scale grid is repeated up to 256x256x32) and/or <frame>.npy
(uint8 learning ids at the model grid). For the SemanticKITTI test split (or with --zip) OUT/submission.zip is
made ready for the server; check it with `ssckit validate-submission`. Score .label files against ground truth
with `ssckit evaluate --pred OUT`. The config saved inside the checkpoint is used; KEY=VALUE overrides apply on
top; data roots come from --data-root etc., else SSCKIT_*_ROOT variables, else the checkpoint's saved roots;
hardware defaults to one process. `ssckit render --pred OUT` draws .label or .npy predictions (any grid_scale).

examples:
  ssckit predict --ckpt runs/symphonies_semantic_kitti/20250101-120000/checkpoints/best.ckpt --split test \\
      --data-root /data/semantic_kitti/dataset --depth-root /data/semantic_kitti/depth --out submission
  ssckit predict --ckpt best.ckpt --split val --format label npy --out preds/val
"""
from __future__ import annotations

import argparse
import sys

from ssckit.commands.eval import add_common, load_for

HELP = "write predictions (.label raw ids / .npy) for a split; the server-ready zip for the test split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, "test")
    parser.add_argument("--format", nargs="+", choices=["label", "npy"], default=["label"],
                        help="file formats to write (default: label)")
    zip_group = parser.add_mutually_exclusive_group()
    zip_group.add_argument("--zip", dest="zip", action="store_true", default=None,
                           help="also write OUT/submission.zip (default: only for the SemanticKITTI test split)")
    zip_group.add_argument("--no-zip", dest="zip", action="store_false", help="never write the zip")
    parser.add_argument("--description", metavar="TEXT", help="description.txt content for the zip")


def run(args: argparse.Namespace) -> int:
    from ssckit.data.datasets import get_dataset_class
    from ssckit.engine import trainer as engine
    from ssckit.engine.callbacks import PredictionWriter
    from ssckit.errors import SsckitError
    from ssckit.submission import zip_submission

    cfg, ckpt = load_for(args)
    split = args.split if (args.split or args.sequences) else "test"
    name = split or "-".join(args.sequences)
    out = args.out or engine.run_dir_of(args.ckpt) / "predictions" / name
    labels = get_dataset_class(cfg.data.dataset).labels
    make_zip = args.zip if args.zip is not None else (split == "test" and cfg.data.dataset == "semantic_kitti")
    if make_zip and "label" not in args.format:
        raise SsckitError("--zip needs --format label")
    writer = PredictionWriter(out, labels, tuple(args.format), cfg.data.grid_scale)
    trainer, dm = engine.predict(cfg, ckpt, args.ckpt, split, args.sequences, writer)
    if not trainer.is_global_zero:
        return 0
    frames = len(dm.reader("predict").frames)
    print(f"wrote {frames} frame(s) ({', '.join(args.format)}) under {out / 'sequences'}", file=sys.stderr)
    if make_zip:
        path = zip_submission(out, out / "submission.zip", args.description)
        print(f"wrote {path} (check it with: ssckit validate-submission {path} --data DATA_ROOT)", file=sys.stderr)
    return 0
