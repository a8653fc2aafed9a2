"""Per-model sample builders: ``PIPELINES[name](reader, data_cfg, stage)`` -> callable(frame, aug_key) -> sample.

A pipeline turns one frame of a dataset reader into a dict of numpy arrays / scalars / strings that
:func:`ssckit.engine.datamodule.collate_samples` stacks into a batch. The engine picks it by ``data.pipeline``
(default: the model's name); ``stage`` is "train" (augment; ``aug_key`` = (seed, epoch, index) seeds the random
choices), "val" (with target) or "predict" (no target). A pipeline class may define
``input_size(data_cfg, dataset_crop) -> (W, H)``: the config then derives the model's ``image_shape`` from it.
VLScene's stereo pipeline goes in ``vlscene.py`` and is registered here as "vlscene".
"""
from __future__ import annotations

from typing import Callable

from ssckit.data.pipelines.symphonies import SymphoniesPipeline
from ssckit.data.pipelines.vlscene import VLScenePipeline
from ssckit.errors import SsckitError

PIPELINES: dict[str, Callable] = {"symphonies": SymphoniesPipeline, "vlscene": VLScenePipeline}


def get_pipeline(name: str) -> Callable:
    try:
        return PIPELINES[name]
    except KeyError:
        raise SsckitError(f"no data pipeline {name!r}; choose one of {sorted(PIPELINES)} "
                          "(data.pipeline, default = the model's name)") from None


__all__ = ["PIPELINES", "SymphoniesPipeline", "VLScenePipeline", "get_pipeline"]
