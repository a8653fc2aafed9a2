"""Model registry: one entry per method, name -> (config dataclass, preset function, builder, example batch)."""
from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any, Callable, NamedTuple

from torch import nn

from ssckit.errors import SsckitError
from ssckit.models.segmentors import symphonies, vlscene, vlscene_utils


class ModelEntry(NamedTuple):
    config: type  # typed dataclass of every hyper-parameter
    preset: Callable[..., Any]  # preset(name, **overrides) -> config; rejects unknown keys
    build: Callable[[Any], nn.Module]
    example_batch: Callable[..., dict]  # (config, batch_size, seed, device) -> batch dict
    count_params: Callable[[nn.Module], dict[str, int]]


MODELS: dict[str, ModelEntry] = {
    "symphonies": ModelEntry(symphonies.SymphoniesConfig, symphonies.symphonies_config, symphonies.build_symphonies,
                             symphonies.example_batch, symphonies.count_params),
    "vlscene": ModelEntry(vlscene.VLSceneConfig, vlscene.vlscene_config, vlscene.build_vlscene,
                          vlscene_utils.example_batch, vlscene_utils.count_params),
}
MODEL_CONFIGS: dict[str, type] = {name: entry.config for name, entry in MODELS.items()}


def get_model_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise SsckitError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None


def model_config(name: str, cfg: dict | Any | None = None) -> Any:
    """Typed config of model ``name`` from a dict (optional key ``preset``, default = the model's first preset)
    or an existing config dataclass."""
    entry = get_model_entry(name)
    if is_dataclass(cfg):
        return cfg
    values = dict(cfg or {})
    preset = values.pop("preset", None)
    return entry.preset(preset, **values) if preset else entry.preset(**values)


def build_model(name: str, cfg: dict | Any | None = None) -> nn.Module:
    """Build model ``name`` from a config dict/dataclass (see :func:`model_config`)."""
    entry = get_model_entry(name)
    return entry.build(model_config(name, cfg))


def config_dict(cfg: Any) -> dict:
    return asdict(cfg)
