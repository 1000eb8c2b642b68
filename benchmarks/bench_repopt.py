"""RepOptimizer benchmarks (not tests).

1. ``step``: one optimizer step on RepOpt-VGG-B1's parameters (random gradients):
   repzoo's RepOptimizerSGD (multipliers from the released B1 scales, momentum 0.9,
   nesterov, weight decay 4e-5 in the reference grouping) vs ``torch.optim.SGD`` with the
   same hyper-parameters and groups, ``foreach=True`` (and ``fused=True`` where it exists).
2. ``train``: a full training step (forward, backward, optimizer step) of RepOpt-VGG-B1
   (target + RepOptimizerSGD) vs RepVGG-B1 in its train-time form + torch SGD: images/s and
   peak memory (``repzoo.bench.train_step_cost``: CUDA ``max_memory_allocated``, CPU the allocator's events).

    python benchmarks/bench_repopt.py                                  # CPU, batch 8, 224²
    python benchmarks/bench_repopt.py --device cuda --bf16 --channels-last --batch-size 128
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import repzoo
from repzoo.optim import create_repoptimizer, weight_decay_groups



def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _scales(args):
    return args.scales or "RepOpt-VGG-B1"  # the released scales, shipped with repzoo


def _time(fn, device, warmup, iters):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_step(args):
    device = torch.device(args.device)
    results = {}
    kw = dict(lr=0.1, momentum=0.9, nesterov=True)
    model = repzoo.create_model("RepOpt-VGG-B1").to(device)
    grads = [torch.randn_like(p) * 1e-3 for p in model.parameters()]

    def with_grads(opt):
        for p, g in zip(model.parameters(), grads):
            p.grad = g
        return opt.step

    ours = create_repoptimizer(model, _scales(args), "sgd", reinit=False, weight_decay=4e-5, fused=False, **kw)
    results["repzoo_foreach_ms"] = 1e3 * _time(with_grads(ours), device, args.warmup, args.iters)
    ours = create_repoptimizer(model, _scales(args), "sgd", reinit=False, weight_decay=4e-5, fused=None, **kw)
    results["repzoo_ms"] = 1e3 * _time(with_grads(ours), device, args.warmup, args.iters)
    ref = torch.optim.SGD(weight_decay_groups(model, 4e-5), foreach=True, **kw)
    results["torch_foreach_ms"] = 1e3 * _time(with_grads(ref), device, args.warmup, args.iters)
    try:
        ref = torch.optim.SGD(weight_decay_groups(model, 4e-5), fused=True, **kw)
        results["torch_fused_ms"] = 1e3 * _time(with_grads(ref), device, args.warmup, args.iters)
    except RuntimeError:
        pass
    results["ratio_vs_torch_foreach"] = results["repzoo_ms"] / results["torch_foreach_ms"]
    if "torch_fused_ms" in results:
        results["ratio_vs_torch_fused"] = results["repzoo_ms"] / results["torch_fused_ms"]
    return results


def bench_train(args):
    """RepOpt-VGG-B1 with its RepOptimizer vs the RepVGG form of the same architecture with SGD: each in a
    fresh interpreter (``repzoo.bench.train_step_cost``, as ``repzoo bench`` measures it)."""
    from repzoo.bench import train_step_cost

    settings = dict(device=args.device, batch_size=args.batch_size, image_size=args.img_size, bf16=args.bf16,
                    channels_last=args.channels_last, threads=torch.get_num_threads(), train_repeats=args.train_iters)
    out = {"repopt": train_step_cost("RepOpt-VGG-B1", settings),
           "repvgg": train_step_cost("RepOpt-VGG-B1-repvgg", settings)}
    out["throughput_ratio_repopt_vs_repvgg"] = out["repopt"]["images_per_s"] / out["repvgg"]["images_per_s"]
    out["memory_ratio_repopt_vs_repvgg"] = out["repopt"]["peak_bytes"] / out["repvgg"]["peak_bytes"]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the training step")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--train-iters", type=int, default=5)
    parser.add_argument("--scales", default=None, help="B1 scale file (default: the released B1 scales, shipped with repzoo)")
    parser.add_argument("--only", default="all", choices=["all", "step", "train"])
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    info = dict(device=str(args.device), torch=torch.__version__, batch_size=args.batch_size, img_size=args.img_size,
                bf16=args.bf16, channels_last=args.channels_last)
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    results = dict(config=info)
    if args.only in ("all", "step"):
        results["optimizer_step"] = bench_step(args)
        print(json.dumps(results["optimizer_step"], indent=1), flush=True)
    if args.only in ("all", "train"):
        results["train_step"] = bench_train(args)
        print(json.dumps(results["train_step"], indent=1), flush=True)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
