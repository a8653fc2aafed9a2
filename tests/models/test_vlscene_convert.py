"""convert-checkpoint --model vlscene against the full official key listing (2002 entries + 730 teacher entries)."""
from __future__ import annotations

import csv

import pytest
import torch

from ssckit.cli import main
from ssckit.errors import SsckitError
from ssckit.models import build_model
from ssckit.models.checkpoint import load_model_file
from ssckit.models.convert import convert_official_vlscene

GEOMETRY = {f"img_view_transformer.{k}" for k in ("dx", "bx", "nx", "frustum")}


def _listing(path):
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(r["key"], () if r["shape"] == "scalar" else tuple(int(s) for s in r["shape"].split("x")), r["dtype"])
            for r in rows]


def _official_geometry() -> dict[str, torch.Tensor]:
    """The official frustum/grid Parameters, written from the spec (not from ssckit): u over 0..1279 (160),
    v over 0..383 (48), d = 2.0, 2.5, ..., 57.5; 0.4 m voxels from (0, -25.6, -2), 128 x 128 x 16."""
    d = (2.0 + 0.5 * torch.arange(112.0)).view(112, 1, 1).expand(112, 48, 160)
    u = torch.linspace(0, 1279, 160).view(1, 1, 160).expand(112, 48, 160)
    v = torch.linspace(0, 383, 48).view(1, 48, 1).expand(112, 48, 160)
    return {"img_view_transformer.dx": torch.tensor([0.4, 0.4, 0.4]),
            "img_view_transformer.bx": torch.tensor([0.2, -25.4, -1.8]),
            "img_view_transformer.nx": torch.tensor([128.0, 128.0, 16.0]),
            "img_view_transformer.frustum": torch.stack([u, v, d], dim=-1)}


@pytest.fixture(scope="module")
def converted(oracle_dir, tmp_path_factory):
    listing = _listing(oracle_dir / "vlscene" / "vlscene_state_dict.tsv")
    teacher = _listing(oracle_dir / "vlscene" / "vlscene_teacher_state_dict.tsv")
    assert len(listing) == 2002 and len(teacher) == 730
    sd = {}
    for i, (key, shape, dtype) in enumerate(listing):  # a distinct constant per tensor: misplacement is visible
        sd[key] = torch.full(shape, i, dtype=torch.int64 if "int" in dtype else torch.float32)
    sd.update(_official_geometry())
    for key, _, _ in teacher:  # the names matter (dropped on purpose); 495 M zeros would only cost time
        sd[key] = torch.zeros(1)
    tmp = tmp_path_factory.mktemp("vlscene_ckpt")
    ckpt = tmp / "vlscene.pth"
    torch.save({"meta": {"epoch": 30, "config": object.__new__(_Meta)}, "state_dict": sd}, ckpt)  # like mmcv
    out = tmp / "vlscene.pt"
    assert main(["convert-checkpoint", "--model", "vlscene", str(ckpt), str(out)]) == 0
    return listing, load_model_file(out), tmp, sd


class _Meta:
    """Stand-in for pickled metadata inside an mmcv checkpoint."""


def test_every_official_tensor_lands_once(converted):
    listing, payload, _, _ = converted
    assert payload["model"] == "vlscene" and payload["config"]["num_classes"] == 20
    values: dict[int, list[str]] = {}
    for name, t in payload["state_dict"].items():
        v = t.flatten()[0].item()
        assert (t == v).all(), f"{name} mixes several official tensors"
        values.setdefault(int(v), []).append(name)
    for i, (key, _, _) in enumerate(listing):
        if key in GEOMETRY:
            assert i not in values, f"{key} should have been dropped"
        else:
            assert len(values.get(i, [])) == 1, f"{key} mapped to {values.get(i)}"
    assert not any("teacher" in k or "clip_net" in k for k in payload["state_dict"])
    assert len(payload["state_dict"]) == 2002 - len(GEOMETRY)


@pytest.fixture(scope="module")
def model(converted):
    return build_model("vlscene", converted[1]["config"])


def test_converted_file_loads_strictly_and_maps_by_meaning(converted, model):
    listing, payload, _, _ = converted
    index = {key: i for i, (key, _, _) in enumerate(listing)}
    sd = payload["state_dict"]
    model.load_state_dict(sd, strict=True)
    pairs = {  # a few hand-checked correspondences across every part
        "img_backbone.features.0.0.c.weight": "img_backbone.stem.conv1.c.weight",
        "img_backbone.features.16.token_mixer.0.c.weight":  # the 160 -> 320 stride-2 block
            "img_backbone.stages.2.downsample.spatial_downsample.c.weight",
        "img_neck.lateral_convs.0.conv.weight": "img_neck.lateral_convs.0.conv.weight",
        "img_view_transformer.depth_net.bn.weight": "depth_net.cam_norm.weight",
        "img_view_transformer.stereo_volume_net.classif3_2.0.weight": "stereo_net.classif_out.weight",
        "img_view_transformer.volume_interaction.CA3D.alpha": "depth_fusion.ca_alpha",
        "img_view_transformer.clip_fusion.0.weight": "vl_distill.fusion.0.weight",
        "sparse_unet.downCntx.conv1.weight": "gssa.downCntx.conv1.weight",
        "pts_bbox_head.ssc_header.mlp_head.1.weight": "occ_head.ssc_header.mlp_head.1.weight",
        "pts_bbox_head.point_occ_mlp.fc2.weight": "point_head.point_occ_mlp.fc2.weight",
    }
    for official, ours in pairs.items():
        assert int(sd[ours].flatten()[0]) == index[official], official


def test_bad_checkpoints_fail_loudly(converted, model, capsys):
    _, _, tmp, sd = converted
    cases = {
        "unmapped img_view_transformer.not_a_layer.weight": {**sd, "img_view_transformer.not_a_layer.weight":
                                                             torch.zeros(2)},
        "gssa.pre_conv.0.weight: shape (3,)": {**sd, "sparse_unet.pre_conv.0.weight": torch.zeros(3)},
        "frustum: geometry": {**sd, "img_view_transformer.frustum": torch.zeros(112, 48, 176, 3)},
        "missing occ_head.sdb.aspp.reduce.weight": {k: v for k, v in sd.items()
                                                    if not k.startswith("pts_bbox_head.sdb.aspp.")},
    }
    for needle, bad in cases.items():
        with pytest.raises(SsckitError) as e:
            convert_official_vlscene(bad, model)
        assert needle in str(e.value)
    path = tmp / "symphonies_like.ckpt"  # no VLScene classifier: rejected before building anything
    torch.save({"state_dict": {"decoder.cls_head.2.weight": torch.zeros(20, 8)}}, path)
    assert main(["convert-checkpoint", "--model", "vlscene", str(path), str(tmp / "x.pt")]) == 2
    assert "pts_bbox_head.ssc_header.mlp_head.1.weight" in capsys.readouterr().err
    assert not (tmp / "x.pt").exists()
