"""The main job on a fresh machine: synthetic data -> train Symphonies (demo size, CPU) -> score it like the
official evaluator next to the per-voxel-majority baseline -> renders and a server-style zip.

Steps (each reuses the public commands, so the demo is also a walk-through of them):
1. ``ssckit synth``: train sequence 00, held-out sequence 08 and a 2-frame "test" sequence 11 under DATA.
2. ``ssckit train --config symphonies_tiny_synthetic``: a tiny Symphonies on CPU (run folder OUT/run).
3. ``ssckit predict`` on 08 (raw-id .label files, repeated up to 256x256x32) and on 11 (+ OUT/submission.zip in the
   server format, checked with ``ssckit validate-submission --partial``: the demo has one test sequence, not 11-21).
4. ``ssckit evaluate`` on 08 at the full 256x256x32 grid -> OUT/scores.yaml; the same for the per-voxel majority
   class of the training frames -> OUT/baseline_scores.yaml; both tables side by side.
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
    p.add_argument("--train-frames", type=int, default=40, help="SSC frames of the training sequence")
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


def baseline_predictions(data: Path, pred_root: Path) -> None:
    """Per-voxel majority class of the training frames, written as the prediction of every held-out frame."""
    from ssckit.baselines import majority_baseline
    from ssckit.data.datasets import SemanticKITTI
    from ssckit.submission import write_prediction_label

    train = SemanticKITTI(data, sequences=[TRAIN])
    prior = majority_baseline(train.voxel_target(f) for f in train.frames)
    for f in SemanticKITTI(data, sequences=[VAL]).frames:
        write_prediction_label(pred_root, f, prior, train.labels)


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

    _step("3/5 predictions (held-out frames) and a server-style submission (test frames)")
    for d in ("predictions", "baseline_predictions", "test_predictions"):
        shutil.rmtree(out / d, ignore_errors=True)
    _call(["predict", "--ckpt", str(ckpt), "--sequences", VAL, "--out", str(out / "predictions"), *roots])
    _call(["predict", "--ckpt", str(ckpt), "--sequences", TEST, "--out", str(out / "test_predictions"), "--zip",
           "--description", "ssckit demo: tiny Symphonies trained on synthetic data", *roots])
    shutil.move(out / "test_predictions" / "submission.zip", out / "submission.zip")
    _call(["validate-submission", str(out / "submission.zip"), "--data", str(data), "--partial"])

    _step("4/5 official-style evaluation at 256x256x32: model and per-voxel-majority baseline")
    baseline_predictions(data, out / "baseline_predictions")
    _call(["evaluate", "--pred", str(out / "predictions"), "--data", str(data), "--sequences", VAL,
           "--out", str(out / "scores.yaml")])
    _call(["evaluate", "--pred", str(out / "baseline_predictions"), "--data", str(data), "--sequences", VAL,
           "--out", str(out / "baseline_scores.yaml")])
    model = yaml.safe_load((out / "scores.yaml").read_text())
    baseline = yaml.safe_load((out / "baseline_scores.yaml").read_text())
    print("\n" + comparison_table(model, baseline, SEMANTIC_KITTI.class_names))

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
