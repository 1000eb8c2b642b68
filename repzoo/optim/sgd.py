"""RepOptimizer SGD: SGD on ``g ⊙ M``, vectorized with foreach ops."""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch

from .base import GradMults, RepOptimizer

__all__ = ["RepOptimizerSGD"]


def _use_fused(fused, device: torch.device) -> bool:
    """``fused=None``: torch's fused SGD kernel where it is known to exist (CUDA, CPU); True: always."""
    if fused is False or not hasattr(torch, "_fused_sgd_"):
        return False
    return fused is True or device.type in ("cuda", "cpu")


class RepOptimizerSGD(RepOptimizer):
    """SGD with gradient multipliers (DingXiaoH/RepOptimizers' update rule).

    For a parameter ``p`` with gradient ``g`` and multiplier ``M`` (1 where none)::

        d = g ⊙ M + λ·p                      (weight decay after the multiplier, not multiplied)
        buf = d  (first step),  else  buf = μ·buf + (1 − τ)·d
        d = d + μ·buf  (nesterov),  else  d = buf
        p = p − lr·d

    Args:
        params: parameters or parameter groups.
        lr: the learning rate, as ``torch.optim.SGD``'s.
        momentum: μ above, as ``torch.optim.SGD``'s.
        dampening: τ above, as ``torch.optim.SGD``'s.
        weight_decay: λ above, as ``torch.optim.SGD``'s.
        nesterov: Nesterov momentum, as ``torch.optim.SGD``'s.
        maximize: maximize the objective, as ``torch.optim.SGD``'s.
        fused: with momentum, run decay + momentum + update as torch's fused SGD kernel on
            ``g ⊙ M`` (one pass instead of five; ``None``: wherever torch has the kernel).
        grad_mults: ``{parameter: multiplier}`` (see [create_repoptimizer][repzoo.optim.create_repoptimizer]).
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
                 fused: Optional[bool] = None, grad_mults: Optional[GradMults] = None):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, fused=fused)
        super().__init__(params, defaults, grad_mults)

    _late_defaults = {"nesterov": False, "maximize": False, "fused": None}

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        if group["momentum"] == 0 or "step" in state:
            return
        started = "momentum_buffer" in state  # a state saved before steps were counted
        if not started:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] = torch.tensor(1.0 if started else 0.0)

    def _started(self) -> set:
        """ids of the parameters past their first momentum step (read from the state once, then kept)."""
        started = self.__dict__.get("_started_ids")
        if started is None:
            started = {id(p) for g in self.param_groups for p in g["params"]
                       if "step" in self.state.get(p, {}) and float(self.state[p]["step"]) > 0}
            self.__dict__["_started_ids"] = started
        return started

    def __setstate__(self, state):
        self.__dict__.pop("_started_ids", None)  # a loaded state decides anew
        super().__setstate__(state)

    def _step_bucket(self, group, params, mapped, sharded, device):
        if group["momentum"] == 0:
            self._update(group, params, mapped, sharded, device, first=False)
            return
        started = self._started()
        first = [p for p in params if id(p) not in started]
        later = [p for p in params if id(p) in started]
        for part, is_first in ((first, True), (later, False)):
            if part:
                self._update(group, part, mapped, sharded, device, first=is_first)
                torch._foreach_add_([self.state[p]["step"] for p in part], 1.0)
                started.update(id(p) for p in part)

    def _update(self, group: dict, params: list, mapped: bool, sharded: bool, device: torch.device,
                first: bool) -> None:
        """One update of ``params`` (one bucket, split into parameters at their first momentum step or not)."""
        lr, mu, damp = group["lr"], group["momentum"], group["dampening"]
        wd, nesterov = group["weight_decay"], group["nesterov"]
        bufs = [self.state[p]["momentum_buffer"] for p in params] if mu != 0 else None
        if mu != 0 and not sharded and _use_fused(group["fused"], device):
            grads = [p.grad for p in params]
            d = torch._foreach_mul(grads, [self.state[p]["grad_mult"] for p in params]) if mapped else grads
            torch._fused_sgd_(params, d, bufs, weight_decay=wd, momentum=mu, lr=lr, dampening=damp,
                              nesterov=nesterov, maximize=group["maximize"], is_first_step=first)
            return
        d, owned = self._directions(group, params, mapped)
        if wd != 0:
            if owned:
                torch._foreach_add_(d, params, alpha=wd)
            else:
                d, owned = torch._foreach_add(d, params, alpha=wd), True
        if mu != 0:
            if first:  # torch's SGD: the first buffer is d itself, undamped (once: a loop is fine)
                for buf, x in zip(bufs, d):
                    buf.copy_(x)
            else:
                torch._foreach_mul_(bufs, mu)
                torch._foreach_add_(bufs, d, alpha=1 - damp)
            if nesterov:
                if owned:
                    torch._foreach_add_(d, bufs, alpha=mu)
                else:
                    d = torch._foreach_add(d, bufs, alpha=mu)
            else:
                d = bufs
        torch._foreach_add_(params, d, alpha=-lr)
