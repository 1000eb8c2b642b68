"""``create_repoptimizer``: scales → handler → (re-initialized model) → weight-decay groups → optimizer."""
from __future__ import annotations

import warnings
from typing import Any, Optional

from torch import nn

from .adamw import RepOptimizerAdamW
from .base import RepOptimizer
from .handlers import get_handler, weight_decay_groups
from ..weights.scales import ScaleSource, load_scales
from .sgd import RepOptimizerSGD

__all__ = ["create_repoptimizer"]

_CLIP_KEYS = ("clip_grad", "clip_grad_norm", "max_grad_norm", "grad_clip", "clip_value", "max_norm")

#: the reference builders' defaults (momentum 0.9, nesterov; weight decay 4e-5 for VGG, 1e-5 for GhostNet)
_SGD_DEFAULTS = dict(lr=0.1, momentum=0.9, nesterov=True)
_WEIGHT_DECAY = {"RepOpt-VGG": 4e-5, "RepOpt-GhostNet": 1e-5}


def create_repoptimizer(model: nn.Module, scales: ScaleSource, optimizer: str = "sgd", reinit: bool = True,
                        *, weight_decay: Optional[float] = None, **optimizer_kwargs: Any) -> RepOptimizer:
    """A RepOptimizer for a RepOpt target model, from Hyper-Search scales.

    Args:
        model: the target (plain) model, e.g. ``create_model("RepOpt-VGG-B1")``; its kernels are
            matched to the scales by name (``<blk>.conv.weight``, ``<mod>.cheap_operation.0.weight``).
        scales: anything [load_scales][repzoo.optim.load_scales] takes (a scale file, an hs checkpoint, a
            trained hs model, a model name, a scale dict).
        optimizer: ``"sgd"`` (multipliers ``s²``) or ``"adamw"`` (multipliers ``|s|``-style, ``s¹``).
        reinit: apply the Rule of Initialization (training from scratch; refused when a BN
            gamma is not 1, i.e. for a trained model: pass ``reinit=False`` to fine-tune).
        weight_decay: decay of the reference's decay group (default: 4e-5 VGG / 1e-5 GhostNet for
            SGD, 1e-2 for AdamW); 1-D parameters and biases never decay, ``*identity.weight`` always.
        **optimizer_kwargs: passed to [RepOptimizerSGD][repzoo.optim.RepOptimizerSGD] (default ``lr=0.1, momentum=0.9,
            nesterov=True``) or [RepOptimizerAdamW][repzoo.optim.RepOptimizerAdamW].

    The handler is kept as ``optimizer.handler``.
    """
    kind = optimizer.lower()
    if kind not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {optimizer!r}")
    clip = sorted(k for k in optimizer_kwargs if k in _CLIP_KEYS)
    if clip:
        for key in clip:
            optimizer_kwargs.pop(key)
        warnings.warn(
            f"ignored {', '.join(clip)}: gradient clipping breaks the equivalence of a RepOptimizer with the "
            "CSLA model it stands for. Train the target model without clipping (clip only in Hyper-Search).",
            UserWarning, stacklevel=2,
        )
    scale_dict = load_scales(scales)
    handler = get_handler(model, scale_dict, update_rule=kind)
    if reinit:
        handler.reinitialize()
    if kind == "adamw":
        inconsistent = [n for n, ok in handler.sign_consistent().items() if not bool(ok.all())]
        if inconsistent:
            warnings.warn(
                f"{len(inconsistent)} of {len(handler)} kernels have scales of mixed sign (first: "
                f"{inconsistent[0]}): there AdamW with multipliers is not equivalent to AdamW on the CSLA model "
                "(it is where the summed terms share a sign). SGD is exact for any scales.",
                UserWarning, stacklevel=2,
            )
    if weight_decay is None:
        weight_decay = _WEIGHT_DECAY.get(handler.family, 0.0) if kind == "sgd" else 1e-2
    groups = weight_decay_groups(model, weight_decay)
    mults = handler.grad_mults()
    if kind == "sgd":
        opt: RepOptimizer = RepOptimizerSGD(groups, **{**_SGD_DEFAULTS, **optimizer_kwargs}, grad_mults=mults)
    else:
        opt = RepOptimizerAdamW(groups, **optimizer_kwargs, grad_mults=mults)
    opt.handler = handler
    return opt
