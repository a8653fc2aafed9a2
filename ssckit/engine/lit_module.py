"""The one LightningModule of ssckit: any model with ``forward(batch) -> {"ssc_logits", ...}`` and
``loss(outputs, batch) -> {"total", ...}``.

Logs ``train/loss`` and every loss term, ``val/loss``, ``val/mIoU`` (classes 1..N-1), ``val/IoU`` (completion),
``val/precision``, ``val/recall`` and ``val/iou_<class>`` per class; the SSC metric is a DDP-summed confusion
matrix, so every process count gives the same numbers. Predictions are learning ids (B, X, Y, Z) uint8.
"""
from __future__ import annotations

from typing import Any, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from ssckit.config import ScheduleConfig
from ssckit.errors import SsckitError
from ssckit.metrics.ssc import SSCMetric


def param_groups(model: nn.Module, multipliers: dict[str, float], base_lr: float) -> list[dict[str, Any]]:
    """Trainable parameters grouped by the first matching name prefix; unmatched ones use ``base_lr``."""
    groups: dict[str, list[Tensor]] = {"": []}
    for prefix in multipliers:
        groups[prefix] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        prefix = next((pre for pre in multipliers if name.startswith(pre)), "")
        groups[prefix].append(p)
    empty = [pre for pre in multipliers if not groups[pre]]
    if empty:
        raise SsckitError(f"lr multiplier prefix(es) {', '.join(map(repr, empty))} match no trainable parameter "
                          f"of {type(model).__name__}")
    out = [{"params": groups[""], "lr": base_lr, "name": "base"}] if groups[""] else []
    out += [{"params": groups[pre], "lr": base_lr * m, "name": pre.rstrip(".")} for pre, m in multipliers.items()]
    return out


class SSCModule(L.LightningModule):
    """Training / evaluation / prediction around ``model``; ``config`` (plain dict) is embedded in checkpoints."""

    def __init__(self, model: nn.Module, schedule: ScheduleConfig, num_classes: int,
                 class_names: Sequence[str], config: dict | None = None) -> None:
        super().__init__()
        self.model = model
        self.schedule = schedule
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.config = config or {}
        self.metric = SSCMetric(num_classes)
        self.last_scores: dict[str, Any] | None = None
        self.last_losses: dict[str, float] = {}

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.model(batch)

    # --- steps -----------------------------------------------------------------------------------------------------

    def _batch_size(self, batch: dict[str, Any]) -> int:
        return int(batch["img"].shape[0]) if "img" in batch else 1

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        outputs = self.model(batch)
        losses = self.model.loss(outputs, batch)
        if "total" not in losses:
            raise SsckitError(f"{type(self.model).__name__}.loss() must return a dict with a 'total' entry")
        bs = self._batch_size(batch)
        self.last_losses = {k: float(v.detach()) for k, v in losses.items() if torch.is_tensor(v) and v.numel() == 1}
        self.last_frames = [f"{s}/{f}" for s, f in zip(batch.get("sequence", []), batch.get("frame_id", []))]
        self.log("train/loss", losses["total"].detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        for k, v in losses.items():
            if k != "total" and torch.is_tensor(v) and v.numel() == 1:
                self.log(f"train/{k}", v.detach().float(), on_step=True, on_epoch=True, batch_size=bs)
        return losses["total"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        outputs = self.model(batch)
        logits = outputs["ssc_logits"]
        self.metric.update(logits.detach(), batch["target"])
        losses = self.model.loss(outputs, batch)
        self.log("val/loss", losses["total"].detach().float(), on_step=False, on_epoch=True,
                 batch_size=self._batch_size(batch), sync_dist=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        scores = self.metric.compute()  # sums the confusion matrix over processes
        self.metric.reset()
        if self.trainer.sanity_checking:
            return
        self.last_scores = {k: v.numpy() if v.ndim else float(v) for k, v in scores.items()}
        logs = {"val/mIoU": scores["miou"], "val/IoU": scores["iou_completion"],
                "val/precision": scores["precision"], "val/recall": scores["recall"]}
        logs.update({f"val/iou_{name}": scores["iou"][i] for i, name in enumerate(self.class_names)})
        for key, value in logs.items():  # identical on every process already (synced state)
            self.log(key, value.float().to(self.device), prog_bar=key == "val/mIoU", sync_dist=False,
                     rank_zero_only=False)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        logits = self.model(batch)["ssc_logits"]
        pred = logits.argmax(dim=1).to(torch.uint8)  # (B, X, Y, Z) learning ids
        return {"pred": pred, "sequence": list(batch["sequence"]), "frame_id": list(batch["frame_id"])}

    # --- optimisation ----------------------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        opt_cfg, sch_cfg = self.schedule.optimizer, self.schedule.scheduler
        if opt_cfg.lr_multipliers is None:
            multipliers = dict(getattr(self.model, "lr_multipliers", {}) or {})
        else:
            multipliers = {g.prefix: g.lr_mult for g in opt_cfg.lr_multipliers}
        groups = param_groups(self.model, multipliers, opt_cfg.lr)
        if opt_cfg.name == "adamw":
            opt = torch.optim.AdamW(groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps,
                                    weight_decay=opt_cfg.weight_decay)
        elif opt_cfg.name == "adam":
            opt = torch.optim.Adam(groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps,
                                   weight_decay=opt_cfg.weight_decay)
        else:
            opt = torch.optim.SGD(groups, lr=opt_cfg.lr, momentum=opt_cfg.momentum,
                                  weight_decay=opt_cfg.weight_decay)
        if sch_cfg.name == "multistep":
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(sch_cfg.milestones),
                                                         gamma=sch_cfg.gamma)
        elif sch_cfg.name == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.schedule.max_epochs),
                                                               eta_min=sch_cfg.min_lr)
        else:
            sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch", "frequency": 1}}

    # --- checkpoints -------------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from ssckit import __version__

        checkpoint["ssckit"] = {"version": __version__, "config": self.config}
