"""Per-family handlers: scales → gradient multipliers (Rule of Iteration) and re-initialization
(Rule of Initialization), matched to the target model's parameters by name.

A RepOpt target model trained with the multipliers follows exactly the trajectory of the
constant-scale linear-addition (CSLA) model whose frozen scales are the hs scales:

* RepOpt-VGG: a target kernel ``<blk>.conv.weight`` (3x3) stands for the CSLA block
  ``s_conv·conv(x) + s_1x1·conv_1x1(x) + s_id·x``;
* RepOpt-GhostNet: a depthwise kernel ``<mod>.cheap_operation.0.weight`` stands for
  ``s_cheap·dw(x) + s_fusion·x``.

All kernel arithmetic goes through :mod:`repzoo.reparam.fuse`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import IncompatibleCheckpointError, RepZooError
from ..reparam.fuse import identity_kernel, pad_kernel, scale_kernel
from .base import is_dtensor, like_param

__all__ = [
    "ScaledKernel",
    "RepOptHandler",
    "RepOptVGGHandler",
    "RepOptGhostNetHandler",
    "get_handler",
    "weight_decay_groups",
]

_UPDATE_RULES = {"sgd": 2, "adamw": 1}


@dataclass
class ScaledKernel:
    """One target kernel and the scales of the CSLA branches it stands for."""

    name: str                         #: target parameter name (``stage1.1.conv.weight``)
    param: nn.Parameter
    s_main: torch.Tensor              #: s_conv (VGG) / s_cheap (Ghost), shape (C_out,)
    s_1x1: Optional[torch.Tensor]     #: VGG 1x1 branch scale, None for Ghost
    s_identity: Optional[torch.Tensor]  #: identity branch scale (VGG: None if the block has none)
    groups: int = 1                   #: 1 (VGG) or C (depthwise Ghost)

    @property
    def has_identity(self) -> bool:
        return self.s_identity is not None


class RepOptHandler:
    """Base of the family handlers: ``grad_mults``, ``reinitialize`` and coverage checks."""

    family = ""
    #: scale-key suffix that marks one target kernel, and the target parameter suffix it maps to
    anchor: Tuple[str, str] = ("", "")

    def __init__(self, model: nn.Module, scales: Mapping[str, torch.Tensor], update_rule: str = "sgd"):
        if update_rule not in _UPDATE_RULES:
            raise ValueError(f"update_rule must be one of {sorted(_UPDATE_RULES)}, not {update_rule!r}")
        self.model = model
        self.update_rule = update_rule
        self.power = _UPDATE_RULES[update_rule]
        params = dict(model.named_parameters())
        self._refuse_linear_add_form(params)
        self.kernels: List[ScaledKernel] = self._match(params, scales)

    # -- matching -------------------------------------------------------------------------
    def _refuse_linear_add_form(self, params: Mapping[str, nn.Parameter]) -> None:
        scale_params = [k for k in params if k.endswith((".scale_conv.weight", ".fusion_scale.weight"))]
        if scale_params:
            raise RepZooError(
                f"{type(self.model).__name__} is a Hyper-Search/CSLA model (it has {scale_params[0]}): "
                "RepOptimizers train the plain target form. Build e.g. 'RepOpt-VGG-B1' instead of "
                "'RepOpt-VGG-B1-hs', and pass this model's scales (load_scales(model))."
            )

    def _match(self, params: Mapping[str, nn.Parameter], scales: Mapping[str, torch.Tensor]) -> List[ScaledKernel]:
        """One :class:`ScaledKernel` per scale key ending in ``anchor[0]``; every scale must be used."""
        scale_suffix, param_suffix = self.anchor
        kernels, used, missing = [], [], []
        for key in scales:
            if not key.endswith(scale_suffix):
                continue
            prefix = key[: -len(scale_suffix)]
            name = prefix + param_suffix
            if name not in params:
                missing.append(name)
                continue
            kernel, keys = self._kernel(prefix, name, params[name], scales)
            kernels.append(kernel)
            used += keys
        self._missing(missing, self.model)
        self._check_unused(scales, used)
        return kernels

    def _kernel(self, prefix: str, name: str, weight: nn.Parameter,
                scales: Mapping[str, torch.Tensor]) -> Tuple[ScaledKernel, List[str]]:
        """The kernel ``name`` of the block ``prefix`` with its scales, and the scale keys it used."""
        raise NotImplementedError

    @staticmethod
    def _require(scales: Mapping[str, torch.Tensor], key: str, have: str) -> None:
        if key not in scales:
            raise IncompatibleCheckpointError(f"the scales have {have} but not {key}: the scale file is incomplete.")

    @staticmethod
    def _scale(scales: Mapping[str, torch.Tensor], key: str, channels: int) -> torch.Tensor:
        s = scales[key]
        if s.dim() != 1 or s.numel() != channels:
            raise IncompatibleCheckpointError(
                f"scale {key!r} has shape {tuple(s.shape)} but the target kernel has {channels} output channels: "
                "are these the scales of another model (e.g. B2 scales for a B1 model)?"
            )
        return s.detach()

    def _check_unused(self, scales: Mapping[str, torch.Tensor], used: Iterable[str]) -> None:
        unused = sorted(set(scales) - set(used))
        if unused:
            raise IncompatibleCheckpointError(
                f"{len(unused)} scales match no kernel of {type(self.model).__name__}: {', '.join(unused[:5])}"
                f"{' …' if len(unused) > 5 else ''}. Are these the scales of another model?"
            )

    @staticmethod
    def _missing(what: List[str], model: nn.Module) -> None:
        if what:
            raise IncompatibleCheckpointError(
                f"the scales name {len(what)} kernels that {type(model).__name__} does not have: "
                f"{', '.join(what[:5])}{' …' if len(what) > 5 else ''}. Are these the scales of another model?"
            )

    # -- the two rules ------------------------------------------------------------------
    def grad_mult(self, k: ScaledKernel, dtype: Optional[torch.dtype] = None,
                  device: Optional[torch.device] = None) -> torch.Tensor:
        """The Rule of Iteration for one kernel (see the subclass for the formula)."""
        raise NotImplementedError

    def grad_mults(self, dtype: Optional[torch.dtype] = None) -> Dict[nn.Parameter, torch.Tensor]:
        """``{target parameter: multiplier}``, each in the parameter's dtype and on its device."""
        return {k.param: self.grad_mult(k, dtype or k.param.dtype, k.param.device) for k in self.kernels}

    def named_grad_mults(self) -> Dict[str, torch.Tensor]:
        return {k.name: self.grad_mult(k, k.param.dtype, k.param.device) for k in self.kernels}

    def check_fresh(self) -> None:
        """The Rule of Initialization is for training from scratch: every BN gamma must be 1."""
        for name, module in self.model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
                gamma = module.weight.detach()
                gamma = gamma.full_tensor() if is_dtensor(gamma) else gamma
                if not bool(torch.all(gamma == 1)):
                    raise RepZooError(
                        f"reinit=True re-initializes a model trained from scratch, but the BatchNorm {name!r} "
                        "has gammas other than 1 (a pretrained or trained model). Pass reinit=False to fine-tune "
                        "it with a RepOptimizer."
                    )

    @torch.no_grad()
    def reinitialize(self, generator: Optional[torch.Generator] = None) -> None:
        """Apply the Rule of Initialization to every kernel in place (see the subclass).

        A sharded (FSDP2) kernel is initialized from its full tensor and re-sharded, rank 0's
        random draw for every rank.
        """
        self.check_fresh()
        for k in self.kernels:
            w = k.param.detach()
            full = w.full_tensor() if is_dtensor(w) else w
            k.param.copy_(like_param(self.initial_kernel(k, generator, full), k.param, src_data_rank=0))

    def initial_kernel(self, k: ScaledKernel, generator: Optional[torch.Generator] = None,
                       weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The re-initialized kernel of ``k`` from its current ``weight`` (default ``k.param``, unsharded)."""
        raise NotImplementedError

    def sign_consistent(self) -> Dict[str, torch.Tensor]:
        """Per kernel, per output channel: do the terms summed in ``M`` share a sign?

        AdamW-GR equals the CSLA only there: Adam's step is invariant to the sign-free scale of
        each branch, so the CSLA moves the equivalent kernel by ``(|s_conv| + |s_1x1| + 1)·dir``
        while the multiplier gives ``|s_conv + s_1x1 + 1|·dir``.
        """
        out = {}
        for k in self.kernels:
            pos = k.s_main > 0
            neg = k.s_main < 0
            if k.s_1x1 is not None:
                pos, neg = pos & (k.s_1x1 > 0), neg & (k.s_1x1 < 0)
            out[k.name] = pos if k.has_identity else pos | neg
        return out

    def __len__(self) -> int:
        return len(self.kernels)

    def __repr__(self) -> str:
        ident = sum(k.has_identity for k in self.kernels)
        return (f"{type(self).__name__}({len(self.kernels)} kernels, {ident} with identity, "
                f"update_rule={self.update_rule!r})")


class RepOptVGGHandler(RepOptHandler):
    """RepOpt-VGG: ``<blk>.scale_{conv,1x1,identity}.weight`` → ``<blk>.conv.weight``.

    Rule of Iteration (``p`` = 2 for SGD, 1 for AdamW), for kernel ``W[c, d, h, w]``::

        M = s_conv[c]^p + [h = w = centre] s_1x1[c]^p + [h = w = centre][c = d]   (last term: identity blocks)

    Rule of Initialization, ``W1`` a freshly initialized 1x1 conv (PyTorch's default init)::

        W ← s_conv·W + s_1x1·pad(W1) + s_id·pad(I)
    """

    family = "RepOpt-VGG"
    anchor = (".scale_conv.weight", ".conv.weight")

    def __init__(self, model: nn.Module, scales: Mapping[str, torch.Tensor], update_rule: str = "sgd",
                 use_identity_scales_for_reinit: bool = True):
        self.use_identity_scales_for_reinit = use_identity_scales_for_reinit
        super().__init__(model, scales, update_rule)

    def _kernel(self, blk, name, w, scales):
        if w.dim() != 4 or w.shape[-2:] != (3, 3):
            raise IncompatibleCheckpointError(f"{name} has shape {tuple(w.shape)}; a RepOpt-VGG kernel is 3x3.")
        c_out, c_in = w.shape[0], w.shape[1]
        key, k1, kid = (f"{blk}.scale_{branch}.weight" for branch in ("conv", "1x1", "identity"))
        self._require(scales, k1, key)
        s_id = None
        if kid in scales:
            if c_in != c_out:
                raise IncompatibleCheckpointError(f"{kid}: block {blk} has {c_in} -> {c_out} channels, no identity.")
            s_id = self._scale(scales, kid, c_out)
        kernel = ScaledKernel(name, w, self._scale(scales, key, c_out), self._scale(scales, k1, c_out), s_id)
        return kernel, [key, k1] + ([kid] if s_id is not None else [])

    def grad_mult(self, k, dtype=None, device=None):
        w = k.param
        dt = dict(dtype=dtype or w.dtype, device=device or w.device)
        c_out, c_in = w.shape[:2]
        p = self.power  # the powers are taken in float64, the kernel is built in the parameter's dtype
        mult = scale_kernel(torch.ones(c_out, c_in, 3, 3, **dt), k.s_main.to(torch.float64).pow(p).to(**dt))
        mult += pad_kernel(scale_kernel(torch.ones(c_out, c_in, 1, 1, **dt), k.s_1x1.to(torch.float64).pow(p).to(**dt)), 3)
        if k.has_identity:
            mult += identity_kernel(c_out, 1, 3, **dt)
        return mult

    def initial_kernel(self, k, generator=None, weight=None):
        w = k.param.detach() if weight is None else weight
        dt = dict(dtype=w.dtype, device=w.device)
        c_out, c_in = w.shape[:2]
        w1 = torch.empty(c_out, c_in, 1, 1, **dt)
        nn.init.kaiming_uniform_(w1, a=math.sqrt(5), generator=generator)  # nn.Conv2d's default init
        kernel = scale_kernel(w, k.s_main.to(**dt))
        kernel += pad_kernel(scale_kernel(w1, k.s_1x1.to(**dt)), 3)
        if k.has_identity:
            s_id = k.s_identity.to(**dt) if self.use_identity_scales_for_reinit else torch.ones(c_out, **dt)
            kernel += scale_kernel(identity_kernel(c_out, 1, 3, **dt), s_id)
        return kernel


class RepOptGhostNetHandler(RepOptHandler):
    """RepOpt-GhostNet: ``<mod>.cheap_operation.1.weight`` (s_cheap) and ``<mod>.fusion_scale.weight``
    (s_fusion) → the depthwise kernel ``<mod>.cheap_operation.0.weight``.

    Rule of Iteration: ``M = s_cheap[c]^p + Id_dw`` (``Id_dw[c, 0, centre, centre] = 1``).
    Rule of Initialization: ``W_dw ← s_cheap·W_dw + s_fusion·Id_dw``.
    """

    family = "RepOpt-GhostNet"
    anchor = (".cheap_operation.1.weight", ".cheap_operation.0.weight")

    def _kernel(self, mod, name, w, scales):
        c = w.shape[0]
        if w.dim() != 4 or w.shape[1] != 1:
            raise IncompatibleCheckpointError(f"{name} has shape {tuple(w.shape)}; a Ghost cheap operation is depthwise.")
        key, kf = f"{mod}.cheap_operation.1.weight", f"{mod}.fusion_scale.weight"
        self._require(scales, kf, key)
        return ScaledKernel(name, w, self._scale(scales, key, c), None, self._scale(scales, kf, c), groups=c), [key, kf]

    def grad_mult(self, k, dtype=None, device=None):
        w = k.param
        dt = dict(dtype=dtype or w.dtype, device=device or w.device)
        c, _, kh, kw = w.shape
        mult = scale_kernel(torch.ones(c, 1, kh, kw, **dt), k.s_main.to(torch.float64).pow(self.power).to(**dt))
        return mult + identity_kernel(c, c, kh, **dt)

    def initial_kernel(self, k, generator=None, weight=None):
        w = k.param.detach() if weight is None else weight
        dt = dict(dtype=w.dtype, device=w.device)
        c, _, kh, _ = w.shape
        return scale_kernel(w, k.s_main.to(**dt)) + scale_kernel(identity_kernel(c, c, kh, **dt), k.s_identity.to(**dt))


_HANDLERS = (RepOptVGGHandler, RepOptGhostNetHandler)


def get_handler(model: nn.Module, scales: Mapping[str, torch.Tensor], update_rule: str = "sgd",
                **kwargs) -> RepOptHandler:
    """The handler of the family the scales belong to (decided by their key names)."""
    families = [h for h in _HANDLERS if any(key.endswith(h.anchor[0]) for key in scales)]
    if len(families) != 1:
        raise RepZooError(
            "Cannot tell the model family of these scales "
            + ("(they mix RepOpt-VGG and RepOpt-GhostNet keys)" if families else
               "(no key ends in .scale_conv.weight or .cheap_operation.1.weight)")
            + ": pass a RepOpt-VGG or RepOpt-GhostNet scale file (see repzoo.optim.load_scales)."
        )
    return families[0](model, scales, update_rule, **kwargs)


def weight_decay_groups(model: nn.Module, weight_decay: float, skip: Sequence[str] = (),
                        skip_keywords: Sequence[str] = ()) -> List[dict]:
    """The reference's weight-decay grouping, as two parameter groups.

    A name containing ``identity.weight`` always decays; otherwise 1-D parameters, ``*.bias``
    and the names in ``skip`` / containing one of ``skip_keywords`` do not; the rest decays.
    Frozen parameters (``requires_grad=False``) are left out.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "identity.weight" in name:
            decay.append(param)
        elif param.dim() == 1 or name.endswith(".bias") or name in skip or any(s in name for s in skip_keywords):
            no_decay.append(param)
        else:
            decay.append(param)
    return [g for g in (dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0))
            if g["params"]]
