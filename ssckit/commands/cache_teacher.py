"""Run VLScene's frozen LSeg teacher once on every left image and cache its outputs (VLScene spec §2.4, §9).

Each frame gets CACHE_ROOT/<seq>/<frame>.npz with float16 `features` (512, h, w) and `logits` (21, h, w) at the
student's stride-8 size: the image goes through VLScene's pipeline (resized to --image-width, bottom 384 rows kept,
ImageNet-normalised), then LSeg's single-crop path. Exact for VLScene, which uses no image augmentation. Existing files
are skipped, so an interrupted run can be resumed; files are written atomically.

Weights are never downloaded: --checkpoint is LSeg's demo_e200.ckpt (lang-seg README), --text-embeddings a
(21, 512) float tensor of the CLIP ViT-B/32 embeddings of the 21 prompts, computed once where the `clip` package is
installed, e.g.
  torch.save(clip.load("ViT-B/32")[0].float().encode_text(clip.tokenize(PROMPTS)), "text.pt")
or the (21, 77) integer token ids clip.tokenize(PROMPTS) (encoded here with the CLIP stored in the checkpoint).
PROMPTS = ssckit.models.teachers.OUTDOOR_PROMPTS.

example:
  ssckit cache-teacher /data/semantic_kitti/dataset --checkpoint demo_e200.ckpt --text-embeddings text.pt \\
      --out /data/semantic_kitti/lseg_cache --split train --device cuda --batch-size 8
"""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "cache VLScene's LSeg teacher features + logits per frame (fp16, resumable)"

DEFAULT_WIDTH = {"semantic_kitti": 1280, "kitti_360": 1408}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_root", type=Path, metavar="DATA_ROOT",
                        help="dataset root (the folder holding sequences/ or data_2d_raw/)")
    parser.add_argument("--checkpoint", type=Path, metavar="LSEG.ckpt", help="local LSeg checkpoint (demo_e200.ckpt)")
    parser.add_argument("--text-embeddings", type=Path, metavar="TEXT.pt",
                        help="(21, 512) prompt embeddings or (21, 77) CLIP token ids (.pt or .npy)")
    parser.add_argument("--out", required=True, type=Path, metavar="CACHE_ROOT",
                        help="where to write <seq>/<frame>.npz")
    parser.add_argument("--dataset", default="semantic_kitti", choices=sorted(DEFAULT_WIDTH),
                        help="dataset layout (default: %(default)s)")
    parser.add_argument("--split", help="only this split (train / val / test); default: every sequence present")
    parser.add_argument("--sequences", nargs="+", metavar="SEQ", help="only these sequences (e.g. 08, or 0009)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="images per forward (default: 4)")
    parser.add_argument("--workers", type=int, default=4, metavar="N",
                        help="threads reading images / writing files (default: %(default)s)")
    parser.add_argument("--image-width", type=int, metavar="W",
                        help="student input width (default: 1280 semantic_kitti, 1408 kitti_360)")
    parser.add_argument("--image-height", type=int, default=384, metavar="H",
                        help="student input height, bottom rows kept (default: %(default)s)")
    parser.add_argument("--lseg-imagenet-input", action="store_true",
                        help="reproduce the official quirk: feed LSeg the ImageNet-normalised image (spec §7.2)")
    parser.add_argument("--lseg-misaligned-features", action="store_true",
                        help="reproduce the official quirk: crop LSeg features with full-resolution bounds (§7.1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--random-teacher", action="store_true", help=argparse.SUPPRESS)  # tests: no weights


def build_teacher(args: argparse.Namespace, feature_size: tuple[int, int]):  # -> Teacher
    """LSeg from the local files, or the deterministic RandomTeacher with the hidden --random-teacher."""
    from ssckit.errors import SsckitError
    from ssckit.models.teachers import LSegTeacher, RandomTeacher

    if args.random_teacher:
        return RandomTeacher(feature_size)
    missing = [opt for opt, v in (("--checkpoint", args.checkpoint), ("--text-embeddings", args.text_embeddings))
               if v is None]
    if missing:
        raise SsckitError(f"{' and '.join(missing)} required (LSeg weights are never downloaded; see --help)")
    return LSegTeacher.from_checkpoint(args.checkpoint, args.text_embeddings, feature_size,
                                       imagenet_input_quirk=args.lseg_imagenet_input,
                                       misaligned_features_quirk=args.lseg_misaligned_features)


def run(args: argparse.Namespace) -> int:
    import torch

    from ssckit.data.datasets import get_dataset_class
    from ssckit.errors import SsckitError
    from ssckit.models.teachers import cache_dataset, feature_size_for

    if args.batch_size < 1 or args.workers < 1:
        raise SsckitError("--batch-size and --workers must be at least 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SsckitError(f"--device {device}: CUDA is not available in this PyTorch build")
    width = args.image_width or DEFAULT_WIDTH[args.dataset]
    try:
        feature_size = feature_size_for(args.image_height, width)
    except ValueError as e:
        raise SsckitError(str(e)) from None
    dataset = get_dataset_class(args.dataset)(args.data_root, split=args.split, sequences=args.sequences)
    teacher = build_teacher(args, feature_size)
    summary = cache_dataset(dataset, teacher, args.out, image_width=width, image_height=args.image_height,
                            batch_size=args.batch_size, device=device, workers=args.workers,
                            progress=not args.no_progress)
    h, w = feature_size
    print(f"ssckit cache-teacher: {len(dataset.frames)} frame(s) in {', '.join(dataset.sequences)}: {summary.line()} "
          f"-> {args.out} ({teacher.feature_dim}+{teacher.num_classes} x {h} x {w} fp16 per frame)")
    return 1 if summary.failed else 0
