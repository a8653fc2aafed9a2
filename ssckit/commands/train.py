"""Train a model from a composed config; checkpoints every epoch (last.ckpt) and the best val mIoU (best.ckpt).

The config is an experiment (a name from the configs shipped in ssckit/configs/experiment/, or any YAML path) plus
KEY=VALUE overrides (given after the options; values are YAML, e.g. data.batch_size=2 trainer.precision=bf16-mixed
schedule.optimizer.lr=1e-4). A group can be swapped by name: dataset=kitti_360, model=symphonies_tiny,
schedule=adamw_lr1e-4_30e_clip5. Unknown keys are errors. Data roots come from --data-root / --label-root /
--depth-root / --teacher-cache-root, else SSCKIT_DATA_ROOT / SSCKIT_LABEL_ROOT / SSCKIT_DEPTH_ROOT /
SSCKIT_TEACHER_CACHE_ROOT, else (--resume, eval, predict) the roots saved in the run; never from config files.

Before the run folder is made, the data is checked: the roots the pipeline reads (layout, depth maps, labels, the
teacher cache of model.teacher=cache) and one sample of the training and validation sets; a problem is one line
and exit status 2. A run writes <run_dir>/config.yaml (the resolved config), checkpoints/{last,best}.ckpt (atomic
writes), logs/version_N/metrics.csv and tb/version_N/ (TensorBoard: losses, learning rates, per-class IoU).
SIGTERM or Ctrl-C saves checkpoints/last.ckpt after the current training step or validation batch and exits
(143 / 130); --resume continues exactly (weights, optimizer, scheduler, RNG, epoch and position in the epoch; an
interrupted validation is run again). A NaN / inf loss stops the run with the step named.

Multi-GPU: trainer.devices=4 trainer.strategy=ddp (SyncBN with trainer.sync_batchnorm=true); mixed precision:
trainer.precision=bf16-mixed or 16-mixed; schedule.accumulate_grad_batches=N; schedule.gradient_clip_val=X;
trainer.compile=true. With torchrun or several nodes, pass --run-dir explicitly.

examples:
  ssckit train --config symphonies_semantic_kitti --data-root /data/semantic_kitti/dataset \\
      --label-root /data/semantic_kitti/labels --depth-root /data/semantic_kitti/depth
  ssckit train --config symphonies_semantic_kitti trainer.devices=1 data.flip_mode=exact
  ssckit train --config vlscene_semantic_kitti --teacher-cache-root /data/vlscene_teacher
  ssckit train --config symphonies_semantic_kitti --print-config
  ssckit train --resume runs/symphonies_semantic_kitti/20250101-120000
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HELP = "train a model from a config (checkpoints every epoch + best mIoU, --resume, DDP, mixed precision)"


def add_root_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", metavar="DIR", help="dataset root (default: $SSCKIT_DATA_ROOT)")
    parser.add_argument("--label-root", metavar="DIR",
                        help="preprocessed targets <seq>/<frame>_1_1.npy (default: $SSCKIT_LABEL_ROOT; without "
                             "it targets are computed from voxels/*.label)")
    parser.add_argument("--depth-root", metavar="DIR", help="stereo depth maps (default: $SSCKIT_DEPTH_ROOT)")
    parser.add_argument("--teacher-cache-root", metavar="DIR",
                        help="`ssckit cache-teacher` outputs for VLScene distillation (default: "
                             "$SSCKIT_TEACHER_CACHE_ROOT)")
    parser.add_argument("--config-dir", type=Path, metavar="DIR",
                        help="folder of dataset/ model/ schedule/ experiment/ YAML groups (default: "
                             "$SSCKIT_CONFIG_DIR, else the configs shipped in the ssckit package)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides after the options, e.g. data.batch_size=2 trainer.devices=1")


def roots_from_args(args: argparse.Namespace) -> dict[str, str | None]:
    """Roots given on the command line (they beat the environment, which beats a saved run's roots)."""
    return {"data_root": args.data_root, "label_root": args.label_root, "depth_root": args.depth_root,
            "teacher_cache_root": args.teacher_cache_root}


def _experiments() -> str:
    from ssckit.config import list_configs

    return ", ".join(list_configs("experiment")) or "none found"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="NAME|YAML",
                        help=f"experiment to run (available: {_experiments()})")
    parser.add_argument("--run-dir", type=Path, metavar="DIR",
                        help="run folder (default: <run_root>/<name>/<YYYYmmdd-HHMMSS>)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR|CKPT",
                        help="continue a run from its checkpoints/last.ckpt (or the given checkpoint); its saved "
                             "config is used, overrides still apply")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_root_arguments(parser)


def resume_checkpoint(path: Path) -> Path:
    from ssckit.errors import SsckitError

    ckpt = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise SsckitError(f"checkpoint not found: {ckpt}")
    return ckpt


def new_run_dir(run_root: str, name: str) -> Path:
    base = Path(run_root) / name / time.strftime("%Y%m%d-%H%M%S")
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    return run_dir


def run(args: argparse.Namespace) -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from ssckit.config import load_config, save_config, to_yaml
    from ssckit.engine import trainer as engine
    from ssckit.engine.callbacks import TrainingInterrupted
    from ssckit.errors import SsckitError

    roots = roots_from_args(args)
    ckpt_path = None
    if args.resume is not None:
        ckpt_path = resume_checkpoint(args.resume)
        base = engine.checkpoint_config(engine.read_checkpoint(ckpt_path), ckpt_path)
        cfg = load_config(base=base, overrides=args.overrides, roots=roots, config_dir=args.config_dir,
                          base_source=f"config saved in {ckpt_path}")
        run_dir = args.run_dir or engine.run_dir_of(ckpt_path)
    else:
        if args.config is None and not any(o.split("=", 1)[0] in ("dataset", "model") for o in args.overrides):
            raise SsckitError(f"choose an experiment with --config NAME (available: {_experiments()})")
        cfg = load_config(args.config, args.overrides, roots=roots, config_dir=args.config_dir)
        run_dir = args.run_dir or new_run_dir(cfg.run_root, cfg.name)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    run_dir = Path(os.environ.get(engine.RUN_DIR_ENV) or run_dir)  # DDP workers join process 0's folder
    if rank_zero_only.rank == 0:
        for line in engine.recipe_warnings(cfg):
            print(f"ssckit train: warning: {line}", file=sys.stderr)
    engine.check_data(cfg)  # roots + one train / val sample, before creating the run folder
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        print(f"run folder: {run_dir}", file=sys.stderr)
    try:
        trainer, module = engine.fit(cfg, run_dir, resume=ckpt_path)
    except TrainingInterrupted as e:
        if rank_zero_only.rank == 0:
            print(f"ssckit train: {e}", file=sys.stderr)
        return 128 + int(e.signum)
    if trainer.is_global_zero:
        best = run_dir / "checkpoints" / "best.ckpt"
        score = next((cb.best_model_score for cb in trainer.checkpoint_callbacks
                      if getattr(cb, "monitor", None) and cb.best_model_score is not None), None)
        line = f"done: {run_dir / 'checkpoints' / 'last.ckpt'}"
        if best.is_file() and score is not None:
            line += f"; best {cfg.checkpoint.monitor} = {float(score):.4f} in {best}"
        print(line, file=sys.stderr)
    return 0
