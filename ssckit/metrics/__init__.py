"""Evaluation metrics (official-exact SSC metric)."""
from ssckit.metrics.ssc import (
    SSCMetric,
    confusion_matrix,
    format_table,
    scores_from_confusion,
    scores_to_official_yaml_dict,
)

__all__ = ["SSCMetric", "confusion_matrix", "format_table", "scores_from_confusion", "scores_to_official_yaml_dict"]
