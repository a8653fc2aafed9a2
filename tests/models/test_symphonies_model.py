"""Symphonies as a whole: tiny config forward/backward with batch 2, learning, full-size parameter count."""
from __future__ import annotations

import math

import pytest
import torch

from ssckit.errors import SsckitError
from ssckit.models import build_model, model_config
from ssckit.models.segmentors.symphonies import count_params, example_batch


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = model_config("symphonies", {"preset": "tiny"})
    return cfg, build_model("symphonies", cfg)


def test_tiny_forward_backward_batch2(tiny):
    cfg, model = tiny
    model.train()
    batch = example_batch(cfg, batch_size=2)
    out = model(batch)
    assert out["ssc_logits"].shape == (2, cfg.num_classes, *cfg.scene_shape)
    assert len(out["aux_logits"]) == cfg.num_layers
    losses = model.loss(out, batch)
    assert torch.isfinite(losses["total"])
    assert {"ce_ssc", "sem_scal", "geo_scal", "frustum", "ce_ssc_0", "frustum_1"} <= set(losses)
    # deep supervision: total = 0.5 * layer0 + 0.5 * layer1 + 1.0 * layer2 (each the sum of 4 terms)
    per_layer = [sum(losses[f"{k}{s}"] for k in cfg.losses) for s in ("_0", "_1", "")]
    assert torch.allclose(losses["total"], 0.5 * per_layer[0] + 0.5 * per_layer[1] + per_layer[2], rtol=1e-5)
    losses["total"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad()


def test_eval_returns_last_layer_only(tiny):
    cfg, model = tiny
    model.eval()
    with torch.no_grad():
        out = model(example_batch(cfg, batch_size=1))
    assert set(out) == {"ssc_logits"}
    assert not torch.isnan(out["ssc_logits"]).any()


def test_loss_falls_on_fixed_batch():
    torch.manual_seed(0)
    cfg = model_config("symphonies", {"preset": "tiny"})
    model = build_model("symphonies", cfg).train()
    batch = example_batch(cfg, batch_size=2, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, eps=1e-3)
    history = []
    for _ in range(20):
        loss = model.loss(model(batch), batch)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.85 * history[0], history
    assert sum(history[-5:]) < sum(history[:5]), history


def test_unknown_config_key_is_rejected():
    with pytest.raises(SsckitError, match="num_querys"):
        model_config("symphonies", {"preset": "tiny", "num_querys": 3})
    with pytest.raises(SsckitError, match="unknown model"):
        build_model("symphonie", {})


def test_full_config_parameter_count():
    """Spec §13: 59,310,044 with the never-used pixel-decoder layers, 58,587,868 without (722,176 unused)."""
    full = build_model("symphonies", {"build_unused": True})
    assert count_params(full)["params"] == 59_310_044
    assert count_params(full)["params_trainable"] == 59_310_044 - 53_120  # frozen ResNet BN affine
    del full
    default = build_model("symphonies", {})
    assert count_params(default)["params"] == 58_587_868
    kitti360 = model_config("symphonies", {"preset": "kitti_360"})
    assert kitti360.num_classes == 19 and kitti360.image_shape == (376, 1408)
