"""Convert an official release checkpoint into an ssckit model file.

Symphonies: the authors' Lightning checkpoint (e.g. semantic_kitti_e25_miou0.1489.ckpt, keys ``model.encoder.*`` /
``model.decoder.*``). Every key must map onto the ssckit model with the same shape, and every ssckit weight must be
filled; otherwise nothing is written and each problem is listed. The never-used pixel-decoder FPN step and the
derived buffers (image/voxel grids, MaskDINO criterion weights) are dropped on purpose.
VLScene: the authors' mmcv checkpoint (keys ``img_backbone.*``, ``img_neck.*``, ``img_view_transformer.*``,
``sparse_unet.*``, ``pts_bbox_head.*``). The frozen LSeg teacher (``clip_net.*``) is dropped on purpose (ssckit
never stores a teacher), and the stored frustum/grid constants are checked against the model and dropped.
The official files also pickle training metadata; they are unpickled in full, so convert only files you trust (the
authors' releases).

examples:
  ssckit convert-checkpoint --model symphonies semantic_kitti_e25_miou0.1489.ckpt symphonies_semkitti.pt
  ssckit convert-checkpoint --model vlscene vlscene_semantickitti.pth vlscene_semkitti.pt
"""
from __future__ import annotations

import argparse

HELP = "convert an official release checkpoint into an ssckit model file"
CLASSIFIER_KEYS = {"symphonies": "decoder.cls_head.2.weight", "vlscene": "pts_bbox_head.ssc_header.mlp_head.1.weight"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, choices=sorted(CLASSIFIER_KEYS),
                   help="which method the checkpoint belongs to")
    p.add_argument("input", metavar="IN.ckpt", help="official checkpoint (local file)")
    p.add_argument("output", metavar="OUT.pt", help="ssckit model file to write")
    p.add_argument("--dataset", choices=["semantic_kitti", "kitti_360"], default=None,
                   help="config preset; default: inferred from the number of classes of the classifier")


def run(args: argparse.Namespace) -> int:
    from ssckit.errors import SsckitError
    from ssckit.models import build_model, model_config
    from ssckit.models.checkpoint import save_model_file
    from ssckit.models.convert import convert_official_symphonies, convert_official_vlscene, read_state_dict

    sd = read_state_dict(args.input, allow_pickle=True)
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DDP wrapper
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    classifier = CLASSIFIER_KEYS[args.model]
    dataset = args.dataset
    if dataset is None:
        head = sd.get(classifier)
        if head is None:
            raise SsckitError(f"{args.input}: no {classifier}; is this a {args.model} checkpoint?")
        dataset = {20: "semantic_kitti", 19: "kitti_360"}.get(head.shape[0])
        if dataset is None:
            raise SsckitError(f"{args.input}: classifier has {head.shape[0]} classes; pass --dataset")
    cfg = model_config(args.model, {"preset": dataset})
    model = build_model(args.model, cfg)
    convert = convert_official_vlscene if args.model == "vlscene" else convert_official_symphonies
    converted = convert(sd, model)
    model.load_state_dict(converted, strict=True)
    save_model_file(args.output, args.model, cfg, model.state_dict())
    print(f"wrote {args.output}: {args.model} ({dataset}), {len(converted)} tensors from {len(sd)} official entries")
    return 0
