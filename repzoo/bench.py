"""``repzoo bench``: what each model costs, measured in one run on this machine.

For every model asked for:

* inference images/s of the train-time form and of the deploy form (and their ratio);
* the deploy form against timm's reparameterized twin where timm has one (``repvgg_*``,
  ``repghostnet_*``);
* a training step's images/s and peak memory: of the model as it is trained — a RepOpt target model
  with its RepOptimizer, anything else with SGD — and, for the RepOpt-VGG models, of the RepVGG
  form of the same architecture;
* the time of converting the train-time form to the deploy form;
* a warm ``create_model(name, pretrained=True, deploy=True)`` (its cache filled with generated weights
  in the authors' format, nothing downloaded): time and peak RSS, in a fresh interpreter.

Timings are medians of repetitions after warm-up; the inference runs of the two forms and of timm's twin
are interleaved, so that their ratios are measured under the same conditions. The report names the machine, and is written as JSON
and a markdown table; ``--plot`` draws released top-1 (from the manifest) against measured deploy
throughput, one colour per family (matplotlib, an optional extra).

    repzoo bench --models RepVGG-A0,RepVGG-B1,RepOpt-VGG-B1 --device cpu
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .machine import machine

__all__ = ["machine", "interleaved_images_per_second", "peak_memory", "train_step_fn", "train_step_cost", "run_bench",
           "markdown", "machine_line", "plot", "plot_speedup"]

#: repzoo name -> timm's name of the same architecture, where timm has its own (reparameterizable) twin
TIMM_TWINS = {**{f"RepVGG-{v}": f"repvgg_{v.lower()}" for v in "A0 A1 A2 B0 B1 B1g4 B2 B2g4 B3 B3g4 D2se".split()},
              **{f"RepGhostNet-{w}x": f"repghostnet_{round(float(w) * 100):03d}"
                 for w in ("0.5", "0.58", "0.8", "1.0", "1.11", "1.3", "1.5", "2.0")}}


def peak_memory(build: Callable[[], Any], run: Callable[[Any], Any], device: Any = "cpu") -> Dict[str, int]:
    """The most tensor memory held at once while ``run(build())`` runs: ``peak_bytes`` (everything live, the
    model and its optimizer included: what ``torch.cuda.max_memory_allocated`` reports on a GPU) and
    ``held_before_bytes`` (live when ``run`` began). On the CPU every allocation and free is read from the
    profiler's allocator events (``profile_memory=True``) — exact, unlike the process's resident size, which
    keeps its high-water mark from the build. Do not time ``run`` here: the profiler slows it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        obj = build()
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device) - start
        torch.cuda.reset_peak_memory_stats(device)
        run(obj)
        torch.cuda.synchronize(device)
        return dict(peak_bytes=torch.cuda.max_memory_allocated(device) - start, held_before_bytes=before)
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        obj = build()  # recorded too: the frees of what it allocated are counted against their allocations
        with record_function("repzoo.bench.run"):
            run(obj)
        del obj
    events = list(prof.profiler.kineto_results.events())
    region = next(e for e in events if e.name() == "repzoo.bench.run")
    live, before, peak = 0, None, 0
    for e in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
        if e.start_ns() > region.end_ns():
            break
        if before is None and e.start_ns() >= region.start_ns():
            before = live
        live += e.nbytes()
        if before is not None:
            peak = max(peak, live)
    before = live if before is None else before
    return dict(peak_bytes=max(peak, before), held_before_bytes=before)


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _prepare(model: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool) -> nn.Module:
    model = model.to(device=device, dtype=dtype)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def interleaved_images_per_second(models: Sequence[nn.Module], x: torch.Tensor, repeats: int = 5,
                                  warmup: int = 2) -> List[float]:
    """Images/s of each model on ``x``: their runs interleaved (one of each per repetition), so that the
    machine's drift falls on all of them alike; medians."""
    sync = _sync(x.device)
    times: List[List[float]] = [[] for _ in models]
    with torch.inference_mode():
        for m in models:
            m.eval()
            for _ in range(warmup):
                m(x)
        sync()
        for _ in range(repeats):
            for m, record in zip(models, times):
                t = time.perf_counter()
                m(x)
                sync()
                record.append(time.perf_counter() - t)
    return [x.shape[0] / statistics.median(record) for record in times]


def train_step_cost(name: str, args: Dict[str, Any]) -> Dict[str, float]:
    """A training step's images/s and peak memory of ``name`` as :func:`train_step_fn` trains it (everything the step holds: weights, gradients, optimizer
    state, activations; see :func:`peak_memory`), each in a fresh interpreter."""
    code = textwrap.dedent(
        """
        import json, sys, time, statistics
        import torch
        from repzoo.bench import peak_memory, train_step_fn
        name, args, what = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
        torch.set_num_threads(args["threads"])
        device = torch.device(args["device"])
        if what == "memory":  # two steps: the second holds the optimizer's state too
            print(json.dumps(peak_memory(lambda: train_step_fn(name, args, device)[0],
                                         lambda step: (step(), step()), device)))
            sys.exit()
        step, x = train_step_fn(name, args, device)
        step(); step()
        times = []
        for _ in range(args["train_repeats"]):
            t = time.perf_counter(); step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        print(json.dumps(dict(images_per_s=x.shape[0] / statistics.median(times))))
        """
    )

    def child(what: str) -> Dict[str, float]:
        out = subprocess.run([sys.executable, "-c", code, name, json.dumps(args), what], capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    return {**child("time"), **child("memory")}


def train_step_fn(name: str, args: Dict[str, Any], device: torch.device):
    """``(step, batch)``: one training step of ``name`` as it is trained (RepOpt target: its RepOptimizer)."""
    import repzoo
    from repzoo.registry import get_model_entry

    entry = get_model_entry(name)
    model = repzoo.create_model(name).to(device)
    if args.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    model.train()
    if entry.config.get("mode") == "target" and entry.name in _released_scales():
        from repzoo.optim import create_repoptimizer

        opt = create_repoptimizer(model, entry.name, lr=1e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)
    size = args["image_size"] or model.pretrained_cfg["input_size"][1]
    x = torch.randn(args["batch_size"], 3, size, size, device=device)
    if args.get("channels_last"):
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, model.num_classes, (args["batch_size"],), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if args.get("bf16") else contextlib.nullcontext()

    def step():
        with amp:
            out = model(x)
            out = out["main"] if isinstance(out, dict) else out
            loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, x


def _released_scales() -> List[str]:
    from repzoo.weights.manifest import load_manifest

    return load_manifest().scale_names()


def _warm_load(name: str, args: Dict[str, Any]) -> Optional[Dict[str, float]]:
    """A warm pretrained deploy load in a fresh interpreter; None for a model without released weights."""
    from repzoo.weights.manifest import load_manifest

    tags = load_manifest().tags(name)
    if not tags:
        return None
    code = textwrap.dedent(
        """
        import json, os, resource, sys, time
        import torch, repzoo
        from repzoo.weights.manifest import load_manifest
        name, mirror, prepare = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
        if prepare:  # the authors' train file in the mirror, and its deploy copy in the cache
            rec = load_manifest().weights(name).files[0]
            torch.save({"model": repzoo.create_model(name).state_dict()}, os.path.join(mirror, rec.file_name))
            repzoo.create_model(name, pretrained=True, deploy=True)
            print("{}"); sys.exit()
        t = time.perf_counter()
        model = repzoo.create_model(name, pretrained=True, deploy=True)
        s = time.perf_counter() - t
        checksum = sum(float(p.double().sum()) for p in model.parameters())  # read every weight
        t_read = time.perf_counter() - t
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process's, imports included
        print(json.dumps(dict(seconds=s, seconds_with_read=t_read, peak_rss_bytes=rss,
                              weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))))
        """
    )
    with tempfile.TemporaryDirectory(prefix="repzoo_bench_") as work:
        mirror = os.path.join(work, "mirror")
        os.mkdir(mirror)
        env = dict(os.environ, REPZOO_HOME=os.path.join(work, "home"), REPZOO_MIRROR=mirror, REPZOO_OFFLINE="1",
                   REPZOO_PROGRESS="0")
        subprocess.run([sys.executable, "-c", code, name, mirror, "1"], env=env, check=True, capture_output=True)
        runs = [json.loads(subprocess.run([sys.executable, "-c", code, name, mirror, "0"], env=env, check=True,
                                          capture_output=True, text=True).stdout.strip().splitlines()[-1])
                for _ in range(args["load_repeats"])]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _timm_twin(name: str, device: torch.device, dtype, channels_last: bool) -> Optional[nn.Module]:
    """timm's reparameterized model of the same architecture, where timm has one."""
    twin = TIMM_TWINS.get(name)
    if twin is None:
        return None
    import timm
    from timm.utils import reparameterize_model

    return _prepare(reparameterize_model(timm.create_model(twin, pretrained=False).eval()), device, dtype, channels_last)


def run_bench(models: Sequence[str], *, device: str = "cpu", batch_size: int = 8, image_size: Optional[int] = None,
              bf16: bool = False, channels_last: bool = False, threads: Optional[int] = None, repeats: int = 5,
              warmup: int = 2, train: bool = True, train_repeats: int = 3, load: bool = True, load_repeats: int = 3,
              progress: bool = True) -> Dict[str, Any]:
    """Measure ``models`` (see the module docstring); the report as a dict (``machine``, ``settings``, ``rows``)."""
    import repzoo
    from tqdm.auto import tqdm

    from .catalog import count_params
    from .registry import get_model_entry
    from .weights.manifest import load_manifest

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    settings = dict(device=device, batch_size=batch_size, image_size=image_size, bf16=bf16, channels_last=channels_last,
                    threads=torch.get_num_threads(), repeats=repeats, train_repeats=train_repeats)
    names = [get_model_entry(n).name for n in models]
    steps = sum(2 + train + load for _ in names)
    rows = []
    bar = tqdm(total=steps, desc="repzoo bench", disable=not progress, leave=False)
    for name in names:
        entry = get_model_entry(name)
        bar.set_postfix_str(name)
        torch.manual_seed(0)
        model = _prepare(repzoo.create_model(name), dev, dtype, channels_last).eval()
        size = image_size or model.pretrained_cfg["input_size"][1]
        x = torch.randn(batch_size, 3, size, size, device=dev, dtype=dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        row: Dict[str, Any] = dict(model=name, family=entry.family, image_size=size,
                                   params_train=count_params(name, False), params_deploy=count_params(name, True))
        deploy = copy.deepcopy(model)
        t = time.perf_counter()
        repzoo.reparameterize(deploy)
        _sync(dev)()
        row["convert_seconds"] = time.perf_counter() - t
        bar.update(1)
        twin = _timm_twin(name, dev, dtype, channels_last)
        speeds = interleaved_images_per_second([model, deploy] + ([twin] if twin is not None else []), x, repeats, warmup)
        row["train_form_images_per_s"], row["deploy_images_per_s"] = speeds[:2]
        row["deploy_speedup"] = row["deploy_images_per_s"] / row["train_form_images_per_s"]
        if twin is not None:
            row["timm_twin"] = TIMM_TWINS[name]
            row["timm_deploy_images_per_s"] = speeds[2]
            row["deploy_vs_timm"] = row["deploy_images_per_s"] / speeds[2]
        bar.update(1)
        del model, deploy, twin
        targs = dict(settings, image_size=size, train_repeats=train_repeats, load_repeats=load_repeats)
        if train:
            row["train_step"] = train_step_cost(name, targs)
            if entry.family == "RepOpt-VGG" and entry.config.get("mode") == "target":
                row["train_step_repvgg_form"] = train_step_cost(f"{name}-repvgg", targs)
                row["train_vs_repvgg_form"] = (row["train_step"]["images_per_s"]
                                               / row["train_step_repvgg_form"]["images_per_s"])
            bar.update(1)
        if load:
            row["warm_pretrained_deploy_load"] = _warm_load(name, targs)
            bar.update(1)
        tags = load_manifest().tags(name)
        row["top1"] = load_manifest().weights(name).top1 if tags else None
        rows.append(row)
    bar.close()
    return dict(machine=machine(device), settings=settings, rows=rows)


def _fmt(v: Optional[float], spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def machine_line(report: Dict[str, Any]) -> str:
    """``Measured on <cpu> (<cores> cores, <threads> threads), torch ..., device, batch, dtype; medians.``"""
    m, s = report["machine"], report["settings"]
    return (f"Measured on {m['cpu']} ({m['cores']} cores, {s['threads']} threads"
            + (f", {m['gpu']}" if m.get("gpu") else "") + f"), torch {m['torch']}, device {s['device']}, "
            f"batch {s['batch_size']}, {'bf16' if s['bf16'] else 'fp32'}"
            + (", channels_last" if s["channels_last"] else "") + "; medians.")


def markdown(report: Dict[str, Any]) -> str:
    """The report as markdown: the machine, then two tables of one row per model, narrow enough to read
    without scrolling: inference (both forms, the speed-up, timm's twin, top-1), then the costs (conversion,
    a training step, a warm pretrained load; its caption says when those were skipped)."""
    speed = ["| model | size | train form img/s | deploy img/s | deploy / train | deploy / timm twin | top-1 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    cost = ["| model | convert s | train step img/s | train peak MiB | warm deploy load ms | load peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|"]
    costs_measured = False
    for r in report["rows"]:
        step = r.get("train_step") or {}
        load = r.get("warm_pretrained_deploy_load") or {}
        vs = r.get("train_vs_repvgg_form")
        train_cell = _fmt(step.get("images_per_s")) + (f" ({vs:.2f}x RepVGG form)" if vs else "")
        speed.append(
            f"| {r['model']} | {r['image_size']} | {_fmt(r['train_form_images_per_s'])} "
            f"| {_fmt(r['deploy_images_per_s'])} | {r['deploy_speedup']:.2f}x "
            f"| {_fmt(r.get('deploy_vs_timm'), '.2f')}{'x' if r.get('deploy_vs_timm') else ''} "
            f"| {_fmt(r.get('top1'), '.2f')} |")
        cost.append(
            f"| {r['model']} | {r['convert_seconds']:.2f} | {train_cell} "
            f"| {_fmt(step.get('peak_bytes') and step['peak_bytes'] / 2 ** 20, '.0f')} "
            f"| {_fmt(load.get('seconds') and load['seconds'] * 1e3)} "
            f"| {_fmt(load.get('peak_rss_bytes') and load['peak_rss_bytes'] / 2 ** 20, '.0f')} |")
        costs_measured = costs_measured or bool(step or load)
    cost_note = "" if costs_measured else " (training steps and warm loads skipped)"
    return "\n".join([machine_line(report), ""] + speed + ["", f"Costs{cost_note}:", ""] + cost)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from .errors import RepZooError

        raise RepZooError("Plotting needs matplotlib: pip install 'repzoo[plot]'") from None
    return plt


def _setting(report: Dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    sizes = sorted({r["image_size"] for r in report["rows"]})
    size = "/".join(f"{x}²" for x in sizes)
    return (f"{m.get('gpu') or m['cpu']}, {s['threads']} thread(s), {s['device']}, batch {s['batch_size']}, "
            f"{size} px, {'bf16' if s['bf16'] else 'fp32'}")


def plot_speedup(report: Dict[str, Any], path: str) -> str:
    """The train → deploy speed-up of each model, grouped and coloured by family, as a PNG (one bar per model,
    the value written at its end, 1x marked)."""
    plt = _pyplot()
    rows = sorted(report["rows"], key=lambda r: (r["family"], -r["deploy_speedup"]))
    families = list(dict.fromkeys(r["family"] for r in rows))
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(rows) + 1.6), dpi=110)
    y = list(range(len(rows)))[::-1]
    colours = [plt.cm.tab10(families.index(r["family"]) % 10) for r in rows]
    ax.barh(y, [r["deploy_speedup"] for r in rows], color=colours, height=0.65)
    for yi, r in zip(y, rows):
        ax.text(r["deploy_speedup"], yi, f" {r['deploy_speedup']:.2f}x", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels([r["model"] for r in rows], fontsize=8)
    ax.axvline(1.0, color="0.3", lw=1, ls="--")
    ax.set_xlim(0, max(r["deploy_speedup"] for r in rows) * 1.18)
    ax.set_xlabel("deploy images/s ÷ train-form images/s (1x: no gain)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=plt.cm.tab10(i % 10)) for i in range(len(families))]
    ax.legend(handles, families, fontsize=8, loc="lower right")
    ax.set_title(f"Train → deploy speed-up per model\n{_setting(report)}", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot(report: Dict[str, Any], path: str) -> str:
    """Released top-1 against measured images/s of both forms (hollow: train form, filled: deploy form, an
    arrow between them), one colour per family, as a PNG. Models without released top-1 are left out."""
    plt = _pyplot()
    rows = sorted((r for r in report["rows"] if r.get("top1") is not None), key=lambda r: r["top1"])
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    families = list(dict.fromkeys(r["family"] for r in sorted(rows, key=lambda r: r["family"])))
    for r in rows:
        c = plt.cm.tab10(families.index(r["family"]) % 10)
        train, deploy = r["train_form_images_per_s"], r["deploy_images_per_s"]
        ax.annotate("", (deploy, r["top1"]), (train, r["top1"]),
                    arrowprops=dict(arrowstyle="->", color=c, lw=1, shrinkA=4, shrinkB=4))
        ax.scatter([train], [r["top1"]], facecolors="none", edgecolors=[c], s=36)
        ax.scatter([deploy], [r["top1"]], color=[c], s=36)
        ax.annotate(r["model"], (max(train, deploy), r["top1"]), fontsize=7, xytext=(6, -3),
                    textcoords="offset points")
    for i, family in enumerate(families):
        ax.scatter([], [], color=plt.cm.tab10(i % 10), label=family)
    ax.scatter([], [], facecolors="none", edgecolors="0.3", label="train form")
    ax.scatter([], [], color="0.3", label="deploy form")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
    ax.tick_params(axis="x", which="both", labelsize=8)
    lo = min(min(r["train_form_images_per_s"], r["deploy_images_per_s"]) for r in rows)
    hi = max(max(r["train_form_images_per_s"], r["deploy_images_per_s"]) for r in rows)
    ax.set_xlim(lo / 1.3, hi * 2.2)  # room for the labels on the right
    ax.set_xlabel(f"images/s (log scale)  —  {_setting(report)}", fontsize=8)
    ax.set_ylabel("released ImageNet top-1 (%)")
    ax.set_title("Top-1 against speed, train form → deploy form", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
