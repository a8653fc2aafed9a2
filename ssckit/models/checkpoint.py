"""ssckit model files: weights plus the model name and its full config, so ``eval``/``predict`` can rebuild it."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssckit.errors import DataError

FORMAT = "ssckit-model-v1"


def save_model_file(path: str | os.PathLike, model_name: str, config: Any, state_dict: dict[str, Tensor]) -> None:
    """Write ``{format, model, config, state_dict}`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    payload = {"format": FORMAT, "model": model_name, "config": _plain(asdict(config)), "state_dict": state_dict}
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save_model_file` (weights only; no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "model file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"not a readable ssckit model file ({str(e).splitlines()[0]})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise DataError(path, f"not an ssckit model file (expected format {FORMAT!r})")
    return obj


def _plain(value: Any) -> Any:
    """Tuples -> lists so the config survives ``weights_only`` loading and YAML dumps."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
