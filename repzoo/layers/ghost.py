"""RepGhost modules and bottlenecks (RepOptimizers' ``repoptghostnet_model.py`` forms).

A Ghost module here has no concat (RepGhost): ``x1 = primary_conv(x)`` (1x1 conv, BN,
ReLU if ``relu``), ``x2 = cheap_operation(x1)`` (3x3 depthwise conv, then a BN, a
scale or nothing), plus a fusion branch on ``x1``, then ``final_bn`` and the ReLU.

=======  ===================================================  =====================================
mode     train-time keys (relative to the module)             ``x2``
=======  ===================================================  =====================================
rep      ``primary_conv.{0,1}``, ``fusion_bn.*``,              ``bn_c(dw x1) + fusion_bn(x1)``
         ``cheap_operation.0.weight``, ``cheap_operation.1.*``
hs/csla  ``primary_conv.{0,1}``, ``fusion_scale.weight``,      ``final_bn(s_c·dw x1 + s_f·x1)``
         ``final_bn.*``, ``cheap_operation.{0,1}.weight``
target   ``primary_conv.{0,1}``, ``final_bn.*``,               ``final_bn(dw x1)``
         ``cheap_operation.0.weight``
=======  ===================================================  =====================================

Deploy (every mode): ``primary_conv.0.weight/bias`` (1x1 conv, BN folded; ReLU kept) and
``cheap_operation.0.weight/bias`` (one 3x3 depthwise conv: cheap branch, fusion branch and
``final_bn`` fused). A bottleneck also folds ``conv_dw``/``bn_dw`` into ``conv_dw.weight/bias``
and its conv shortcut into ``shortcut.0.weight/bias`` (depthwise) and ``shortcut.1.weight/bias``
(1x1); :class:`ConvBnAct` becomes ``conv.weight/bias`` (a declared conv-BN pair).
"""

import math
from typing import Dict, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..reparam import (BN_EPS, ReparamBlock, bn_args, conv_state, fuse_conv_bn, fused_bn, fused_conv_bn, identity_kernel,
                       scale_kernel, sum_branches)
from .scale import ScaleLayer

__all__ = [
    "GHOST_MODES",
    "make_divisible",
    "hard_sigmoid",
    "SqueezeExcite",
    "ConvBnAct",
    "RepGhostModule",
    "RepGhostBottleneck",
]

StateDict = Dict[str, torch.Tensor]
GHOST_MODES = ("rep", "hs", "csla", "target")


def make_divisible(v: float, divisor: int = 4) -> int:
    """Round ``v`` to a multiple of ``divisor`` (at least ``divisor``), adding one step if that lost over 10%."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``relu6(x + 3) / 6``."""
    return F.relu6(x + 3.0) / 6.0


class SqueezeExcite(nn.Module):
    """GhostNet's SE: ``x · hard_sigmoid(conv_expand(relu(conv_reduce(avgpool(x)))))``.

    Reduced width ``make_divisible(C · se_ratio, 4)``; keys ``conv_reduce.*``, ``conv_expand.*``.
    """

    def __init__(self, channels: int, se_ratio: float = 0.25):
        super().__init__()
        reduced = make_divisible(channels * se_ratio, 4)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv_expand(F.relu(self.conv_reduce(F.adaptive_avg_pool2d(x, 1))))
        return x * hard_sigmoid(s)


def _dw_conv(channels: int, k: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, k, stride, (k - 1) // 2, groups=channels, bias=bias)


class ConvBnAct(nn.Module):
    """``relu(bn1(conv(x)))`` (keys ``conv.weight``, ``bn1.*``); deploy ``relu(conv(x))`` with bias.

    ``conv``/``bn1`` is a declared conv-BN pair: :func:`repzoo.reparameterize` folds it.
    """

    conv_bn_pairs = (("conv", "bn1"),)

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, deploy: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=deploy)
        self.bn1 = nn.Identity() if deploy else nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv(x)))


class RepGhostModule(ReparamBlock):
    """A RepGhost module in mode ``rep``, ``hs``, ``csla`` or ``target`` (see the module docstring).

    ``num_stage_modules`` (n) sets the hs initial cheap scale ``sqrt(2 / (n + 1))``; in csla the
    cheap scale is frozen and ``fusion_scale`` stays trainable (both start at 1).
    """

    __constants__ = ReparamBlock.__constants__ + ["relu", "fusion_is_bn", "fusion_is_scale", "has_final_bn"]

    def __init__(self, in_chs: int, out_chs: int, relu: bool = True, mode: str = "rep",
                 num_stage_modules: int = 1, dw_size: int = 3, deploy: bool = False):
        super().__init__()
        if mode not in GHOST_MODES:
            raise ValueError(f"mode must be one of {GHOST_MODES}, not {mode!r}")
        self.in_chs, self.out_chs, self.relu, self.mode, self.dw_size = in_chs, out_chs, relu, mode, dw_size
        self.fusion_is_bn, self.fusion_is_scale = mode == "rep", mode in ("hs", "csla")
        self.has_final_bn = mode != "rep"
        self.num_stage_modules = num_stage_modules
        self._init_form(deploy)

    def _act(self) -> nn.Module:
        return nn.ReLU() if self.relu else nn.Sequential()

    def _build_train(self) -> None:
        c, mode = self.out_chs, self.mode
        self.primary_conv = nn.Sequential(nn.Conv2d(self.in_chs, c, 1, 1, 0, bias=False), nn.BatchNorm2d(c), self._act())
        # Registration order = the reference's state-dict order.
        if mode == "rep":
            self.fusion_bn = nn.BatchNorm2d(c)
            after_cheap = [nn.BatchNorm2d(c)]
        elif mode == "target":
            self.final_bn = nn.BatchNorm2d(c)
            after_cheap = []
        else:
            self.fusion_scale = ScaleLayer(c, 1.0)
            self.final_bn = nn.BatchNorm2d(c)
            cheap_init = math.sqrt(2.0 / (self.num_stage_modules + 1)) if mode == "hs" else 1.0
            after_cheap = [ScaleLayer(c, cheap_init)]
        self.cheap_operation = nn.Sequential(_dw_conv(c, self.dw_size), *after_cheap)
        if mode == "csla":
            self.cheap_operation[1].requires_grad_(False)

    def _linear_kernel(self, sd: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``W·s_cheap + Id·s_fusion`` (hs/csla; ``W`` in target): the depthwise kernel before ``final_bn``."""
        w = sd["cheap_operation.0.weight"]
        if self.mode in ("hs", "csla"):
            ident = identity_kernel(self.out_chs, self.out_chs, self.dw_size, dtype=w.dtype, device=w.device)
            w = scale_kernel(w, sd["cheap_operation.1.weight"]) + scale_kernel(ident, sd["fusion_scale.weight"])
        return w

    @torch.no_grad()
    def linear_kernel(self) -> torch.Tensor:
        """The depthwise kernel a RepOpt target module trained with a RepOptimizer holds for this module."""
        return self._linear_kernel(self.state_dict())

    def _build_deploy(self) -> None:
        self.primary_conv = nn.Sequential(nn.Conv2d(self.in_chs, self.out_chs, 1, 1, 0, bias=True), self._act())
        self.cheap_operation = nn.Sequential(_dw_conv(self.out_chs, self.dw_size, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        if not self.deploy:
            if self.fusion_is_bn:
                x2 = x2 + self.fusion_bn(x1)
            if self.fusion_is_scale:
                x2 = x2 + self.fusion_scale(x1)
            if self.has_final_bn:
                x2 = self.final_bn(x2)
        return F.relu(x2) if self.relu else x2

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """Primary: ``fused_conv_bn``. Cheap (``Id`` the depthwise identity, ``W`` the dw kernel):

        * rep: ``(W·t_c, s_c) + (Id·t_f, s_f)`` (``fused_conv_bn`` + ``fused_bn``);
        * hs/csla: ``fuse_conv_bn(W·s_cheap + Id·s_fusion, final_bn)``;
        * target: ``fuse_conv_bn(W, final_bn)``.
        """
        dtype = sd["primary_conv.0.weight"].dtype
        c, k = self.out_chs, self.dw_size
        if self.mode == "rep":
            cheap = sum_branches([fused_conv_bn(sd, "cheap_operation.0.weight", "cheap_operation.1."),
                                  fused_bn(sd, "fusion_bn.", c, c, k)], k)
        else:
            cheap = fuse_conv_bn(self._linear_kernel(sd), *bn_args(sd, "final_bn."), BN_EPS)
        return {**conv_state("primary_conv.0.", *fused_conv_bn(sd, "primary_conv.0.weight", "primary_conv.1."), dtype),
                **conv_state("cheap_operation.0.", *cheap, dtype)}


class RepGhostBottleneck(ReparamBlock):
    """``ghost2(se(bn_dw(conv_dw(ghost1(x))))) + shortcut(x)``; ``conv_dw``/``bn_dw`` only when ``stride > 1``.

    The shortcut is the identity when ``in == out`` and ``stride == 1``, else
    ``dw k×k (stride) → BN → 1x1 → BN`` (keys ``shortcut.0..3``). The bottleneck converts its own
    ``conv_dw``/``bn_dw`` and shortcut; its two Ghost modules are blocks of their own, converted
    first by :func:`repzoo.reparameterize`.
    """

    __constants__ = ReparamBlock.__constants__ + ["downsample", "has_se"]

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1,
                 se_ratio: float = 0.0, mode: str = "rep", num_stage_blocks: int = 1, deploy: bool = False):
        super().__init__()
        self.in_chs, self.mid_chs, self.out_chs = in_chs, mid_chs, out_chs
        self.dw_kernel_size, self.stride = dw_kernel_size, stride
        self.downsample = stride > 1
        self.has_conv_shortcut = not (in_chs == out_chs and stride == 1)
        self.has_se = bool(se_ratio and se_ratio > 0)
        # The reference's order: ghost1, conv_dw, bn_dw, se, ghost2, shortcut (placeholders keep it).
        self.ghost1 = RepGhostModule(in_chs, mid_chs, relu=True, mode=mode,
                                     num_stage_modules=2 * num_stage_blocks - 1, deploy=deploy)
        self.register_module("conv_dw", None)
        self.register_module("bn_dw", None)
        if self.has_se:
            self.se = SqueezeExcite(mid_chs, se_ratio)
        self.ghost2 = RepGhostModule(mid_chs, out_chs, relu=False, mode=mode,
                                     num_stage_modules=2 * num_stage_blocks, deploy=deploy)
        self.register_module("shortcut", None)
        self._init_form(deploy)

    def _build_train(self) -> None:
        if self.stride > 1:
            self.conv_dw = _dw_conv(self.mid_chs, self.dw_kernel_size, self.stride)
            self.bn_dw = nn.BatchNorm2d(self.mid_chs)
        if self.has_conv_shortcut:
            c_in = self.in_chs
            self.shortcut = nn.Sequential(_dw_conv(c_in, self.dw_kernel_size, self.stride), nn.BatchNorm2d(c_in),
                                          nn.Conv2d(c_in, self.out_chs, 1, bias=False), nn.BatchNorm2d(self.out_chs))
        else:
            self.shortcut = nn.Sequential()

    def _build_deploy(self) -> None:
        if self.stride > 1:
            self.conv_dw = _dw_conv(self.mid_chs, self.dw_kernel_size, self.stride, bias=True)
        if self.has_conv_shortcut:
            self.shortcut = nn.Sequential(_dw_conv(self.in_chs, self.dw_kernel_size, self.stride, bias=True),
                                          nn.Conv2d(self.in_chs, self.out_chs, 1, bias=True))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ghost1(x)
        if self.downsample:
            y = self.conv_dw(y)
            if not self.deploy:
                y = self.bn_dw(y)
        if self.has_se:
            y = self.se(y)
        return self.ghost2(y) + self.shortcut(x)

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """``conv_dw``+``bn_dw`` and each shortcut conv+BN folded (``fused_conv_bn``)."""
        out: StateDict = {}
        if self.stride > 1:
            out.update(conv_state("conv_dw.", *fused_conv_bn(sd, "conv_dw.weight", "bn_dw."), sd["conv_dw.weight"].dtype))
        if self.has_conv_shortcut:
            dtype = sd["shortcut.0.weight"].dtype
            out.update(conv_state("shortcut.0.", *fused_conv_bn(sd, "shortcut.0.weight", "shortcut.1."), dtype))
            out.update(conv_state("shortcut.1.", *fused_conv_bn(sd, "shortcut.2.weight", "shortcut.3."), dtype))
        return out
