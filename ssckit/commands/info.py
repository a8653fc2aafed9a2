"""Describe a model as built for inference: parameter counts per part and its full config.

``params`` counts every parameter of the inference model as the papers do (frozen BatchNorm affine included);
``params_trainable`` those that receive gradients. Symphonies omits the pixel decoder's never-used FPN step
(722,176 parameters; ``build_unused=true`` restores the paper's exact 59,310,044).

example:
  ssckit info --model symphonies --dataset semantic_kitti --json
"""
from __future__ import annotations

import argparse
import json

HELP = "parameter counts and config of a model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model name, e.g. symphonies")
    p.add_argument("--dataset", default="semantic_kitti", help="config preset: semantic_kitti, kitti_360 or tiny")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def parse_overrides(pairs: list[str]) -> dict:
    import yaml

    from ssckit.errors import SsckitError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SsckitError(f"override {pair!r} is not KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def model_info(model_name: str, dataset: str, overrides: dict) -> dict:
    from dataclasses import asdict

    import torch

    from ssckit.models import get_model_entry, model_config
    from ssckit.models.backbones.resnet import count_parameters

    entry = get_model_entry(model_name)
    cfg = model_config(model_name, {"preset": dataset, **overrides})
    with torch.device("meta"):  # sizes only: no memory, no init cost
        model = entry.build(cfg)
    info = {"model": model_name, "dataset": dataset, **entry.count_params(model)}
    info["parts"] = {name: count_parameters(child) for name, child in model.named_children()}
    info["config"] = asdict(cfg)
    return info


def run(args: argparse.Namespace) -> int:
    info = model_info(args.model, args.dataset, parse_overrides(args.set))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['model']} ({info['dataset']})")
    print(f"  params            {info['params']:>14,}")
    print(f"  params_trainable  {info['params_trainable']:>14,}")
    for name, n in info["parts"].items():
        print(f"    {name:<16}{n:>14,}")
    return 0
