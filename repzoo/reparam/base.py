"""What a re-parameterizable block is, and how a module tree or a state dict is converted."""
from __future__ import annotations

from typing import Dict, Iterator, Mapping, Tuple

import torch
from torch import nn

__all__ = ["ReparamBlock", "reparameterize", "convert_state_dict", "reparam_blocks", "conversion_error",
           "conv_bn_pairs", "bn_args", "without"]

StateDict = Dict[str, torch.Tensor]


def bn_args(sd: Mapping[str, torch.Tensor], prefix: str) -> Tuple[torch.Tensor, ...]:
    """``(running_mean, running_var, weight, bias)`` of the BN stored under ``prefix`` (for ``fuse_*``)."""
    return (sd[prefix + "running_mean"], sd[prefix + "running_var"], sd.get(prefix + "weight"), sd.get(prefix + "bias"))


def without(sd: Mapping[str, torch.Tensor], prefixes: Tuple[str, ...]) -> StateDict:
    """``sd`` minus the keys under ``prefixes`` (the train-time branches being fused away)."""
    return {k: v for k, v in sd.items() if not k.startswith(prefixes)}


class ReparamBlock(nn.Module):
    """A block with a train-time form (several branches) and a deploy form (one conv).

    Subclasses implement two things and inherit the rest:

    * ``fuse_state_dict(sd)`` — the block's own train-time state dict (keys relative
      to the block) to its deploy state dict. This is the only place the block's
      conversion lives: :meth:`reparameterize` and checkpoint conversion both call it.
    * ``_switch_to_deploy(device)`` — replace the train-time branches by the deploy
      modules, created on ``device`` (``None`` when a block is built in deploy form;
      ``"meta"`` from :meth:`reparameterize`, which then assigns the fused tensors).
    """

    deploy: bool = False

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        raise NotImplementedError

    def _switch_to_deploy(self, device=None) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def reparameterize(self) -> "ReparamBlock":
        """Convert this block to its deploy form, in place. Calling it again does nothing."""
        if self.deploy:
            return self
        fused = self.fuse_state_dict(self.state_dict())
        self._switch_to_deploy(device="meta")
        self.deploy = True
        self.load_state_dict(fused, strict=True, assign=True)
        return self


def conv_bn_pairs(model: nn.Module) -> Iterator[Tuple[str, nn.Module, str, str]]:
    """Conv → BN pairs that modules declare as ``conv_bn_pairs = (("conv_stem", "bn1"),)``.

    For pairs of sibling modules that keep the authors' names at train time (a stem, say) and
    that no block owns. At deploy the conv gains the fused bias and the BN becomes ``Identity``.
    Yields ``(prefix, module, conv_name, bn_name)``.
    """
    for name, module in model.named_modules():
        for conv, bn in getattr(module, "conv_bn_pairs", ()):
            yield (f"{name}." if name else ""), module, conv, bn


def _fuse_pair_state(sd: Mapping[str, torch.Tensor], conv: str, bn: str, eps: float) -> StateDict:
    from .fuse import fuse_conv_bn

    weight = sd[f"{conv}.weight"]
    kernel, bias = fuse_conv_bn(weight, *bn_args(sd, f"{bn}."), eps, sd.get(f"{conv}.bias"))
    return {f"{conv}.weight": kernel.to(weight.dtype), f"{conv}.bias": bias.to(weight.dtype)}


@torch.no_grad()
def _fold_pair(module: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = getattr(module, conv_name), getattr(module, bn_name)
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        return  # already folded
    local = {f"{conv_name}.{k}": v for k, v in conv.state_dict().items()}
    local.update({f"{bn_name}.{k}": v for k, v in bn.state_dict().items()})
    fused = _fuse_pair_state(local, conv_name, bn_name, bn.eps)
    conv.weight = nn.Parameter(fused[f"{conv_name}.weight"], requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(fused[f"{conv_name}.bias"], requires_grad=conv.weight.requires_grad)
    setattr(module, bn_name, nn.Identity())


def reparam_blocks(model: nn.Module) -> Iterator[Tuple[str, ReparamBlock]]:
    """The outermost re-parameterizable blocks of a module tree, with their names."""
    taken: list = []
    for name, module in model.named_modules():
        if any(name == t or name.startswith(t + ".") for t in taken):
            continue
        if isinstance(module, ReparamBlock):
            taken.append(name)
            yield name, module


def reparameterize(model: nn.Module) -> nn.Module:
    """Convert every repzoo block in ``model`` (any module tree) to its deploy form, in place.

    Modules that exist only for training (RepVGGplus's auxiliary heads) are removed.
    Idempotent; returns ``model``.
    """
    for _, block in list(reparam_blocks(model)):
        block.reparameterize()
    for _, module, conv, bn in list(conv_bn_pairs(model)):
        _fold_pair(module, conv, bn)
    for module in list(model.modules()):
        drop = getattr(module, "drop_train_only_modules", None)
        if callable(drop):
            drop()
    return model


def convert_state_dict(model: nn.Module, train_sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Map a train-time state dict to the deploy state dict of ``model``'s architecture.

    Works without building the train-time model: every block of ``model`` (train or
    deploy form) knows its configuration, and converts the slice of the state dict under
    its own prefix.  Keys of train-only modules (``model.train_only_prefixes``) are dropped;
    everything else passes through unchanged.
    """
    out: StateDict = {}
    consumed = set()
    for name, block in reparam_blocks(model):
        prefix = f"{name}." if name else ""
        local = {k[len(prefix):]: v for k, v in train_sd.items() if k.startswith(prefix)}
        consumed.update(prefix + k for k in local)
        out.update({prefix + k: v for k, v in block.fuse_state_dict(local).items()})
    for prefix, module, conv, bn in conv_bn_pairs(model):
        if f"{prefix}{bn}.running_var" not in train_sd:
            continue  # already in deploy form
        keys = [k for k in train_sd if k.startswith((f"{prefix}{conv}.", f"{prefix}{bn}."))]
        local = {k[len(prefix):]: train_sd[k] for k in keys}
        consumed.update(keys)
        eps = getattr(getattr(module, bn), "eps", 1e-5)
        out.update({prefix + k: v for k, v in _fuse_pair_state(local, conv, bn, eps).items()})
    drop = tuple(getattr(model, "train_only_prefixes", ()))
    for k, v in train_sd.items():
        if k not in consumed and not (drop and k.startswith(drop)):
            out[k] = v
    return out


@torch.no_grad()
def conversion_error(model: nn.Module, x: torch.Tensor) -> float:
    """‖deploy(x) − train(x)‖ / ‖train(x)‖ in float64, on a converted float64 copy of ``model``."""
    import copy

    train = copy.deepcopy(model).double().eval()
    x = x.double()
    ref = train(x)
    out = reparameterize(train)(x)
    return ((out - ref).norm() / ref.norm()).item()
