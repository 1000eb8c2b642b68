"""What the RepOptimizers share: multipliers kept in the optimizer state (in each parameter's own layout —
a DTensor for a parameter sharded by FSDP2), and buckets for foreach ops."""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
from torch.optim import Optimizer

__all__ = ["RepOptimizer", "like_param", "is_dtensor"]

GradMults = Union[Mapping[torch.Tensor, torch.Tensor], Iterable[Tuple[torch.Tensor, torch.Tensor]]]


def is_dtensor(t: torch.Tensor) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (a parameter sharded by FSDP2, say)."""
    return type(t).__name__ == "DTensor" and hasattr(t, "device_mesh")


def like_param(full: torch.Tensor, p: torch.Tensor, src_data_rank: Optional[int] = None) -> torch.Tensor:
    """``full`` (a tensor of ``p``'s global shape) in ``p``'s layout: a DTensor with ``p``'s mesh and
    placements where ``p`` is one, else a copy with ``p``'s dtype, device and memory format.

    For a DTensor, ``src_data_rank=None`` slices every rank's own ``full`` (they must be equal:
    multipliers computed from the scales); ``0`` takes rank 0's (a random initialization).
    """
    if is_dtensor(p):
        from torch.distributed.tensor import DTensor, distribute_tensor

        if isinstance(full, DTensor):
            full = full.full_tensor()
        local = full.detach().to(device=p.to_local().device, dtype=p.dtype)
        return distribute_tensor(local, p.device_mesh, p.placements, src_data_rank=src_data_rank)
    # empty_like keeps the parameter's memory format (channels_last kernels stay channels_last)
    return torch.empty_like(p, memory_format=torch.preserve_format).copy_(full.detach())


class RepOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` whose gradients are multiplied elementwise by fixed multipliers.

    The multiplier of a parameter lives in ``optimizer.state[p]["grad_mult"]``, so
    ``state_dict()`` / ``load_state_dict()`` carry it and a resumed run is exact. It follows the
    parameter's dtype and device, also after ``model.to(...)``. Parameters without a multiplier
    get the plain update.

    Do not clip gradients between ``backward()`` and ``step()``: clipping rescales the
    gradient of the target model, which the CSLA model it stands for never sees, and the
    equivalence is lost (``docs/repoptimizer.md``).
    """

    #: group options added after the first release, filled in when an older state is loaded
    _late_defaults: Dict[str, object] = {"maximize": False}

    def __init__(self, params, defaults: dict, grad_mults: Optional[GradMults] = None):
        for key in ("lr", "eps", "momentum", "weight_decay"):
            if key in defaults and defaults[key] < 0.0:
                raise ValueError(f"Invalid {key}: {defaults[key]} (must be >= 0)")
        super().__init__(params, defaults)
        if grad_mults is not None:
            self.set_grad_mults(grad_mults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self._late_defaults.items():
                group.setdefault(key, value)
        self._init_states()

    # -- state, created eagerly -------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._init_states()

    def _init_states(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, self.state[p], group)

    def _init_state(self, p: torch.Tensor, state: Dict[str, object], group: dict) -> None:
        """Create ``p``'s state now rather than at its first step, so that a fresh optimizer holds every
        key a checkpoint has (``torch.distributed.checkpoint`` loads into the keys it finds)."""

    # -- multipliers ---------------------------------------------------------------------
    def set_grad_mults(self, grad_mults: GradMults) -> None:
        """Attach ``{parameter: multiplier}`` (a multiplier has the parameter's shape)."""
        items = grad_mults.items() if isinstance(grad_mults, Mapping) else grad_mults
        own = {id(p) for g in self.param_groups for p in g["params"]}
        for p, mult in items:
            if id(p) not in own:
                raise ValueError("a grad multiplier is keyed by a parameter this optimizer does not update; "
                                 "pass the model's parameters (or param groups) that hold it")
            if mult.shape != p.shape:
                raise ValueError(f"a grad multiplier of shape {tuple(mult.shape)} for a parameter of shape "
                                 f"{tuple(p.shape)}")
            self.state[p]["grad_mult"] = like_param(mult, p)

    def grad_mult(self, p: torch.Tensor) -> Optional[torch.Tensor]:
        return self.state[p].get("grad_mult") if p in self.state else None

    @staticmethod
    def _stale(p: torch.Tensor, state: Dict[str, object]) -> bool:
        return any(isinstance(v, torch.Tensor) and k != "step" and (v.device != p.device or v.dtype != p.dtype)
                   for k, v in state.items())

    @staticmethod
    def _follow(p: torch.Tensor, state: Dict[str, object]) -> None:
        """Move the floating state of ``p`` to its device and dtype (after ``model.to(...)``)."""
        for key, value in state.items():
            if key == "step" or not isinstance(value, torch.Tensor):
                continue
            if value.device != p.device or (value.dtype != p.dtype and value.is_floating_point()):
                state[key] = value.to(device=p.device, dtype=p.dtype)

    # -- the step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for (device, _, mapped, sharded), params in self._buckets(group).items():
                self._step_bucket(group, params, mapped, sharded, device)
        return loss

    def _step_bucket(self, group: dict, params: List[torch.Tensor], mapped: bool, sharded: bool,
                     device: torch.device) -> None:
        """Update one bucket of ``group``: parameters of one device, dtype, multiplier presence and layout."""
        raise NotImplementedError

    def _directions(self, group: dict, params: List[torch.Tensor], mapped: bool) -> Tuple[List[torch.Tensor], bool]:
        """The gradients times their multipliers, negated under ``maximize``, and whether the list is
        fresh tensors (safe to update in place) rather than the ``p.grad`` themselves."""
        grads = [p.grad for p in params]
        if mapped:
            d = torch._foreach_mul(grads, [self.state[p]["grad_mult"] for p in params])
            if group["maximize"]:
                torch._foreach_neg_(d)
            return d, True
        if group["maximize"]:
            return torch._foreach_neg(grads), True
        return grads, False

    def _buckets(self, group: dict) -> Dict[tuple, List[torch.Tensor]]:
        """The group's parameters that have a gradient, by (device, dtype, has-multiplier, is-DTensor)."""
        buckets: Dict[tuple, List[torch.Tensor]] = defaultdict(list)
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            mult = state.get("grad_mult")
            if self._stale(p, state):
                self._follow(p, state)
            buckets[(p.device, p.dtype, mult is not None, is_dtensor(p))].append(p)
        return buckets
