"""Import-time compatibility shims (kept tiny; imported first by ``ssckit/__init__``)."""
from __future__ import annotations

import sys

import torch

_TORCHVISION_LIB = None


def ensure_torchvision() -> str:
    """Let ``import torchvision`` work when its C++ ops cannot load (CUDA wheel beside a CPU torch).

    timm, torchmetrics and lightning import torchvision. The torchvision 0.28.0 wheel is a CUDA build whose
    ``_C.so`` does not load next to torch 2.13.0+cpu; its meta registrations then fail for two ops. Defining those
    two schemas first lets the pure-Python parts import. Returns "native", "shimmed" or "absent".
    """
    global _TORCHVISION_LIB
    try:
        import torchvision  # noqa: F401
        return "native"
    except ModuleNotFoundError:
        return "absent"
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    _TORCHVISION_LIB = torch.library.Library("torchvision", "DEF")
    _TORCHVISION_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401
    return "shimmed"
