"""Turn raw voxel labels (.label + .invalid) into training targets LABEL_ROOT/<seq>/<frame>_1_{1,2,8}.npy.

1_1 is uint8 (256, 256, 32) with learning ids and 255 = ignore (the dataset's rule: SemanticKITTI invalid -> 255;
KITTI-360 labelled voxels are forced valid first); 1_2 (128, 128, 16) and 1_8 (32, 32, 4) use MonoScene's
downsampling rule. Frames run in parallel; the job is resumable (frames whose outputs all exist are skipped, files
are written atomically). Frames that fail are listed with the file at fault and the exit code is 1. Test frames
without labels (SemanticKITTI 11-21) are counted and left out.

example:
  ssckit preprocess /data/semantic_kitti/dataset --out /data/semantic_kitti/labels --split train --workers 4
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "write the 1_1 / 1_2 / 1_8 training targets from raw voxel labels (resumable, parallel)"


def _scale(text: str) -> str:
    from ssckit.data.preprocess import scale_factor
    from ssckit.errors import SsckitError

    try:
        scale_factor(text)
    except SsckitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_root", type=Path, metavar="DATA_ROOT",
                        help="dataset root (the folder holding sequences/ or data_2d_raw/)")
    parser.add_argument("--out", required=True, type=Path, metavar="LABEL_ROOT",
                        help="where to write <seq>/<frame>_<scale>.npy")
    parser.add_argument("--dataset", default="semantic_kitti", choices=["semantic_kitti", "kitti_360"],
                        help="dataset layout and label table (default: %(default)s)")
    parser.add_argument("--split", help="only this split (train / val / test); default: every sequence present")
    parser.add_argument("--sequences", nargs="+", metavar="SEQ", help="only these sequences (e.g. 08, or 0009)")
    parser.add_argument("--scales", nargs="+", type=_scale, default=["1_1", "1_2", "1_8"], metavar="SCALE",
                        help="target scales to write (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                        help="parallel worker processes (default: %(default)s)")
    parser.add_argument("--v10-z-shift", action="store_true",
                        help="voxel files are pre-Aug-2020 (v1.0) SemanticKITTI grids: shift them down one voxel")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ssckit.data.datasets import get_dataset_class
    from ssckit.data.preprocess import preprocess_dataset
    from ssckit.errors import SsckitError

    if args.workers < 1:
        raise SsckitError(f"--workers must be at least 1, got {args.workers}")
    dataset = get_dataset_class(args.dataset)(args.data_root, split=args.split, sequences=args.sequences,
                                              label_root=args.out, v10_z_shift=args.v10_z_shift)
    summary = preprocess_dataset(dataset, args.scales, workers=args.workers, progress=not args.no_progress)
    print(f"ssckit preprocess: {len(dataset.frames)} frame(s) in {', '.join(dataset.sequences)}: {summary.line()} "
          f"-> {args.out}")
    return 1 if summary.failed else 0
