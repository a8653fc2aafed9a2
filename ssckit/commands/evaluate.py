"""Score SSC predictions against ground truth exactly as semantic-kitti-api's evaluate_completion.py does.

Predictions are PRED_ROOT/sequences/<seq>/predictions/<frame>.label (flat uint16 RAW ids, as submitted to the
server; KITTI-360 uses the drive name as <seq>). As the official script, the frames scored are every
DATA_ROOT/.../voxels/<frame>.label of the selected sequences (a frame's .bin input is not needed; a sequence without
any .label is an error). Ground truth (.label + .invalid) and predictions are mapped raw -> learning ids through the
dataset's lookup table and accumulated into one confusion matrix over all frames. A missing or wrong-size
prediction file, or an id that is not a valid raw label, stops with one error naming the file.

example:
  ssckit evaluate --pred outputs/val --data /data/semantic_kitti/dataset --split val --out scores.yaml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "score .label predictions against the ground truth (official SSC metric)"
SPLIT_ALIASES = {"valid": "val"}  # evaluate_completion.py --split names the validation split "valid"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, type=Path, metavar="PRED_ROOT",
                        help="folder holding sequences/<seq>/predictions/<frame>.label")
    parser.add_argument("--data", required=True, type=Path, metavar="DATA_ROOT",
                        help="dataset root (the folder holding sequences/ or data_2d_raw/)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--split", help="split to score: train, val (alias: valid, the official name) or test")
    which.add_argument("--sequences", nargs="+", metavar="SEQ", help="sequences to score (e.g. 08)")
    parser.add_argument("--dataset", default="semantic_kitti", choices=["semantic_kitti", "kitti_360"],
                        help="dataset layout and label table (default: %(default)s)")
    parser.add_argument("--out", type=Path, metavar="SCORES_YAML",
                        help="write the scores (official scores.txt keys + precision/recall) to this YAML file")
    parser.add_argument("--v10-z-shift", action="store_true",
                        help="ground truth is a pre-Aug-2020 (v1.0) grid: shift it down one voxel in z")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    import yaml
    from tqdm import tqdm

    from ssckit.data.datasets import DATASETS
    from ssckit.data.io import read_voxel_label
    from ssckit.errors import DataError, SsckitError
    from ssckit.metrics.ssc import SSCMetric, format_table, scores_to_official_yaml_dict
    from ssckit.submission import prediction_path

    split = SPLIT_ALIASES.get(args.split, args.split)
    dataset = DATASETS[args.dataset](args.data, split=split, sequences=args.sequences,
                                     v10_z_shift=args.v10_z_shift, frames_from="label")
    labels = dataset.labels
    frames = list(dataset.frames)
    if not frames:
        raise SsckitError(f"no frames to evaluate under {args.data}")
    no_bin = sum(not dataset.voxel_path(f, "bin").is_file() for f in frames)
    if no_bin:
        print(f"note: {no_bin} of {len(frames)} ground-truth frames have no voxels/*.bin input; scored all the same "
              "(the metric needs only .label and .invalid)", file=sys.stderr)
    scored = {(f.sequence, f.frame) for f in frames}
    unlabelled = sum((seq, p.stem) not in scored for seq in dataset.sequences
                     for p in (dataset.sequence_dir(seq) / "voxels").glob("[0-9]*.bin"))
    if unlabelled:
        print(f"note: {unlabelled} voxels/*.bin frames have no .label ground truth and are not scored",
              file=sys.stderr)
    pred_paths = [prediction_path(args.pred, f.sequence, f.frame) for f in frames]
    missing = [p for p in pred_paths if not p.is_file()]
    if missing:  # check them all before the long loop, as the official script does
        raise DataError(missing[0], f"prediction file not found ({len(missing)} of {len(frames)} predictions "
                                    "missing; first one shown)")

    valid = np.zeros(1 << 16, dtype=bool)  # raw id -> is it a label the LUT maps to a class
    valid[labels.valid_raw_ids] = True
    metric = SSCMetric(labels.num_classes)
    for frame, path in zip(tqdm(frames, desc="evaluate", unit="frame", disable=None), pred_paths):
        raw = read_voxel_label(path).reshape(-1)  # (X*Y*Z,) uint16; wrong size -> DataError naming the file
        bad = ~valid[raw]
        if bad.any():
            ids = np.unique(raw[bad])[:10].tolist()
            raise DataError(path, f"{int(bad.sum()):,} voxel(s) hold ids that are not valid raw {labels.name} labels "
                                  f"(e.g. {ids}); predictions must be raw ids (learning_map_inv)")
        pred = labels.lut[raw]
        target = dataset.voxel_target(frame).reshape(-1)  # learning ids, invalid / unlabelled -> 255
        metric.update(torch.from_numpy(pred.astype(np.int64))[None], torch.from_numpy(target)[None])

    scores = metric.compute()
    print(f"{labels.name}: {len(frames)} frames, sequences {', '.join(sorted({f.sequence for f in frames}))}")
    print(format_table(scores, labels.class_names))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(yaml.safe_dump(scores_to_official_yaml_dict(scores, labels.class_names),
                                           default_flow_style=False, sort_keys=False))
        print(f"wrote {args.out}")
    return 0
