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

Quantization-aware fine-tuning of the train form, through the equivalent kernel (RepVGG's advice: QAT with the
constraint on the equivalent kernel, which stays differentiable):

    result = quantize_aware_finetune(model, train_loader, epochs=2, lr=0.005)   # a train-form model, (x, y) batches
    result.int8, result.deploy                                                 # the int8 GraphModule, its float twin

Each forward of :func:`prepare_equivalent_kernel_qat`'s model fuses every block's branches into its deploy kernel
with the block's own conversion (``fuse_state_dict``, the math of :mod:`repzoo.reparam`) on the live tensors, rounds
that kernel as the x86 backend will (:func:`fake_quant_weight`), runs the deploy block with it and fake-quantizes
its output as the int8 model will; gradients reach the branches through the rounding (straight-through).
"""
from __future__ import annotations

import copy
import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import RepZooError
from ..reparam import ReparamBlock, is_deploy, reparameterize

__all__ = ["quantize_int8", "calibration_batches", "int8_layers", "kernel_ranges", "range_spread",
           "weight_quant_error", "int8_weights_only", "activation_ranges", "logits", "output_drift",
           "fake_quant_weight", "EquivalentKernelQAT", "QATModel", "prepare_equivalent_kernel_qat", "QATResult",
           "quantize_aware_finetune"]

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
    _check_backend(backend)
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


def _weight_scale(amax: torch.Tensor, floor: float = 1e-12) -> torch.Tensor:
    """The step of symmetric int8 weights (the x86 observers' ``qint8``, ``[-128, 127]``): ``max |w| / 127.5``."""
    return (amax / 127.5).clamp_min(floor)


def _int8_round(w: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    scale = _weight_scale(amax)
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


# --------------------------------------------------------------------------- quantization-aware fine-tuning


def fake_quant_weight(weight: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """``weight`` rounded to int8 and back as the x86 backend quantizes it: symmetric ``qint8`` with one scale per
    output channel (``per_channel``, ``PerChannelMinMaxObserver``) or per tensor (``MinMaxObserver``), the scale
    ``max |w| / 127.5`` in float32 as those observers set it; the gradient is straight-through (the identity)."""
    eps = torch.finfo(torch.float32).eps
    if not per_channel:
        scale = _weight_scale(weight.detach().abs().max().float(), eps).item()
        return torch.fake_quantize_per_tensor_affine(weight, scale, 0, -128, 127)
    amax = weight.detach().abs().flatten(1).amax(1).float()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, _weight_scale(amax, eps), zero, 0, -128, 127)


def _activation_fake_quant(backend: str) -> nn.Module:
    """The activation fake-quant of the backend's default QAT qconfig (``quint8`` per tensor, a moving-average
    min / max observer; 7 bits on x86 / fbgemm, ``reduce_range``), unfused so that it runs in any float dtype."""
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
        return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                            reduce_range=backend in ("x86", "fbgemm"))


def _own_tensors(module: nn.Module) -> Dict[str, torch.Tensor]:
    return dict(itertools.chain(module.named_parameters(), module.named_buffers()))


class EquivalentKernelQAT(nn.Module):
    """A re-parameterizable block (train form) trained through its deploy kernel.

    Each forward computes the block's deploy tensors from its live branch tensors with the block's own conversion
    (``block.fuse_state_dict``: BN folded with its running statistics, the branches summed, as
    [repzoo.reparameterize][repzoo.reparam.reparameterize] does), rounds every conv / linear weight of the deploy
    block (its fused kernel, and an SE's convs) with
    [fake_quant_weight][repzoo.integrations.quantize.fake_quant_weight], runs the block's deploy form with them
    (``torch.func.functional_call`` on a deploy twin that holds no parameters of its own) and fake-quantizes the
    output (``activation_post_process``). The BNs' statistics stay frozen: the
    forward is the deploy block's, exactly, and the gradient reaches every branch's kernel and BN affine parameters.
    """

    def __init__(self, block: ReparamBlock, activation_post_process: nn.Module, per_channel: bool = True):
        super().__init__()
        if not isinstance(block, ReparamBlock) or block.deploy:
            raise RepZooError(f"EquivalentKernelQAT wraps a re-parameterizable block in train form, not "
                              f"{type(block).__name__}{' (deploy form)' if getattr(block, 'deploy', False) else ''}")
        self.block = block
        self.activation_post_process = activation_post_process
        self.train_names = frozenset(block.form_names(False))
        twin = reparameterize(copy.deepcopy(block)).requires_grad_(False)
        self.__dict__["_twin"] = twin  # not a submodule: its tensors are passed in at each call
        self.weight_keys = tuple(f"{name}.weight" for name, m in twin.named_modules() if isinstance(m, _LAYERS))
        self.fake_quant, self.per_channel = True, per_channel

    def equivalent(self) -> Dict[str, torch.Tensor]:
        """The deploy tensors (``{"rbr_reparam.weight": K, "rbr_reparam.bias": b}`` for RepVGG), differentiable,
        before any rounding."""
        own = {k: v for k, v in _own_tensors(self.block).items() if k.split(".", 1)[0] in self.train_names}
        return dict(self.block.fuse_state_dict(own))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = {k: v for k, v in _own_tensors(self.block).items() if k.split(".", 1)[0] not in self.train_names}
        tensors = {**shared, **self.equivalent()}
        if self.fake_quant:
            tensors.update({k: fake_quant_weight(tensors[k], self.per_channel) for k in self.weight_keys})
        y = torch.func.functional_call(self._twin, tensors, (x,), strict=True)
        return self.activation_post_process(y)


class _FakeQuantLayer(nn.Module):
    """A conv or linear outside the blocks (the head): its weight rounded by ``fake_quant_weight``, its output
    fake-quantized."""

    def __init__(self, layer: nn.Module, activation_post_process: nn.Module, per_channel: bool = True):
        super().__init__()
        self.layer, self.activation_post_process = layer, activation_post_process
        self.fake_quant, self.per_channel = True, per_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quant_weight(self.layer.weight, self.per_channel) if self.fake_quant else self.layer.weight
        if isinstance(self.layer, nn.Linear):
            y = nn.functional.linear(x, w, self.layer.bias)
        else:
            y = self.layer._conv_forward(x, w, self.layer.bias)
        return self.activation_post_process(y)


class QATModel(nn.Module):
    """A train-form model prepared for quantization-aware training by
    [prepare_equivalent_kernel_qat][repzoo.integrations.quantize.prepare_equivalent_kernel_qat]: the input
    fake-quantized, every block an [EquivalentKernelQAT][repzoo.integrations.quantize.EquivalentKernelQAT], every other
    conv / linear a fake-quantized layer. ``float_model()`` gives the train-form model back, with the trained
    tensors."""

    def __init__(self, model: nn.Module, input_quant: nn.Module):
        super().__init__()
        self.model, self.input_quant = model, input_quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.input_quant(x))

    def quantized_modules(self) -> List[nn.Module]:
        """The ``EquivalentKernelQAT`` blocks and fake-quantized layers, in order."""
        return [m for m in self.model.modules() if isinstance(m, (EquivalentKernelQAT, _FakeQuantLayer))]

    def set_fake_quant(self, enabled: bool) -> "QATModel":
        """Round (``True``) or not: with ``False`` the forward is the float train form's, in eval mode."""
        for m in self.quantized_modules():
            m.fake_quant = enabled
        for m in self.modules():
            if hasattr(m, "enable_fake_quant"):
                m.enable_fake_quant(enabled)
        return self

    def set_observers(self, enabled: bool) -> "QATModel":
        """Let the activation observers move (``True``) or freeze the activation ranges."""
        for m in self.modules():
            if hasattr(m, "enable_observer"):
                m.enable_observer(enabled)
        return self

    def float_model(self) -> nn.Module:
        """A copy of the train-form model with the trained tensors (the wrappers removed)."""
        model = copy.deepcopy(self.model)
        for name, m in list(model.named_modules()):
            if isinstance(m, (EquivalentKernelQAT, _FakeQuantLayer)):
                inner = m.block if isinstance(m, EquivalentKernelQAT) else m.layer
                if name:
                    parent, _, attr = name.rpartition(".")
                    setattr(model.get_submodule(parent) if parent else model, attr, inner)
                else:
                    model = inner
        return model.eval()


def _wrap(module: nn.Module, backend: str, per_channel: bool) -> Tuple[nn.Module, int]:
    """``module`` with its train-form blocks and its other convs / linears wrapped (in place), and the blocks' count."""
    if isinstance(module, ReparamBlock) and not module.deploy:
        if any(isinstance(m, ReparamBlock) for m in itertools.islice(module.modules(), 1, None)):
            raise RepZooError(f"{type(module).__name__} nests re-parameterizable blocks: quantization-aware training "
                              "through the equivalent kernel takes blocks whose deploy form is one conversion "
                              "(RepVGG, RepOpt-VGG); quantize this model's deploy form with quantize_int8.")
        return EquivalentKernelQAT(module, _activation_fake_quant(backend), per_channel), 1
    if isinstance(module, _LAYERS) and getattr(module, "weight", None) is not None:
        return _FakeQuantLayer(module, _activation_fake_quant(backend), per_channel), 0
    blocks = 0
    for name, child in list(module.named_children()):
        wrapped, n = _wrap(child, backend, per_channel)
        blocks += n
        if wrapped is not child:
            setattr(module, name, wrapped)
    return module, blocks


def prepare_equivalent_kernel_qat(model: nn.Module, backend: str = "x86", *, per_channel: bool = True) -> QATModel:
    """A copy of a train-form repzoo model ready for quantization-aware training through the equivalent kernel
    (see [EquivalentKernelQAT][repzoo.integrations.quantize.EquivalentKernelQAT]; ``per_channel=False`` rounds the
    weights with one scale per tensor, as ``quantize_int8(..., per_channel=False)`` does); the argument is not
    changed. A deploy model, a model without a re-parameterizable block, and blocks that nest blocks are refused
    (quantize those with [quantize_int8][repzoo.integrations.quantize.quantize_int8])."""
    if not isinstance(model, nn.Module):
        raise RepZooError(f"expected a torch.nn.Module (a repzoo model in train form), not {type(model).__name__}")
    _check_backend(backend)
    if not any(isinstance(m, ReparamBlock) for m in model.modules()):
        raise RepZooError(f"{type(model).__name__} has no re-parameterizable block: nothing to train through an "
                          "equivalent kernel; quantize it with quantize_int8.")
    if is_deploy(model):
        raise RepZooError("the model is in deploy form: quantization-aware training through the equivalent kernel "
                          "needs the train form (create_model(name) without deploy=True, or the train checkpoint); a "
                          "deploy model is quantized with quantize_int8.")
    copied, _ = _wrap(copy.deepcopy(model), backend, per_channel)
    return QATModel(copied, _activation_fake_quant(backend))


@dataclass
class QATResult:
    """What [quantize_aware_finetune][repzoo.integrations.quantize.quantize_aware_finetune] made: the int8 model, the
    float deploy model it was quantized from, the fine-tuned train-form model, the
    [QATModel][repzoo.integrations.quantize.QATModel] it was trained as (fake-quantized forward, observers frozen),
    and the loss of each step."""

    int8: torch.fx.GraphModule
    deploy: nn.Module
    train_form: nn.Module
    qat: QATModel
    losses: List[float] = field(default_factory=list)


def _labelled(batch) -> Tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2 or not all(isinstance(t, torch.Tensor)
                                                                          for t in batch[:2]):
        raise RepZooError("the training data must yield (images, labels) batches of tensors (a DataLoader over an "
                          f"image folder does); got {type(batch).__name__}")
    x, y = batch[0], batch[1]
    if len(batch) > 2 and isinstance(batch[2], torch.Tensor) and batch[2].dtype == torch.bool:  # repzoo's `ok` flag
        x, y = x[batch[2]], y[batch[2]]
    return x.float(), y.long()


def _check_backend(backend: str) -> None:
    engines = torch.backends.quantized.supported_engines
    if backend not in engines:
        raise RepZooError(f"the quantized engine {backend!r} is not available in this torch build "
                          f"(available: {', '.join(e for e in engines if e != 'none')})")


def quantize_aware_finetune(model: nn.Module, train_data: Iterable, *, epochs: int = 1, steps: Optional[int] = None,
                            lr: float = 0.005, momentum: float = 0.9, weight_decay: float = 0.0,
                            label_smoothing: float = 0.0, observe_fraction: float = 0.75,
                            calibration: Optional[Calibration] = None, calibration_images: int = 256,
                            backend: str = "x86", per_channel: bool = True, progress: bool = False) -> QATResult:
    """Quantization-aware fine-tuning of a trained train-form model through its equivalent kernels, then int8.

    Args:
        model: a trained repzoo model in train form (not changed; the fine-tuning runs on a copy).
        train_data: a re-iterable of ``(images, labels)`` batches (a ``DataLoader``; repzoo's image-folder
            dataset's ``(images, labels, ok)`` batches are taken too, the unreadable images left out).
        epochs: passes over ``train_data``; ``steps`` stops earlier (at most that many optimizer steps).
        lr: the peak learning rate of SGD (momentum ``momentum``, nesterov), decayed by a cosine to 0; a
            fine-tune's, far below training's.
        label_smoothing: of the cross-entropy loss.
        observe_fraction: the share of the steps during which the activation observers move; the activation
            ranges are frozen for the rest.
        calibration: the images the int8 model's activation ranges are calibrated on (see
            [quantize_int8][repzoo.integrations.quantize.quantize_int8]); by default the first
            ``calibration_images`` images of ``train_data``.
        backend: the quantized engine (``"x86"``).
        per_channel: one weight scale per output channel (the x86 default); ``False``: one per tensor, in the
            fine-tuning and in the int8 model.

    Returns:
        A [QATResult][repzoo.integrations.quantize.QATResult]: the int8 model is ``quantize_int8`` of the fine-tuned
        model's deploy form, whose int8 weights are exactly the ones the fine-tuning rounded to (min / max scales);
        the activation scales are calibrated again on ``calibration``.
    """
    positive = lambda n: isinstance(n, int) and n >= 1  # noqa: E731
    if not positive(epochs) or (steps is not None and not positive(steps)):
        raise RepZooError(f"epochs and steps must be positive integers, not epochs={epochs!r}, steps={steps!r}")
    if not lr > 0 or not 0 <= observe_fraction <= 1:
        raise RepZooError(f"lr must be positive and observe_fraction in [0, 1]; got lr={lr}, "
                          f"observe_fraction={observe_fraction}")
    if isinstance(train_data, torch.Tensor) or not isinstance(train_data, Iterable):
        raise RepZooError("train_data must be a re-iterable of (images, labels) batches (a torch DataLoader), not "
                          f"{type(train_data).__name__}")
    try:
        per_epoch: Optional[int] = len(train_data)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    if per_epoch is None and steps is None:
        raise RepZooError("train_data has no length: pass steps=, or a DataLoader / list of batches")
    if per_epoch == 0:
        raise RepZooError("train_data holds no batch: pass a loader over the training images")
    total = min(epochs * per_epoch, steps or epochs * per_epoch) if per_epoch is not None else steps
    qat = prepare_equivalent_kernel_qat(model, backend, per_channel=per_channel)
    params = [p for p in qat.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / total)))
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    losses: List[float] = []
    seen: List[torch.Tensor] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="step", desc="quantization-aware fine-tuning")
    qat.train()
    while len(losses) < total:
        before = len(losses)
        for batch in train_data:
            x, y = _labelled(batch)
            if calibration is None and sum(len(b) for b in seen) < calibration_images:
                seen.append(x.detach()[: calibration_images - sum(len(b) for b in seen)])
            if len(y) == 0:
                continue
            qat.set_observers(len(losses) < observe_fraction * total)
            loss = criterion(qat(x), y)
            if not math.isfinite(loss.item()):
                raise RepZooError(f"the loss became {loss.item()} at step {len(losses)}: lower lr (now {lr}).")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if len(losses) >= total:
                break
        if len(losses) == before:
            raise RepZooError("train_data yielded no labelled image in a whole pass: pass a re-iterable loader "
                              "(a DataLoader, not a one-shot generator) over readable training images")
    if bar is not None:
        bar.close()
    trained = qat.float_model()
    deploy = reparameterize(copy.deepcopy(trained)).eval()
    int8 = quantize_int8(deploy, calibration if calibration is not None else seen, backend, per_channel=per_channel)
    return QATResult(int8=int8, deploy=deploy, train_form=trained, qat=qat.set_observers(False).eval(), losses=losses)
