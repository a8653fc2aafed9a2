"""`ssckit info` and `ssckit benchmark` command contracts."""
from __future__ import annotations

import json

from ssckit.cli import main


def test_info_json_counts_symphonies(capsys):
    assert main(["info", "--model", "symphonies", "--dataset", "semantic_kitti", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # spec §13 / oracle params file: 59,310,044 minus the 722,176 never-used pixel-decoder parameters
    assert info["params"] == 58_587_868
    assert abs(info["params"] - 59_310_044) / 59_310_044 < 0.015
    assert info["params_trainable"] == 58_587_868 - 53_120
    assert info["parts"] == {"encoder": 37_725_448 - 722_176, "decoder": 21_584_596}
    assert main(["info", "--model", "symphonies", "--json", "--set", "build_unused=true"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 59_310_044


def test_info_rejects_unknown_key_and_model(capsys):
    assert main(["info", "--model", "symphonies", "--set", "embed_dim=3"]) == 2
    assert "embed_dim" in capsys.readouterr().err
    assert main(["info", "--model", "nope"]) == 2


def test_benchmark_tiny_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--model", "symphonies", "--dataset", "tiny", "--runs", "2", "--warmup", "0",
                 "--train-runs", "1", "--threads", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["params"] == 836_556 and res["threads"] == 2
    assert len(res["forward_s_all"]) == 2 and res["forward_s_median"] > 0 and res["train_step_s_median"] > 0
    # the 3-D head alone: 1x1x1 classifier over 32*32*16 voxels, 32 -> 20 channels = 2*16384*32*20 FLOPs
    assert res["gflops_forward"] > 2 * 16384 * 32 * 20 / 1e9
    assert res["peak_memory_gb_after_train"] >= res["peak_memory_gb_after_forward"] > 0
