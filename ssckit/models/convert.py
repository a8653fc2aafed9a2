"""Official Symphonies checkpoint keys -> ssckit module keys.

The official model (``hustvl/Symphonies``) names its image encoder ``encoder.model.backbone.*`` (mmdet ResNet-50),
``encoder.model.panoptic_head.pixel_decoder.*`` (mmdet MaskDINO encoder), ``encoder.query_embed``,
``encoder.pts_embed`` and ``encoder.out_projs.*``. :func:`map_official_encoder_key` maps them onto
:class:`ssckit.models.backbones.SymphoniesEncoder`; :func:`convert_official_symphonies` converts a whole model.
The MaskDINO COCO checkpoint that Symphonies starts from uses the same names without the ``encoder.model.`` prefix
(:func:`maskdino_to_official`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from ssckit.errors import DataError, SsckitError

_PD = "encoder.model.panoptic_head.pixel_decoder."

# (official regex, ssckit template); the first full match wins.
_ENCODER_RULES: tuple[tuple[str, str], ...] = (
    # frozen BN has no batch counter (timm/torchvision FrozenBatchNorm2d); it is meaningless for frozen statistics
    (r"encoder\.model\.backbone\..*num_batches_tracked", ""),
    (r"encoder\.model\.backbone\.(.+)", r"backbone.body.\1"),
    (re.escape(_PD) + r"input_proj\.(\d+)\.([01])\.(weight|bias)", r"pixel_decoder.input_proj.\1.\2.\3"),
    (re.escape(_PD) + r"transformer\.level_embed", r"pixel_decoder.level_embed"),
    (re.escape(_PD) + r"transformer\.encoder\.layers\.(\d+)\.self_attn\.(.+)", r"pixel_decoder.layers.\1.attn.\2"),
    (re.escape(_PD) + r"transformer\.encoder\.layers\.(\d+)\.norms\.0\.(.+)", r"pixel_decoder.layers.\1.norm1.\2"),
    (re.escape(_PD) + r"transformer\.encoder\.layers\.(\d+)\.norms\.1\.(.+)", r"pixel_decoder.layers.\1.norm2.\2"),
    (re.escape(_PD) + r"transformer\.encoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.(.+)",
     r"pixel_decoder.layers.\1.ffn.0.\2"),
    (re.escape(_PD) + r"transformer\.encoder\.layers\.(\d+)\.ffn\.layers\.1\.(.+)",
     r"pixel_decoder.layers.\1.ffn.3.\2"),
    (re.escape(_PD) + r"adapter_1\.conv\.(.+)", r"pixel_decoder.fpn_lateral.0.\1"),
    (re.escape(_PD) + r"adapter_1\.gn\.(.+)", r"pixel_decoder.fpn_lateral.1.\1"),
    (re.escape(_PD) + r"layer_1\.conv\.(.+)", r"pixel_decoder.fpn_output.0.\1"),
    (re.escape(_PD) + r"layer_1\.gn\.(.+)", r"pixel_decoder.fpn_output.1.\1"),
    (re.escape(_PD) + r"mask_features\.(.+)", r"pixel_decoder.mask_features.\1"),
    # MaskDINO training criterion's class weights and the deleted transformer decoder ("predictor")
    (r"encoder\.model\.panoptic_head\.criterion\..+", ""),
    (r"encoder\.model\.panoptic_head\.predictor\..+", ""),
    (r"encoder\.query_embed\.weight", "query_embed.weight"),
    (r"encoder\.pts_embed\.weight", "pts_embed.weight"),
    (r"encoder\.out_projs\.(\d+)\.([013])\.(.+)", r"out_projs.\1.\2.\3"),
)
_COMPILED = tuple((re.compile(pat), repl) for pat, repl in _ENCODER_RULES)

# Targets that exist only when the pixel decoder is built with ``build_unused=True`` (FPN step, mask features).
OPTIONAL_ENCODER_PREFIXES = ("pixel_decoder.fpn_lateral.", "pixel_decoder.fpn_output.", "pixel_decoder.mask_features.")


def map_official_encoder_key(key: str) -> str | None:
    """Official ``encoder.*`` key -> SymphoniesEncoder key, or None for a deliberately dropped one.

    Raises KeyError for a key this mapping does not know (so a loader can fail loudly).
    """
    for pattern, repl in _COMPILED:
        if pattern.fullmatch(key):
            return pattern.sub(repl, key) or None
    raise KeyError(f"no ssckit mapping for official encoder key {key!r}")


def maskdino_to_official(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys of the MaskDINO COCO checkpoint (``backbone.*``, ``panoptic_head.*``) -> official ``encoder.model.*``."""
    return {f"encoder.model.{k}": v for k, v in state_dict.items()}


def read_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, Tensor]:
    """Read a local checkpoint file: a raw state dict, or one under ``state_dict``/``model`` (Lightning adds the
    prefix ``model.`` to every key of the official model; it is removed).

    Files are read with ``weights_only=True``. Official Lightning checkpoints also pickle their hyper-parameters;
    ``allow_pickle`` retries such a file with full unpickling (only for files you trust).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error naming the file
        if not allow_pickle:
            raise DataError(path, f"cannot read as a torch checkpoint ({str(e).splitlines()[0]})") from e
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001
            raise DataError(path, f"cannot read as a torch checkpoint ({str(e2).splitlines()[0]})") from e2
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise DataError(path, "expected a state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("model.") for k in obj):
        obj = {k.removeprefix("model."): v for k, v in obj.items()}
    return dict(obj)


def _map_encoder_entries(official_sd: Mapping[str, Tensor], own: Mapping[str, Tensor]
                         ) -> tuple[dict[str, Tensor], list[str]]:
    """The ``encoder.*`` entries of an official state dict mapped onto a SymphoniesEncoder state dict ``own``:
    (encoder key -> tensor, problems). Deliberately dropped keys and the never-used FPN parts (when ``own`` was built
    without them) are skipped silently; unmapped, unknown-target and mis-shaped keys are problems."""
    mapped: dict[str, Tensor] = {}
    problems: list[str] = []
    for key, val in official_sd.items():
        if not key.startswith("encoder."):
            continue
        try:
            target = map_official_encoder_key(key)
        except KeyError:
            problems.append(f"unmapped {key}")
            continue
        if target is None:
            continue
        if target not in own:
            if not target.startswith(OPTIONAL_ENCODER_PREFIXES):
                problems.append(f"{key} -> {target}: not in the module")
            continue
        if own[target].shape != val.shape:
            problems.append(f"{key} -> {target}: shape {tuple(val.shape)} vs module {tuple(own[target].shape)}")
            continue
        mapped[target] = val
    return mapped, problems


def load_official_encoder_state(module: nn.Module, official_sd: Mapping[str, Tensor],
                                allow_missing: bool = False) -> list[str]:
    """Copy the ``encoder.*`` entries of an official state dict into a SymphoniesEncoder ``module``.

    Keys outside ``encoder.`` (the decoder) are ignored. Fails with :class:`SsckitError` on an ``encoder.`` key
    without a mapping, a mapped key the module lacks (except the unused FPN/mask-feature parts when the module was
    built without them), a shape mismatch, nothing to load, or, unless ``allow_missing``, module entries left
    unfilled (BN batch counters excepted). Returns the module keys that were not filled.
    """
    own = module.state_dict()
    mapped, problems = _map_encoder_entries(official_sd, own)
    missing = [k for k in own if k not in mapped]
    if not allow_missing:
        problems += [f"missing {k}" for k in missing if not k.endswith("num_batches_tracked")]
    if not problems and not mapped:
        problems.append("no encoder.* entry to load (wrong key prefix?)")
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... ({len(problems)} problems)" if len(problems) > 6 else "")
        raise SsckitError(f"official encoder state does not fit the module: {shown}")
    result = module.load_state_dict(mapped, strict=False)
    if result.unexpected_keys:  # cannot happen after the checks above; guard against silent partial loads
        raise SsckitError(f"unexpected keys while loading the encoder: {result.unexpected_keys[:6]}")
    return missing


def convert_official_symphonies(official_sd: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Whole official Symphonies state dict (``encoder.*`` + ``decoder.*``, ``model.`` prefix removed) -> a state
    dict that loads strictly into ``model`` (:class:`ssckit.models.segmentors.symphonies.Symphonies`).

    Fails with :class:`SsckitError` listing every key that has no mapping, maps to nothing in ``model``, has a
    different shape, or leaves a model entry unfilled.
    """
    from ssckit.models.decoders.symphonies import OFFICIAL_DERIVED_BUFFERS, official_decoder_key

    own = model.state_dict()
    encoder, problems = _map_encoder_entries(
        official_sd, {k.removeprefix("encoder."): v for k, v in own.items() if k.startswith("encoder.")})
    out: dict[str, Tensor] = {f"encoder.{k}": v for k, v in encoder.items()}
    for key, val in official_sd.items():
        if key.startswith("encoder."):
            continue
        if not key.startswith("decoder."):
            problems.append(f"unmapped {key}")
            continue
        if key.removeprefix("decoder.") in OFFICIAL_DERIVED_BUFFERS:
            continue
        target = "decoder." + official_decoder_key(key)
        if target not in own:
            problems.append(f"{key} -> {target}: not in the ssckit model")
        elif own[target].shape != val.shape:
            problems.append(f"{key} -> {target}: shape {tuple(val.shape)} vs {tuple(own[target].shape)}")
        else:
            out[target] = val
    problems += [f"missing {k}" for k in own if k not in out and not k.endswith("num_batches_tracked")]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... ({len(problems)} problems)" if len(problems) > 20 else "")
        raise SsckitError(f"checkpoint does not match the Symphonies model:\n  {shown}")
    return out


# --- VLScene -------------------------------------------------------------------------------------------------------

# Official ``img_view_transformer.{dx,bx,nx,frustum}``: geometry constants stored as frozen Parameters; ssckit
# recomputes them (non-persistent buffers of ``lift``), so they are checked against the model and dropped.
VLSCENE_GEOMETRY_KEYS = ("dx", "bx", "nx", "frustum")
_VLSCENE_HEAD_PARTS = ("occ_convs.", "sdb.", "ssc_header.")
_VLSCENE_POINT_PARTS = ("img_feat_reduce.", "point_soft_weights.", "point_occ_mlp.")
_VLSCENE_VL_PARTS = ("clip_fusion.", "img_clip_fusion.", "img_seg_head.")


def official_vlscene_key(key: str) -> str | None:
    """Official VLScene key -> :class:`~ssckit.models.segmentors.vlscene.VLScene` key; None for a key dropped on
    purpose (the LSeg teacher ``clip_net.*`` and the geometry constants). KeyError for an unknown key."""
    from ssckit.models.backbones.fpn import official_fpn_key
    from ssckit.models.backbones.repvit import official_repvit_key
    from ssckit.models.lifting.depth_fusion import official_fusion_key
    from ssckit.models.lifting.depth_net import official_depthnet_key
    from ssckit.models.lifting.stereo import official_stereo_key
    from ssckit.models.lifting.vl_distill import official_vl_distill_key

    head, _, rest = key.partition(".")
    if head == "clip_net":
        return None
    if head == "img_backbone":
        return "img_backbone." + official_repvit_key(rest)
    if head == "img_neck":
        return "img_neck." + official_fpn_key(rest)
    if head == "sparse_unet":
        return "gssa." + rest
    if head == "pts_bbox_head" and rest.startswith(_VLSCENE_HEAD_PARTS):
        return "occ_head." + rest
    if head == "pts_bbox_head" and rest.startswith(_VLSCENE_POINT_PARTS):
        return "point_head." + rest
    if head == "img_view_transformer":
        part, _, sub = rest.partition(".")
        if rest in VLSCENE_GEOMETRY_KEYS:
            return None
        if part == "depth_net":
            return "depth_net." + official_depthnet_key(sub)
        if part == "stereo_volume_net":
            return "stereo_net." + official_stereo_key(sub)
        if part == "volume_interaction":
            return "depth_fusion." + official_fusion_key(sub)
        if rest.startswith(_VLSCENE_VL_PARTS):
            return "vl_distill." + official_vl_distill_key(rest)
    raise KeyError(f"no ssckit mapping for official VLScene key {key!r}")


def convert_official_vlscene(official_sd: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Whole official VLScene state dict (mmcv checkpoint ``state_dict``) -> a state dict that loads strictly into
    ``model`` (:class:`~ssckit.models.segmentors.vlscene.VLScene`).

    The LSeg teacher (``clip_net.*``) is dropped on purpose (ssckit never stores the teacher); the geometry
    constants (``img_view_transformer.{dx,bx,nx,frustum}``) are compared with the model's and dropped. Fails with
    :class:`SsckitError` listing every key without a mapping, mapped to nothing in ``model``, with a different shape
    or different geometry, and every model entry left unfilled.
    """
    own = model.state_dict()
    lift = getattr(model, "lift", None)
    out: dict[str, Tensor] = {}
    problems: list[str] = []
    for key, val in official_sd.items():
        try:
            target = official_vlscene_key(key)
        except KeyError:
            problems.append(f"unmapped {key}")
            continue
        if target is None:
            name = key.rpartition(".")[2]
            if key.startswith("img_view_transformer.") and lift is not None:
                mine = getattr(lift, name)
                if mine.shape != val.shape or not torch.allclose(mine.float(), val.float().cpu(), atol=1e-4):
                    problems.append(f"{key}: geometry {tuple(val.shape)} differs from the model's "
                                    f"{tuple(mine.shape)} (another input size, grid or depth range?)")
            continue
        if target not in own:
            problems.append(f"{key} -> {target}: not in the ssckit model")
        elif own[target].shape != val.shape:
            problems.append(f"{key} -> {target}: shape {tuple(val.shape)} vs {tuple(own[target].shape)}")
        else:
            out[target] = val.to(own[target].dtype)
    problems += [f"missing {k}" for k in own if k not in out and not k.endswith("num_batches_tracked")]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... ({len(problems)} problems)" if len(problems) > 20 else "")
        raise SsckitError(f"checkpoint does not match the VLScene model:\n  {shown}")
    return out
