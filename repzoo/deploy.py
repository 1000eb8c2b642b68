"""Deploy paths, verified before they are timed, and timed so that no engine disturbs another.

    fn, report = repzoo.fastest_deploy(model, images)      # the fastest path that passed, on this machine
    print(report)                                          # every path: verification, images/s, ratio to eager

    repzoo bench --runtimes eager,channels_last,compile,bf16,compile-bf16,int8,onnxruntime,onnxruntime-int8,openvino \\
        --models RepVGG-A0 --batch-sizes 1,16 --json deploy.json --markdown deploy.md

The paths (`RUNTIMES`), each a callable that takes a float32 NCHW batch and returns float32 logits:

* ``eager``: the model in PyTorch, fp32, NCHW — the reference every other path is compared with;
* ``channels_last``: the same in ``torch.channels_last`` memory format;
* ``compile``: ``torch.compile`` (inductor) with ``torch._inductor.config.freezing`` on, run under
  ``torch.inference_mode`` (freezing folds the weights into the graph: inference only);
* ``bf16``: channels_last under ``torch.autocast(dtype=torch.bfloat16)``, offered only where the device has
  bf16 units (a CPU with ``avx512_bf16`` or AMX, a GPU that supports bf16): elsewhere it is reported as
  unavailable, with the reason;
* ``compile-bf16``: the two together, offered where ``bf16`` is: the channels_last model compiled with freezing
  under bf16 autocast (freezing folds the weights in bf16 and inductor fuses each conv with its ReLU and
  keeps the activations in bf16 between them, where eager autocast casts around every conv);
* ``int8``: ``torch.ao`` post-training static quantization, x86 backend
  (`repzoo.integrations.quantize.quantize_int8`), calibrated on real images;
* ``onnxruntime``: the model exported with `repzoo.export` (checked there) and run by ONNX Runtime,
  its intra- and inter-op threads told not to spin between runs (`ort_session_options`);
* ``onnxruntime-int8``: that ONNX file quantized by ``onnxruntime.quantization.quantize_static`` (QDQ,
  per-channel int8 weights, uint8 activations) calibrated on real images;
* ``openvino``: ``openvino.convert_model`` of the model, compiled for the CPU in f32 (OpenVINO's default on
  a CPU with bf16 units is bf16) with the latency hint.

Verification. Each path runs on real images (by default the validation split of scikit-learn's handwritten
digits, written by `repzoo.train.data.write_digits_folder` and resized to the model's input) and is
compared with fp32 eager: the largest relative logit difference ``max |y - y_ref| / max |y_ref|`` and the
fraction of images whose top-1 class is the same. A path passes when its top-1 agreement is at least
`MIN_AGREEMENT` of its kind (fp32 and bf16 paths 99 %, int8 paths 98 %) and, for the fp32 paths, its
relative difference is at most `FP32_RTOL`. A path that fails (or cannot be built) is shown as failed
and never recommended.

Timing. ``repzoo bench --runtimes`` (`bench_runtimes`) runs every path in a process of its own (a
worker: ``python -m repzoo.deploy``) that builds and verifies it, warms it up and then waits; the parent asks
one worker at a time for a round of timed repetitions, rotating the order each round, so that each engine is
timed with every other engine's process idle and the machine's drift falls on all of them alike. The
figures are medians over every repetition of every round; the spread (largest round median / smallest − 1)
is reported per engine, and a spread above 10 % is flagged: such a run is not to be trusted.
`fastest_deploy` times in the calling process (it must hand back the callable it measured), the
engines interleaved, ONNX Runtime without spinning.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import RepZooError
from .machine import machine

__all__ = ["RUNTIMES", "MIN_AGREEMENT", "FP32_RTOL", "DeployReport", "bf16_support", "ort_session_options",
           "build_path", "verify", "fastest_deploy", "bench_runtimes", "markdown", "allocator_settings", "digits_images", "versions",
           "spread", "Worker", "prepare_model", "data_statistics", "fit_probe", "fastest_from", "compare"]

#: every path, in the order they are shown; the first is the reference
RUNTIMES = ("eager", "channels_last", "compile", "bf16", "compile-bf16", "int8", "onnxruntime", "onnxruntime-int8",
            "openvino")
#: each path's numerical kind
KIND = {"eager": "fp32", "channels_last": "fp32", "compile": "fp32", "bf16": "bf16", "compile-bf16": "bf16",
        "int8": "int8", "onnxruntime": "fp32", "onnxruntime-int8": "int8", "openvino": "fp32"}
#: the top-1 agreement with fp32 eager a path of each kind needs to pass
MIN_AGREEMENT = {"fp32": 0.99, "bf16": 0.99, "int8": 0.98}
#: the largest relative logit difference an fp32 path may have
FP32_RTOL = 1e-3
#: a spread of round medians above this marks an engine's figure as unsteady
STEADY = 0.10


# --------------------------------------------------------------------------- the machine


def bf16_support(device: str = "cpu") -> Tuple[bool, str]:
    """``(True, why)`` where ``device`` has bf16 units (CPU: ``avx512_bf16`` or ``amx_bf16``; CUDA:
    ``torch.cuda.is_bf16_supported()``), else ``(False, why not)``."""
    if str(device).startswith("cuda"):
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "the GPU supports bf16" if ok else "this GPU has no bf16 support"
    flags = set(machine("cpu")["flags"])
    units = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    if units:
        return True, f"the CPU has {' and '.join(units)}"
    return False, "the CPU has no bf16 units (neither avx512_bf16 nor AMX): bf16 would be emulated, not faster"


def versions() -> Dict[str, Optional[str]]:
    """The versions of the engines installed here (None: not installed)."""
    import importlib

    out: Dict[str, Optional[str]] = {"torch": torch.__version__}
    for name in ("onnxruntime", "openvino"):
        try:
            out[name] = importlib.import_module(name).__version__
        except ImportError:
            out[name] = None
    return out


def ort_session_options(threads: Optional[int] = None):
    """``onnxruntime.SessionOptions`` whose intra- and inter-op threads do not spin after a run (spinning
    threads keep the cores busy and starve whatever runs next), with ``threads`` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RepZooError("The onnxruntime paths need onnxruntime: pip install 'repzoo[export]'") from None
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    return options


# --------------------------------------------------------------------------- the paths


def _ort_runner(path: pathlib.Path, threads: Optional[int]) -> Callable:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), ort_session_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    run.session = session  # type: ignore[attr-defined]
    return run


def _onnx_file(model: nn.Module, example: torch.Tensor, workdir: pathlib.Path) -> pathlib.Path:
    from .integrations.export import export

    path = workdir / "model.onnx"
    if not path.is_file():
        export(model, path, format="onnx", input_size=tuple(example.shape[1:]), dynamic_spatial=False)
    return path


def _ort_int8_file(model: nn.Module, example: torch.Tensor, calibration: torch.Tensor,
                   workdir: pathlib.Path) -> pathlib.Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = _onnx_file(model, example, workdir)
    prepared, out = workdir / "model.pre.onnx", workdir / "model.int8.onnx"
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": b.numpy()} for b in calibration.split(8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def build_path(name: str, model: nn.Module, *, example: torch.Tensor, calibration: Optional[torch.Tensor] = None,
               workdir: Optional[os.PathLike] = None, threads: Optional[int] = None) -> Callable:
    """The deploy path ``name`` (one of `RUNTIMES`) of ``model`` (an fp32 module in eval mode; it is not
    changed): a callable from a float32 NCHW batch to float32 logits.

    Args:
        example: an input batch of the shape the path will see (sizes the export and the tracing).
        calibration: real images for the int8 paths' observers (a tensor ``(N, C, H, W)``).
        workdir: a folder for the ONNX files (a temporary one is made when omitted).
        threads: the engine's threads (ONNX Runtime, OpenVINO; PyTorch uses ``torch.get_num_threads()``).
    Raises:
        RepZooError: an unknown path, a path this machine cannot run (``bf16`` without bf16 units), or a
            missing package (its message names the extra to install).
    """
    if name not in RUNTIMES:
        raise RepZooError(f"Unknown deploy path {name!r}: use one of {', '.join(RUNTIMES)}.")
    model = model.eval()
    device = example.device
    if name == "eager":
        return _no_grad(model)
    if KIND[name] == "bf16":
        ok, why = bf16_support(device.type)
        if not ok:
            raise RepZooError(f"No bf16 path here: {why}.")
    if name == "channels_last":
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        return _no_grad(lambda x: cl(x.contiguous(memory_format=torch.channels_last)))
    if name in ("compile", "bf16", "compile-bf16"):
        bf16 = name != "compile"
        layout = torch.channels_last if bf16 else torch.contiguous_format  # inductor picks its own layout
        net = copy.deepcopy(model).to(memory_format=layout)
        freezing = contextlib.nullcontext
        if name != "bf16":
            import torch._inductor.config as inductor_config

            net = torch.compile(net, backend="inductor", dynamic=False)  # compiled at the first call
            freezing = lambda: inductor_config.patch(freezing=True)  # noqa: E731

        def run(x: torch.Tensor) -> torch.Tensor:
            with freezing(), torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return net(x.contiguous(memory_format=layout)).float()

        return run
    if device.type != "cpu":
        raise RepZooError(f"The {name} path runs on the CPU; use --device cpu for it.")
    if name == "int8":
        if calibration is None:
            raise RepZooError("The int8 path needs calibration images (a few dozen real ones).")
        from .integrations.quantize import quantize_int8

        return _no_grad(quantize_int8(model, calibration))
    if name == "openvino":
        from .integrations.export import openvino_compile, openvino_convert

        compiled = openvino_compile(openvino_convert(model, example, {0: None}), threads=threads)

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(compiled(x.numpy())[0].copy())

        return run
    work = pathlib.Path(workdir) if workdir else pathlib.Path(tempfile.mkdtemp(prefix="repzoo_deploy_"))
    if name == "onnxruntime":
        return _ort_runner(_onnx_file(model, example, work), threads)
    if calibration is None:
        raise RepZooError("The onnxruntime-int8 path needs calibration images (a few dozen real ones).")
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        raise RepZooError("The onnxruntime paths need onnxruntime: pip install 'repzoo[export]'") from None
    return _ort_runner(_ort_int8_file(model, example, calibration, work), threads)


def _no_grad(model: Callable) -> Callable:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    run.module = model  # type: ignore[attr-defined]
    return run


# --------------------------------------------------------------------------- verification


def _logits(fn: Callable, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = fn(images[:batch_size])  # whole batches only: a compiled path keeps one shape
    n = (len(images) // batch_size) * batch_size
    return torch.cat([out] + [fn(b) for b in images[batch_size:n].split(batch_size)]).float()


def verify(fn: Callable, reference: torch.Tensor, images: torch.Tensor, kind: str = "fp32",
           batch_size: int = 16) -> Dict[str, Any]:
    """Compare a path with fp32 eager on real ``images`` (whole batches of ``batch_size``; a remainder is left
    out) whose fp32 logits are ``reference``: ``max_rel_error``, ``top1_agreement``, ``images``,
    ``min_agreement`` and ``passed`` (the rules of its ``kind``: see the module docstring)."""
    got = _logits(fn, images, batch_size)
    ref = reference[: len(got)].float()
    rel = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    agree = (got.argmax(1) == ref.argmax(1)).double().mean().item()
    need = MIN_AGREEMENT[kind]
    ok = bool(torch.isfinite(got).all()) and agree >= need and (kind != "fp32" or rel <= FP32_RTOL)
    return dict(max_rel_error=rel, top1_agreement=agree, images=len(got), min_agreement=need, passed=ok)


def digits_images(size: int, mean: Sequence[float], std: Sequence[float], root: Optional[os.PathLike] = None,
                  split: str = "val", limit: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``: an image folder's ``split`` (``root/<split>/<class>/*.png``; by default
    scikit-learn's handwritten digits written by `repzoo.train.data.write_digits_folder` into a
    temporary folder), resized to ``size`` (bilinear) and normalised with ``mean`` / ``std``."""
    import numpy as np
    from PIL import Image

    with contextlib.ExitStack() as stack:
        if root is None:
            from .train.data import write_digits_folder

            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="repzoo_digits_"))
            write_digits_folder(root, size=32)
        folder = pathlib.Path(root) / split
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        files = [(f, i) for i, c in enumerate(classes) for f in sorted((folder / c).iterdir()) if f.is_file()]
        if not files:
            raise RepZooError(f"No images in {folder}: pass a folder laid out as <split>/<class>/<image>.")
        if limit and limit < len(files):  # evenly spaced: every class has its share
            files = [files[i * len(files) // limit] for i in range(limit)]
        arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f, _ in files]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.contiguous(), torch.tensor([i for _, i in files])


@torch.no_grad()
def data_statistics(model: nn.Module, images: torch.Tensor, batch_size: int = 16) -> nn.Module:
    """Set every BatchNorm's running statistics to those of ``model``'s activations on ``images`` (a cumulative
    average over the batches), as training would: a random model's activations are then normalised layer by
    layer, so that its features depend on the image (a fresh model maps every image to nearly the same
    features). Returns ``model``, in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for b in images.split(max(batch_size, 16)):
        model(b)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return model.eval()


@torch.no_grad()
def fit_probe(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 16) -> nn.Module:
    """Give ``model`` a linear head fitted to its own features of ``images`` (ridge regression on the
    standardised features to one-hot ``labels``): random weights then have real margins, so that top-1
    agreement with fp32 measures a path's drift, not the ties of a random head. Returns ``model``."""
    feats = torch.cat([model.forward_head(model.forward_features(b), pre_logits=True)
                       for b in images.split(batch_size)]).double()
    mu, sd = feats.mean(0), feats.std(0)
    sd = torch.maximum(sd, sd.median().clamp_min(1e-12))  # near-constant features are not amplified
    z = (feats - mu) / sd
    classes = int(labels.max()) + 1
    target = torch.eye(classes, dtype=z.dtype)[labels] - 1.0 / classes
    lam = 0.1 * (z * z).sum(1).mean()
    w = torch.linalg.solve(z.T @ z + lam * torch.eye(z.shape[1], dtype=z.dtype), z.T @ target)  # (D, classes)
    model.reset_classifier(classes)
    head = model.get_classifier()
    head.weight.copy_((w / sd[:, None]).T.float())
    head.bias.copy_((-(mu / sd) @ w).float())
    return model


# --------------------------------------------------------------------------- timing


def time_calls(fn: Callable, x: torch.Tensor, repeats: int) -> List[float]:
    """Seconds of each of ``repeats`` calls of ``fn(x)`` (synchronised on a GPU)."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        sync()
        out.append(time.perf_counter() - t)
    return out


def spread(round_medians: Sequence[float]) -> float:
    """Largest / smallest of the rounds' median times, minus 1 (0.0 for a single round)."""
    return max(round_medians) / min(round_medians) - 1 if len(round_medians) > 1 else 0.0


def _summary(times: Dict[int, List[List[float]]]) -> Dict[str, Any]:
    """Per batch size: images/s from the median of every repetition, and the spread of the round medians."""
    out = {}
    for bs, rounds in times.items():
        every = [t for r in rounds for t in r]
        medians = [statistics.median(r) for r in rounds]
        out[str(bs)] = dict(images_per_s=bs / statistics.median(every), spread=spread(medians),
                            round_images_per_s=[bs / m for m in medians])
    return out


# --------------------------------------------------------------------------- in-process: fastest_deploy


@dataclass
class DeployReport:
    """What `fastest_deploy` measured: a row per path, and the one chosen."""

    best: Optional[str]
    batch_size: int
    rows: List[Dict[str, Any]] = field(default_factory=list)
    machine: Dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{'path':18s} {'verified':>9s} {'top-1 agree':>11s} {'max rel err':>11s} "
                 f"{'img/s':>8s} {'x eager':>8s}"]
        for r in self.rows:
            v = r.get("verification") or {}
            ok = "yes" if v.get("passed") else "FAILED"
            ips = r.get("images_per_s")
            lines.append(f"{r['runtime']:18s} {ok:>9s} {_pct(v.get('top1_agreement')):>11s} "
                         f"{_num(v.get('max_rel_error'), '.1e'):>11s} {_num(ips, '.1f'):>8s} "
                         f"{_num(r.get('vs_eager'), '.2f'):>8s}" + (f"  ({r['error']})" if r.get("error") else ""))
        m = self.machine
        lines.append(f"fastest verified path at batch {self.batch_size}: {self.best or 'none'} "
                     f"({m.get('cpu', '?')}, flags {', '.join(m.get('flags', [])) or 'none'})")
        return "\n".join(lines)


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def fastest_deploy(model: nn.Module, images: Optional[torch.Tensor] = None, *,
                   runtimes: Sequence[str] = RUNTIMES, batch_size: int = 16, rounds: int = 3, repeats: int = 3,
                   calibration: Optional[torch.Tensor] = None, threads: Optional[int] = None,
                   paths: Optional[Dict[str, Callable]] = None) -> Tuple[Callable, DeployReport]:
    """The fastest deploy path of ``model`` that passes verification on this machine, and the report.

    Every path of ``runtimes`` is built, verified against fp32 eager on ``images`` (see `verify`) and,
    when it passes, timed at ``batch_size`` (``rounds`` rounds of ``repeats`` calls, the paths interleaved;
    medians). The one with the most images/s among those that passed is returned with the report
    (`DeployReport`; ``report.best`` names it). ``eager`` is always measured: it is the reference.

    Args:
        model: a float32 model in eval mode (convert it first: ``repzoo.reparameterize``); it is not changed.
        images: real, preprocessed images ``(N, C, H, W)`` (at least ``batch_size``): verification and, unless
            ``calibration`` is given, the int8 paths' calibration (its first half). By default the digits
            validation images at the model's input size (needs scikit-learn).
        paths: extra or replacement paths, ``{name: callable}``, verified and timed like the built ones
            (their kind is fp32 unless the name is one of `RUNTIMES`).
    Returns:
        ``(callable, report)``: the chosen path's callable (float32 NCHW in, logits out).
    Raises:
        RepZooError: no images, or no path passed (eager fails only if the model is not deterministic).
    """
    model = model.eval()
    if images is None:
        cfg = getattr(model, "pretrained_cfg", {})
        images, _ = digits_images(cfg.get("input_size", (3, 224, 224))[-1], cfg.get("mean", (0.485, 0.456, 0.406)),
                                  cfg.get("std", (0.229, 0.224, 0.225)), limit=max(64, 4 * batch_size))
    if images.dim() != 4 or len(images) < batch_size:
        raise RepZooError(f"fastest_deploy needs a batch of at least batch_size={batch_size} real images (N, C, H, W); "
                          f"got shape {tuple(images.shape)}.")
    images = images.float()
    calibration = images[: max(batch_size, len(images) // 2)] if calibration is None else calibration
    example = images[:batch_size]
    with torch.inference_mode():
        reference = _logits(model, images, batch_size)
    names = ["eager"] + [r for r in runtimes if r != "eager"] + [p for p in (paths or {}) if p not in runtimes]
    built: Dict[str, Callable] = {}
    rows: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="repzoo_deploy_") as work:
        for name in names:
            row = rows[name] = dict(runtime=name, kind=KIND.get(name, "fp32"))
            try:
                fn = (paths or {}).get(name) or build_path(name, model, example=example, calibration=calibration,
                                                         workdir=work, threads=threads)
                row["verification"] = verify(fn, reference, images, row["kind"], batch_size)
            except Exception as e:  # noqa: BLE001  (a path that cannot be built or run is a failed path, not a crash)
                row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                continue
            if row["verification"]["passed"]:
                built[name] = fn
        times: Dict[str, List[List[float]]] = {n: [] for n in built}
        order = list(built)
        for r in range(rounds if order else 0):
            for name in order[r % len(order):] + order[: r % len(order)]:
                times[name].append(time_calls(built[name], example, repeats))
    for name, t in times.items():
        s = _summary({batch_size: t})[str(batch_size)]
        rows[name].update(images_per_s=s["images_per_s"], spread=s["spread"])
    base = rows["eager"].get("images_per_s")
    for row in rows.values():
        if base and row.get("images_per_s"):
            row["vs_eager"] = row["images_per_s"] / base
    best = max(built, key=lambda n: rows[n]["images_per_s"], default=None)
    report = DeployReport(best, batch_size, list(rows.values()), machine(str(example.device)))
    if best is None:
        raise RepZooError("No deploy path passed verification against fp32 eager:\n" + str(report))
    return built[best], report


# --------------------------------------------------------------------------- out of process: bench_runtimes


def _worker_main(spec: Dict[str, Any]) -> None:
    """A worker (``python -m repzoo.deploy '<spec json>'``): build the model and one path, verify it, warm it
    up, print ``{"ready": ...}``; then answer each request line ``{"batch": B, "repeats": R}`` on stdin with
    ``{"times": [...]}`` and exit on ``{"quit": true}`` or end of input. One JSON object per line on stdout."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec.get("device", "cpu"))
    batches = [int(b) for b in spec["batch_sizes"]]
    if spec.get("data"):
        data = torch.load(spec["data"], weights_only=True)
        model = _build_model(spec["model"], data["state"], int(data["num_classes"])).eval()
        images, reference = data["images"].to(device), data["reference"]
    else:  # speed only (benchmarks/bench_repvgg_vs_resnet.py): seeded random weights and inputs, nothing verified
        torch.manual_seed(0)
        model = _build_model(spec["model"]).eval()
        size = int(spec["image_size"])
        images, reference, data = torch.randn(max(batches), 3, size, size, device=device), None, {}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = model.to(device)
    reply: Dict[str, Any] = dict(runtime=spec["runtime"], kind=KIND.get(spec["runtime"], "fp32"))
    try:
        t = time.perf_counter()
        fn = build_path(spec["runtime"], model, example=images[: max(batches)], calibration=data.get("calibration"),
                        workdir=spec["workdir"], threads=spec.get("threads"))
        if reference is not None:
            reply["verification"] = verify(fn, reference, images, reply["kind"], max(batches))
        for b in batches:  # warm-up: a compiled path compiles each shape here
            for _ in range(int(spec.get("warmup", 2))):
                fn(images[:b])
        reply["build_seconds"] = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001  (reported to the parent as a failed path)
        reply["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        print(json.dumps(dict(ready=reply)), flush=True)
        return
    print(json.dumps(dict(ready=reply)), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        b = int(request["batch"])
        print(json.dumps(dict(times=time_calls(fn, images[:b], int(request["repeats"])))), flush=True)


def _build_model(spec: str, state: Optional[Dict[str, torch.Tensor]] = None,
                 num_classes: Optional[int] = None) -> nn.Module:
    """A deploy repzoo model by name, or ``torchvision:<name>`` (random weights); ``state`` loaded if given."""
    if spec.startswith("torchvision:"):
        import torchvision

        model = getattr(torchvision.models, spec.split(":", 1)[1])(weights=None, num_classes=num_classes or 1000)
    else:
        from .factory import create_model

        model = create_model(spec, deploy=True, num_classes=num_classes)
    if state:
        model.load_state_dict(state)
    return model


class Worker:
    """The parent's handle on one worker process (``python -m repzoo.deploy <spec>``): ``ready`` is its first
    answer (the path's verification, or its error); `time` asks it for a round of timed calls.

    The spec: ``model`` (a repzoo name or ``torchvision:<name>``), ``runtime``, ``batch_sizes``, ``warmup``,
    ``threads``, ``device``, ``workdir``, and either ``data`` (a file of the weights, the verification images,
    fp32 eager's logits, calibration images and ``num_classes``: see `prepare_model`) or ``image_size``
    (speed only: seeded random weights and inputs, nothing verified)."""

    def __init__(self, spec: Dict[str, Any]):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(pathlib.Path(__file__).resolve().parents[1])] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
        self._err = tempfile.TemporaryFile(mode="w+")  # a pipe could fill up with warnings and block the worker
        self.proc = subprocess.Popen([sys.executable, "-m", "repzoo.deploy", json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, env=env)
        self.ready = self._read()["ready"]

    def _read(self) -> Dict[str, Any]:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                self._err.seek(0)
                err = self._err.read().strip().splitlines()
                raise RepZooError(f"a benchmark worker died: {err[-1] if err else 'no message'}")
            if line.startswith("{"):
                return json.loads(line)

    def time(self, batch: int, repeats: int) -> List[float]:
        self.proc.stdin.write(json.dumps(dict(batch=batch, repeats=repeats)) + "\n")
        self.proc.stdin.flush()
        return self._read()["times"]

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(json.dumps(dict(quit=True)) + "\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


def prepare_model(name: str, *, image_size: Optional[int] = None, images_root: Optional[os.PathLike] = None,
                  pretrained: bool = False, checkpoint: Optional[os.PathLike] = None, fit: int = 96,
                  verify_images: int = 128, seed: int = 0, batch_size: int = 16) -> Dict[str, Any]:
    """What every worker of ``name`` needs: the deploy model's weights, the verification images (the val
    split), the int8 calibration images (64 of the train split) and fp32 eager's logits on the verification
    images.

    The weights: ``checkpoint`` (a trained model, e.g. ``repzoo train``'s ``deploy.safetensors``), the released
    ones with ``pretrained``, or else random ones (seeded) with BatchNorm statistics measured on the train
    split (`data_statistics`) and a probe head fitted to the train split (`fit_probe`). A random
    deep network amplifies rounding errors far more than a trained one (its bf16 features drift by ~10 %, a
    trained network's by ~1 %): verify reduced-precision paths with trained weights."""
    torch.manual_seed(seed)
    if name.startswith("torchvision:"):
        model = _build_model(name)
        cfg = dict(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    else:
        from .factory import create_model

        trained = pretrained or checkpoint is not None
        model = create_model(name, pretrained=pretrained, checkpoint_path=checkpoint, deploy=trained)
        cfg = model.pretrained_cfg
    model.eval()
    size = image_size or cfg["input_size"][-1]
    with contextlib.ExitStack() as stack:
        root = images_root
        if root is None:
            from .train.data import write_digits_folder

            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="repzoo_digits_"))
            write_digits_folder(root, size=32)
        train_x, train_y = digits_images(size, cfg["mean"], cfg["std"], root, "train", limit=fit)
        val_x, _ = digits_images(size, cfg["mean"], cfg["std"], root, "val", limit=verify_images)
    if not pretrained and checkpoint is None:
        data_statistics(model, train_x, batch_size)
        if hasattr(model, "reset_classifier"):  # (torchvision's models keep their random head)
            from .reparam import reparameterize

            fit_probe(reparameterize(model).eval(), train_x, train_y, batch_size)
    n = (len(val_x) // batch_size) * batch_size
    if n == 0:
        raise RepZooError(f"Fewer verification images ({len(val_x)}) than the batch size {batch_size}.")
    val_x = val_x[:n]
    with torch.inference_mode():
        reference = torch.cat([model(b) for b in val_x.split(batch_size)])
    return dict(state={k: v.detach().clone() for k, v in model.state_dict().items()}, images=val_x,
                reference=reference, calibration=train_x[:64], image_size=size, num_classes=reference.shape[1])


def bench_runtimes(models: Sequence[str], runtimes: Sequence[str] = RUNTIMES, *, batch_sizes: Sequence[int] = (1, 16),
                   rounds: int = 3, repeats: int = 3, warmup: int = 2, image_size: Optional[int] = None,
                   threads: Optional[int] = None, device: str = "cpu", pretrained: bool = False,
                   checkpoint: Optional[os.PathLike] = None, images_root: Optional[os.PathLike] = None,
                   progress: bool = True,
                   log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> Dict[str, Any]:
    """Verify and time every path of ``runtimes`` for each of ``models``, each path in its own worker
    process (see the module docstring); the report as a dict (``machine``, ``versions``, ``settings``,
    ``rows``: one per model and path, with its verification, images/s and spread per batch size, ratio to
    eager). ``eager`` is always included. A model is a repzoo name or ``torchvision:<name>``."""
    runtimes = ["eager"] + [r for r in runtimes if r != "eager"]
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise RepZooError(f"Unknown deploy path(s) {', '.join(unknown)}: use some of {', '.join(RUNTIMES)}.")
    threads = threads or torch.get_num_threads()
    ok, why = bf16_support(device)
    settings = dict(device=device, batch_sizes=list(batch_sizes), rounds=rounds, repeats=repeats, warmup=warmup,
                    threads=threads, image_size=image_size, pretrained=pretrained,
                    weights="released" if pretrained else (str(checkpoint) if checkpoint else
                                                           "random, BN statistics and a probe head from the images"),
                    images="digits (scikit-learn), val split" if images_root is None else str(images_root),
                    allocator=allocator_settings())
    report: Dict[str, Any] = dict(machine=machine(device), versions=versions(), settings=settings,
                                  bf16=dict(available=ok, why=why), rows=[])
    say = log if progress else (lambda s: None)
    for name in models:
        with tempfile.TemporaryDirectory(prefix="repzoo_bench_deploy_") as work:
            t = time.perf_counter()
            prep = prepare_model(name, image_size=image_size, images_root=images_root, pretrained=pretrained,
                                 checkpoint=checkpoint, batch_size=max(batch_sizes))
            torch.save({k: prep[k] for k in ("state", "images", "reference", "calibration", "num_classes")},
                       f"{work}/data.pt")
            say(f"{name}: weights, {len(prep['images'])} verification images at {prep['image_size']}px and fp32 "
                f"logits ready ({time.perf_counter() - t:.0f} s)")
            workers: Dict[str, Worker] = {}
            rows: Dict[str, Dict[str, Any]] = {}
            try:
                for rt in runtimes:
                    if KIND[rt] == "bf16" and not ok:
                        rows[rt] = dict(model=name, runtime=rt, kind="bf16", error=f"not offered: {why}")
                        continue
                    spec = dict(model=name, runtime=rt, data=f"{work}/data.pt", workdir=work, threads=threads,
                                batch_sizes=list(batch_sizes), warmup=warmup, device=device)
                    w = Worker(spec)
                    rows[rt] = dict(model=name, image_size=prep["image_size"], **w.ready)
                    v = w.ready.get("verification")
                    say(f"  {rt}: " + (f"FAILED to build: {w.ready['error']}" if "error" in w.ready else
                                       f"top-1 agreement {v['top1_agreement']:.1%}, max rel. error "
                                       f"{v['max_rel_error']:.1e}, {'passed' if v['passed'] else 'FAILED'} "
                                       f"({w.ready['build_seconds']:.0f} s to build and verify)"))
                    if "error" in w.ready or not v["passed"]:
                        w.close()
                    else:
                        workers[rt] = w
                times = {rt: {b: [] for b in batch_sizes} for rt in workers}
                order = list(workers)
                for r in range(rounds if order else 0):
                    for b in batch_sizes:
                        for rt in order[r % len(order):] + order[: r % len(order)]:
                            times[rt][b].append(workers[rt].time(b, repeats))
                    say(f"  round {r + 1}/{rounds} done")
            finally:
                for w in workers.values():
                    w.close()
        for rt, t in times.items():
            rows[rt]["batches"] = _summary(t)
        for row in rows.values():
            for b, s in row.get("batches", {}).items():
                base = rows["eager"].get("batches", {}).get(b)
                s["vs_eager"] = s["images_per_s"] / base["images_per_s"] if base else None
        report["rows"].extend(rows[rt] for rt in runtimes if rt in rows)
    report["fastest"] = fastest_from(report)
    return report


def fastest_from(report: Dict[str, Any]) -> Dict[str, Dict[str, Optional[str]]]:
    """``{model: {batch: runtime}}``: the fastest path that passed verification, per model and batch size."""
    out: Dict[str, Dict[str, Optional[str]]] = {}
    for row in report["rows"]:
        if not (row.get("verification") or {}).get("passed"):
            continue
        for b, s in row.get("batches", {}).items():
            best = out.setdefault(row["model"], {}).get(b)
            current = next((r for r in report["rows"] if r["model"] == row["model"] and r["runtime"] == best), None)
            if best is None or s["images_per_s"] > current["batches"][b]["images_per_s"]:
                out[row["model"]][b] = row["runtime"]
    return out


def allocator_settings() -> str:
    """How this process's memory allocator is set up, for the report: ``LD_PRELOAD`` and glibc's ``MALLOC_*``
    tunables when set (the worker processes inherit them), else ``"glibc defaults"``. With the defaults, each
    buffer over 32 MiB (RepVGG-A0's first activations at batch 16) is mapped afresh on every call and page-faulted
    in; ``MALLOC_MMAP_MAX_=0`` keeps such buffers in the heap for reuse, as jemalloc or tcmalloc would, which the
    PyTorch paths gain from (ONNX Runtime and OpenVINO use arenas of their own)."""
    keys = sorted(k for k in os.environ if k.startswith("MALLOC_") or k == "LD_PRELOAD")
    return ", ".join(f"{k}={os.environ[k]}" for k in keys) or "glibc defaults"


def machine_line(report: Dict[str, Any]) -> str:
    """The machine, threads, versions and settings, in one line."""
    m, s, v = report["machine"], report["settings"], report["versions"]
    engines = ", ".join(f"{k} {x}" for k, x in v.items() if x)
    return (f"Measured on {m['cpu']} ({m['cores']} cores; flags: {', '.join(m['flags']) or 'none'}"
            + (f"; {m['gpu']}" if m.get("gpu") else "") + f"), {s['threads']} threads, {engines}; device "
            f"{s['device']}; each path in its own process, {s['rounds']} interleaved rounds of {s['repeats']} "
            f"calls per batch size, medians; verified on {s['images']}; weights: {s.get('weights', '?')}"
            + (f"; allocator: {s['allocator']}" if s.get("allocator") else "") + ".")


def markdown(report: Dict[str, Any]) -> str:
    """The report as markdown: the machine line, then per model a table of one row per path (top-1 agreement
    and max relative error against fp32 eager, images/s at each batch size with the ratio to fp32 eager, the
    largest spread of its round medians), then the fastest verified path per model and batch size."""
    sizes = report["settings"]["batch_sizes"]
    lines = [machine_line(report)]
    for model in dict.fromkeys(r["model"] for r in report["rows"]):
        lines += ["", f"{model}:", "", "| path | verified | top-1 agree | max rel err | "
                  + " | ".join(f"batch {b} img/s (x eager)" for b in sizes) + " | spread |",
                  "|---|---|---:|---:|" + "---:|" * len(sizes) + "---:|"]
        for r in (r for r in report["rows"] if r["model"] == model):
            v = r.get("verification") or {}
            verdict = "yes" if v.get("passed") else ("no" if v else "-")
            cells = []
            for b in sizes:
                s = r.get("batches", {}).get(str(b))
                cells.append(f"{s['images_per_s']:.1f} ({_num(s['vs_eager'], '.2f')}x)" if s else "-")
            spreads = [s["spread"] for s in r.get("batches", {}).values()]
            worst = max(spreads) if spreads else None
            flag = "" if worst is None or worst <= STEADY else " (unsteady)"
            note = f" ({r['error']})" if r.get("error") else ""
            lines.append(f"| {r['runtime']}{note} | {verdict} | {_pct(v.get('top1_agreement'))} "
                         f"| {_num(v.get('max_rel_error'), '.1e')} | " + " | ".join(cells) + f" | {_pct(worst)}{flag} |")
    fastest = report.get("fastest") or fastest_from(report)
    notes = [f"Fastest verified path, {m}: " + ", ".join(f"batch {b}: {rt}" for b, rt in per.items())
             for m, per in fastest.items()]
    notes += [line for line in (_pytorch_vs_ort(report, m) for m in fastest) if line]
    if not report.get("bf16", {}).get("available", True):
        notes.append(f"No bf16 path: {report['bf16']['why']}.")
    for note in notes:  # each its own paragraph
        lines += ["", note]
    return "\n".join(lines)


def _pytorch_vs_ort(report: Dict[str, Any], model: str) -> Optional[str]:
    """``Fastest PyTorch fp32 path / onnxruntime, <model>: batch 1: channels_last 1.02x, ...`` (None without both)."""
    rows = [r for r in report["rows"] if r["model"] == model and (r.get("verification") or {}).get("passed")]
    ort = next((r for r in rows if r["runtime"] == "onnxruntime"), None)
    torch_rows = [r for r in rows if r["runtime"] in ("eager", "channels_last", "compile")]
    if not ort or not torch_rows:
        return None
    cells = []
    for b, s in ort.get("batches", {}).items():
        best = max(torch_rows, key=lambda r: r["batches"][b]["images_per_s"])
        cells.append(f"batch {b}: {best['runtime']} {best['batches'][b]['images_per_s'] / s['images_per_s']:.2f}x")
    return f"Fastest PyTorch fp32 path / onnxruntime, {model}: " + ", ".join(cells)


def compare(a: Dict[str, Any], b: Dict[str, Any]) -> List[Tuple[str, str, str, float]]:
    """``(model, runtime, batch, b / a)`` for every figure two reports share: a re-run should stay within
    ±10 %."""
    index = {(r["model"], r["runtime"]): r for r in a["rows"]}
    out = []
    for r in b["rows"]:
        old = index.get((r["model"], r["runtime"]))
        for bs, s in r.get("batches", {}).items():
            if old and bs in old.get("batches", {}):
                out.append((r["model"], r["runtime"], bs, s["images_per_s"] / old["batches"][bs]["images_per_s"]))
    return out


def run_cli(args: Any, names: Sequence[str]) -> int:
    """``repzoo bench --runtimes ... / --fastest``: the report printed, written as JSON and markdown."""
    from .weights.files import atomic_path

    runtimes = RUNTIMES if args.runtimes in (None, "all") else [r.strip() for r in args.runtimes.split(",") if r]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    report = bench_runtimes(names, runtimes, batch_sizes=batch_sizes, rounds=args.rounds, repeats=args.repeats,
                            image_size=args.image_size, threads=args.threads, device=args.device,
                            checkpoint=args.checkpoint, images_root=args.images, progress=not args.quiet)
    table = markdown(report)
    print(table)
    for path, text in ((args.json, json.dumps(report, indent=1)), (args.markdown, table + "\n")):
        if path:
            with atomic_path(path, "the benchmark report") as tmp:
                pathlib.Path(tmp).write_text(text, encoding="utf-8")
    if args.fastest:
        for model, per in report["fastest"].items():
            for b, rt in per.items():
                row = next(r for r in report["rows"] if r["model"] == model and r["runtime"] == rt)
                s = row["batches"][b]
                print(f"fastest verified path for {model} at batch {b}: {rt} ({s['images_per_s']:.1f} images/s, "
                      f"{s['vs_eager']:.2f}x fp32 eager, top-1 agreement {row['verification']['top1_agreement']:.1%})")
    unsteady = [f"{r['model']} {r['runtime']} batch {b} ({s['spread']:.0%})" for r in report["rows"]
                for b, s in r.get("batches", {}).items() if s["spread"] > STEADY]
    if unsteady:
        print(f"warning: round medians spread over {STEADY:.0%} (a busy machine?): " + ", ".join(unsteady),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    _worker_main(json.loads(sys.argv[1]))
