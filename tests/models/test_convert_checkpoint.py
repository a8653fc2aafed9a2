"""convert-checkpoint against the full official key listing (691 entries) of the Symphonies release."""
from __future__ import annotations

import csv

import pytest
import torch

from ssckit.cli import main
from ssckit.models import build_model
from ssckit.models.checkpoint import load_model_file


def _official_listing(oracle_dir):
    path = oracle_dir / "symphonies" / "symphonies_state_dict.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 691
    return [(r["key"], () if r["shape"] == "scalar" else tuple(int(s) for s in r["shape"].split("x")), r["dtype"])
            for r in rows]


def _fake_official_ckpt(listing):
    """Every tensor gets a distinct constant (its row index), so a misplaced tensor is detectable."""
    sd = {}
    for i, (key, shape, dtype) in enumerate(listing):
        dt = torch.int64 if "int" in dtype else torch.float32
        sd["model." + key] = torch.full(shape, i, dtype=dt)
    return sd


@pytest.fixture(scope="module")
def converted(oracle_dir, tmp_path_factory):
    listing = _official_listing(oracle_dir)
    sd = _fake_official_ckpt(listing)
    tmp = tmp_path_factory.mktemp("ckpt")
    ckpt = tmp / "official.ckpt"
    # like a Lightning checkpoint: pickled non-tensor hyper-parameters next to the weights
    torch.save({"state_dict": sd, "epoch": 25, "hyper_parameters": {"cfg": object.__new__(_Cfg)}}, ckpt)
    out = tmp / "converted.pt"
    assert main(["convert-checkpoint", "--model", "symphonies", str(ckpt), str(out)]) == 0
    return listing, load_model_file(out), tmp, sd


class _Cfg:
    """Stand-in for the pickled Hydra config inside an official checkpoint."""


def test_every_official_tensor_lands_once(converted):
    listing, payload, _, _ = converted
    ours = payload["state_dict"]
    assert payload["model"] == "symphonies" and payload["config"]["num_classes"] == 20
    values = {}
    for name, t in ours.items():
        if t.numel() and not name.endswith("num_batches_tracked"):
            v = t.flatten()[0].item()
            assert (t == v).all(), f"{name} mixes several official tensors"
            values.setdefault(int(v), []).append(name)
    dropped = {"decoder.image_grid", "decoder.voxel_grid", "encoder.model.panoptic_head.criterion.empty_weight"}
    unused = ("pixel_decoder.mask_features", "pixel_decoder.adapter_1", "pixel_decoder.layer_1")
    for i, (key, _, _) in enumerate(listing):
        if key in dropped or key.endswith("num_batches_tracked") or any(u in key for u in unused):
            assert i not in values, f"{key} should have been dropped"
        else:
            assert len(values.get(i, [])) == 1, f"{key} mapped to {values.get(i)}"


def test_converted_file_loads_strictly_into_a_fresh_model(converted):
    _, payload, _, _ = converted
    model = build_model("symphonies", payload["config"])
    model.load_state_dict(payload["state_dict"], strict=True)
    head = model.decoder.head.classifier.weight
    assert head.shape[0] == 20


def test_wrong_shape_and_unknown_key_fail_loudly(converted, capsys):
    _, _, tmp, sd = converted
    bad = dict(sd)
    bad["model.decoder.aspp.convs.0.0.weight"] = torch.zeros(3)  # mis-shaped (or unknown name)
    bad["model.decoder.not_a_layer.weight"] = torch.zeros(2)
    path = tmp / "bad.ckpt"
    torch.save({"state_dict": bad}, path)
    assert main(["convert-checkpoint", "--model", "symphonies", str(path), str(tmp / "bad.pt")]) == 2
    err = capsys.readouterr().err
    assert "not_a_layer" in err
    assert not (tmp / "bad.pt").exists()


def test_missing_input_is_one_line_error(tmp_path, capsys):
    assert main(["convert-checkpoint", "--model", "symphonies", str(tmp_path / "nope.ckpt"),
                 str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.ckpt" in err[0]
