"""Output heads."""
from ssckit.models.heads.ssc_head import SSCHead

__all__ = ["SSCHead"]
