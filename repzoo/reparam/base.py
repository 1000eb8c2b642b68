"""What a re-parameterizable block is, and how a module tree or a state dict is converted."""
from __future__ import annotations

from typing import Dict, Iterator, Mapping, Tuple

import torch
from torch import nn

__all__ = ["ReparamBlock", "reparameterize", "convert_state_dict", "reparam_blocks", "conversion_error"]

StateDict = Dict[str, torch.Tensor]


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
