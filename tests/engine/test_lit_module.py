"""The generic LightningModule: parameter groups, schedules, metric aggregation, precision / accumulation /
clipping / compile options, NaN guard and logs."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from ssckit.config import load_config
from ssckit.engine import trainer as engine
from ssckit.engine.callbacks import NonFiniteLoss
from ssckit.engine.lit_module import SSCModule, param_groups
from ssckit.errors import SsckitError
from ssckit.metrics.ssc import confusion_matrix, scores_from_confusion

from engine_helpers import TinyConfig, TinyModel


def _cfg(tiny_yaml, tiny_data, *overrides):
    roots = {k: str(v) for k, v in tiny_data.items()}
    return load_config(str(tiny_yaml), list(overrides), roots=roots)


def test_param_groups_and_schedule(tiny_model, tiny_yaml, tiny_data):
    model = TinyModel(TinyConfig())
    groups = param_groups(model, {"encoder.": 0.1}, 2e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("base", 2e-4), ("encoder", pytest.approx(2e-5))]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.encoder.parameters()}
    with pytest.raises(SsckitError, match="'decoder.' match no trainable"):
        param_groups(model, {"decoder.": 0.1}, 1.0)

    cfg = _cfg(tiny_yaml, tiny_data, "schedule.scheduler.milestones=[25]")
    module = engine.build_module(cfg)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and conf["lr_scheduler"]["interval"] == "epoch"
    assert opt.defaults["eps"] == 1e-3 and opt.defaults["weight_decay"] == 1e-4
    lrs = []
    for _ in range(26):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[24] == pytest.approx([2e-4, 2e-5]) and lrs[25] == pytest.approx([2e-5, 2e-6])  # x0.1 after 25

    cfg = _cfg(tiny_yaml, tiny_data, "schedule.optimizer.lr_multipliers=[{prefix: head., lr_mult: 3}]")
    opt = engine.build_module(cfg).configure_optimizers()["optimizer"]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-4, 6e-4])


def test_validation_metric_matches_direct_confusion(tiny_model, tiny_yaml, tiny_data):
    cfg = _cfg(tiny_yaml, tiny_data, "data.eval_batch_size=2")
    torch.manual_seed(0)
    module = engine.build_module(cfg)
    dm = engine.build_datamodule(cfg)
    trainer = engine.build_trainer(cfg, "validate")
    trainer.validate(module, datamodule=dm, verbose=False)
    module.eval()
    conf = np.zeros((20, 20), dtype=np.int64)
    with torch.no_grad():
        for batch in dm.val_dataloader():
            pred = module.model(batch)["ssc_logits"].argmax(1).numpy()
            conf += confusion_matrix(pred, batch["target"].numpy(), 20)
    expected = scores_from_confusion(conf)
    np.testing.assert_array_equal(module.last_scores["iou"], expected["iou"])
    assert module.last_scores["miou"] == expected["miou"] and conf.sum() > 0.9 * 3 * 32 * 32 * 4


def test_fit_with_options_writes_csv_logs(tiny_model, tiny_yaml, tiny_data, tmp_path):
    cfg = _cfg(tiny_yaml, tiny_data, "trainer.precision=bf16-mixed", "schedule.accumulate_grad_batches=2",
               "schedule.gradient_clip_val=0.5", "trainer.compile=true", "trainer.compile_backend=eager",
               "schedule.max_epochs=1")
    trainer, module = engine.fit(cfg, tmp_path / "run")
    assert trainer.accumulate_grad_batches == 2 and trainer.gradient_clip_val == 0.5
    assert trainer.precision == "bf16-mixed" and trainer.global_step == 2  # 3 batches -> 2 optimizer steps
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    kinds = sorted(type(lg).__name__ for lg in trainer.loggers)
    assert kinds == ["CSVLogger", "TensorBoardLogger"]
    events = list((tmp_path / "run" / "tb" / "version_0").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set(EventAccumulator(str(events[0])).Reload().Tags()["scalars"])
    assert {"train/loss_step", "val/mIoU", "val/iou_car", "lr-AdamW/encoder"} <= tags
    with open(tmp_path / "run" / "logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    cols = set(rows[0])
    assert {"train/loss_step", "train/ce_ssc_step", "train/frustum_epoch", "train/samples_per_s", "val/mIoU",
            "val/IoU", "val/iou_car", "val/iou_road", "val/loss", "lr-AdamW/base", "lr-AdamW/encoder"} <= cols
    lr = [float(r["lr-AdamW/encoder"]) for r in rows if r["lr-AdamW/encoder"]]
    assert lr and lr[0] == pytest.approx(2e-5)
    miou = [float(r["val/mIoU"]) for r in rows if r["val/mIoU"]]
    assert len(miou) == 1 and 0.0 <= miou[0] <= 1.0


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    with pytest.raises(SsckitError, match="needs the tensorboard package.*pip install tensorboard"):
        engine.build_loggers(tmp_path)


def test_non_finite_loss_stops_naming_the_step(tiny_model, tiny_yaml, tiny_data, tmp_path):
    cfg = _cfg(tiny_yaml, tiny_data, "model.nan_loss=true")
    with pytest.raises(NonFiniteLoss) as e:
        engine.fit(cfg, tmp_path / "run")
    msg = str(e.value)
    assert "loss is nan at epoch 0, step 0" in msg and "frames 00/" in msg and "ce_ssc=" in msg


def test_module_embeds_config_in_checkpoints(tiny_model, tiny_yaml, tiny_data):
    cfg = _cfg(tiny_yaml, tiny_data)
    module = engine.build_module(cfg)
    assert isinstance(module, SSCModule) and module.num_classes == 20 and module.class_names[1] == "car"
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    assert ckpt["ssckit"]["config"]["model"]["name"] == "tiny_test"
    assert ckpt["ssckit"]["config"]["data"]["data_root"] == str(tiny_data["data_root"])


@pytest.mark.slow
def test_symphonies_tiny_trains_through_the_engine(tiny_data, tmp_path):
    """The real (tiny) Symphonies model accepts the pipeline's batches (batch 2) for a step and a validation."""
    roots = {k: str(v) for k, v in tiny_data.items()}
    cfg = load_config("symphonies_tiny_synthetic", ["data.image_scale=0.125", "data.source_scale=0.125",
                                                    "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                                                    "schedule.max_epochs=1", "data.num_workers=0",
                                                    "trainer.num_sanity_val_steps=0", "trainer.progress_bar=false"],
                      roots=roots)
    assert cfg.model.config.scene_shape == (64, 64, 8) and cfg.model.config.image_shape == (46, 152)
    trainer, module = engine.fit(cfg, tmp_path / "run")
    assert trainer.global_step == 1 and np.isfinite(module.last_scores["miou"])
