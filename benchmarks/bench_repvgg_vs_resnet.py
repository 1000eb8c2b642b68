"""Deploy RepVGG against torchvision's ResNets, the RepVGG paper's speed table side by side — a benchmark.

    python benchmarks/bench_repvgg_vs_resnet.py                       # CPU: batch 8, 224², fp32
    python benchmarks/bench_repvgg_vs_resnet.py --device cuda         # a GPU: batch 128, as the paper
    python benchmarks/bench_repvgg_vs_resnet.py --json out.json --markdown out.md --plot docs/assets/repvgg_vs_resnet.png

Every model runs in a worker process of its own (``repzoo.deploy.Worker``: PyTorch eager, fp32, random
weights, seeded random inputs); the parent asks one worker at a time for a round of timed calls, rotating the
order each round, so that each model is timed with the others idle and the machine's drift falls on all of
them alike. Figures are medians over every call of every round; the spread (largest round median / smallest
− 1) is printed per model and a spread over 10 % is flagged.

The paper (RepVGG, CVPR 2021) measured fp32 PyTorch at batch 128 on a 1080Ti. Its speed column and top-1
(120 epochs, simple augmentation) are copied below from the authors' README table
(github.com/DingXiaoH/RepVGG @ eae7c5204001eaf195bbe2ee72fb6a37855cce33, README.md, ``table.PNG``), and its
two claims from the same README: RepVGG-A2 is 83 % faster than ResNet-50 and RepVGG-B1g4 101 % faster than
ResNet-101 (1.83x and 2.01x). ResNet top-1 is torchvision's (its weights' metadata); the RepVGG top-1 is
repzoo's weights manifest (the same figures as the README's).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from repzoo.deploy import STEADY, Worker, spread
from repzoo.machine import machine

REPVGG = ["RepVGG-A0", "RepVGG-A1", "RepVGG-A2", "RepVGG-B0", "RepVGG-B1", "RepVGG-B1g4"]
RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101"]
#: the README's speed column: examples/s, 1080Ti, fp32, batch 128 (DingXiaoH/RepVGG @ eae7c52, README.md)
PAPER_SPEED = {"RepVGG-A0": 3256, "RepVGG-A1": 2339, "RepVGG-B0": 1817, "RepVGG-A2": 1322, "RepVGG-B1g4": 868,
               "RepVGG-B1g2": 792, "RepVGG-B1": 685, "RepVGG-B2g4": 581, "RepVGG-B2": 460}
#: the README's claims: (faster model, slower model, speed ratio)
PAPER_CLAIMS = [("RepVGG-A2", "resnet50", 1.83), ("RepVGG-B1g4", "resnet101", 2.01)]
TV_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
              "resnet101": "ResNet101_Weights", "resnet152": "ResNet152_Weights"}


def label(name: str) -> str:
    return f"ResNet-{name[6:]}" if name.startswith("resnet") else name


def top1(name: str):
    if name.startswith("resnet"):
        import torchvision

        weights = getattr(torchvision.models, TV_WEIGHTS[name]).IMAGENET1K_V1
        return weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    from repzoo.weights.manifest import load_manifest

    manifest = load_manifest()
    return manifest.weights(name).top1 if manifest.tags(name) else None


def measure(names, args, log):
    """``{name: {"images_per_s", "spread", "round_images_per_s"}}``, each model in its own worker."""
    times = {n: [] for n in names}
    workers = {}
    with tempfile.TemporaryDirectory(prefix="repzoo_vs_resnet_") as work:
        try:
            for name in names:
                spec = dict(model=name if name.startswith("RepVGG") else f"torchvision:{name}", runtime="eager",
                            image_size=args.image_size, batch_sizes=[args.batch_size], warmup=args.warmup,
                            threads=args.threads, device=args.device, workdir=work)
                t = time.perf_counter()
                workers[name] = Worker(spec)
                if "error" in workers[name].ready:
                    raise SystemExit(f"{name}: {workers[name].ready['error']}")
                log(f"{label(name)}: built and warmed up ({time.perf_counter() - t:.0f} s)")
            order = list(names)
            for r in range(args.rounds):
                for name in order[r % len(order):] + order[: r % len(order)]:
                    times[name].append(workers[name].time(args.batch_size, args.repeats))
                log(f"round {r + 1}/{args.rounds} done")
        finally:
            for w in workers.values():
                w.close()
    out = {}
    for name, rounds in times.items():
        every = [t for r in rounds for t in r]
        medians = [statistics.median(r) for r in rounds]
        out[name] = dict(images_per_s=args.batch_size / statistics.median(every), spread=spread(medians),
                         round_images_per_s=[args.batch_size / m for m in medians])
    return out


def markdown(report) -> str:
    m, s = report["machine"], report["settings"]
    rows = report["rows"]
    base = rows.get("resnet50", {}).get("images_per_s")
    lines = [f"Measured on {m.get('gpu') or m['cpu']} ({m['cores']} cores; flags: {', '.join(m['flags']) or 'none'}), "
             f"{s['threads']} threads, torch {m['torch']}, device {s['device']}, PyTorch eager fp32, batch "
             f"{s['batch_size']}, {s['image_size']}², random weights, each model in its own process, {s['rounds']} "
             f"interleaved rounds of {s['repeats']} calls, medians. The paper: 1080Ti, fp32, batch 128.", "",
             "| model | top-1 | images/s | vs ResNet-50 | paper images/s | paper vs ResNet-50 | spread |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    paper = dict(PAPER_SPEED, **{slow: PAPER_SPEED[fast] / ratio for fast, slow, ratio in PAPER_CLAIMS})
    paper50 = paper["resnet50"]  # ResNet-50's speed as the README's 1.83x gives it
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["images_per_s"]):
        p, t1 = paper.get(name), r.get("top1")
        mark = "*" if name.startswith("resnet") and p else ""
        flag = " (unsteady)" if r["spread"] > STEADY else ""
        ips = r["images_per_s"]
        cells = [label(name), "-" if t1 is None else f"{t1:.2f}", f"{ips:.1f}", f"{ips / base:.2f}x" if base else "-",
                 f"{p:.0f}{mark}" if p else "-", f"{p / paper50:.2f}x{mark}" if p else "-", f"{r['spread']:.1%}{flag}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "\\* implied by the README's ratio (1322 / 1.83, 868 / 2.01): the README gives no ResNet speed."]
    lines += ["", "| claim (the README) | paper | measured |", "|---|---:|---:|"]
    for fast, slow, ratio in PAPER_CLAIMS:
        if fast in rows and slow in rows:
            measured = rows[fast]["images_per_s"] / rows[slow]["images_per_s"]
            lines.append(f"| {fast} vs {label(slow)} | {ratio:.2f}x | {measured:.2f}x |")
    return "\n".join(lines)


def plot(report, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=110)
    for name, r in report["rows"].items():
        if r.get("top1") is None:
            continue
        resnet = name.startswith("resnet")
        ax.scatter([r["images_per_s"]], [r["top1"]], marker="s" if resnet else "o",
                   color="tab:gray" if resnet else "tab:blue")
        ax.annotate(label(name), (r["images_per_s"], r["top1"]), fontsize=7, xytext=(5, -3), textcoords="offset points")
    ax.scatter([], [], marker="o", color="tab:blue", label="RepVGG (deploy)")
    ax.scatter([], [], marker="s", color="tab:gray", label="ResNet (torchvision)")
    m, s = report["machine"], report["settings"]
    ax.set_xlabel(f"images/s — {m.get('gpu') or m['cpu']}, {s['threads']} threads, batch {s['batch_size']}, "
                  f"{s['image_size']}², fp32", fontsize=8)
    ax.set_ylabel("ImageNet top-1 (%)")
    ax.set_title("Top-1 against measured speed: deploy RepVGG vs ResNet", fontsize=9)
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.12)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(REPVGG), help="repzoo RepVGG models")
    parser.add_argument("--resnets", default=",".join(RESNETS), help="torchvision ResNets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, help="default: 8 on the CPU, 128 on a GPU (the paper's)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--plot", help="a PNG of top-1 against images/s (matplotlib)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU here")
    args.batch_size = args.batch_size or (128 if args.device.startswith("cuda") else 8)
    args.threads = args.threads or torch.get_num_threads()
    names = [n for n in args.models.split(",") if n] + [n for n in args.resnets.split(",") if n]
    started = time.perf_counter()
    log = lambda text: print(f"[{time.perf_counter() - started:5.0f}s] {text}", file=sys.stderr, flush=True)  # noqa: E731
    rows = measure(names, args, log)
    for name in rows:
        rows[name]["top1"] = top1(name)
    report = dict(machine=machine(args.device), settings=dict(device=args.device, batch_size=args.batch_size,
                                                             image_size=args.image_size, rounds=args.rounds,
                                                             repeats=args.repeats, threads=args.threads),
                  paper=dict(speed=PAPER_SPEED, claims=PAPER_CLAIMS), rows=rows)
    table = markdown(report)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.plot:
        log(f"wrote {plot(report, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
