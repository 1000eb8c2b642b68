"""OREPA training-cost benchmark — not a test.

One training step (forward, cross-entropy, backward, SGD with momentum) of OREPA-ResNet-18,
DBB-ResNet-18 and the plain ResNet-18 at the same batch, in one run:

  * images/s of the training step: the models' steps interleaved in one process, the fastest step
    of each (robust to other work on the machine; the median is printed too);
  * peak tensor memory, each model in a process of its own (``repzoo.bench.peak_memory``: on CUDA
    ``torch.cuda.max_memory_allocated``, on CPU the allocator's events); also as the increase over what
    is held once the model, optimizer and batch exist (what the steps need: activations, gradients,
    momentum, kernels).

The paper reports (V100s, per batch): ResNet-18 plain / DBB / OREPA = 4.2 / 7.5 / 5.2 GB and
0.086 / 0.241 / 0.120 s. repzoo's goal: OREPA ≤ 1.3× the plain step time and ≤ 0.6× DBB's.

    python benchmarks/bench_orepa.py                                  # CPU: batch 8 at 224
    python benchmarks/bench_orepa.py --batch-size 16 --image-size 128
    python benchmarks/bench_orepa.py --device cuda --batch-size 64 --channels-last
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

MODELS = ("ResNet-18", "DBB-ResNet-18", "OREPA-ResNet-18")
PAPER = {"ResNet-18": (4.2, 0.086), "DBB-ResNet-18": (7.5, 0.241), "OREPA-ResNet-18": (5.2, 0.120)}


def _setup(name: str, args: argparse.Namespace):
    """A model in training mode, its optimizer, a batch, and the training step."""
    import torch

    import repzoo

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = repzoo.create_model(name).to(device=device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return model, step


def _sync(args: argparse.Namespace):
    import torch

    return torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)


def measure_memory(name: str, args: argparse.Namespace) -> dict:
    """In a child process of its own: the peak tensor memory of ``name``'s training steps (weights, gradients,
    momentum, kernels, activations; ``repzoo.bench.peak_memory``) and how much of it the steps add."""
    from repzoo.bench import peak_memory

    setup = {}

    def build():
        setup["model"], step = _setup(name, args)
        return step

    # two steps: the second holds the optimizer's momentum too
    peak = peak_memory(build, lambda step: (step(), step()), args.device)
    return {"model": name, "peak_bytes": peak["peak_bytes"], "step_bytes": peak["peak_bytes"] - peak["held_before_bytes"],
            "params": sum(p.numel() for p in setup["model"].parameters())}


def measure_time(names, args: argparse.Namespace) -> dict:
    """In one child process: every model's training step, interleaved (A, B, C, A, B, C …), so that
    whatever else the machine runs slows them alike; the minimum and the median per model."""
    import torch

    steps = {name: _setup(name, args)[1] for name in names}
    sync = _sync(args)
    times = {name: [] for name in names}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    sync()
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {"threads": torch.get_num_threads(),
            "times": {n: {"min_s": min(t), "median_s": statistics.median(t), "all_s": t} for n, t in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, _, name = args.child.partition(":")
        out = measure_memory(name, args) if kind == "memory" else measure_time(name.split(","), args)
        print(json.dumps(out))
        return

    def child(what: str) -> dict:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", what], capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{what} failed:\n{out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    results = [child(f"memory:{name}") for name in args.models]
    timing = child("time:" + ",".join(args.models))
    for r in results:
        r.update(timing["times"][r["model"]])
        r["step_s"] = r["min_s"]
        r["images_per_s"] = args.batch_size / r["min_s"]
        r["threads"] = timing["threads"]
    by = {r["model"]: r for r in results}
    print(f"device {args.device}, batch {args.batch_size} at {args.image_size}x{args.image_size}, "
          f"{results[0]['threads']} threads, {args.steps} interleaved steps each after {args.warmup} warm-up; "
          "step time = the fastest step (median in brackets)")
    print(f"{'model':<18}{'step s':>16}{'images/s':>10}{'peak MiB':>10}{'step MiB':>10}   paper (GB, s)")
    for r in results:
        paper = PAPER.get(r["model"], ("-", "-"))
        print(f"{r['model']:<18}{r['step_s']:>7.3f} ({r['median_s']:.3f}){r['images_per_s']:>10.1f}"
              f"{r['peak_bytes'] / 2**20:>10.0f}{r['step_bytes'] / 2**20:>10.0f}   {paper[0]} / {paper[1]}")
    ratios = {}
    if {"ResNet-18", "DBB-ResNet-18", "OREPA-ResNet-18"} <= set(by):
        o, d, p = by["OREPA-ResNet-18"], by["DBB-ResNet-18"], by["ResNet-18"]
        ratios = {"orepa_over_plain_time": o["step_s"] / p["step_s"], "orepa_over_dbb_time": o["step_s"] / d["step_s"],
                  "dbb_over_plain_time": d["step_s"] / p["step_s"],
                  "orepa_over_plain_peak": o["peak_bytes"] / p["peak_bytes"],
                  "orepa_over_dbb_peak": o["peak_bytes"] / d["peak_bytes"],
                  "orepa_over_plain_step_mem": o["step_bytes"] / p["step_bytes"],
                  "orepa_over_dbb_step_mem": o["step_bytes"] / d["step_bytes"]}
        print(f"time  OREPA/plain {ratios['orepa_over_plain_time']:.2f} (paper 1.40, goal <= 1.3)   "
              f"OREPA/DBB {ratios['orepa_over_dbb_time']:.2f} (paper 0.50, goal <= 0.6)   "
              f"DBB/plain {ratios['dbb_over_plain_time']:.2f} (paper 2.80)")
        print(f"peak  OREPA/plain {ratios['orepa_over_plain_peak']:.2f} (paper 1.24)   "
              f"OREPA/DBB {ratios['orepa_over_dbb_peak']:.2f} (paper 0.69)")
        print(f"step memory  OREPA/plain {ratios['orepa_over_plain_step_mem']:.2f}   "
              f"OREPA/DBB {ratios['orepa_over_dbb_step_mem']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "child"}, "results": results,
                       "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
