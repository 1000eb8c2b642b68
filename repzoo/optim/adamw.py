"""RepOptimizer AdamW: AdamW whose moments see ``g ⊙ M`` and whose step is multiplied by ``M`` again."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .base import GradMults, RepOptimizer

__all__ = ["RepOptimizerAdamW"]


class RepOptimizerAdamW(RepOptimizer):
    """AdamW with gradient multipliers (the reference's single-tensor semantics).

    For a parameter ``p`` with gradient ``g`` and multiplier ``M`` (1 where none), step ``t``::

        g' = g ⊙ M
        p  = p · (1 − lr·λ)
        m  = β1·m + (1 − β1)·g'          v = β2·v + (1 − β2)·g'²      (v̂ = max(v̂, v) with amsgrad)
        p  = p − lr / (1 − β1^t) · (m ⊙ M) / (sqrt(v) / sqrt(1 − β2^t) + ε)

    The net step is ``≈ |M| ⊙`` Adam's direction, so it equals the CSLA model's AdamW step
    only where the terms summed in ``M`` share a sign (and up to how ``ε`` enters); see
    ``docs/repoptimizer.md``. Unlike the reference's ``foreach`` path, ``m`` itself is never
    multiplied by ``M`` (that compounds the multiplier step after step).
    """

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 grad_mults: Optional[GradMults] = None):
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid betas: {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize)
        super().__init__(params, defaults, grad_mults)

    _late_defaults = {"amsgrad": False, "maximize": False}

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        if "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _step_bucket(self, group, params, mapped, sharded, device):
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        states = [self.state[p] for p in params]
        g, _ = self._directions(group, params, mapped)
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1.0)
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, g, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, g, g, value=1 - beta2)
        if group["amsgrad"]:
            maxes = [s["max_exp_avg_sq"] for s in states]
            torch._foreach_maximum_(maxes, exp_avg_sqs)
            second = maxes
        else:
            second = exp_avg_sqs
        ts = [float(t) for t in steps]
        step_sizes = [-lr / (1 - beta1 ** t) for t in ts]
        denom = torch._foreach_sqrt(second)
        torch._foreach_div_(denom, [math.sqrt(1 - beta2 ** t) for t in ts])
        torch._foreach_add_(denom, eps)
        num = torch._foreach_mul(exp_avgs, [s["grad_mult"] for s in states]) if mapped else exp_avgs
        torch._foreach_addcdiv_(params, num, denom, step_sizes)
