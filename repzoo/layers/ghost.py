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
(1x1); :class:`ConvBnAct` becomes ``conv.weight/bias``.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..reparam import (ReparamBlock, bn_args, fuse_bn, fuse_conv_bn, identity_kernel, scale_kernel, sum_branches,
                       without)
from .repopt import BN_EPS, ScaleLayer

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


def _dw_conv(channels: int, k: int, stride: int = 1, bias: bool = False, device=None) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, k, stride, (k - 1) // 2, groups=channels, bias=bias, device=device)


class ConvBnAct(ReparamBlock):
    """``relu(bn1(conv(x)))`` (keys ``conv.weight``, ``bn1.*``); deploy ``relu(conv(x))`` with bias."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, deploy: bool = False):
        super().__init__()
        self.in_chs, self.out_chs, self.kernel_size, self.stride = in_chs, out_chs, kernel_size, stride
        if deploy:
            self._switch_to_deploy(device=None)
            self.deploy = True
        else:
            self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False)
            self.bn1 = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x) if self.deploy else self.bn1(self.conv(x)))

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """``K = W·t``, ``b = β − μ·t``."""
        kernel, bias = fuse_conv_bn(sd["conv.weight"], *bn_args(sd, "bn1."), BN_EPS)
        out = without(sd, ("conv.", "bn1."))
        out["conv.weight"], out["conv.bias"] = kernel.to(sd["conv.weight"].dtype), bias.to(sd["conv.weight"].dtype)
        return out

    def _switch_to_deploy(self, device=None) -> None:
        for name in ("conv", "bn1"):
            if hasattr(self, name):
                delattr(self, name)
        k = self.kernel_size
        self.conv = nn.Conv2d(self.in_chs, self.out_chs, k, self.stride, k // 2, bias=True, device=device)


class RepGhostModule(ReparamBlock):
    """A RepGhost module in mode ``rep``, ``hs``, ``csla`` or ``target`` (see the module docstring).

    ``num_stage_modules`` (n) sets the hs initial cheap scale ``sqrt(2 / (n + 1))``; in csla the
    cheap scale is frozen and ``fusion_scale`` stays trainable (both start at 1).
    """

    def __init__(self, in_chs: int, out_chs: int, relu: bool = True, mode: str = "rep",
                 num_stage_modules: int = 1, dw_size: int = 3, deploy: bool = False):
        super().__init__()
        if mode not in GHOST_MODES:
            raise ValueError(f"mode must be one of {GHOST_MODES}, not {mode!r}")
        self.in_chs, self.out_chs, self.relu, self.mode, self.dw_size = in_chs, out_chs, relu, mode, dw_size
        self.num_stage_modules = num_stage_modules
        if deploy:
            self._switch_to_deploy(device=None)
            self.deploy = True
            return
        c = out_chs
        self.primary_conv = nn.Sequential(nn.Conv2d(in_chs, c, 1, 1, 0, bias=False), nn.BatchNorm2d(c),
                                          nn.ReLU() if relu else nn.Sequential())
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
            cheap_init = math.sqrt(2.0 / (num_stage_modules + 1)) if mode == "hs" else 1.0
            after_cheap = [ScaleLayer(c, cheap_init)]
        self.cheap_operation = nn.Sequential(_dw_conv(c, dw_size), *after_cheap)
        if mode == "csla":
            self.cheap_operation[1].requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        if not self.deploy:
            if self.mode == "rep":
                x2 = x2 + self.fusion_bn(x1)
            elif self.mode in ("hs", "csla"):
                x2 = x2 + self.fusion_scale(x1)
            if self.mode != "rep":
                x2 = self.final_bn(x2)
        return F.relu(x2) if self.relu else x2

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """Primary: ``fuse_conv_bn``. Cheap (``Id`` the depthwise identity, ``W`` the dw kernel):

        * rep: ``(W·t_c, s_c) + (Id·t_f, s_f)`` (``fuse_conv_bn`` + ``fuse_bn``);
        * hs/csla: ``fuse_conv_bn(W·s_cheap + Id·s_fusion, final_bn)``;
        * target: ``fuse_conv_bn(W, final_bn)``.
        """
        dtype = sd["primary_conv.0.weight"].dtype
        pk, pb = fuse_conv_bn(sd["primary_conv.0.weight"], *bn_args(sd, "primary_conv.1."), BN_EPS)
        w, c, k = sd["cheap_operation.0.weight"], self.out_chs, self.dw_size
        if self.mode == "rep":
            ck, cb = sum_branches([fuse_conv_bn(w, *bn_args(sd, "cheap_operation.1."), BN_EPS),
                                   fuse_bn(c, c, k, *bn_args(sd, "fusion_bn."), BN_EPS)], k)
        else:
            if self.mode != "target":
                ident = identity_kernel(c, c, k, dtype=w.dtype, device=w.device)
                w = scale_kernel(w, sd["cheap_operation.1.weight"]) + scale_kernel(ident, sd["fusion_scale.weight"])
            ck, cb = fuse_conv_bn(w, *bn_args(sd, "final_bn."), BN_EPS)
        out = without(sd, ("primary_conv.", "cheap_operation.", "fusion_bn.", "fusion_scale.", "final_bn."))
        out.update({"primary_conv.0.weight": pk.to(dtype), "primary_conv.0.bias": pb.to(dtype),
                    "cheap_operation.0.weight": ck.to(dtype), "cheap_operation.0.bias": cb.to(dtype)})
        return out

    def _switch_to_deploy(self, device=None) -> None:
        for name in ("primary_conv", "cheap_operation", "fusion_bn", "fusion_scale", "final_bn"):
            if hasattr(self, name):
                delattr(self, name)
        self.primary_conv = nn.Sequential(nn.Conv2d(self.in_chs, self.out_chs, 1, 1, 0, bias=True, device=device),
                                          nn.ReLU() if self.relu else nn.Sequential())
        self.cheap_operation = nn.Sequential(_dw_conv(self.out_chs, self.dw_size, bias=True, device=device))


class RepGhostBottleneck(ReparamBlock):
    """``ghost2(se(bn_dw(conv_dw(ghost1(x))))) + shortcut(x)``; ``conv_dw``/``bn_dw`` only when ``stride > 1``.

    The shortcut is the identity when ``in == out`` and ``stride == 1``, else
    ``dw k×k (stride) → BN → 1x1 → BN`` (keys ``shortcut.0..3``). Converting the bottleneck
    converts its two Ghost modules too (they are :class:`RepGhostModule` blocks of their own).
    """

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1,
                 se_ratio: float = 0.0, mode: str = "rep", num_stage_blocks: int = 1, deploy: bool = False):
        super().__init__()
        self.in_chs, self.mid_chs, self.out_chs = in_chs, mid_chs, out_chs
        self.dw_kernel_size, self.stride = dw_kernel_size, stride
        self.has_conv_shortcut = not (in_chs == out_chs and stride == 1)
        self.ghost1 = RepGhostModule(in_chs, mid_chs, relu=True, mode=mode,
                                     num_stage_modules=2 * num_stage_blocks - 1, deploy=deploy)
        if stride > 1:
            self.conv_dw = _dw_conv(mid_chs, dw_kernel_size, stride, bias=deploy)
            if not deploy:
                self.bn_dw = nn.BatchNorm2d(mid_chs)
        self.se = SqueezeExcite(mid_chs, se_ratio) if se_ratio and se_ratio > 0 else None
        self.ghost2 = RepGhostModule(mid_chs, out_chs, relu=False, mode=mode,
                                     num_stage_modules=2 * num_stage_blocks, deploy=deploy)
        if deploy:
            self.shortcut = self._deploy_shortcut(None)
            self.deploy = True
        elif self.has_conv_shortcut:
            self.shortcut = nn.Sequential(_dw_conv(in_chs, dw_kernel_size, stride), nn.BatchNorm2d(in_chs),
                                          nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ghost1(x)
        if self.stride > 1:
            y = self.conv_dw(y) if self.deploy else self.bn_dw(self.conv_dw(y))
        if self.se is not None:
            y = self.se(y)
        return self.ghost2(y) + self.shortcut(x)

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """The Ghost modules' own conversion, then ``conv_dw``+``bn_dw`` and each shortcut conv+BN folded."""
        out: StateDict = {}
        for name in ("ghost1", "ghost2"):
            pre = name + "."
            local = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
            out.update({pre + k: v for k, v in getattr(self, name).fuse_state_dict(local).items()})
        out.update({k: v for k, v in sd.items()
                    if not k.startswith(("ghost1.", "ghost2.", "conv_dw.", "bn_dw.", "shortcut."))})
        if self.stride > 1:
            dtype = sd["conv_dw.weight"].dtype
            k, b = fuse_conv_bn(sd["conv_dw.weight"], *bn_args(sd, "bn_dw."), BN_EPS)
            out["conv_dw.weight"], out["conv_dw.bias"] = k.to(dtype), b.to(dtype)
        if self.has_conv_shortcut:
            dtype = sd["shortcut.0.weight"].dtype
            k0, b0 = fuse_conv_bn(sd["shortcut.0.weight"], *bn_args(sd, "shortcut.1."), BN_EPS)
            k1, b1 = fuse_conv_bn(sd["shortcut.2.weight"], *bn_args(sd, "shortcut.3."), BN_EPS)
            out.update({"shortcut.0.weight": k0.to(dtype), "shortcut.0.bias": b0.to(dtype),
                        "shortcut.1.weight": k1.to(dtype), "shortcut.1.bias": b1.to(dtype)})
        return out

    def _deploy_shortcut(self, device) -> nn.Sequential:
        if not self.has_conv_shortcut:
            return nn.Sequential()
        return nn.Sequential(_dw_conv(self.in_chs, self.dw_kernel_size, self.stride, bias=True, device=device),
                             nn.Conv2d(self.in_chs, self.out_chs, 1, bias=True, device=device))

    def _switch_to_deploy(self, device=None) -> None:
        for ghost in (self.ghost1, self.ghost2):
            if not ghost.deploy:
                ghost._switch_to_deploy(device)
                ghost.deploy = True
        if self.stride > 1:
            del self.bn_dw
            self.conv_dw = _dw_conv(self.mid_chs, self.dw_kernel_size, self.stride, bias=True, device=device)
        self.shortcut = self._deploy_shortcut(device)
