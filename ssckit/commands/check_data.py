"""Check a SemanticKITTI / SSCBench-KITTI-360 dataset and list every problem with the file at fault.

Reports missing files (voxels without an image, an SSC image without voxels, missing calibration or voxel
files), wrong sizes and truncated files, unparsable calibration / poses, raw labels outside the label table, and,
with --label-root / --depth-root, bad training targets and depth maps (wrong shape, NaN, negative values). Prints
one line per problem and a summary; exit code 0 when there are no errors (warnings allowed unless --strict),
1 otherwise.

example:
  ssckit check-data /data/semantic_kitti/dataset --depth-root /data/semantic_kitti/depth
"""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "scan a dataset for missing, truncated or inconsistent files (exit 0 when clean)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_root", type=Path, metavar="DATA_ROOT",
                        help="dataset root (the folder holding sequences/ or data_2d_raw/)")
    parser.add_argument("--dataset", default="semantic_kitti", choices=["semantic_kitti", "kitti_360"],
                        help="layout and label table (default: %(default)s)")
    parser.add_argument("--label-root", type=Path, metavar="DIR",
                        help="also check preprocessed targets DIR/<seq>/<frame>_1_1.npy (and _1_2 / _1_8 if present); "
                             "kitti_360 default: DATA_ROOT/preprocess/labels if it exists")
    parser.add_argument("--depth-root", type=Path, metavar="DIR", help="also check stereo depth maps under DIR")
    parser.add_argument("--sequences", nargs="+", metavar="SEQ", help="only these sequences (default: all present)")
    parser.add_argument("--strict", action="store_true", help="warnings fail too")


def run(args: argparse.Namespace) -> int:
    from ssckit.data.check import check_dataset

    report = check_dataset(args.data_root, args.dataset, args.label_root, args.depth_root, args.sequences)
    for problem in report.problems:
        print(problem)
    print(f"ssckit check-data: {report.summary()}")
    failed = report.errors or (args.strict and report.warnings)
    return 1 if failed else 0
