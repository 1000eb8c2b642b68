"""fp32 → int8 on the CPU (torch.ao FX graph mode, x86 backend): output drift, top-1 agreement and speed-up of
repzoo deploy models, their kernel and activation ranges, and RepOpt-GhostNet-0.5x in fp16 and int8 — a benchmark.

    python benchmarks/quantize_int8.py --json int8.json --plot kernel_ranges.png   # the full setting
    python benchmarks/quantize_int8.py --smallest --min-agreement 0.9               # what CI runs
    python benchmarks/quantize_int8.py --pretrained --models RepVGG-A0              # released weights

(docs/quantization.md gives the command its figures were measured with.)

The images are made here (deterministic): ``--classes`` synthetic classes, each a colour and an oriented
grating, with a small per-image jitter of phase, contrast and brightness plus pixel noise. Three splits: ``fit``
(the fp32 model's BN statistics and classifier head come from it), ``calibration`` (the int8 observers run on
it; the int8 top-1 agreement on it is what ``--min-agreement`` checks) and ``test`` (used for nothing else).

Weights. Without ``--pretrained`` (released files cannot be downloaded everywhere) the weights are synthetic,
made to look like trained ones where it matters for quantization, and the output says so:

* RepVGG: random BN affine parameters (log-normal gamma, normal beta) in every branch, and BN running statistics
  measured on the fit images, so that the converted kernels carry the per-channel BN scaling ``gamma/sigma`` of
  the three branches and the identity's centre taps, as converted trained kernels do;
* RepOpt-VGG / RepOpt-GhostNet: the kernels re-initialized from the released Hyper-Search scales (the Rule of
  Initialization, ``create_repoptimizer(model, name, reinit=True)``; the scale files ship with repzoo), BN
  statistics measured on the fit images, BN gamma 1 and beta 0 as the rule leaves them.

Random weights give near-tied logits, so the classifier head (``--classes`` outputs) is fitted to the fp32
deploy model's features of the fit images (ridge least squares, see ``fit_head``): the fp32 model
then has real margins and "top-1 agreement" measures int8 drift against them. With ``--pretrained`` the
released weights are used as they are, head included (``--fit-head`` to fit one anyway).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import repzoo
from repzoo.bench import interleaved_images_per_second, machine
from repzoo.deploy import data_statistics
from repzoo.integrations.quantize import (
    activation_ranges, int8_layers, int8_weights_only, kernel_ranges, logits, output_drift, quantize_int8,
    range_spread, weight_quant_error)

DEFAULT_MODELS = "RepVGG-A0,RepVGG-B1,RepOpt-VGG-B1"
GHOSTNET = "RepOpt-GhostNet-0.5x"
FP16_MAX = torch.finfo(torch.float16).max
#: the settings of the full run, and of --smallest (CI: RepOpt-VGG-B1 only, small images, few of them)
PROFILES = {
    "full": dict(models=DEFAULT_MODELS, fp16_model=GHOSTNET, range_models="RepOpt-VGG-B2,RepOpt-VGG-L1,RepOpt-VGG-L2",
                 image_size=64, speed_size=224, fit_per_class=5, calib_per_class=10, test_per_class=10,
                 batch_size=8, repeats=5, warmup=2, per_tensor=True, act_images=32, threads=None),
    "smallest": dict(models="RepOpt-VGG-B1", fp16_model="", range_models="", image_size=48, speed_size=48,
                     fit_per_class=5, calib_per_class=5, test_per_class=2, batch_size=8, repeats=3, warmup=1,
                     per_tensor=False, act_images=8, threads=1),
}
SYNTHETIC_NOTE = ("synthetic weights, not the released ones: RepVGG with random BN affine parameters and BN statistics "
                  "measured on the fit images (converted kernels carry the BN scaling); RepOpt models with kernels "
                  "re-initialized from the released Hyper-Search scales; the classifier head fitted to the fp32 "
                  "features of the fit images. Figures are of these weights, not of the released models.")


# --------------------------------------------------------------------------- the images


def synthetic_images(classes: int, per_class: int, size: int, seed: int, jitter: float = 0.02, noise: float = 0.02):
    """``(images (N, 3, size, size), labels)``: class ``k`` is a colour and a grating (orientation, frequency,
    phase, tint of its own, from a fixed seed shared by every split); each image jitters phase, contrast and
    brightness by ``jitter`` and adds pixel noise of std ``noise`` (``seed``: this split's draw)."""
    cls = torch.Generator().manual_seed(20240611)
    colour, tint = torch.rand(classes, 3, generator=cls) * 2 - 1, torch.rand(classes, 3, generator=cls) * 2 - 1
    phase0 = torch.rand(classes, generator=cls) * 2 * math.pi
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images, labels = [], []
    for k in range(classes):
        theta, freq = math.pi * k / classes, 2 + 2 * (k % 4)
        for _ in range(per_class):
            phase = phase0[k] + jitter * 2 * math.pi * (torch.rand((), generator=g) - 0.5)
            contrast = 1 + jitter * (torch.rand((), generator=g) - 0.5)
            grating = torch.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
            img = (0.8 * colour[k, :, None, None] + contrast * grating * tint[k, :, None, None]
                   + jitter * torch.randn(3, 1, 1, generator=g) + noise * torch.randn(3, size, size, generator=g))
            images.append(img)
            labels.append(k)
    return torch.stack(images), torch.tensor(labels)


# --------------------------------------------------------------------------- the weights


@torch.no_grad()
def _random_bn_affine(model: nn.Module, g: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            m.weight.copy_(torch.exp(0.5 * torch.randn(m.num_features, generator=g)))
            m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))


def _family(name: str) -> str:
    return repzoo.get_model_entry(name).family


def build_model(name: str, pretrained: bool, fit_images: torch.Tensor, seed: int, batch_size: int):
    """``(fp32 deploy model, how its weights were made)``."""
    if pretrained:
        return repzoo.create_model(name, pretrained=True, deploy=True).eval(), "released"
    torch.manual_seed(seed)
    model = repzoo.create_model(name)
    if _family(name).startswith("RepOpt"):
        repzoo.optim.create_repoptimizer(model, name, reinit=True)  # the packaged released scales
        how = "kernels re-initialized from the released scales; BN statistics from the fit images"
    else:
        _random_bn_affine(model, torch.Generator().manual_seed(seed + 1))
        how = "random BN affine parameters; BN statistics from the fit images"
    data_statistics(model, fit_images, batch_size)
    return repzoo.reparameterize(model).eval(), how


@torch.no_grad()
def _features(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model.forward_head(model.forward_features(b), pre_logits=True) for b in images.split(batch_size)])


@torch.no_grad()
def fit_head(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: int, batch_size: int) -> None:
    """A new head of ``classes`` outputs: ridge least squares (dual form) from the centred features, each
    divided by its std but by no less than the median std, to centred one-hot targets; folded into one
    ``nn.Linear``. (Dividing nearly constant features by their own tiny std would make the head amplify
    their int8 error.)"""
    f = _features(model, images, batch_size).double()
    mu, sd = f.mean(0), f.std(0)
    sd = sd.clamp_min(max(sd.median().item(), 1e-30))
    z = (f - mu) / sd
    y = torch.nn.functional.one_hot(labels, classes).double() - 1.0 / classes
    gram = z @ z.T
    a = z.T @ torch.linalg.solve(gram + 0.1 * gram.diagonal().mean() * torch.eye(len(z), dtype=z.dtype), y)
    model.reset_classifier(classes)
    head = model.get_classifier()
    head.weight.copy_((a.T / sd).float())
    head.bias.copy_((-(a.T * (mu / sd)).sum(1)).float())


# --------------------------------------------------------------------------- measurements


def _subset(images: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` images spread over the classes (the splits are ordered by class)."""
    return images[:: max(1, len(images) // n)][:n]


def _range_summary(model: nn.Module) -> dict:
    ranges = kernel_ranges(model)
    spread = range_spread(ranges)
    wq = weight_quant_error(model)
    layers = {name: dict(max=r.max().item(), q3=r.float().quantile(0.75).item(), median=r.median().item(),
                         q1=r.float().quantile(0.25).item(), min=r.min().item(), spread=spread[name],
                         crest=wq[name]["crest"], int8_error_per_tensor=wq[name]["per_tensor"],
                         int8_error_per_channel=wq[name]["per_channel"]) for name, r in ranges.items()}
    med = lambda key: statistics.median(v[key] for v in layers.values())  # noqa: E731
    top = lambda key: max(v[key] for v in layers.values())  # noqa: E731
    return dict(layers=layers, spread_median=med("spread"), spread_max=top("spread"), crest_median=med("crest"),
                weight_error_per_tensor_median=med("int8_error_per_tensor"),
                weight_error_per_channel_median=med("int8_error_per_channel"),
                weight_error_per_tensor_max=top("int8_error_per_tensor"),
                weight_error_per_channel_max=top("int8_error_per_channel")), ranges


def _round(d):
    if isinstance(d, dict):
        return {k: _round(v) for k, v in d.items()}
    if isinstance(d, float):
        return float(f"{d:.5g}") if math.isfinite(d) else str(d)
    return d


def measure(name: str, args, data: dict, log) -> tuple:
    (fit_x, fit_y), (cal_x, cal_y), (test_x, test_y) = data["fit"], data["calibration"], data["test"]
    bs = args.batch_size
    t0 = time.perf_counter()
    fp32, how = build_model(name, args.pretrained, fit_x, args.seed, bs)
    head = "released head"
    fitted = args.fit_head or not args.pretrained
    if fitted:
        fit_head(fp32, fit_x, fit_y, args.classes, bs)
        head = f"fitted ({args.classes} classes, ridge least squares on the fp32 features of {len(fit_x)} fit images)"
    t1 = time.perf_counter()
    int8 = quantize_int8(fp32, cal_x, batch_size=bs)
    t2 = time.perf_counter()
    layers = int8_layers(int8)
    floats = [n for n, m in int8.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    ref = dict(calibration=logits(fp32, cal_x, bs), test=logits(fp32, test_x, bs))
    out = dict(calibration=logits(int8, cal_x, bs), test=logits(int8, test_x, bs))
    res = dict(weights=how, head=head, build_s=t1 - t0, quantize_s=t2 - t1, int8_layers=len(layers),
               int8_weight_dtypes=sorted({str(d) for d in layers.values()}), float_layers_left=len(floats),
               calibration=output_drift(ref["calibration"], out["calibration"]),
               test=output_drift(ref["test"], out["test"]))
    if fitted:
        acc = lambda z, y: (z.argmax(1) == y).double().mean().item()  # noqa: E731
        res["fp32_accuracy"] = dict(calibration=acc(ref["calibration"], cal_y), test=acc(ref["test"], test_y))
        res["int8_accuracy"] = dict(calibration=acc(out["calibration"], cal_y), test=acc(out["test"], test_y))
    res["weights_only"] = dict(per_channel=output_drift(ref["calibration"], logits(int8_weights_only(fp32), cal_x, bs)))
    if args.per_tensor:
        res["weights_only"]["per_tensor"] = output_drift(
            ref["calibration"], logits(int8_weights_only(fp32, per_channel=False), cal_x, bs))
        pt = quantize_int8(fp32, cal_x, batch_size=bs, per_channel=False)
        res["per_tensor_weights"] = dict(calibration=output_drift(ref["calibration"], logits(pt, cal_x, bs)))
        del pt
    x = torch.randn(bs, 3, args.speed_size, args.speed_size, generator=torch.Generator().manual_seed(1))
    fp32_ips, int8_ips = interleaved_images_per_second([fp32, int8], x, args.repeats, args.warmup)
    res["speed"] = dict(image_size=args.speed_size, batch_size=bs, fp32_images_per_s=fp32_ips,
                        int8_images_per_s=int8_ips, speedup=int8_ips / fp32_ips)
    summary, ranges = _range_summary(fp32)
    res["kernels"] = summary
    acts = activation_ranges(fp32, _subset(cal_x, args.act_images), batch_size=bs)
    res["activations"] = dict(layers=acts, max=max(a["max"] for a in acts.values()),
                              ratio_max=max(a["ratio"] for a in acts.values()),
                              ratio_median=statistics.median(a["ratio"] for a in acts.values()),
                              channel_spread_max=max(a["channel_spread"] for a in acts.values()),
                              channel_spread_median=statistics.median(a["channel_spread"] for a in acts.values()))
    c, t, s = res["calibration"], res["test"], res["speed"]
    log(f"{name}: rel. error {c['relative_error']:.3f} (test {t['relative_error']:.3f}), top-1 agreement "
        f"{c['top1_agreement']:.1%} of {c['images']} calibration images (test {t['top1_agreement']:.1%}); "
        f"fp32 {s['fp32_images_per_s']:.1f} img/s, int8 {s['int8_images_per_s']:.1f} img/s, speed-up "
        f"{s['speedup']:.2f}x ({s['image_size']}px, batch {s['batch_size']}); {res['int8_layers']} int8 layers "
        f"({', '.join(res['int8_weight_dtypes'])}), {len(floats)} float left")
    if "fp32_accuracy" in res:
        log(f"  synthetic-class accuracy fp32 {res['fp32_accuracy']['calibration']:.1%} / int8 "
            f"{res['int8_accuracy']['calibration']:.1%} (calibration), {res['fp32_accuracy']['test']:.1%} / "
            f"{res['int8_accuracy']['test']:.1%} (test)")
    w = res["weights_only"]["per_channel"]
    log(f"  int8 weights alone (float activations), per-channel: rel. error {w['relative_error']:.3f}, agreement "
        f"{w['top1_agreement']:.1%}")
    if "per_tensor_weights" in res:
        p, w = res["per_tensor_weights"]["calibration"], res["weights_only"]["per_tensor"]
        log(f"  per-tensor weights instead: rel. error {p['relative_error']:.3f}, agreement {p['top1_agreement']:.1%} "
            f"(weights alone: {w['relative_error']:.3f}, {w['top1_agreement']:.1%})")
    log(f"  kernels: channel-range spread (max/median) median {summary['spread_median']:.2f}, max "
        f"{summary['spread_max']:.2f}; crest (max/rms in a channel) median {summary['crest_median']:.1f}; int8 "
        f"weight error median per-channel {summary['weight_error_per_channel_median']:.3f}, per-tensor "
        f"{summary['weight_error_per_tensor_median']:.3f}; activations: max/p99.99 median "
        f"{res['activations']['ratio_median']:.2f}, max {res['activations']['ratio_max']:.2f}, channel spread "
        f"median {res['activations']['channel_spread_median']:.2f}, max {res['activations']['channel_spread_max']:.2f}")
    return res, ranges


def half_precision_check(name: str, args, data: dict, log) -> dict:
    """The deploy model in fp16 (bfloat16 where this CPU's conv has no fp16) and int8, against fp32."""
    (fit_x, fit_y), (cal_x, cal_y), (test_x, test_y) = data["fit"], data["calibration"], data["test"]
    bs = args.batch_size
    fp32, how = build_model(name, args.pretrained, fit_x, args.seed, bs)
    fitted = args.fit_head or not args.pretrained
    if fitted:
        fit_head(fp32, fit_x, fit_y, args.classes, bs)
    res = dict(weights=how)
    half = torch.float16
    try:
        with torch.no_grad():
            copy.deepcopy(fp32).to(half)(test_x[:1].to(half))
    except RuntimeError as e:
        log(f"{name}: float16 convolution does not run on this CPU ({e}); bfloat16 instead")
        half = torch.bfloat16
    low = copy.deepcopy(fp32).to(half)
    int8 = quantize_int8(fp32, cal_x, batch_size=bs)
    images = torch.cat([cal_x, test_x])
    ref, out16, out8 = logits(fp32, images, bs), logits(low, images, bs), logits(int8, images, bs)
    n = len(cal_x)
    res["half_dtype"] = str(half)
    res["half_finite"] = bool(torch.isfinite(out16).all())
    res["half"] = dict(calibration=output_drift(ref[:n], out16[:n]), test=output_drift(ref[n:], out16[n:]))
    res["int8"] = dict(calibration=output_drift(ref[:n], out8[:n]), test=output_drift(ref[n:], out8[n:]))
    acts = activation_ranges(fp32, _subset(cal_x, args.act_images), batch_size=bs)
    res["activation_max"] = max(a["max"] for a in acts.values())
    res["fp16_max"] = FP16_MAX
    if fitted:
        labels = torch.cat([cal_y, test_y])
        res["accuracy"] = {k: (z.argmax(1) == labels).double().mean().item()
                           for k, z in (("fp32", ref), ("half", out16), ("int8", out8))}
    x = torch.randn(bs, 3, args.speed_size, args.speed_size, generator=torch.Generator().manual_seed(1))
    fp32_ips, int8_ips = interleaved_images_per_second([fp32, int8], x, args.repeats, args.warmup)
    res["speed"] = dict(image_size=args.speed_size, batch_size=bs, fp32_images_per_s=fp32_ips,
                        int8_images_per_s=int8_ips, speedup=int8_ips / fp32_ips)
    h, q = res["half"]["calibration"], res["int8"]["calibration"]
    log(f"{name}: {half} {'finite' if res['half_finite'] else 'NOT finite'}, rel. error {h['relative_error']:.2e}, "
        f"agreement {h['top1_agreement']:.1%}; int8 rel. error {q['relative_error']:.3f}, agreement "
        f"{q['top1_agreement']:.1%} (calibration images; test: {res['half']['test']['top1_agreement']:.1%} / "
        f"{res['int8']['test']['top1_agreement']:.1%}); largest activation {res['activation_max']:.3g} (fp16 max "
        f"{FP16_MAX:.0f}); int8 speed-up {res['speed']['speedup']:.2f}x")
    if fitted:
        a = res["accuracy"]
        log(f"  synthetic-class accuracy fp32 {a['fp32']:.1%}, {half} {a['half']:.1%}, int8 {a['int8']:.1%}")
    res["kernels"], res["kernel_ranges"] = _range_summary(fp32)
    return res


def range_only(name: str, args, data: dict) -> tuple:
    """Kernel ranges of a model that is not run (its weights made as for the measured ones)."""
    model, how = build_model(name, args.pretrained, data["fit"][0][:16], args.seed, args.batch_size)
    summary, ranges = _range_summary(model)
    summary["weights"] = how
    return summary, ranges


def kernel_layers(report: dict) -> dict:
    """``{model: {layer: summary}}`` of every model of a report (quantized, fp16-checked, kernels only), in
    the report's order: what the kernel-range plot draws."""
    out = {name: res["kernels"]["layers"] for name, res in report.get("models", {}).items()}
    out.update({name: res["kernels"]["layers"] for name, res in report.get("fp16_check", {}).items()})
    out.update({name: res["layers"] for name, res in report.get("range_only", {}).items()})
    return out


def plot(report: dict, path: str) -> None:
    """From a report (its JSON): one panel per model; per layer, the spread of its per-output-channel max |w|
    (box: quartiles, whiskers: min and max, log axis with a labelled tick at every power of 10) over the
    median crest max |w| / rms(w) inside a channel (a linear panel below it, sharing the layer axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker as ticker

    models = kernel_layers(report)
    n = len(models)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = plt.figure(figsize=(5.2 * cols, 4.4 * rows))
    outer = fig.add_gridspec(rows, cols, hspace=0.32, wspace=0.28)
    for i, (name, layers) in enumerate(models.items()):
        inner = outer[divmod(i, cols)].subgridspec(2, 1, height_ratios=[3, 1.2], hspace=0.06)
        ax = fig.add_subplot(inner[0])
        low = fig.add_subplot(inner[1], sharex=ax)
        stats = [dict(whislo=max(v["min"], 1e-8), q1=max(v.get("q1", v["median"]), 1e-8), med=max(v["median"], 1e-8),
                      q3=max(v.get("q3", v["median"]), 1e-8), whishi=max(v["max"], 1e-8)) for v in layers.values()]
        positions = list(range(len(stats)))
        ax.bxp(stats, positions=positions, widths=0.6, showfliers=False,
               medianprops=dict(color="tab:red"), boxprops=dict(color="tab:blue"))
        ax.set_yscale("log")
        ax.set_ylim(min(st["whislo"] for st in stats) / 1.6, max(st["whishi"] for st in stats) * 1.6)
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, numticks=12))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_locator(ticker.LogLocator(base=10, subs=(2, 5), numticks=12))
        lo, hi = ax.get_ylim()
        few = math.log10(hi / lo) <= 3  # few decades: label 2 and 5 too, so that every panel reads at a glance
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}") if few else ticker.NullFormatter())
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_title(f"{name} ({len(stats)} layers)", fontsize=10)
        ax.set_ylabel("per-channel max |w|", fontsize=8)
        ax.tick_params(axis="both", labelsize=8)
        ax.tick_params(axis="x", labelbottom=False)
        ax.grid(True, which="major", axis="y", alpha=0.4)
        ax.grid(True, which="minor", axis="y", alpha=0.15)
        low.plot(positions, [v["crest"] for v in layers.values()], color="0.35", lw=1, marker=".", ms=3)
        low.set_ylim(bottom=0)
        low.yaxis.set_major_locator(ticker.MaxNLocator(4))
        low.set_ylabel("crest", fontsize=8)
        low.grid(True, alpha=0.3)
        low.tick_params(axis="both", labelsize=8)
        step = max(1, len(stats) // 8)
        low.set_xticks(positions[::step])
        low.set_xticklabels([str(p) for p in positions[::step]])
        low.set_xlabel("layer (input → head)", fontsize=8)
    m = report.get("machine", {})
    fig.suptitle("Deploy kernels per layer: spread of the per-output-channel max |w| (box: quartiles, whiskers: "
                 "min/max) and the median crest max |w| / rms inside a channel (below)"
                 + (f"\n{'synthetic' if 'synthetic' in report.get('weights', '') else 'released'} weights; "
                    f"{m.get('cpu', '')}, torch {m.get('torch', '')}" if m else ""), fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.86 if rows == 1 else 0.91, bottom=0.07)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smallest", action="store_true", help="the CI setting: RepOpt-VGG-B1 only, 48px, 50 "
                        "calibration images, 3 timing repeats, 1 thread")
    parser.add_argument("--models", help=f"comma-separated models to quantize and time (default {DEFAULT_MODELS})")
    parser.add_argument("--fp16-model", help=f"the model of the fp16 / int8 check (default {GHOSTNET}; '' skips it)")
    parser.add_argument("--range-models", help="models whose kernel ranges are only plotted (default RepOpt-VGG-B2, "
                        "L1, L2; '' for none)")
    parser.add_argument("--pretrained", action="store_true", help="the released weights (must be available)")
    parser.add_argument("--fit-head", action="store_true", help="fit a synthetic-class head with --pretrained too")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--jitter", type=float, default=0.02, help="per-image jitter of phase, contrast, brightness")
    parser.add_argument("--noise", type=float, default=0.02, help="std of the pixel noise")
    parser.add_argument("--image-size", type=int, help="the images' size (default 64; --smallest 48)")
    parser.add_argument("--speed-size", type=int, help="the timed input's size (default 224; --smallest 48)")
    parser.add_argument("--fit-per-class", type=int)
    parser.add_argument("--calib-per-class", type=int)
    parser.add_argument("--test-per-class", type=int)
    parser.add_argument("--batch-size", type=int, help="batch size of every pass and of the timing (default 8)")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--per-tensor", action=argparse.BooleanOptionalAction, default=None,
                        help="also quantize with per-tensor weights, for comparison (default: on; --smallest off)")
    parser.add_argument("--act-images", type=int, help="calibration images the activation ranges are taken on")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; --smallest 1, which a shared "
                        "or oversubscribed machine needs: there every op's threads wait for each other)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-agreement", type=float, help="exit 1 when a model's int8 top-1 agreement on the "
                        "calibration images is below this")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="write the kernel-range plot (PNG) here")
    parser.add_argument("--plot-from", help="draw --plot from this report (a --json of an earlier run) and exit")
    args = parser.parse_args(argv)
    for key, value in PROFILES["smallest" if args.smallest else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.classes < 2:
        parser.error("--classes must be at least 2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plot_from:
        plot(json.loads(Path(args.plot_from).read_text()), args.plot or "kernel_ranges.png")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "x86"
    started = time.perf_counter()
    log = lambda text: print(f"[{time.perf_counter() - started:5.0f}s] {text}", flush=True)  # noqa: E731
    info = machine("cpu")
    log(f"{info['cpu']}, {info['cores']} cores, {info['threads']} threads, torch {info['torch']}; "
        f"quantized engine x86, FX graph mode, default x86 qconfig")
    log("weights: " + ("released (--pretrained)" if args.pretrained else SYNTHETIC_NOTE))
    size = args.image_size
    split = lambda per_class, offset: synthetic_images(args.classes, per_class, size, args.seed + offset,  # noqa: E731
                                                       args.jitter, args.noise)
    data = dict(fit=split(args.fit_per_class, 101), calibration=split(args.calib_per_class, 202),
                test=split(args.test_per_class, 303))
    log(f"images: {args.classes} synthetic classes at {size}px; fit {len(data['fit'][0])}, calibration "
        f"{len(data['calibration'][0])}, test {len(data['test'][0])}")
    models = [m for m in args.models.split(",") if m]
    report = dict(machine=info, settings={k: v for k, v in vars(args).items() if k not in ("json", "plot")},
                  weights="released" if args.pretrained else SYNTHETIC_NOTE, models={}, range_only={})
    for name in models:
        report["models"][name], _ = measure(name, args, data, log)
    if args.fp16_model:
        res = half_precision_check(args.fp16_model, args, data, log)
        res.pop("kernel_ranges")
        report["fp16_check"] = {args.fp16_model: res}
    for name in [m for m in (args.range_models or "").split(",") if m]:
        report["range_only"][name], _ = range_only(name, args, data)
        s = report["range_only"][name]
        log(f"{name} (kernels only): spread median {s['spread_median']:.2f}, max {s['spread_max']:.2f}; crest median "
            f"{s['crest_median']:.1f}; int8 weight error median per-channel "
            f"{s['weight_error_per_channel_median']:.3f}, per-tensor {s['weight_error_per_tensor_median']:.3f}")
    report["seconds"] = time.perf_counter() - started
    if args.plot:  # drawn from the report, as --plot-from draws it from the JSON
        plot(json.loads(json.dumps(_round(report))), args.plot)
        log(f"wrote {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(_round(report), indent=1))
        log(f"wrote {args.json}")
    log(f"done in {report['seconds']:.0f} s")
    if args.min_agreement is not None:
        low = {n: r["calibration"]["top1_agreement"] for n, r in report["models"].items()
               if r["calibration"]["top1_agreement"] < args.min_agreement}
        if low:
            log("FAILED: int8 top-1 agreement with fp32 on the calibration images below "
                f"{args.min_agreement:.0%}: " + ", ".join(f"{n} {a:.1%}" for n, a in low.items()))
            return 1
        log(f"ok: every model's int8 top-1 agreement on the calibration images is at least {args.min_agreement:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
