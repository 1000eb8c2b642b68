"""How far bf16 can go on this machine: a 3x3 convolution's ceiling in fp32 and in bf16 — a benchmark, not a test.

    python benchmarks/bench_bf16_ceiling.py                                  # 256 channels, 56x56, batch 8
    python benchmarks/bench_bf16_ceiling.py --deploy-json benchmarks/results/deploy_a0.json

A wide 3x3 convolution in channels_last (oneDNN's kernels, every thread; the layer RepVGG is made of, at
its most compute-bound) is the best case of each dtype, so the ratio of its multiply-accumulates per second in
bf16 to those in fp32 is about the most a bf16 deploy path can gain over an fp32 one that runs at the fp32
ceiling. (``torch.mm`` is no ceiling on an AMD CPU: MKL's fp32 GEMM ran there below the fp32 convolutions.)
The two dtypes alternate within each round (the machine's speed drifts); the figure is the median of the
per-round ratios.

With ``--deploy-json`` (a ``repzoo bench --runtimes`` report) each path's images/s at its largest batch is
turned into GMAC/s (the model's multiply-accumulates per image, ``repzoo.catalog.count_macs``) and shown
as a fraction of the ceiling of its dtype: a path at its ceiling cannot be made much faster in PyTorch.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def conv_rate(x, w, repeats: int) -> float:
    """Multiply-accumulates per second of the 3x3 convolution of ``x`` by ``w`` (padding 1; the median of
    ``repeats`` calls after one warm-up)."""
    import torch.nn.functional as F

    F.conv2d(x, w, padding=1)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        F.conv2d(x, w, padding=1)
        times.append(time.perf_counter() - t)
    n, c, h, wd = x.shape
    return n * h * wd * c * w.shape[0] * 9 / statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=256, help="in and out channels (default 256)")
    parser.add_argument("--spatial", type=int, default=56, help="height and width (default 56)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="calls per dtype per round")
    parser.add_argument("--deploy-json", default=None, help="a `repzoo bench --runtimes` JSON to set against it")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)

    import torch

    from repzoo.machine import machine

    torch.manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(args.batch_size, args.channels, args.spatial, args.spatial).contiguous(memory_format=cl)
    w = torch.randn(args.channels, args.channels, 3, 3).contiguous(memory_format=cl)
    xb, wb = x.bfloat16(), w.bfloat16()
    rates = {"fp32": [], "bf16": []}
    with torch.inference_mode():
        for r in range(args.rounds):
            for dtype in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                rates[dtype].append(conv_rate(*((x, w) if dtype == "fp32" else (xb, wb)), args.repeats))
    ratios = [h / f for h, f in zip(rates["bf16"], rates["fp32"])]
    m = machine("cpu")
    report = dict(machine=m, conv=dict(channels=args.channels, spatial=args.spatial, batch=args.batch_size),
                  rounds=args.rounds,
                  gmacs={k: statistics.median(v) / 1e9 for k, v in rates.items()},
                  ratio=statistics.median(ratios), ratios=ratios, command=" ".join(["python", *sys.argv]))
    print(f"machine: {m['cpu']} ({m['cores']} cores, {m['threads']} threads; flags: {', '.join(m['flags'])}), "
          f"torch {m['torch']}")
    print(f"3x3 conv, {args.channels} channels, {args.spatial}x{args.spatial}, batch {args.batch_size}, channels_last, "
          f"median of {args.rounds} alternating rounds: fp32 {report['gmacs']['fp32']:.0f} "
          f"GMAC/s, bf16 {report['gmacs']['bf16']:.0f} GMAC/s; bf16 / fp32 {report['ratio']:.2f}x (rounds "
          f"{min(ratios):.2f} to {max(ratios):.2f})")
    if args.deploy_json:
        from repzoo.catalog import count_macs
        from repzoo.deploy import KIND

        deploy = json.loads(Path(args.deploy_json).read_text())
        report["paths"] = []
        for row in deploy["rows"]:
            per_batch = row.get("batches") or {}
            if not per_batch:
                continue
            batch = max(per_batch, key=int)
            macs = count_macs(row["model"], input_size=(3, row["image_size"], row["image_size"]))  # cached
            gmacs = per_batch[batch]["images_per_s"] * macs / 1e9
            kind = KIND.get(row["runtime"], "fp32")
            ceiling = report["gmacs"]["bf16" if kind == "bf16" else "fp32"]
            report["paths"].append(dict(model=row["model"], runtime=row["runtime"], batch=int(batch), gmacs=gmacs,
                                        of_ceiling=gmacs / ceiling))
            against = (f"{gmacs / ceiling:.1f} times the fp32 ceiling" if kind == "int8" else
                       f"{gmacs / ceiling:.0%} of the {kind} ceiling")
            print(f"  {row['model']} {row['runtime']} at batch {batch}: {gmacs:.0f} GMAC/s, {against}")
        eager = next((p for p in report["paths"] if p["runtime"] == "eager"), None)
        if eager:
            report["bf16_ceiling_vs_eager"] = report["gmacs"]["bf16"] / eager["gmacs"]
            print(f"the bf16 ceiling is {report['bf16_ceiling_vs_eager']:.2f}x fp32 eager's rate: no bf16 path of "
                  f"this model can run faster than that here")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
