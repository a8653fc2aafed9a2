"""Render readable figures of SSC results: one PNG per frame, headless (numpy + matplotlib Agg, no display).

Each figure shows the input image, the ground truth, the prediction and their errors as shaded voxel cubes, seen
from the camera (through the calibration) and from an oblique view of the whole grid, in the dataset palette, with
a legend of the classes present. Error colours: correct = muted class colour, wrong class = orange, false positive
= red, false negative = blue; GT-ignored (255) voxels are drawn as empty.

Predictions: PRED_ROOT/sequences/<seq>/predictions/<frame>.label (uint16 raw ids, as submitted; mapped to learning
ids through the dataset's table) or <frame>.npy (learning ids, 255 = ignore; a coarser grid from data.grid_scale,
e.g. 64x64x8, is repeated up to 256x256x32 as ssckit predict does for .label files). Ground truth: the dataset's
.label + .invalid, or the preprocessed <seq>/<frame>_1_1.npy under --label-root. A frame without an image gets no
image panel; a frame without labels (test split) gets no GT or error panels. Figures go to OUT_DIR/<seq>_<frame>.png.

examples:
  ssckit render --data /data/semantic_kitti/dataset --split val --pred outputs/val --frames 10 --out figures/
  ssckit render --data /data/kitti360 --dataset kitti_360 --sequences 0009 --frame-ids 000125 --out figures/
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from ssckit.data.datasets import FrameId, SSCDataset
    from ssckit.data.labels import LabelTable

HELP = "render PNG figures of ground truth, predictions and errors (camera + oblique voxel views)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, metavar="DATA_ROOT",
                        help="dataset root (the folder holding sequences/ or data_2d_raw/)")
    parser.add_argument("--dataset", default="semantic_kitti", choices=["semantic_kitti", "kitti_360"],
                        help="dataset layout and label table (default: %(default)s)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--split", help="split to render (e.g. val)")
    which.add_argument("--sequences", nargs="+", metavar="SEQ", help="sequences to render (e.g. 08)")
    parser.add_argument("--pred", type=Path, metavar="PRED_ROOT",
                        help="folder holding sequences/<seq>/predictions/<frame>.label or .npy (optional)")
    frames = parser.add_mutually_exclusive_group()
    frames.add_argument("--frames", type=int, metavar="N",
                        help="render N frames spread evenly over the selection, first and last included "
                             "(default: every frame)")
    frames.add_argument("--frame-ids", nargs="+", metavar="ID",
                        help="frames to render, as FRAME (e.g. 001000) or SEQ/FRAME (e.g. 08/001000)")
    parser.add_argument("--out", required=True, type=Path, metavar="OUT_DIR", help="where to write the PNGs")
    parser.add_argument("--label-root", type=Path, metavar="LABEL_ROOT",
                        help="read the ground truth from preprocessed <seq>/<frame>_1_1.npy targets instead")
    parser.add_argument("--views", nargs="+", default=["camera", "oblique"], choices=["camera", "oblique", "bev"],
                        help="voxel views, one figure row each (default: %(default)s)")
    parser.add_argument("--panel-width", type=int, default=560, metavar="PX",
                        help="width of each panel in pixels (default: %(default)s)")
    parser.add_argument("--v10-z-shift", action="store_true",
                        help="ground truth is a pre-Aug-2020 (v1.0) grid: shift it down one voxel in z")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def select_frames(dataset: SSCDataset, count: int | None, ids: list[str] | None) -> list[FrameId]:
    """The frames to render: all, ``count`` spread evenly, or the listed ``FRAME`` / ``SEQ/FRAME`` ids."""
    import numpy as np

    from ssckit.errors import SsckitError

    frames = list(dataset.frames)
    if count is not None:
        if count < 1:
            raise SsckitError(f"--frames must be at least 1, got {count}")
        picks = np.unique(np.round(np.linspace(0, len(frames) - 1, min(count, len(frames)))).astype(int))
        return [frames[i] for i in picks]
    if ids is None:
        return frames
    chosen = []
    for text in ids:  # a handful of user-given ids
        seq, _, frame = text.rpartition("/")
        if not frame.isdigit():
            raise SsckitError(f"--frame-ids: {text!r} is not FRAME or SEQ/FRAME (e.g. 001000 or 08/001000)")
        frame = frame.zfill(6)
        seq_dir = dataset.sequence_dir(seq) if seq else None
        match = [f for f in frames if f.frame == frame and (seq_dir is None or dataset.sequence_dir(f.sequence)
                                                              == seq_dir)]
        if not match:
            raise SsckitError(f"--frame-ids: frame {text} is not among the {len(frames)} frames of "
                              f"{', '.join(dataset.sequences)} (voxels/<frame>.bin)")
        chosen += [f for f in match if f not in chosen]
    return chosen


def prediction_file(pred_root: Path, f: FrameId) -> Path:
    """``.../predictions/<frame>.label`` if present, else the ``.npy`` twin if present; DataError if neither."""
    from ssckit.errors import DataError
    from ssckit.submission import prediction_path

    label = prediction_path(pred_root, f.sequence, f.frame)
    if label.is_file():
        return label
    if label.with_suffix(".npy").is_file():
        return label.with_suffix(".npy")
    raise DataError(label, "prediction not found (looked for .label and .npy)")


def read_prediction(path: Path, labels: LabelTable, grid: tuple[int, int, int]) -> np.ndarray:
    """A prediction file -> uint8 learning ids (X, Y, Z); ``.label`` raw ids go through the dataset's table."""
    import numpy as np

    from ssckit.data import io
    from ssckit.data.labels import IGNORE
    from ssckit.errors import DataError

    if path.suffix == ".label":
        raw = io.read_voxel_label(path, grid)
        valid = np.zeros(1 << 16, dtype=bool)
        valid[labels.valid_raw_ids] = True
        bad = ~valid[raw]
        if bad.any():
            raise DataError(path, f"{int(bad.sum()):,} voxel(s) hold ids that are not valid raw {labels.name} labels "
                                  f"(e.g. {np.unique(raw[bad])[:5].tolist()}); .label predictions hold raw ids")
        return labels.lut[raw]
    arr = io.load_npy(path)
    if arr.dtype.kind not in "iub":
        raise DataError(path, f"prediction must hold integer learning ids, found dtype {arr.dtype}")
    bad = ((arr < 0) | (arr >= labels.num_classes)) & (arr != IGNORE)
    if bad.any():
        raise DataError(path, f"prediction holds id {int(arr[bad].flat[0])}; {labels.name} learning ids are "
                              f"0..{labels.num_classes - 1} (255 = ignore)")
    return upsample_grid(arr.astype(np.uint8), grid, path)


def upsample_grid(arr: np.ndarray, grid: tuple[int, int, int], path: Path) -> np.ndarray:
    """A (X/s, Y/s, Z/s) grid repeated s times along each axis to ``grid`` (nearest); s must be one integer."""
    from ssckit.errors import DataError

    shape, grid = tuple(arr.shape), tuple(grid)
    if shape == grid:
        return arr
    factors = {g // n if n and g % n == 0 else 0 for n, g in zip(shape, grid)} if len(shape) == len(grid) else {0}
    if len(factors) != 1 or 0 in factors:
        example = "x".join(str(g // 4) for g in grid)
        raise DataError(path, f"prediction has shape {shape}; expected {grid} or that divided by one integer factor "
                              f"on every axis (e.g. {example} for data.grid_scale=4)")
    s = factors.pop()
    return arr.repeat(s, axis=0).repeat(s, axis=1).repeat(s, axis=2)  # (X, Y, Z)


def run(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from ssckit.data.datasets import get_dataset_class
    from ssckit.errors import SsckitError
    from ssckit.vis.figure import render_frame

    if args.panel_width < 64:
        raise SsckitError(f"--panel-width must be at least 64 pixels, got {args.panel_width}")
    dataset = get_dataset_class(args.dataset)(args.data, split=args.split, sequences=args.sequences,
                                              label_root=args.label_root, v10_z_shift=args.v10_z_shift)
    frames = select_frames(dataset, args.frames, args.frame_ids)
    if not frames:
        raise SsckitError(f"no frames to render under {args.data}")
    pred_files = [prediction_file(args.pred, f) for f in frames] if args.pred is not None else [None] * len(frames)
    if args.label_root is None and args.pred is None and not any(dataset.has_labels(f) for f in frames):
        raise SsckitError("nothing to draw: the frames have no ground truth (voxels/*.label) and no --pred was given")

    args.out.mkdir(parents=True, exist_ok=True)
    no_image, t0 = 0, time.perf_counter()
    for f, pred_file in zip(tqdm(frames, desc="render", unit="frame", disable=args.no_progress or None), pred_files):
        if args.label_root is not None:
            gt = dataset.read_target(f)
        else:
            gt = dataset.voxel_target(f) if dataset.has_labels(f) else None
        pred = read_prediction(pred_file, dataset.labels, dataset.grid) if pred_file is not None else None
        if gt is None and pred is None:
            raise SsckitError(f"frame {f.sequence}/{f.frame} has neither ground truth nor a prediction")
        image = dataset.read_image(f) if dataset.image_path(f).is_file() else None
        no_image += image is None
        calib = dataset.read_calib(f.sequence)
        render_frame(image, gt, pred, dataset.labels, calib["K"], calib["Tr"],
                     args.out / f"{f.sequence}_{f.frame}.png", title=f"{dataset.name} {f.sequence}/{f.frame}",
                     views=args.views, panel_width=args.panel_width,
                     image_size=None if image is not None else dataset.image_size)
    seconds = (time.perf_counter() - t0) / len(frames)
    note = f"; {no_image} without an input image" if no_image else ""
    print(f"ssckit render: wrote {len(frames)} figure(s) to {args.out} ({seconds:.2f} s per frame{note})")
    return 0
