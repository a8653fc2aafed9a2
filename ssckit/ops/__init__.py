"""Custom ops: pure-PyTorch references first, optional fast backends registered by name."""
from ssckit.ops.msda import (
    MultiScaleDeformableAttention,
    available_msda_backends,
    get_msda_backend,
    ms_deform_attn,
    ms_deform_attn_torch,
    register_msda_backend,
)

__all__ = [
    "MultiScaleDeformableAttention",
    "available_msda_backends",
    "get_msda_backend",
    "ms_deform_attn",
    "ms_deform_attn_torch",
    "register_msda_backend",
]
