"""Measure a model at full size: forward latency, training-step time, peak memory, parameters and FLOPs.

Latency is the median over ``--runs`` timed calls after ``--warmup`` untimed ones (CUDA synchronised), on a random
but geometrically valid batch (KITTI calibration). Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and the
process' peak resident set size on CPU (it includes everything the process ever held, model and inputs included).
FLOPs come from ``torch.utils.flop_counter`` (one multiply-add = 2 FLOPs). Results print as a table and, with
``--json``, are written as one JSON object that ``benchmarks/RESULTS.md`` entries quote.

examples:
  ssckit benchmark --model symphonies --device cpu --threads 2 --skip-train
  ssckit benchmark --model symphonies --device cuda --precision bf16 --json bench.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

HELP = "forward latency, training-step time, peak memory, params and FLOPs of a model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model name, e.g. symphonies")
    p.add_argument("--dataset", default="semantic_kitti", help="config preset (semantic_kitti, kitti_360, tiny)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--runs", type=int, default=5, help="timed forward calls (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed forward calls first")
    p.add_argument("--train-runs", type=int, default=2, help="timed training steps (after one untimed)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--skip-train", action="store_true", help="forward only")
    p.add_argument("--skip-flops", action="store_true", help="do not count FLOPs")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def _peak_memory_gb(device: str) -> float:
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB


def _timed(fn, runs: int, device: str) -> list[float]:
    import torch

    times = []
    for _ in range(runs):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def benchmark(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ssckit.commands.info import parse_overrides
    from ssckit.errors import SsckitError
    from ssckit.models import get_model_entry, model_config

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SsckitError("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    entry = get_model_entry(args.model)
    cfg = model_config(args.model, {"preset": args.dataset, **parse_overrides(args.set)})
    torch.manual_seed(0)
    model = entry.build(cfg).to(args.device)
    batch = entry.example_batch(cfg, args.batch_size, 0, args.device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]

    def autocast():
        return torch.autocast(args.device, dtype=dtype, enabled=dtype is not None)

    def forward():
        with torch.inference_mode(), autocast():
            model(batch)

    result = {"model": args.model, "dataset": args.dataset, "device": _device_name(args.device),
              "precision": args.precision, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "torch": torch.__version__, **entry.count_params(model)}
    model.eval()
    _timed(forward, args.warmup, args.device)
    times = _timed(forward, args.runs, args.device)
    result["forward_s_median"] = statistics.median(times)
    result["forward_s_all"] = [round(t, 4) for t in times]
    result["peak_memory_gb_after_forward"] = _peak_memory_gb(args.device)
    if not args.skip_flops:
        # FlopCounterMode's module tracker needs grad mode but no tensor that requires grad: freeze temporarily
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        with autocast(), FlopCounterMode(display=False) as counter:
            model(batch)
        for p in trainable:
            p.requires_grad_(True)
        result["gflops_forward"] = counter.get_total_flops() / 1e9
    if not args.skip_train:
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            with autocast():
                loss = model.loss(model(batch), batch)["total"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        _timed(step, 1, args.device)
        train_times = _timed(step, args.train_runs, args.device)
        result["train_step_s_median"] = statistics.median(train_times)
        result["peak_memory_gb_after_train"] = _peak_memory_gb(args.device)
    return result


def _device_name(device: str) -> str:
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU"


def run(args: argparse.Namespace) -> int:
    result = benchmark(args)
    for key, value in result.items():
        shown = f"{value:,}" if isinstance(value, int) else (f"{value:.3f}" if isinstance(value, float) else value)
        print(f"{key:<30} {shown}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
