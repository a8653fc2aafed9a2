"""Score a trained checkpoint on a split with the official SSC metric (one confusion matrix over all frames).

Prints the per-class IoU table, mIoU (classes 1..N-1) and completion IoU / precision / recall, and writes
scores.yaml with the keys of semantic-kitti-api's scores.txt (iou_completion, iou_mean, iou_<class>; values in
0..1) plus precision and recall. The config saved inside the checkpoint is used; KEY=VALUE overrides apply on top,
and data roots come from --data-root etc., else SSCKIT_*_ROOT variables, else the roots saved in the checkpoint.
Hardware defaults to one process (trainer.devices=1); several processes give the same scores
(trainer.devices=2 trainer.strategy=ddp). With data.grid_scale > 1 the scores are at that coarser grid, not
the official 256x256x32 protocol.

examples:
  ssckit eval --ckpt runs/symphonies_semantic_kitti/20250101-120000/checkpoints/best.ckpt \\
      --data-root /data/semantic_kitti/dataset --label-root /data/semantic_kitti/labels \\
      --depth-root /data/semantic_kitti/depth
  ssckit eval --ckpt best.ckpt --sequences 08 --out results/val trainer.precision=bf16-mixed
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssckit.commands.train import add_root_arguments, roots_from_args

HELP = "score a checkpoint on a split: per-class IoU table and scores.yaml (official keys)"
HARDWARE_DEFAULTS = {"trainer": {"devices": 1, "strategy": "auto", "num_nodes": 1}}


def add_common(parser: argparse.ArgumentParser, default_split: str) -> None:
    parser.add_argument("--ckpt", required=True, type=Path, metavar="CKPT", help="checkpoint written by ssckit train")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--split", help=f"split to use (default: {default_split})")
    which.add_argument("--sequences", nargs="+", metavar="SEQ", help="sequences to use instead of a split")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: inside the run folder)")
    add_root_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, "the config's data.val_split / val_sequences")


def load_for(args: argparse.Namespace):  # noqa: ANN201 - (config, checkpoint dict)
    from ssckit.config import load_config
    from ssckit.engine import trainer as engine

    ckpt = engine.read_checkpoint(args.ckpt)
    base = engine.checkpoint_config(ckpt, args.ckpt)
    cfg = load_config(base=base, overrides=args.overrides, roots=roots_from_args(args), config_dir=args.config_dir,
                      base_source=f"config saved in {args.ckpt}", defaults=HARDWARE_DEFAULTS)
    return cfg, ckpt


def run(args: argparse.Namespace) -> int:
    import yaml

    from ssckit.engine import trainer as engine
    from ssckit.metrics.ssc import format_table, scores_to_official_yaml_dict

    cfg, ckpt = load_for(args)
    split = args.split if (args.split or args.sequences) else cfg.data.val_split
    sequences = args.sequences if (args.split or args.sequences) else cfg.data.val_sequences
    trainer, module, dm = engine.validate(cfg, ckpt, args.ckpt, split, sequences)
    if not trainer.is_global_zero:
        return 0
    reader = dm.reader("val")
    labels = reader.labels
    scores = module.last_scores
    name = split or "-".join(reader.sequences)
    out = args.out or engine.run_dir_of(args.ckpt) / "eval" / name
    out.mkdir(parents=True, exist_ok=True)
    print(f"{labels.name}: {len(reader.frames)} frames, sequences {', '.join(reader.sequences)}")
    if cfg.data.grid_scale != 1:
        print(f"note: scored at the 1:{cfg.data.grid_scale} grid (data.grid_scale), not the official 256x256x32")
    table = format_table(scores, labels.class_names)
    print(table)
    (out / "scores.yaml").write_text(yaml.safe_dump(scores_to_official_yaml_dict(scores, labels.class_names),
                                                    default_flow_style=False, sort_keys=False))
    (out / "table.txt").write_text(table + "\n")
    print(f"wrote {out / 'scores.yaml'}", file=sys.stderr)
    return 0
