"""ResNet-50 image backbone (timm) returning C2..C5, with frozen BatchNorm as in the official Symphonies config.

The official encoder is mmdet's ResNet-50 (``style='pytorch'``: the stride sits on the 3x3 conv,
``norm_cfg=BN(requires_grad=False)``, ``norm_eval=True``). timm's ``resnet50`` has the same layers and the same
parameter names (``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{1-3}/bn{1-3}/downsample.{0,1}``), so official, timm and
torchvision weights load without renaming.

Width knob: ``base_width`` is mmdet's ``base_channels`` (stem width and the bottleneck width of stage 1; the stage
outputs are ``4 * base_width * (1, 2, 4, 8)``). timm takes the stage widths as ``channels=`` but fixes its 7x7 stem
at 64 channels, so for ``base_width != 64`` the stem conv/BN and the two convs that read the stem (first block's
``conv1`` and ``downsample.0``) are rebuilt narrower. Everything else stays timm's own modules, so the reduced-width
oracle test exercises the same code path as the full-size model.

Frozen BN: ``timm.layers.freeze_batch_norm_2d`` turns every BN into ``FrozenBatchNorm2d`` (statistics *and*
affine fixed). That class keeps weight/bias as buffers, so ``parameters()`` holds 23,454,912 numbers (the official
*trainable* count); :func:`frozen_bn_affine_numel` gives the 53,120 frozen affine numbers the official count adds
(23,508,032 in total).
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ssckit.errors import DataError

RESNET50_STRIDES = (4, 8, 16, 32)


def _frozen_bn_class() -> type:
    from timm.layers.norm_act import FrozenBatchNorm2d
    return FrozenBatchNorm2d


def frozen_bn_affine_numel(module: nn.Module) -> int:
    """Number of frozen BN weight+bias values (buffers in ``FrozenBatchNorm2d``) inside ``module``."""
    frozen = _frozen_bn_class()
    return sum(m.weight.numel() + m.bias.numel() for m in module.modules() if isinstance(m, frozen))


def count_parameters(module: nn.Module, include_frozen_bn: bool = True) -> int:
    """Parameter count as the official code reports it (frozen BN affine counted when ``include_frozen_bn``)."""
    n = sum(p.numel() for p in module.parameters())
    return n + frozen_bn_affine_numel(module) if include_frozen_bn else n


def _narrow_stem(body: nn.Module, width: int) -> None:
    """Replace timm's fixed 64-channel stem by a ``width``-channel one (and the two convs reading it)."""
    def conv(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Conv2d:
        layer = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False)
        nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        return layer

    body.conv1 = conv(3, width, 7, stride=2)
    body.bn1 = nn.BatchNorm2d(width)
    first = body.layer1[0]
    first.conv1 = conv(width, first.conv1.out_channels, 1)
    first.downsample[0] = conv(width, first.downsample[0].out_channels, 1)


class ResNetBackbone(nn.Module):
    """ResNet-50 features C2..C5 at strides 4/8/16/32 (``out_channels`` = 4*base_width*(1,2,4,8))."""

    def __init__(self, base_width: int = 64, frozen_bn: bool = True):
        super().__init__()
        import timm  # heavy import kept local; ssckit's torchvision shim is installed by ``import ssckit``

        widths = tuple(base_width * 2 ** i for i in range(4))
        body = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4),
                                 channels=widths)
        if base_width != 64:
            _narrow_stem(body, base_width)
        if frozen_bn:
            from timm.layers import freeze_batch_norm_2d
            body = freeze_batch_norm_2d(body)
        self.body = body
        self.base_width = base_width
        self.out_channels: tuple[int, ...] = tuple(4 * w for w in widths)
        self.strides: tuple[int, ...] = RESNET50_STRIDES

    def forward(self, img: Tensor) -> list[Tensor]:
        """img (B, 3, H, W) normalized RGB -> [C2, C3, C4, C5], (B, out_channels[i], H_i, W_i)."""
        return list(self.body(img))

    def load_pretrained(self, path: str | Path) -> None:
        """Load a timm- or torchvision-format ResNet-50 state dict from a local file (``fc.*`` ignored).

        Accepts a raw state dict or one wrapped under ``state_dict``/``model``, with an optional ``module.`` or
        ``backbone.`` prefix. Any missing, unexpected or mis-shaped key raises :class:`DataError`.
        """
        from ssckit.models.convert import read_state_dict

        obj = read_state_dict(path)
        sd: dict[str, Tensor] = {}
        for key, val in obj.items():
            for prefix in ("module.", "backbone."):
                key = key.removeprefix(prefix)
            if key.startswith("fc.") or key.endswith("num_batches_tracked"):
                continue
            sd[key] = val
        own = self.body.state_dict()
        problems = [f"unexpected {k}" for k in sd if k not in own]
        problems += [f"missing {k}" for k in own if k not in sd and not k.endswith("num_batches_tracked")]
        problems += [f"shape {k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
                     for k, v in own.items() if k in sd and sd[k].shape != v.shape]
        if problems:
            shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} problems)" if len(problems) > 5 else "")
            raise DataError(path, f"not a ResNet-50 (base_width {self.base_width}) state dict: {shown}")
        self.body.load_state_dict(sd, strict=False)
