"""int8 that keeps accuracy, on a real small image set: RepVGG-A0 and RepOpt-VGG-B1 trained on scikit-learn's digits
(an image folder, 32 px, the fixed 80/20 split of ``repzoo.train.write_digits_folder``) with ``repzoo.train.train``,
converted, then quantized two ways — a benchmark.

    python benchmarks/int8_accuracy.py                                   # the study (docs/quantization.md)
    python benchmarks/int8_accuracy.py --models RepVGG-A0 --epochs 3 --qat-epochs 1 --no-speed   # a quick look

For each model:

1. fp32: ``repzoo.train.train`` with the family's recipe and the training guide's digits settings (32 px, warm-up 1,
   crop scale 0.85-1, no flip, label smoothing 0.1); a RepOpt target trains with its RepOptimizer and the released
   scales, as ``train`` does. The top-1 is the deploy form's (the best epoch's weights, converted) on ``val/``.
2. PTQ: ``quantize_int8`` of the deploy form (torch.ao FX, x86 backend), calibrated on train images (eval transform);
   also with one weight scale per tensor (``per_channel=False``), where the kernels' channel ranges matter.
3. QAT: ``quantize_aware_finetune`` of the train form (fake-quant on the equivalent kernel, activations fake-quantized),
   with per-channel weight scales (the x86 default) and with one scale per tensor,
   on the train images with the training augmentation, then converted and quantized.
4. The deploy kernels' int8 friendliness (``weight_quant_error``, ``range_spread(kernel_ranges(...))``) and the int8 /
   fp32 eager speed of the deploy form at ``--speed-batch``.

It prints a markdown table and writes the JSON (``--json``). Runs are kept in ``--runs``: a second run reuses the
trained models (``train`` resumes a finished run at its end).
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import repzoo
from repzoo.integrations.quantize import (activation_ranges, int8_weights_only, kernel_ranges, logits,
                                          quantize_aware_finetune, quantize_int8,
                                          range_spread, weight_quant_error)
from repzoo.machine import machine
from repzoo.train import train, write_digits_folder

#: the training guide's digits settings (docs/guides/training.md), learning rate per model
TRAIN = dict(image_size=32, warmup_epochs=1, scale=(0.85, 1.0), hflip=0.0, smoothing=0.1)
LR = {"RepVGG-A0": 0.2, "RepOpt-VGG-B1": 0.1}
#: fp32 epochs per model (``--epochs`` sets one for all): RepOpt-VGG-B1 is 20x RepVGG-A0's compute per image
EPOCHS = {"RepVGG-A0": 24, "RepOpt-VGG-B1": 6}


def _data(data: Path, name: str, batch_size: int, image_size: int, seed: int):
    """The train loader with the training augmentation (as ``train`` builds it), and the val and train images with
    the eval transform, as ``(images, labels)`` tensors."""
    from timm.data import resolve_data_config

    from repzoo.train.data import class_indices, scan_image_folder
    from repzoo.train.engine import Engine
    from repzoo.train.loop import _loaders
    from repzoo.train.recipes import default_recipe, get_recipe

    index, val_index = scan_image_folder(data / "train"), scan_image_folder(data / "val")
    cfg = resolve_data_config({}, model=repzoo.create_model(name, num_classes=len(index.classes)))
    recipe = get_recipe(default_recipe(name), **{k: v for k, v in TRAIN.items() if k != "image_size"})
    mapping = class_indices(index, len(index.classes))
    engine = Engine(device="cpu")  # one process; the loaders' shuffle is seeded by the sampler (seed 0)
    train_loader, val_loader = _loaders(index, val_index, mapping, cfg, recipe, batch_size, 0, image_size, False, engine)
    _, train_eval_loader = _loaders(index, index, mapping, cfg, recipe, batch_size, 0, image_size, False, engine)

    def tensors(loader):
        xs, ys = zip(*[(x[ok], y[ok]) for x, y, ok, *_ in loader])
        return torch.cat(xs), torch.cat(ys)

    return train_loader, tensors(val_loader), tensors(train_eval_loader)


def top1(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits(model, images, 64).argmax(1) == labels).double().mean().item()


def images_per_second(models, x: torch.Tensor, repeats: int, warmup: int):
    """Images/s of each model on ``x``, their runs interleaved (one of each per repetition); medians."""
    times = [[] for _ in models]
    with torch.inference_mode():
        for m in models:
            for _ in range(warmup):
                m(x)
        for _ in range(repeats):
            for m, record in zip(models, times):
                t = time.perf_counter()
                m(x)
                record.append(time.perf_counter() - t)
    return [x.shape[0] / statistics.median(r) for r in times]


def _kernels(deploy, images: torch.Tensor) -> dict:
    """Medians over the layers (max in ``*_max``) of the deploy kernels' and activations' int8 friendliness."""
    acts = activation_ranges(deploy, images)
    act = lambda key: [a[key] for a in acts.values()]  # noqa: E731
    err = weight_quant_error(deploy)
    spread = list(range_spread(kernel_ranges(deploy)).values())
    col = lambda key: [e[key] for e in err.values()]  # noqa: E731
    return dict(layers=len(err), channel_range_spread=statistics.median(spread), channel_range_spread_max=max(spread),
                crest=statistics.median(col("crest")), weight_error_per_channel=statistics.median(col("per_channel")),
                weight_error_per_tensor=statistics.median(col("per_tensor")),
                weight_error_per_channel_max=max(col("per_channel")),
                activation_outlier_ratio=statistics.median(act("ratio")),
                activation_outlier_ratio_max=max(act("ratio")),
                activation_channel_spread=statistics.median(act("channel_spread")),
                activation_channel_spread_max=max(act("channel_spread")))


def study(name: str, args, data: Path, runs: Path, log) -> dict:
    t0 = time.perf_counter()
    out = runs / name
    epochs = args.epochs or EPOCHS.get(name, 12)
    summary = train(name, data, out, epochs=epochs, lr=LR.get(name, 0.1), batch_size=args.batch_size,
                    workers=0, seed=args.seed, progress=False, **TRAIN)
    ckpt = torch.load(out / "best.pth", map_location="cpu", weights_only=True)
    model = repzoo.create_model(name, num_classes=len(summary["classes"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    trained_s = time.perf_counter() - t0
    train_loader, (val_x, val_y), (train_x, _) = _data(data, name, args.batch_size, TRAIN["image_size"], args.seed)
    calibration = train_x[: args.calibration_images]
    deploy = repzoo.reparameterize(copy.deepcopy(model)).eval()
    row = dict(model=name, epochs=epochs, fp32_top1=top1(deploy, val_x, val_y), val_images=len(val_y),
               train_call_seconds=summary["seconds"], calibration_images=len(calibration))
    log(f"{name}: fp32 deploy top-1 {row['fp32_top1']:.2f} ({len(val_y)} val images; the training call took "
        f"{trained_s:.0f} s: a finished run in --runs is reused)")
    ptq = quantize_int8(deploy, calibration)
    row["ptq_top1"] = top1(ptq, val_x, val_y)
    row["ptq_drop"] = row["fp32_top1"] - row["ptq_top1"]
    row["ptq_per_tensor_top1"] = top1(quantize_int8(deploy, calibration, per_channel=False), val_x, val_y)
    row["int8_weights_only_top1"] = top1(int8_weights_only(deploy), val_x, val_y)  # activations left in float
    log(f"{name}: PTQ int8 top-1 {row['ptq_top1']:.2f} (drop {row['ptq_drop']:+.2f}); with per-tensor weight "
        f"scales {row['ptq_per_tensor_top1']:.2f}; int8 weights alone (float activations) "
        f"{row['int8_weights_only_top1']:.2f}")
    row["kernels"] = _kernels(deploy, calibration[:128])
    for per_channel in ((True, False) if args.qat_per_tensor else (True,)) if name in args.qat_models else ():
        t, key = time.perf_counter(), "qat" if per_channel else "qat_per_tensor"
        torch.manual_seed(args.seed)  # the fine-tuning's augmentations, the same in every run
        random.seed(args.seed)
        qat = quantize_aware_finetune(model, train_loader, epochs=args.qat_epochs, lr=args.qat_lr,
                                      label_smoothing=TRAIN["smoothing"], calibration=calibration,
                                      per_channel=per_channel)
        row.update({f"{key}_top1": top1(qat.int8, val_x, val_y), f"{key}_fp32_top1": top1(qat.deploy, val_x, val_y),
                    f"{key}_fake_quant_top1": top1(qat.qat, val_x, val_y), f"{key}_seconds": time.perf_counter() - t,
                    f"{key}_kernels": _kernels(qat.deploy, calibration[:128]), "qat_epochs": args.qat_epochs,
                    "qat_lr": args.qat_lr})
        row[f"{key}_drop"] = row["fp32_top1"] - row[f"{key}_top1"]
        log(f"{name}: QAT{'' if per_channel else ' (per-tensor weights)'} int8 top-1 {row[key + '_top1']:.2f} (drop "
            f"{row[key + '_drop']:+.2f}; its float deploy {row[key + '_fp32_top1']:.2f}, fake-quantized "
            f"{row[key + '_fake_quant_top1']:.2f}; {row[key + '_seconds']:.0f} s)")
    if args.speed:
        x = torch.randn(args.speed_batch, 3, args.speed_size, args.speed_size)
        fp32_ips, int8_ips = images_per_second([deploy, ptq], x, args.repeats, args.warmup)
        row["speed"] = dict(size=args.speed_size, batch=args.speed_batch, fp32_images_per_s=fp32_ips,
                            int8_images_per_s=int8_ips, int8_over_fp32=int8_ips / fp32_ips)
        log(f"{name}: fp32 eager {fp32_ips:.1f} img/s, int8 {int8_ips:.1f} img/s ({int8_ips / fp32_ips:.2f}x; "
            f"{args.speed_size} px, batch {args.speed_batch})")
    return row


def markdown(rows) -> str:
    """Three tables of one row per model (at most 7 columns each): top-1, speed, kernels and activations."""
    f = lambda v, spec=".2f": "-" if v is None else format(v, spec)  # noqa: E731
    top = lambda r, key: f"{f(r[key + '_top1'])} ({f(-r[key + '_drop'], '+.2f')})" if key + "_top1" in r else "-"  # noqa: E731
    lines = ["| model | fp32 top-1 | PTQ (vs fp32) | QAT (vs fp32) | per-tensor weights: PTQ | QAT "
             "| int8 weights alone |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {f(r['fp32_top1'])} | {top(r, 'ptq')} | {top(r, 'qat')} "
                     f"| {f(r['ptq_per_tensor_top1'])} | {f(r.get('qat_per_tensor_top1'))} "
                     f"| {f(r['int8_weights_only_top1'])} |")
    speeds = [r for r in rows if r.get("speed")]
    if speeds:
        sp = speeds[0]["speed"]
        lines += ["", f"| model | fp32 eager img/s | int8 img/s | int8 / fp32 ({sp['size']} px, batch {sp['batch']}) |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {r['model']} | {r['speed']['fp32_images_per_s']:.1f} | {r['speed']['int8_images_per_s']:.1f} "
                  f"| {r['speed']['int8_over_fp32']:.2f}x |" for r in speeds]
    lines += ["", "| model | channel-range spread (max) | crest | weight error per channel (max) | per tensor "
              "| activations max / p99.99 (max) | activation channel spread (max) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        k = r["kernels"]
        lines.append(f"| {r['model']} | {k['channel_range_spread']:.1f} ({k['channel_range_spread_max']:.1f}) "
                     f"| {k['crest']:.1f} | {k['weight_error_per_channel']:.3f} "
                     f"({k['weight_error_per_channel_max']:.3f}) "
                     f"| {k['weight_error_per_tensor']:.3f} "
                     f"| {k['activation_outlier_ratio']:.2f} ({k['activation_outlier_ratio_max']:.2f}) "
                     f"| {k['activation_channel_spread']:.1f} ({k['activation_channel_spread_max']:.1f}) |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="RepVGG-A0,RepOpt-VGG-B1")
    p.add_argument("--qat-models", default="RepVGG-A0", help="the models that also get QAT")
    p.add_argument("--data", help="a digits image folder (default: written into --runs)")
    p.add_argument("--runs", help="where the training runs are kept (default: a temporary folder)")
    p.add_argument("--epochs", type=int, default=None, help="fp32 training epochs (default: 24 for RepVGG-A0, 6 for "
                   "RepOpt-VGG-B1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--qat-per-tensor", action=argparse.BooleanOptionalAction, default=True,
                   help="also fine-tune and quantize with one weight scale per tensor")
    p.add_argument("--qat-lr", type=float, default=0.005)
    p.add_argument("--calibration-images", type=int, default=512)
    p.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--speed-size", type=int, default=224)
    p.add_argument("--speed-batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "int8_accuracy.json"))
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.qat_models = {m for m in args.qat_models.split(",") if m}
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.runs or tmp)
        data = Path(args.data) if args.data else runs / "digits"
        if not (data / "train").is_dir():
            write_digits_folder(data)
        rows = [study(name, args, data, runs, lambda s: print(s, flush=True)) for name in args.models]
    report = dict(machine=machine(), contended_note="measured on a shared machine unless stated otherwise",
                  settings={k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()
                            if k not in ("json", "runs", "data")},  # no local paths in a committed report
                  train_settings={**TRAIN, "lr": LR, "epochs": EPOCHS}, rows=rows, seconds=time.perf_counter() - t0)
    m = report["machine"]
    print(f"\n{m['cpu']} ({m['cores']} cores, {m['threads']} threads, {' '.join(m['flags'])}), torch {m['torch']}; "
          f"digits val top-1 (%), {rows[0]['val_images'] if rows else 0} images\n")
    print(markdown(rows))
    print(f"\nthe whole run took {report['seconds']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
