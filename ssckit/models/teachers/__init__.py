"""Frozen vision-language teachers for VLScene's distillation: LSeg (online), its on-disk cache, and a test stand-in."""
from ssckit.models.teachers.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_PROMPTS,
    OUTDOOR_PROMPTS,
    VL_FEATURE_DIM,
    Teacher,
    feature_size_for,
    vlscene_left_image,
)
from ssckit.models.teachers.cache import (
    CachedTeacher,
    CacheSummary,
    cache_dataset,
    cache_path,
    read_cache_entry,
    write_cache_entry,
)
from ssckit.models.teachers.clip import CLIP, CLIPConfig
from ssckit.models.teachers.lseg import LSegConfig, LSegNet, LSegTeacher
from ssckit.models.teachers.random_teacher import RandomTeacher
from ssckit.models.teachers.weights import load_lseg_state_dict, load_text_embeddings

__all__ = [
    "CLIP", "CLIPConfig", "CacheSummary", "CachedTeacher", "IMAGENET_MEAN", "IMAGENET_STD", "LSegConfig", "LSegNet",
    "LSegTeacher", "NUM_PROMPTS", "OUTDOOR_PROMPTS", "RandomTeacher", "Teacher", "VL_FEATURE_DIM", "cache_dataset",
    "cache_path", "feature_size_for", "load_lseg_state_dict", "load_text_embeddings", "read_cache_entry",
    "vlscene_left_image", "write_cache_entry",
]
