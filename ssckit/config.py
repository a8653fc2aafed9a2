"""Typed, composable experiment configs: small YAML files per group, merged onto dataclass schemas.

A config file is a partial of the whole tree (keys ``name``, ``seed``, ``run_root``, ``data``, ``model``,
``schedule``, ``trainer``, ``checkpoint``) plus an optional ``defaults`` list of other files to merge first, named
``<group>/<name>`` under the config directory (the package's ``ssckit/configs/{dataset,model,schedule,experiment}/``,
installed with it as package data, or ``--config-dir`` / ``$SSCKIT_CONFIG_DIR``). Layers are merged in order: schema
defaults -> ``defaults`` (depth first) -> the file's own keys -> ``key=value`` overrides from the command line ->
data roots (command-line flags, else ``SSCKIT_*_ROOT`` variables, else the roots saved in a run's config).
Config files may not set data roots. An unknown or misspelled key or a value of the wrong type is an
:class:`~ssckit.errors.SsckitError` naming the key and the file (or "command line").

The ``model`` section is ``name`` (a key of ``ssckit.models.MODELS``), optional ``preset`` and the fields of that
model's config dataclass. Fields the data decides (``DERIVED_MODEL_KEYS``) are filled in from the data config;
setting one to a different value is an error.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ssckit.config_schema import (BASE_VOXEL, CONFIG_DIR_ENV, DERIVED_MODEL_KEYS, FULL_GRID, GROUPS,  # noqa: F401
                                  PRECISIONS, ROOT_ENV, CheckpointConfig, DataConfig, ExperimentConfig, ModelSpec,
                                  OptimizerConfig, ParamGroupConfig, ScheduleConfig, SchedulerConfig, TrainerConfig,
                                  FLOAT_PATTERN, image_size, validate)
from ssckit.errors import SsckitError


# --- locating and reading files ----------------------------------------------------------------------------------

PACKAGE_CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # package data (editable or not)


def default_config_dir() -> Path:
    """``$SSCKIT_CONFIG_DIR``, else the configs shipped inside the package (``ssckit/configs``)."""
    env = os.environ.get(CONFIG_DIR_ENV)
    return Path(env) if env else PACKAGE_CONFIG_DIR


def list_configs(group: str, config_dir: Path | None = None) -> list[str]:
    folder = (config_dir or default_config_dir()) / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def resolve_config_path(name: str, config_dir: Path | None = None, group: str = "experiment") -> Path:
    """A YAML path, ``<group>/<name>`` or a bare ``<name>`` of ``group`` -> existing file path."""
    config_dir = config_dir or default_config_dir()
    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) else []
    candidates += [config_dir / f"{name}.yaml", config_dir / group / f"{name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    known = ", ".join(list_configs(group, config_dir)) or "none"
    raise SsckitError(f"config {name!r} not found (looked in {config_dir}); {group} configs: {known}")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SsckitError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise SsckitError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SsckitError(f"{path}: a config file must hold a mapping, not {type(data).__name__}")
    return data


def parse_overrides(tokens: list[str]) -> tuple[dict, dict[str, str]]:
    """``a.b=value`` tokens -> (nested dict, group selections such as ``dataset=kitti_360``); values are YAML."""
    tree: dict = {}
    groups: dict[str, str] = {}
    for tok in tokens:
        key, sep, raw = tok.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise SsckitError(f"override {tok!r} must look like key=value (e.g. data.batch_size=2)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and FLOAT_PATTERN.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 as a string
        if key in GROUPS and isinstance(value, str):
            groups[key] = value
            continue
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SsckitError(f"override {tok!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return tree, groups


# --- composition -------------------------------------------------------------------------------------------------

Layer = tuple[str, dict]  # (source shown in errors, partial config tree)


def _expand(path: Path, config_dir: Path, groups: dict[str, str], seen: tuple[Path, ...],
            used: set[str] | None = None) -> list[Layer]:
    """The layers of one file: its ``defaults`` (recursively; ``groups`` swaps entries), then its own keys."""
    used = set() if used is None else used
    path = path.resolve()
    if path in seen:
        raise SsckitError(f"{path}: defaults form a cycle ({' -> '.join(p.name for p in seen + (path,))})")
    data = _read_yaml(path)
    defaults = data.pop("defaults", []) or []
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise SsckitError(f"{path}: 'defaults' must be a list of '<group>/<name>' strings")
    layers: list[Layer] = []
    for entry in defaults:
        group, _, name = entry.partition("/")
        if group not in GROUPS or not name:
            raise SsckitError(f"{path}: defaults entry {entry!r} must be '<group>/<name>' with group in {GROUPS}")
        used.add(group)
        sub = groups
        if group in groups:  # swapped: the replacement's own defaults of this group are not swapped again
            name, sub = groups[group], {k: v for k, v in groups.items() if k != group}
        layers += _expand(resolve_config_path(f"{group}/{name}", config_dir, group), config_dir, sub,
                          seen + (path,), used)
    data_section = data.get("data")
    if isinstance(data_section, dict):
        for key in ROOT_ENV:
            if data_section.get(key) is not None:
                flag = "--" + key.replace("_", "-")
                raise SsckitError(f"{path}: data.{key} must not be set in a config file; pass {flag} or set "
                                  f"{ROOT_ENV[key]}")
    layers.append((str(path), data))
    return layers


def _omegaconf():
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    return OmegaConf, ConfigKeyError, ValidationError, OmegaConfBaseException


def _merge(node: Any, layer: dict, source: str, prefix: str = "") -> Any:
    OmegaConf, ConfigKeyError, ValidationError, BaseExc = _omegaconf()
    try:
        return OmegaConf.merge(node, layer)
    except ConfigKeyError as e:
        key = prefix + str(getattr(e, "full_key", "") or e).strip("'")
        parent = node
        for part in key[len(prefix):].split(".")[:-1]:
            parent = parent.get(part) if hasattr(parent, "get") else None
        known = list(parent.keys()) if hasattr(parent, "keys") else []
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], [str(k) for k in known], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SsckitError(f"{source}: unknown config key {key!r}{hint}") from None
    except (ValidationError, BaseExc) as e:
        key = prefix + str(getattr(e, "full_key", "") or "")
        msg = str(e).splitlines()[0]
        raise SsckitError(f"{source}: bad value for {key!r}: {msg}") from None


def _tupleize(cfg: Any) -> Any:
    """Turn list values of tuple-annotated dataclass fields back into tuples, checking fixed lengths."""
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        hint = hints.get(f.name)
        is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        args = [a for a in typing.get_args(hint) if a is not type(None)] if is_union else [hint]
        tup = next((a for a in args if typing.get_origin(a) is tuple or a is tuple), None)
        if tup is None or not isinstance(value, (list, tuple)):
            continue
        targs = typing.get_args(tup)
        if targs and targs[-1] is not Ellipsis and len(targs) != len(value):
            raise SsckitError(f"model.{f.name} needs {len(targs)} values, got {list(value)}")
        changes[f.name] = tuple(value)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def derived_model_values(data: DataConfig, model_name: str) -> dict[str, Any]:
    """Model fields fixed by the data: class count, grid, voxel size, frustum tiles and, when the pipeline
    declares it (``input_size(data_cfg, dataset_crop) -> (W, H)``), the input image shape (H, W)."""
    from ssckit.data.datasets import get_dataset_class
    from ssckit.data.pipelines import PIPELINES

    reader = get_dataset_class(data.dataset)
    s = data.grid_scale
    out: dict[str, Any] = {"dataset": data.dataset, "num_classes": reader.labels.num_classes,
                           "scene_shape": tuple(n // s for n in FULL_GRID), "voxel_size": BASE_VOXEL * s,
                           "frustum_size": data.frustum_size}
    pipeline = PIPELINES.get(data.pipeline or model_name)
    if hasattr(pipeline, "input_size"):
        w, h = pipeline.input_size(data, reader.image_size)
        out["image_shape"] = (h, w)
    return out


def _build_model_config(layers: list[Layer], data: DataConfig, name: str, preset: str | None) -> Any:
    """The model's typed config: preset, then each layer's ``model`` keys, then the data-derived fields."""
    from ssckit.models import get_model_entry

    OmegaConf = _omegaconf()[0]
    entry = get_model_entry(name)
    base = entry.preset(preset) if preset else entry.preset()
    node = OmegaConf.structured(base)
    explicit: dict[str, tuple[str, Any]] = {}
    for source, section in layers:
        values = {k: v for k, v in section.items() if k not in ("name", "preset")}
        node = _merge(node, values, source, prefix="model.")
        explicit.update({k: (source, v) for k, v in values.items()})
    cfg = _tupleize(OmegaConf.to_object(node))
    fields = {f.name for f in dataclasses.fields(cfg)}
    derived = {k: v for k, v in derived_model_values(data, name).items() if k in fields}
    for key, value in derived.items():
        if key in explicit and _norm(explicit[key][1]) != _norm(value):
            raise SsckitError(f"{explicit[key][0]}: model.{key}={explicit[key][1]!r} disagrees with the data config "
                              f"({_norm(value)!r}); it is derived from data.* - remove it")
    return dataclasses.replace(cfg, **derived)


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return float(v) if isinstance(v, float) else v


def compose(layers: list[Layer], roots: dict[str, str | None] | None = None,
            roots_fallback: dict[str, str | None] | None = None) -> ExperimentConfig:
    """Merge ``layers`` onto the schema, fill data roots (``roots``, then a ``data.<root>=`` override, then the
    environment, then ``roots_fallback`` = a saved run's roots), build the model's typed config and validate."""
    OmegaConf = _omegaconf()[0]
    root = OmegaConf.structured(ExperimentConfig)
    model_layers: list[Layer] = []
    name = preset = None
    for source, tree in layers:
        tree = dict(tree)
        section = tree.pop("model", None)
        if section is not None:
            if not isinstance(section, dict):
                raise SsckitError(f"{source}: 'model' must be a mapping with at least 'name'")
            name = section.get("name", name)
            preset = section.get("preset", preset)
            model_layers.append((source, section))
        root = _merge(root, tree, source)
    for key, env in ROOT_ENV.items():
        value = (roots or {}).get(key) or OmegaConf.select(root, f"data.{key}") or os.environ.get(env) \
            or (roots_fallback or {}).get(key) or None
        root.data[key] = str(value) if value is not None else None
    cfg: ExperimentConfig = OmegaConf.to_object(root)
    if not name:
        raise SsckitError("no model selected: add 'model/<name>' to the config's defaults or pass model=<name>")
    validate(cfg)
    cfg.model = ModelSpec(name=str(name), preset=preset, config=None)
    cfg.model.config = _build_model_config(model_layers, cfg.data, cfg.model.name, preset)
    return cfg


def load_config(config: str | None = None, overrides: list[str] | None = None,
                roots: dict[str, str | None] | None = None, config_dir: Path | None = None,
                base: dict | None = None, base_source: str = "saved run config",
                defaults: dict | None = None) -> ExperimentConfig:
    """Compose an experiment: ``config`` (name or path) or ``base`` (a saved resolved config, data roots allowed),
    then ``defaults`` (a partial tree, e.g. the hardware settings of ``ssckit eval``), then ``key=value``
    overrides, then data roots."""
    config_dir = Path(config_dir) if config_dir else default_config_dir()
    tree, groups = parse_overrides(list(overrides or []))
    layers: list[Layer] = []
    fallback: dict[str, str | None] = {}
    if base is not None:
        base = dict(base)
        base_data = dict(base.get("data") or {})
        fallback = {k: base_data.pop(k, None) for k in ROOT_ENV}
        base["data"] = base_data
        layers.append((base_source, base))
        for group, name in groups.items():
            layers += _expand(resolve_config_path(f"{group}/{name}", config_dir, group), config_dir, {}, ())
    elif config is not None:
        used: set[str] = set()
        layers += _expand(resolve_config_path(config, config_dir), config_dir, groups, (), used)
        for group in [g for g in groups if g not in used]:
            layers += _expand(resolve_config_path(f"{group}/{groups[group]}", config_dir, group), config_dir, {}, ())
    else:
        for group, name in groups.items():
            layers += _expand(resolve_config_path(f"{group}/{name}", config_dir, group), config_dir, {}, ())
    if defaults:
        layers.append(("command defaults", defaults))
    if tree:
        layers.append(("command line", tree))
    return compose(layers, roots=roots, roots_fallback=fallback)


# --- saving ------------------------------------------------------------------------------------------------------

def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    return v


def to_dict(cfg: ExperimentConfig) -> dict:
    """The resolved config as plain YAML-able data; ``model`` is flattened to name, preset and fields."""
    out = _plain(cfg)
    out["model"] = {"name": cfg.model.name, "preset": cfg.model.preset, **_plain(cfg.model.config)}
    return out


def to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: ExperimentConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically."""
    from ssckit.data.io import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, to_yaml(cfg).encode())
    return path


def read_saved_config(path: str | os.PathLike) -> dict:
    """A resolved config written by :func:`save_config` (data roots allowed)."""
    return _read_yaml(Path(path))
