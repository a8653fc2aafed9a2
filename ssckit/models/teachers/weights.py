"""Local weight files of the LSeg teacher: the checkpoint (strict key check) and the prompt text embeddings.

Nothing is downloaded. ``demo_e200.ckpt`` (LSeg's public demo checkpoint, a PyTorch-Lightning file) holds the
network under ``state_dict`` with keys ``net.<module path>``; VLScene checkpoints hold the same keys under
``clip_net.vlseg_encoder.``. The prefix is found from the anchor key ``...pretrained.model.cls_token``; keys outside
it are ignored, keys under it must match the model exactly.

Text embeddings: a (K, 512) float tensor computed once with CLIP ViT-B/32 on a machine that has it, e.g.
``clip.load("ViT-B/32")[0].encode_text(clip.tokenize(OUTDOOR_PROMPTS))``, saved with ``torch.save`` (.pt) or
``numpy.save`` (.npy). Alternatively an integer (K, 77) tensor of the token ids (``clip.tokenize(prompts)``): the
teacher then encodes them with the CLIP text tower stored in the LSeg checkpoint.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ssckit.errors import DataError

ANCHOR_KEY = "pretrained.model.cls_token"
_TEXT_KEYS = ("text_embeddings", "text_features", "embeddings", "token_ids", "tokens")
_SHOW = 8


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # Lightning checkpoints pickle their hyper-parameters: allowed for a local file the user names
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise DataError(path, f"not a readable PyTorch file ({e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DataError(path, f"not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None


def load_lseg_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """LSeg weights from a local checkpoint, keys relative to the LSeg network (``clip_pretrained.*``, ...)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "LSeg checkpoint not found (download demo_e200.ckpt from the lang-seg README)")
    obj = _torch_load(p)
    state = obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                state = obj[key]
                break
    if not isinstance(state, Mapping):
        raise DataError(p, f"expected a state dict (or a checkpoint with 'state_dict'), got {type(state).__name__}")
    prefixes = sorted({k[: -len(ANCHOR_KEY)] for k in state
                       if isinstance(k, str) and k.endswith(ANCHOR_KEY) and (k == ANCHOR_KEY or
                                                                             k[: -len(ANCHOR_KEY)].endswith("."))})
    if len(prefixes) != 1:
        what = "no key" if not prefixes else f"{len(prefixes)} keys ({', '.join(p + ANCHOR_KEY for p in prefixes)})"
        raise DataError(p, f"not an LSeg checkpoint: {what} ending in {ANCHOR_KEY!r}")
    prefix = prefixes[0]
    return {k[len(prefix):]: v for k, v in state.items()
            if isinstance(k, str) and k.startswith(prefix) and isinstance(v, torch.Tensor)}


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def strict_key_check(path: str | os.PathLike, state: Mapping[str, torch.Tensor],
                     expected: Mapping[str, torch.Tensor]) -> None:
    """Raise DataError naming ``path`` and the missing / unexpected / mis-shaped keys, if any."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_listing(shapes)}")
    if problems:
        raise DataError(path, "checkpoint does not match the LSeg model: " + "; ".join(problems))


def load_text_embeddings(path: str | os.PathLike) -> torch.Tensor:
    """A 2-D tensor from ``.pt``/``.pth`` (a tensor, or a dict holding one under a known key) or ``.npy``:
    float (K, D) prompt embeddings, or integer (K, context_length) CLIP token ids."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "text-embedding file not found")
    if p.suffix == ".npy":
        try:
            value: Any = torch.from_numpy(np.load(p, allow_pickle=False))
        except (ValueError, OSError, EOFError) as e:
            raise DataError(p, f"not a readable .npy array ({e})") from None
    else:
        try:
            value = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to read is a bad file
            raise DataError(p, f"not a readable PyTorch tensor file ({type(e).__name__}: {e})") from None
        if isinstance(value, Mapping):
            found = [k for k in _TEXT_KEYS if isinstance(value.get(k), torch.Tensor)]
            tensors = [k for k, v in value.items() if isinstance(v, torch.Tensor)]
            if not found and len(tensors) != 1:
                raise DataError(p, f"dict without a tensor under one of {_TEXT_KEYS}")
            value = value[found[0] if found else tensors[0]]
    if not isinstance(value, torch.Tensor) or value.dim() != 2:
        raise DataError(p, f"expected a 2-D tensor (K prompts x D), got "
                           f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
    if value.dtype.is_floating_point and not torch.isfinite(value).all():
        raise DataError(p, "text embeddings contain NaN or inf")
    return value
