"""The re-parameterizable block: a train-time form, a deploy form, and one conversion between them."""

from typing import Dict, Mapping, Tuple

import torch
from torch import nn

__all__ = ["ReparamBlock"]

StateDict = Dict[str, torch.Tensor]
Signature = Dict[str, Tuple[int, ...]]

# What nn.Module.__init__ puts in a module's __dict__ (the twin gets its own).
_MODULE_STATE = frozenset(vars(nn.Module()))
_SLOTS = ("_parameters", "_buffers", "_modules")


class ReparamBlock(nn.Module):
    """A block with a train-time form (several branches) and a deploy form (one conv, say).

    A subclass builds in ``__init__`` what both forms share (an SE, nested blocks), then calls
    ``self._init_form(deploy)``; it implements three things and inherits the rest:

    * ``_build_train()`` — create the train-time branches (on the current default device);
    * ``_build_deploy()`` — create the deploy modules;
    * ``fuse_state_dict(sd)`` — the train-time tensors of those branches (keys relative to the
      block) to the deploy tensors, with the math of ``repzoo.reparam.fuse``. This is the
      only place a block's conversion lives: ``reparameterize`` and checkpoint conversion
      both call it.

    What ``_build_train`` creates are the block's *train-form* entries; what ``_build_deploy``
    creates, its *deploy-form* entries; everything else in the block is shared and kept.
    Registering an entry as ``None`` first (``register_module(name, None)``) reserves its place
    in the state-dict order; entries a form leaves ``None`` are removed.
    """

    deploy: bool = False
    #: TorchScript constants (extend in subclasses): the other form's branches are never compiled
    __constants__ = ["deploy"]

    def _build_train(self) -> None:
        raise NotImplementedError

    def _build_deploy(self) -> None:
        raise NotImplementedError

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        raise NotImplementedError

    # ------------------------------------------------------------------ derived
    def _init_form(self, deploy: bool) -> None:
        (self._build_deploy if deploy else self._build_train)()
        self.deploy = bool(deploy)
        _drop_empty_slots(self)

    def form_signature(self, deploy: bool) -> Signature:
        """``{key: shape}`` of this block's own entries in one form (shared entries excluded).

        Computed on a ``meta`` twin that holds only what that form builds: nothing is allocated,
        and the other form is never built on the block itself.
        """
        return {k: tuple(v.shape) for k, v in _form_twin(self, deploy).state_dict().items()}

    def form_names(self, deploy: bool) -> Tuple[str, ...]:
        """The names of the entries (modules, parameters, buffers) this block's ``deploy`` form builds."""
        twin = _form_twin(self, deploy)
        return tuple(name for slot in _SLOTS for name, value in getattr(twin, slot).items() if value is not None)

    @torch.no_grad()
    def reparameterize(self) -> "ReparamBlock":
        """Convert this block to its deploy form, in place. Calling it again does nothing.

        Nested blocks are converted by [reparameterize][repzoo.reparam.reparameterize] (children first), not here.
        """
        if self.deploy:
            return self
        names = self.form_names(False)
        own = {k: v for k, v in self.state_dict().items() if k.split(".", 1)[0] in names}
        fused = self.fuse_state_dict(own)
        for name in names:  # keep each entry's place in the order; the deploy form may reuse it
            for slot in _SLOTS:
                if name in getattr(self, slot):
                    getattr(self, slot)[name] = None
        with torch.device("meta"):
            self._build_deploy()
        _drop_empty_slots(self)
        self.deploy = True
        expected = set(self.form_signature(True))
        if set(fused) != expected:
            raise RuntimeError(f"{type(self).__name__}.fuse_state_dict returned {sorted(fused)}, "
                               f"not the deploy entries {sorted(expected)}")
        self.load_state_dict(fused, strict=False, assign=True)
        return self


def _form_twin(block: ReparamBlock, deploy: bool) -> nn.Module:
    """A bare copy of ``block``'s configuration holding only what one form builds, on ``meta``."""
    twin = type(block).__new__(type(block))
    nn.Module.__init__(twin)
    twin.__dict__.update({k: v for k, v in vars(block).items() if k not in _MODULE_STATE})
    with torch.device("meta"):
        (block._build_deploy if deploy else block._build_train).__func__(twin)
    return twin


def _drop_empty_slots(module: nn.Module) -> None:
    for slot in _SLOTS:
        entries = getattr(module, slot)
        for name in [n for n, v in entries.items() if v is None]:
            del entries[name]
