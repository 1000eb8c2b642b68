"""Post-training int8 quantization of deploy models (``torch.ao`` FX graph mode, x86 backend), and the
measurements that say how well it goes.

    from repzoo.integrations.quantize import quantize_int8, output_drift
    int8 = quantize_int8(model, calibration_images)          # a torch.fx.GraphModule, int8 convs and linears
    output_drift(model, int8, test_images)                    # {'relative_error': ..., 'top1_agreement': ...}

A model in train form is converted first (:func:`repzoo.reparameterize`, on a copy): a deploy model is
one conv (+ bias, + ReLU) per layer, which FX fuses and quantizes as one int8 op. The x86 default
qconfig quantizes weights per output channel (symmetric ``qint8``) and activations per tensor
(``quint8``, 7 bits, histogram observer). A model quantizes well when no channel's kernel has a few entries
far beyond the rest of it (one scale per channel cannot help inside a channel) and no layer's activations
have outliers far beyond their bulk; :func:`kernel_ranges`, :func:`range_spread`,
:func:`weight_quant_error`, :func:`int8_weights_only` and :func:`activation_ranges` measure what decides it.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from ..errors import RepZooError
from ..reparam import is_deploy, reparameterize

__all__ = ["quantize_int8", "calibration_batches", "int8_layers", "kernel_ranges", "range_spread",
           "weight_quant_error", "int8_weights_only", "activation_ranges", "logits", "output_drift"]

Calibration = Union[torch.Tensor, Iterable[torch.Tensor]]
Outputs = Union[nn.Module, Callable, torch.Tensor]  # a model, or its logits
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def calibration_batches(calibration: Calibration, batch_size: int = 32) -> List[torch.Tensor]:
    """The calibration set as a list of float batches: a tensor ``(N, C, H, W)`` is split into batches of
    ``batch_size``; an iterable yields tensors (or ``(images, labels)`` pairs, whose labels are ignored)."""
    if batch_size < 1:
        raise RepZooError(f"batch_size must be at least 1, not {batch_size}")
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() < 2:
            raise RepZooError(f"the calibration tensor has shape {tuple(calibration.shape)}: pass a batch of "
                              "images (N, C, H, W)")
        batches = list(calibration.split(batch_size))
    else:
        try:
            items = list(calibration)
        except TypeError:
            raise RepZooError(f"calibration must be a tensor of images or an iterable of batches, not "
                              f"{type(calibration).__name__}") from None
        batches = [b[0] if isinstance(b, (tuple, list)) and b else b for b in items]
        bad = [type(b).__name__ for b in batches if not isinstance(b, torch.Tensor)]
        if bad:
            raise RepZooError(f"every calibration batch must be a tensor of images; got {bad[0]}")
    batches = [b.float() for b in batches if b.numel()]
    if not batches:
        raise RepZooError("the calibration set is empty: pass at least one batch of representative images "
                          "(a few hundred for a released model; the observers set the int8 ranges from them)")
    return batches


def _deploy_copy(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise RepZooError(f"expected a torch.nn.Module (a repzoo model), not {type(model).__name__}")
    model = copy.deepcopy(model)
    if not is_deploy(model):
        reparameterize(model)
    return model.eval()


def _qconfig_mapping(backend: str, per_channel: bool):
    from torch.ao.quantization import QConfig, default_weight_observer, get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping(backend)
    if not per_channel:  # per-tensor weights (for comparison): the same activation observer
        mapping.set_global(QConfig(activation=mapping.global_qconfig.activation, weight=default_weight_observer))
    return mapping


def quantize_int8(model: nn.Module, calibration: Calibration, backend: str = "x86", *, per_channel: bool = True,
                  batch_size: int = 32) -> torch.fx.GraphModule:
    """Post-training static int8 quantization of a repzoo model (FX graph mode).

    Args:
        model: a repzoo model in either form; a train-form model is converted on a copy
            (the argument itself is never changed).
        calibration: representative images, a tensor ``(N, C, H, W)`` or an iterable of batches
            (see [calibration_batches][repzoo.integrations.quantize.calibration_batches]); every batch runs through
            the observers once.
        backend: the quantized engine (``"x86"``; ``torch.backends.quantized.engine`` is set to it,
            and the returned model must run under it).
        per_channel: per-output-channel weight scales (the x86 default); ``False`` uses one scale per
            weight tensor, for comparison.
        batch_size: the batch size a calibration tensor is split into.

    Returns:
        The int8 ``torch.fx.GraphModule`` (float in, float out; quantized convs and linears inside).
    """
    engines = torch.backends.quantized.supported_engines
    if backend not in engines:
        raise RepZooError(f"the quantized engine {backend!r} is not available in this torch build "
                          f"(available: {', '.join(e for e in engines if e != 'none')})")
    batches = calibration_batches(calibration, batch_size)
    deploy = _deploy_copy(model)
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = backend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization's own notice
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated.*")
        try:
            prepared = prepare_fx(deploy, _qconfig_mapping(backend, per_channel), example_inputs=(batches[0][:1],))
        except Exception as e:  # FX symbolic tracing: control flow on tensor values, untraceable calls
            raise RepZooError(
                f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {e}). Pass a model built by "
                "repzoo.create_model, or make forward traceable: no Python control flow on tensor values (use "
                "torch.where), no calls FX cannot follow (or wrap them with torch.fx.wrap).") from e
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
        return convert_fx(prepared)


def int8_layers(model: nn.Module) -> Dict[str, torch.dtype]:
    """``{name: weight dtype}`` of the quantized convs and linears of a model returned by
    [quantize_int8][repzoo.integrations.quantize.quantize_int8]."""
    import torch.ao.nn.quantized as nnq

    kinds = (nnq.modules.conv._ConvNd, nnq.Linear)
    return {name: m.weight().dtype for name, m in model.named_modules() if isinstance(m, kinds)}


def _layers(model: nn.Module):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _LAYERS) and m.weight is not None]


def kernel_ranges(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Per output channel, the largest ``|w|`` of every conv and linear weight of the deploy form of
    ``model`` (converted on a copy if needed): ``{"<module>.weight": 1-D float tensor}``."""
    model = _deploy_copy(model)
    return {f"{name}.weight": m.weight.detach().abs().flatten(1).amax(1).float() for name, m in _layers(model)}


def range_spread(ranges: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Per layer, largest / median per-channel range: one scale per tensor (per-tensor quantization)
    spends its 256 levels on the largest channel, so the channels near the median keep about
    ``127 / spread`` levels."""
    out = {}
    for name, r in ranges.items():
        median = r.median().item()
        out[name] = r.max().item() / median if median > 0 else math.inf
    return out


def _int8_round(w: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    scale = (amax / 127.5).clamp_min(1e-12)
    return (w / scale).round().clamp(-128, 127) * scale


@torch.no_grad()
def weight_quant_error(model: nn.Module) -> Dict[str, Dict[str, float]]:
    """Per conv / linear weight of the deploy form: the relative error ``‖Q(w) − w‖ / ‖w‖`` of symmetric int8
    rounding with one scale per tensor (``per_tensor``) and one per output channel (``per_channel``, the x86
    default), and ``crest``, the median over channels of ``max |w| / rms(w)``.

    A channel's rounding step is its ``max |w| / 127.5``, so its error is about ``crest / 440`` of its rms:
    per-channel scales remove the spread *between* channels, not an outlier *inside* one (the identity's
    centre tap of a converted kernel).
    """
    out = {}
    for name, m in _layers(_deploy_copy(model)):
        w = m.weight.detach().double().flatten(1)
        norm = w.norm().clamp_min(1e-30)
        amax = w.abs().amax(1, keepdim=True)
        per_tensor = (_int8_round(w, w.abs().max()) - w).norm() / norm
        per_channel = (_int8_round(w, amax) - w).norm() / norm
        crest = (amax.squeeze(1) / w.pow(2).mean(1).sqrt().clamp_min(1e-30)).median()
        out[f"{name}.weight"] = dict(per_tensor=per_tensor.item(), per_channel=per_channel.item(), crest=crest.item())
    return out


@torch.no_grad()
def int8_weights_only(model: nn.Module, per_channel: bool = True) -> nn.Module:
    """A float copy of the deploy form whose conv and linear weights are rounded to symmetric int8 (one scale
    per output channel, or per tensor) and back: the drift of the weights alone, activations left in float."""
    model = _deploy_copy(model)
    for _, m in _layers(model):
        w = m.weight.detach().flatten(1)
        amax = w.abs().amax(1, keepdim=True) if per_channel else w.abs().max()
        m.weight.copy_(_int8_round(w, amax).view_as(m.weight))
    return model


@torch.no_grad()
def activation_ranges(model: nn.Module, calibration: Calibration, percentile: float = 99.99,
                      batch_size: int = 32, sample: int = 1 << 18) -> Dict[str, Dict[str, float]]:
    """Per conv / linear of the deploy form, the range of its output over the calibration images:
    ``max`` (largest ``|a|``), ``percentile`` (that percentile of ``|a|``, from up to ``sample`` evenly
    spaced values per batch), ``ratio`` (``max / percentile``: large means a few outliers stretch the one
    per-tensor activation scale) and ``channel_spread`` (largest / median per-channel max ``|a|``: the
    activation scale is one per tensor, so channels far below the largest keep few of its levels)."""
    if not 0 < percentile <= 100:
        raise RepZooError(f"percentile must be in (0, 100], not {percentile}")
    batches = calibration_batches(calibration, batch_size)
    model = _deploy_copy(model)
    peak: Dict[str, torch.Tensor] = {}
    samples: Dict[str, List[torch.Tensor]] = {}

    def hook(name: str) -> Callable:
        def record(_module, _inputs, output):
            a = output.detach().abs().float()
            per_channel = a.transpose(0, 1).flatten(1).amax(1) if a.dim() > 1 else a.amax().view(1)
            peak[name] = per_channel if name not in peak else torch.maximum(peak[name], per_channel)
            flat = a.flatten()
            samples.setdefault(name, []).append(flat[:: max(1, flat.numel() // sample)])
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in _layers(model)]
    try:
        for batch in batches:
            model(batch)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, parts in samples.items():
        values = torch.cat(parts)
        k = max(1, min(values.numel(), math.ceil(percentile / 100 * values.numel())))
        p = values.kthvalue(k).values.item()
        top, median = peak[name].max().item(), peak[name].median().item()
        out[name] = dict(max=top, percentile=p, ratio=top / p if p > 0 else math.inf,
                         channel_spread=top / median if median > 0 else math.inf)
    return out


def logits(model: Union[nn.Module, Callable], images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """``model``'s float32 outputs on ``images``, in batches of ``batch_size``, without gradients; a module runs
    in eval mode (its mode is restored after) on the input cast to its float dtype (a ``.half()`` copy works)."""
    module = model if isinstance(model, nn.Module) else None
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None) if module else None
    training = module.training if module else False
    if module:
        module.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(b if dtype is None else b.to(dtype)).float() for b in images.split(batch_size)])
    finally:
        if module:
            module.train(training)


def _logits(model: Outputs, images: Optional[torch.Tensor], batch_size: int):
    if isinstance(model, torch.Tensor):
        return model.detach().float()
    if images is None:
        raise RepZooError("output_drift needs images when a model (not its logits) is passed")
    return logits(model, images, batch_size)


def output_drift(reference: Outputs, quantized: Outputs, images: Optional[torch.Tensor] = None,
                 batch_size: int = 32) -> Dict[str, float]:
    """How far ``quantized``'s logits are from ``reference``'s on ``images``.

    Each of the two is a model (run in eval mode on ``images`` in batches, the input cast to a float
    model's dtype, so a ``.half()`` copy can be passed) or its logits as a tensor ``(N, classes)``.

    Returns:
        ``relative_error`` (``‖q − r‖ / ‖r‖`` over all logits), ``top1_agreement`` (the fraction of images
        whose argmax is the same) and ``images`` (N).
    """
    r, q = _logits(reference, images, batch_size), _logits(quantized, images, batch_size)
    if r.shape != q.shape or r.dim() != 2 or r.shape[0] == 0:
        raise RepZooError(f"the two outputs must be logits of the same shape (N, classes), N > 0; got "
                          f"{tuple(r.shape)} and {tuple(q.shape)}")
    rel = ((q - r).norm() / r.norm().clamp_min(1e-30)).item()
    agree = (q.argmax(1) == r.argmax(1)).double().mean().item()
    return dict(relative_error=rel, top1_agreement=agree, images=r.shape[0])
