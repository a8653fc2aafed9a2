"""Write a synthetic driving dataset in the exact SemanticKITTI (or SSCBench-KITTI-360) layout.

A procedural street world (road, sidewalks, parking, terrain, buildings, fences, trees, poles, signs, parked and
moving vehicles, cyclists and pedestrians) is rendered along a camera trajectory through the real calibration:
stereo images, stereo-like depth (OUT_ROOT/depth/...), a simulated LiDAR scan with point labels, and the voxel
files (.bin / .label / .invalid / .occluded) of every 5th frame; test sequences 11-21 get, like the real data, only
voxels/*.bin and no point labels. Poses and times cover every frame. The same seed
gives byte-identical files. ssckit's readers, `ssckit check-data`, `preprocess` and `evaluate` read the result as the
real dataset.

examples:
  ssckit synth demo_data --frames 40 --seed 0 --sequences 00,08 --image-scale 0.5
  ssckit synth /tmp/synth --frames 3 --sequences 08 --preview docs/images/synth_frame.png
  ssckit synth k360 --dataset kitti_360 --sequences 0000,0006 --frames 20
"""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a synthetic dataset in the SemanticKITTI / KITTI-360 layout (images, depth, LiDAR, voxels)"


def _sequences(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list such as 00,08")
    return items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_root", type=Path, metavar="OUT_ROOT", help="dataset root to write")
    parser.add_argument("--frames", type=int, default=10, metavar="N",
                        help="SSC frames (every 5th index) per sequence (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="world seed (default: %(default)s)")
    parser.add_argument("--dataset", default="semantic_kitti", choices=["semantic_kitti", "kitti_360"],
                        help="layout, calibration and label table to imitate (default: %(default)s)")
    parser.add_argument("--sequences", type=_sequences, metavar="LIST",
                        help="comma-separated sequences (default: 00,08; KITTI-360 drives 0000,0006)")
    parser.add_argument("--image-scale", type=float, default=1.0, metavar="F",
                        help="scale of image size and intrinsics (default: %(default)s = the real size)")
    parser.add_argument("--preview", type=Path, metavar="PNG",
                        help="also draw the last frame of the first sequence (image, depth, voxel ground truth)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ssckit.data.synth import DEFAULT_SEQUENCES, generate
    from ssckit.errors import SsckitError

    if args.frames < 1:
        raise SsckitError(f"--frames must be at least 1, got {args.frames}")
    sequences = args.sequences or list(DEFAULT_SEQUENCES[args.dataset])
    with tqdm(total=args.frames * len(sequences), desc="synth", unit="frame", disable=None) as bar:
        written = generate(args.out_root, args.frames, args.seed, args.dataset, sequences, args.image_scale,
                           progress=lambda: bar.update(1))
    total = sum(len(v) for v in written.values())
    print(f"ssckit synth: wrote {total} frames of {args.dataset} sequence(s) {', '.join(written)} to {args.out_root} "
          f"(stereo depth under {args.out_root / 'depth'})")
    if args.preview is not None:
        from ssckit.data.synth.preview import save_preview
        from ssckit.data.synth.writer import LAYOUTS

        layout = LAYOUTS[args.dataset](args.out_root)
        labelled = [s for s in written if layout.labelled(s)]
        if not labelled:
            print("ssckit synth: no preview (test sequences carry no voxel ground truth)")
            return 0
        first = labelled[0]
        path = save_preview(args.out_root, args.preview, args.dataset, first, written[first][-1])
        print(f"ssckit synth: preview -> {path}")
    return 0
