"""The main job on a fresh machine: synthetic data -> train Symphonies (demo size, CPU) -> score it like the
official evaluator next to the per-voxel-majority baseline -> renders and a server-style zip.

Steps (each reuses the public commands, so the demo is also a walk-through of them):
1. ``ssckit synth``: train sequence 00, held-out sequence 08 and a 2-frame "test" sequence 11 under DATA.
2. ``ssckit train --config symphonies_tiny_synthetic``: a tiny Symphonies on CPU (run folder OUT/run).
3. ``ssckit eval`` on 08 -> OUT/scores.yaml, and the per-voxel majority class of the training frames scored with the
   same metric on the same targets -> OUT/baseline_scores.yaml; both tables side by side. Both are scored at the
   demo model's grid (data.grid_scale: 1:4, 0.8 m voxels): repeating coarse predictions up to 0.2 m voxels would
   make thin surfaces (road, sidewalk) 4x too thick, an unfair comparison with a full-resolution baseline.
4. ``ssckit predict`` on 08 (raw-id .label files, repeated up to 256x256x32; ``ssckit evaluate --pred
   OUT/predictions --data DATA --sequences 08`` scores them with the official evaluator) and on 11 (+
   OUT/submission.zip in the server format, checked with ``ssckit validate-submission --partial``: the demo has one
   test sequence, not 11-21).
5. ``ssckit render`` of two held-out frames -> OUT/renders/; the trained checkpoint -> OUT/checkpoint.ckpt.
Existing synthetic data with the same settings is reused.

example:
  ssckit demo --out demo_output --data demo_data
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HELP = "the end-to-end demo: synthetic data, train, evaluate vs a baseline, render, submission zip"

TRAIN, VAL, TEST = "00", "08", "11"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="results folder (default: %(default)s)")
    p.add_argument("--data", type=Path, default=Path("demo_data"), help="synthetic dataset root (default: %(default)s)")
    p.add_argument("--train-frames", type=int, default=60, help="SSC frames of the training sequence")
    p.add_argument("--val-frames", type=int, default=10, help="SSC frames of the held-out sequence")
    p.add_argument("--epochs", type=int, default=None, help="override the demo config's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-scale", type=float, default=0.2, help="synthetic image scale (0.2 = 244x74 px)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training config overrides")


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _call(argv: list[str]) -> None:
    from ssckit.cli import main
    from ssckit.errors import SsckitError

    code = main(argv)
    if code != 0:
        raise SsckitError(f"`ssckit {' '.join(argv)}` failed (exit {code})")


def make_data(root: Path, args: argparse.Namespace) -> None:
    from ssckit.data.synth import generate

    marker = root / ".ssckit-demo.json"
    settings = {"train": args.train_frames, "val": args.val_frames, "seed": args.seed, "scale": args.image_scale}
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        print(f"reusing {root}")
        return
    shutil.rmtree(root, ignore_errors=True)
    for seq, frames in ((TRAIN, args.train_frames), (VAL, args.val_frames), (TEST, 2)):
        generate(root, frames, args.seed, sequences=[seq], image_scale=args.image_scale)
    marker.write_text(json.dumps(settings))


def baseline_scores(data: Path, grid_scale: int) -> dict:
    """Per-voxel majority class of the training frames as the prediction of every held-out frame, scored at the
    model's grid (targets majority-downsampled by ``grid_scale`` with the official rule, as the engine does)."""
    import torch

    from ssckit.baselines import majority_baseline
    from ssckit.data.datasets import SemanticKITTI
    from ssckit.data.preprocess import downsample_labels
    from ssckit.metrics.ssc import SSCMetric, scores_to_official_yaml_dict

    def target(reader: SemanticKITTI, f) -> "np.ndarray":  # noqa: F821
        t = reader.voxel_target(f)
        return downsample_labels(t, grid_scale) if grid_scale > 1 else t

    train, val = SemanticKITTI(data, sequences=[TRAIN]), SemanticKITTI(data, sequences=[VAL])
    prior = torch.from_numpy(majority_baseline(target(train, f) for f in train.frames)).long()[None]
    metric = SSCMetric(train.labels.num_classes)
    for f in val.frames:
        metric.update(prior, torch.from_numpy(target(val, f)).long()[None])
    return scores_to_official_yaml_dict(metric.compute(), train.labels.class_names)


def comparison_table(model: dict, baseline: dict, class_names: tuple[str, ...]) -> str:
    rows = [f"{'class':<16}{'Symphonies':>12}{'baseline':>12}"]
    for name in class_names[1:]:
        key = f"iou_{name}"
        rows.append(f"{name:<16}{100 * model[key]:>11.2f}%{100 * baseline[key]:>11.2f}%")
    for key, title in (("iou_completion", "completion IoU"), ("iou_mean", "mIoU")):
        rows.append(f"{title:<16}{100 * model[key]:>11.2f}%{100 * baseline[key]:>11.2f}%")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    import yaml

    from ssckit.data.labels import SEMANTIC_KITTI

    out, data = args.out, args.data
    out.mkdir(parents=True, exist_ok=True)
    t0 = _step(f"1/5 synthetic data -> {data}")
    make_data(data, args)
    roots = ["--data-root", str(data), "--depth-root", str(data / "depth")]

    _step("2/5 train a tiny Symphonies on CPU")
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [*args.overrides] + ([f"schedule.max_epochs={args.epochs}"] if args.epochs else [])
    _call(["train", "--config", "symphonies_tiny_synthetic", "--run-dir", str(run_dir), *roots, *overrides])
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    shutil.copy2(ckpt, out / "checkpoint.ckpt")

    _step("3/5 evaluation on held-out frames: the model and the per-voxel-majority baseline")
    _call(["eval", "--ckpt", str(ckpt), "--sequences", VAL, "--out", str(out / "eval"), *roots])
    shutil.copy2(out / "eval" / "scores.yaml", out / "scores.yaml")
    model = yaml.safe_load((out / "scores.yaml").read_text())
    grid_scale = int(yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["grid_scale"])
    baseline = baseline_scores(data, grid_scale)
    (out / "baseline_scores.yaml").write_text(yaml.safe_dump(baseline, sort_keys=False))
    print("\n" + comparison_table(model, baseline, SEMANTIC_KITTI.class_names))
    print(f"(both scored at the model grid, 1:{grid_scale}; see `ssckit demo --help`)")

    _step("4/5 predictions (held-out frames) and a server-style submission (test frames)")
    for d in ("predictions", "test_predictions"):
        shutil.rmtree(out / d, ignore_errors=True)
    _call(["predict", "--ckpt", str(ckpt), "--sequences", VAL, "--out", str(out / "predictions"), *roots])
    _call(["predict", "--ckpt", str(ckpt), "--sequences", TEST, "--out", str(out / "test_predictions"), "--zip",
           "--description", "ssckit demo: tiny Symphonies trained on synthetic data", *roots])
    shutil.move(out / "test_predictions" / "submission.zip", out / "submission.zip")
    _call(["validate-submission", str(out / "submission.zip"), "--data", str(data), "--partial"])

    _step("5/5 renders of held-out frames")
    _call(["render", "--data", str(data), "--sequences", VAL, "--pred", str(out / "predictions"), "--frames", "2",
           "--out", str(out / "renders"), "--no-progress"])

    better = model["iou_mean"] > baseline["iou_mean"]
    verdict = "beats" if better else "does NOT beat"
    print(f"\nSymphonies mIoU {100 * model['iou_mean']:.2f}% {verdict} the per-voxel-majority baseline "
          f"{100 * baseline['iou_mean']:.2f}% on held-out synthetic frames ({time.perf_counter() - t0:.0f} s).")
    print(f"results in {out}/: scores.yaml, baseline_scores.yaml, checkpoint.ckpt, submission.zip, renders/")
    if not better:
        print("ssckit demo: the trained model did not beat the baseline", file=sys.stderr)
        return 1
    return 0
