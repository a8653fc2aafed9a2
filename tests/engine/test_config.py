"""Config composition: typed schemas, unknown keys named with their file, overrides, data roots, recipes."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ssckit.config import (DERIVED_MODEL_KEYS, default_config_dir, list_configs, load_config, parse_overrides,
                           read_saved_config, save_config, to_dict)
from ssckit.errors import SsckitError

CONFIG_DIR = default_config_dir()


def _registered(name: str) -> bool:
    import ssckit.models as models

    return name in models.MODELS


def test_every_config_file_is_short_and_every_experiment_composes():
    files = sorted(CONFIG_DIR.glob("*/*.yaml"))
    assert {p.parent.name for p in files} == {"dataset", "model", "schedule", "experiment"}
    for p in files:
        assert len(p.read_text().splitlines()) < 30, p
    for name in list_configs("experiment"):
        model = yaml.safe_load((CONFIG_DIR / "experiment" / f"{name}.yaml").read_text())
        if "vlscene" in name and not _registered("vlscene"):
            continue
        cfg = load_config(name)
        assert cfg.model.config is not None and cfg.name == name, model


def test_configs_ship_inside_the_package(tmp_path, monkeypatch):
    import ssckit

    package_dir = Path(ssckit.__file__).resolve().parent / "configs"
    monkeypatch.delenv("SSCKIT_CONFIG_DIR", raising=False)
    assert default_config_dir() == package_dir  # package data: works from a non-editable install
    assert {"symphonies_tiny_synthetic", "symphonies_semantic_kitti", "vlscene_tiny_synthetic"} <= \
        set(list_configs("experiment"))
    assert not (package_dir.parents[1] / "configs").exists()  # no second copy at the repository root
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("defaults: [experiment/mine2]\n")
    monkeypatch.setenv("SSCKIT_CONFIG_DIR", str(tmp_path))
    assert default_config_dir() == tmp_path and list_configs("experiment") == ["mine"]
    with pytest.raises(SsckitError, match=rf"experiment/mine2.*not found.*{tmp_path}"):
        load_config("mine")


def test_symphonies_recipe_values():
    cfg = load_config("symphonies_semantic_kitti")
    opt, sch = cfg.schedule.optimizer, cfg.schedule.scheduler
    assert (opt.name, opt.lr, opt.weight_decay, opt.eps) == ("adamw", 2e-4, 1e-4, 1e-3)
    assert opt.lr_multipliers is None  # the model's own: encoder.backbone. / encoder.pixel_decoder. x0.1
    assert (cfg.schedule.max_epochs, sch.name, sch.milestones, sch.gamma) == (30, "multistep", [25], 0.1)
    assert cfg.schedule.gradient_clip_val is None
    assert (cfg.data.flip_prob, cfg.data.flip_mode, cfg.data.batch_size) == (0.5, "official", 1)
    assert (cfg.trainer.devices, cfg.trainer.strategy, cfg.trainer.sync_batchnorm) == (4, "ddp", True)
    assert cfg.trainer.precision == "32-true" and cfg.checkpoint.monitor == "val/mIoU"
    m = cfg.model.config
    assert (m.num_classes, m.image_shape, m.scene_shape, m.frustum_size) == (20, (370, 1220), (256, 256, 32), 8)
    from ssckit.models.segmentors.symphonies import Symphonies

    assert Symphonies.lr_multipliers == {"encoder.backbone.": 0.1, "encoder.pixel_decoder.": 0.1}
    k360 = load_config("symphonies_kitti_360")
    assert (k360.data.dataset, k360.model.config.num_classes, k360.model.config.image_shape) == \
        ("kitti_360", 19, (376, 1408))
    assert k360.schedule.optimizer.eps == 1e-3 and k360.trainer.devices == 4


def test_vlscene_recipe_values():
    if _registered("vlscene"):
        cfg = load_config("vlscene_semantic_kitti")
        assert (cfg.data.batch_size, cfg.data.flip_prob, cfg.data.pipeline) == (2, 0.0, "vlscene")
        assert cfg.trainer.precision == "32-true" and cfg.model.name == "vlscene"
    else:
        cfg = load_config("symphonies_semantic_kitti", ["schedule=adamw_lr1e-4_30e_clip5"])
    opt, sch = cfg.schedule.optimizer, cfg.schedule.scheduler
    assert (opt.name, opt.lr, opt.weight_decay, cfg.schedule.gradient_clip_val) == ("adamw", 1e-4, 0.01, 5.0)
    assert cfg.schedule.gradient_clip_algorithm == "norm"
    assert (cfg.schedule.max_epochs, sch.milestones, sch.gamma) == (30, [20, 25], 0.1)


@pytest.mark.skipif(not _registered("vlscene"), reason="VLScene not registered")
def test_vlscene_experiments(tmp_path, monkeypatch):
    monkeypatch.delenv("SSCKIT_TEACHER_CACHE_ROOT", raising=False)
    sk, k360 = load_config("vlscene_semantic_kitti"), load_config("vlscene_kitti_360")
    for cfg in (sk, k360):  # unused parameters (FPN levels 1-3, point head / student without inputs) need this
        assert (cfg.trainer.devices, cfg.trainer.strategy) == (4, "ddp_find_unused_parameters_true")
        assert (cfg.schedule.optimizer.lr, cfg.schedule.gradient_clip_val, cfg.schedule.scheduler.milestones) == \
            (1e-4, 5.0, [20, 25])
        assert (cfg.data.batch_size, cfg.data.flip_prob, cfg.data.pipeline) == (2, 0.0, "vlscene")
    m = k360.model.config
    assert (k360.data.dataset, k360.data.crop_size, m.num_classes, m.image_shape) == \
        ("kitti_360", [1408, 384], 19, (384, 1408))
    assert sk.model.config.image_shape == (384, 1280) and sk.data.teacher_cache_root is None
    # the input size follows data.crop_size
    assert load_config("vlscene_semantic_kitti", ["data.crop_size=[640, 192]"]).model.config.image_shape == (192, 640)

    tiny = load_config("vlscene_tiny_synthetic")
    t = tiny.model.config
    assert (tiny.trainer.accelerator, tiny.trainer.devices, tiny.data.flip_prob) == ("cpu", 1, 0.0)
    assert tiny.model.preset == "tiny" and tiny.schedule.max_epochs <= 5
    assert (t.image_shape, t.scene_shape, t.teacher) == ((64, 256), (64, 64, 8), "random")

    # the teacher cache is a data root: flag/override or environment, never a config file
    assert load_config("vlscene_semantic_kitti", ["data.teacher_cache_root=/cli"]).data.teacher_cache_root == "/cli"
    monkeypatch.setenv("SSCKIT_TEACHER_CACHE_ROOT", "/env/cache")
    assert load_config("vlscene_semantic_kitti").data.teacher_cache_root == "/env/cache"
    bad = tmp_path / "cache.yaml"
    bad.write_text("defaults: [experiment/vlscene_semantic_kitti]\ndata:\n  teacher_cache_root: /committed\n")
    with pytest.raises(SsckitError, match=r"data\.teacher_cache_root must not be set.*SSCKIT_TEACHER_CACHE_ROOT"):
        load_config(str(bad))
    with pytest.raises(SsckitError, match="max_points"):
        load_config("vlscene_tiny_synthetic", ["data.max_points=0"])


def test_unknown_key_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: [experiment/symphonies_semantic_kitti]\ndata:\n  batchsize: 2\n")
    with pytest.raises(SsckitError) as e:
        load_config(str(bad))
    assert "data.batchsize" in str(e.value) and str(bad) in str(e.value) and "batch_size" in str(e.value)

    bad.write_text("defaults: [experiment/symphonies_semantic_kitti]\nmodel:\n  embed_dimz: 64\n")
    with pytest.raises(SsckitError) as e:
        load_config(str(bad))
    assert "model.embed_dimz" in str(e.value) and str(bad) in str(e.value)

    with pytest.raises(SsckitError, match=r"command line.*schedule\.optimizer\.lrr"):
        load_config("symphonies_semantic_kitti", ["schedule.optimizer.lrr=1"])


def test_wrong_types_and_choices_are_errors():
    with pytest.raises(SsckitError, match=r"command line.*data\.batch_size"):
        load_config("symphonies_semantic_kitti", ["data.batch_size=two"])
    with pytest.raises(SsckitError, match=r"model\.embed_dims"):
        load_config("symphonies_semantic_kitti", ["model.embed_dims=wide"])
    with pytest.raises(SsckitError, match=r"data\.flip_mode"):
        load_config("symphonies_semantic_kitti", ["data.flip_mode=sideways"])
    with pytest.raises(SsckitError, match=r"trainer\.precision"):
        load_config("symphonies_semantic_kitti", ["trainer.precision=17"])
    with pytest.raises(SsckitError, match="key=value"):
        load_config("symphonies_semantic_kitti", ["data.batch_size"])
    with pytest.raises(SsckitError, match="not found"):
        load_config("no_such_experiment")


def test_overrides_are_typed_yaml_values():
    tree, groups = parse_overrides(["data.crop_size=[10, 20]", "trainer.devices=2", "a.b=null", "dataset=kitti_360",
                                    "schedule.optimizer.lr=1e-3"])
    assert tree == {"data": {"crop_size": [10, 20]}, "trainer": {"devices": 2}, "a": {"b": None},
                    "schedule": {"optimizer": {"lr": 1e-3}}}
    assert groups == {"dataset": "kitti_360"}
    cfg = load_config("symphonies_semantic_kitti", ["schedule.optimizer.lr=1e-3", "data.num_workers=0",
                                                    "schedule.optimizer.lr_multipliers=[{prefix: encoder., "
                                                    "lr_mult: 0.5}]"])
    assert cfg.schedule.optimizer.lr == 1e-3 and cfg.data.num_workers == 0
    assert [(g.prefix, g.lr_mult) for g in cfg.schedule.optimizer.lr_multipliers] == [("encoder.", 0.5)]


def test_group_swap_and_model_preset():
    cfg = load_config("symphonies_semantic_kitti", ["model=symphonies_tiny", "data.image_scale=0.2",
                                                    "data.grid_scale=4"])
    m = cfg.model.config
    assert cfg.model.preset == "tiny" and m.embed_dims == 32  # from the tiny preset
    assert m.image_shape == (74, 244) and m.scene_shape == (64, 64, 8) and m.voxel_size == pytest.approx(0.8)
    assert load_config("symphonies_semantic_kitti", ["dataset=kitti_360"]).data.dataset == "kitti_360"


def test_derived_model_keys_conflict(tmp_path):
    assert set(DERIVED_MODEL_KEYS) >= {"num_classes", "image_shape", "scene_shape"}
    with pytest.raises(SsckitError, match=r"model\.num_classes.*derived"):
        load_config("symphonies_semantic_kitti", ["model.num_classes=19"])
    assert load_config("symphonies_semantic_kitti", ["model.num_classes=20"]).model.config.num_classes == 20


def test_defaults_cycle_is_an_error(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "a.yaml").write_text("defaults: [experiment/b]\n")
    (tmp_path / "experiment" / "b.yaml").write_text("defaults: [experiment/a]\n")
    with pytest.raises(SsckitError, match="cycle"):
        load_config("a", config_dir=tmp_path)


def test_data_roots_from_flags_env_never_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SSCKIT_DATA_ROOT", "/env/data")
    monkeypatch.setenv("SSCKIT_DEPTH_ROOT", "/env/depth")
    monkeypatch.delenv("SSCKIT_LABEL_ROOT", raising=False)
    cfg = load_config("symphonies_semantic_kitti", roots={"data_root": "/flag/data"})
    assert (cfg.data.data_root, cfg.data.depth_root, cfg.data.label_root) == ("/flag/data", "/env/depth", None)
    assert load_config("symphonies_semantic_kitti", ["data.data_root=/cli"]).data.data_root == "/cli"

    bad = tmp_path / "roots.yaml"
    bad.write_text("defaults: [experiment/symphonies_semantic_kitti]\ndata:\n  data_root: /committed\n")
    with pytest.raises(SsckitError, match=r"data\.data_root must not be set.*--data-root"):
        load_config(str(bad))

    # a saved run config's roots are the last resort: flags beat the environment, which beats them
    monkeypatch.setenv("SSCKIT_LABEL_ROOT", "/env/labels")
    saved = to_dict(load_config("symphonies_semantic_kitti", roots={"data_root": "/run/data",
                                                                    "teacher_cache_root": "/run/cache"}))
    assert (saved["data"]["label_root"], saved["data"]["teacher_cache_root"]) == ("/env/labels", "/run/cache")
    monkeypatch.delenv("SSCKIT_DATA_ROOT")
    monkeypatch.delenv("SSCKIT_LABEL_ROOT")
    assert load_config(base=saved).data.data_root == "/run/data"
    assert load_config(base=saved).data.label_root == "/env/labels"
    monkeypatch.setenv("SSCKIT_DATA_ROOT", "/env/data")
    monkeypatch.setenv("SSCKIT_TEACHER_CACHE_ROOT", "/env/cache")
    cfg = load_config(base=saved)
    assert (cfg.data.data_root, cfg.data.teacher_cache_root) == ("/env/data", "/env/cache")
    cfg = load_config(base=saved, roots={"data_root": "/new", "teacher_cache_root": "/flag/cache"})
    assert (cfg.data.data_root, cfg.data.teacher_cache_root) == ("/new", "/flag/cache")


def test_saved_config_round_trip(tmp_path):
    cfg = load_config("symphonies_semantic_kitti", ["model=symphonies_tiny", "data.image_scale=0.2",
                                                    "data.grid_scale=4", "data.batch_size=3"],
                      roots={"data_root": "/d"})
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(base=read_saved_config(path))
    assert to_dict(again) == to_dict(cfg)
    assert again.model.config == cfg.model.config and again.data.batch_size == 3
    assert Path(path).read_text().startswith("name: symphonies_semantic_kitti")
