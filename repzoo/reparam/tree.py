"""Converting a whole module tree, or a state dict for it, between its train-time and deploy forms.

Two kinds of convertible pieces are found in any module tree:

* :class:`~repzoo.reparam.block.ReparamBlock` instances (nested ones included: children are
  converted before their parents);
* declared conv → BN pairs: a module may say ``conv_bn_pairs = (("conv_stem", "bn1"),)`` for
  sibling modules that keep the authors' names and that no block owns (GhostNet's stem). At deploy
  the conv gains the fused bias and the BN becomes ``Identity``.

A model may also name ``train_only_prefixes`` (state-dict prefixes of modules that exist only for
training, RepVGGplus's auxiliary heads) and implement ``drop_train_only_modules()``.
"""
from __future__ import annotations

import copy
from typing import Dict, Iterator, List, Mapping, Tuple

import torch
from torch import nn

from ..errors import IncompatibleCheckpointError
from .block import ReparamBlock, Signature
from .state import BN_EPS, conv_state, fused_conv_bn

__all__ = ["relative_difference", "reparam_blocks", "conv_bn_pairs", "reparameterize", "convert_state_dict", "model_signature",
           "conversion_error", "is_deploy"]

StateDict = Dict[str, torch.Tensor]

_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _prefix(name: str) -> str:
    return f"{name}." if name else ""


def reparam_blocks(model: nn.Module) -> List[Tuple[str, ReparamBlock]]:
    """Every re-parameterizable block of a module tree with its name, children before parents."""
    return [(n, m) for n, m in reversed(list(model.named_modules())) if isinstance(m, ReparamBlock)]


def conv_bn_pairs(model: nn.Module) -> Iterator[Tuple[str, nn.Module, str, str]]:
    """The declared conv → BN pairs of a module tree, as ``(prefix, owner, conv name, bn name)``."""
    for name, module in model.named_modules():
        for conv, bn in getattr(module, "conv_bn_pairs", ()):
            yield _prefix(name), module, conv, bn


def _pair_folded(owner: nn.Module, bn: str) -> bool:
    return not isinstance(getattr(owner, bn), nn.modules.batchnorm._BatchNorm)


def is_deploy(model: nn.Module) -> bool:
    """True when every block of ``model`` is in its deploy form and every declared pair is folded."""
    return (all(block.deploy for _, block in reparam_blocks(model))
            and all(_pair_folded(owner, bn) for _, owner, _, bn in conv_bn_pairs(model)))


@torch.no_grad()
def _fold_pair(owner: nn.Module, conv_name: str, bn_name: str) -> None:
    if _pair_folded(owner, bn_name):
        return
    conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
    local = {f"c.{k}": v for k, v in conv.state_dict().items()}
    local.update({f"b.{k}": v for k, v in bn.state_dict().items()})
    fused = conv_state("", *fused_conv_bn(local, "c.weight", "b.", bn.eps, "c.bias"), conv.weight.dtype)
    trainable = conv.weight.requires_grad
    conv.weight = nn.Parameter(fused["weight"], requires_grad=trainable)
    conv.bias = nn.Parameter(fused["bias"], requires_grad=trainable)
    setattr(owner, bn_name, nn.Identity())


def reparameterize(model: nn.Module) -> nn.Module:
    """Convert every repzoo block in ``model`` (any module tree) to its deploy form, in place.

    Declared conv-BN pairs are folded and modules that exist only for training (RepVGGplus's
    auxiliary heads) are removed. Idempotent; returns ``model``.
    """
    for _, block in reparam_blocks(model):
        block.reparameterize()
    for _, owner, conv, bn in list(conv_bn_pairs(model)):
        _fold_pair(owner, conv, bn)
    for module in list(model.modules()):
        drop = getattr(module, "drop_train_only_modules", None)
        if callable(drop):
            drop()
        cfg = getattr(module, "pretrained_cfg", None)
        if callable(getattr(module, "cfg_fields", None)) and isinstance(cfg, dict) and "input_size" in cfg:
            module.pretrained_cfg = dict(cfg, **module.cfg_fields(cfg["input_size"]))  # the deploy form's names
    return model


def _train_only(model: nn.Module) -> Tuple[str, ...]:
    return tuple(getattr(model, "train_only_prefixes", ()))


def model_signature(model: nn.Module, deploy: bool) -> Signature:
    """``{key: shape}`` of ``model``'s state dict in one form, whatever form it is in now.

    Nothing is converted or allocated: each block states its forms (:meth:`ReparamBlock.form_signature`).
    The deploy form leaves out ``train_only_prefixes``; a deploy model cannot know the shapes of
    modules it no longer has, so their keys are absent from its train signature too.
    """
    sig = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, block in reparam_blocks(model):
        if block.deploy == deploy:
            continue
        p = _prefix(name)
        for key in block.form_signature(block.deploy):
            sig.pop(p + key, None)
        sig.update({p + k: s for k, s in block.form_signature(deploy).items()})
    for p, owner, conv, bn in conv_bn_pairs(model):
        folded = _pair_folded(owner, bn)
        if folded == deploy:
            continue
        channels = (getattr(owner, conv).weight.shape[0],)
        if deploy:
            for key in _BN_KEYS:
                sig.pop(f"{p}{bn}.{key}", None)
            sig[f"{p}{conv}.bias"] = channels
        else:
            sig.pop(f"{p}{conv}.bias", None)
            sig.update({f"{p}{bn}.{key}": (() if key == "num_batches_tracked" else channels) for key in _BN_KEYS})
    drop = _train_only(model)
    if deploy and drop:
        sig = {k: s for k, s in sig.items() if not k.startswith(drop)}
    return sig


def convert_state_dict(model: nn.Module, train_sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Map a train-time state dict to the deploy state dict of ``model``'s architecture.

    Works without building the train-time model: every block of ``model`` (train or deploy
    form) knows its configuration and converts its own train-time tensors (in the block's dtype when
    that is wider than the checkpoint's). Keys of train-only modules are dropped; shared tensors pass
    through unchanged. Raises
    [IncompatibleCheckpointError][repzoo.errors.IncompatibleCheckpointError] when a block's tensors are missing.
    """
    out: StateDict = dict(train_sd)
    for name, block in reparam_blocks(model):
        p = _prefix(name)
        keys = list(block.form_signature(False))
        missing = [p + k for k in keys if p + k not in out]
        if missing:
            raise IncompatibleCheckpointError(
                f"Cannot convert: the checkpoint lacks {len(missing)} train-time tensors of {name or 'the model'} "
                f"({', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}). Is it a train-time checkpoint of "
                "this model?"
            )
        local = _widened({k: out.pop(p + k) for k in keys}, block)
        out.update({p + k: v for k, v in block.fuse_state_dict(local).items()})
    for p, owner, conv, bn in conv_bn_pairs(model):
        if f"{p}{bn}.running_var" not in out:
            continue  # already in deploy form
        eps = getattr(getattr(owner, bn), "eps", BN_EPS)
        local = _widened({k: out.pop(k) for k in [f"{p}{conv}.weight", f"{p}{conv}.bias"]
                          + [f"{p}{bn}.{x}" for x in _BN_KEYS] if k in out}, getattr(owner, conv))
        weight = local[f"{p}{conv}.weight"]
        kernel, bias = fused_conv_bn(local, f"{p}{conv}.weight", f"{p}{bn}.", eps, f"{p}{conv}.bias")
        out.update(conv_state(f"{p}{conv}.", kernel, bias, weight.dtype))
    drop = _train_only(model)
    if drop:
        out = {k: v for k, v in out.items() if not k.startswith(drop)}
    return out


def _widened(sd: StateDict, module: nn.Module) -> StateDict:
    """``sd``'s floating tensors in ``module``'s own floating dtype where that is wider: a float32
    checkpoint converted for a float64 model is fused in float64, as the model would compute it after
    loading (never narrowed: a float16 model still converts a float32 file in float32)."""
    dtype = next((t.dtype for t in module.parameters() if t.is_floating_point()), None)
    if dtype is None:
        return sd
    return {k: v.to(torch.promote_types(v.dtype, dtype)) if v.is_floating_point() else v for k, v in sd.items()}


@torch.no_grad()
def conversion_error(model: nn.Module, x: torch.Tensor) -> float:
    """‖deploy(x) − train(x)‖ / ‖train(x)‖ in float64, on a converted float64 copy of ``model``."""
    train = copy.deepcopy(model).double().eval()
    x = x.double()
    ref = train(x)
    out = reparameterize(train)(x)
    return relative_difference(out, ref)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖: the one relative difference (conversions, demos and tests measure with it)."""
    return ((a - b).norm() / b.norm()).item()
