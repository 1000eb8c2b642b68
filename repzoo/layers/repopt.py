"""RepOpt-VGG blocks (DingXiaoH/RepOptimizers), in every form the paper uses.

=================  ======================================================  ============================
form               train-time keys (relative to the block)                 forward
=================  ======================================================  ============================
target             ``conv.weight``, ``bn.*``                               ``relu(bn(conv x))``
hs / csla          ``conv.weight``, ``scale_conv.weight``,                 ``relu(bn(s_c·conv x +
                   ``conv_1x1.weight``, ``scale_1x1.weight``,              s_1·conv_1x1 x + s_id·x))``
                   [``scale_identity.weight``], ``bn.*``
repvgg             ``conv_3x3.weight``, ``bn_3x3.*``, ``conv_1x1.weight``,  ``relu(Σ bn_b(conv_b x))``
                   ``bn_1x1.*``, [``bn_identity.*``]
=================  ======================================================  ============================

Every form converts to the same deploy block: one 3x3 conv with bias, keys
``conv.weight`` and ``conv.bias`` (``relu(conv x)``) — the key names the reference's
own deploy-mode 'repvgg' block uses. The identity branch exists when ``in == out`` and
``stride == 1``.
"""

import math
from typing import Dict, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..reparam import (BN_EPS, ReparamBlock, bn_args, conv_state, fuse_conv_bn, fused_bn, fused_conv_bn,
                       identity_kernel, pad_kernel, scale_kernel, sum_branches)
from .scale import ScaleLayer

__all__ = ["RepOptVGGBlock", "LinearAddBlock", "RepOptRepVGGBlock", "hs_scale_init"]

StateDict = Dict[str, torch.Tensor]


def hs_scale_init(block_index: int) -> float:
    """Initial ``scale_conv`` / ``scale_1x1`` of block ``i`` of a stage: 1 for ``i = 0``, else ``sqrt(2 / i)``."""
    return 1.0 if block_index == 0 else math.sqrt(2.0 / block_index)


class _PlainDeployBlock(ReparamBlock):
    """Shared deploy form of the RepOpt-VGG blocks: ``relu(conv(x))``, ``conv`` a 3x3 conv with bias."""

    __constants__ = ReparamBlock.__constants__ + ["has_identity"]

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.has_identity = in_channels == out_channels and stride == 1

    def _build_deploy(self) -> None:
        self.conv = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return F.relu(self.conv(x))
        return F.relu(self._train_forward(x))

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class RepOptVGGBlock(_PlainDeployBlock):
    """The target block (the reference's ``RealVGGBlock``): ``relu(bn(conv3x3(x)))``.

    Deploy: BN folded into the conv, ``K = W·t``, ``b = β − μ·t``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, deploy: bool = False):
        super().__init__(in_channels, out_channels, stride)
        self._init_form(deploy)

    def _build_train(self) -> None:
        self.conv = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(self.out_channels)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """``K = W·t``, ``b = β − μ·t`` with ``t = γ / sqrt(var + ε)``."""
        return conv_state("conv.", *fused_conv_bn(sd, "conv.weight", "bn."), sd["conv.weight"].dtype)


class LinearAddBlock(_PlainDeployBlock):
    """The Hyper-Search / CSLA block: ``relu(bn(s_c·conv3x3(x) + s_1·conv1x1(x) + s_id·x))``.

    ``csla=True`` freezes ``scale_conv`` and ``scale_1x1`` (``requires_grad=False``);
    ``scale_identity`` stays trainable, as in the reference. ``scale_init`` is the initial
    value of ``scale_conv`` and ``scale_1x1`` (see :func:`hs_scale_init`); ``scale_identity``
    starts at 1.

    Deploy: ``K = s_c·W3 + pad(s_1·W1) + s_id·Id``, then the BN folded in: one conv + bias.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, scale_init: float = 1.0,
                 csla: bool = False, deploy: bool = False):
        super().__init__(in_channels, out_channels, stride)
        self.scale_init, self.csla = float(scale_init), csla
        self._init_form(deploy)

    def _build_train(self) -> None:
        c_in, c_out = self.in_channels, self.out_channels
        # Registration order = the reference's state-dict order.
        self.conv = nn.Conv2d(c_in, c_out, 3, self.stride, 1, bias=False)
        self.scale_conv = ScaleLayer(c_out, self.scale_init)
        self.conv_1x1 = nn.Conv2d(c_in, c_out, 1, self.stride, 0, bias=False)
        self.scale_1x1 = ScaleLayer(c_out, self.scale_init)
        if self.has_identity:
            self.scale_identity = ScaleLayer(c_out, 1.0)
        self.bn = nn.BatchNorm2d(c_out)
        if self.csla:
            self.scale_conv.requires_grad_(False)
            self.scale_1x1.requires_grad_(False)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.scale_conv(self.conv(x)) + self.scale_1x1(self.conv_1x1(x))
        if self.has_identity:
            y = y + self.scale_identity(x)
        return self.bn(y)

    def _linear_kernel(self, sd: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``K = s_c·W3 + pad(s_1·W1) [+ s_id·Id]``: the one 3x3 kernel the linear-add branches stand for."""
        w3 = sd["conv.weight"]
        kernel = scale_kernel(w3, sd["scale_conv.weight"]) + pad_kernel(
            scale_kernel(sd["conv_1x1.weight"], sd["scale_1x1.weight"]), 3)
        if self.has_identity:
            ident = identity_kernel(self.in_channels, 1, 3, dtype=w3.dtype, device=w3.device)
            kernel = kernel + scale_kernel(ident, sd["scale_identity.weight"])
        return kernel

    @torch.no_grad()
    def linear_kernel(self) -> torch.Tensor:
        """The kernel a RepOpt target block trained with a RepOptimizer holds for this (train-form) block."""
        return self._linear_kernel(self.state_dict())

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """The linear kernel (:meth:`linear_kernel`), then ``fuse_conv_bn(K, bn)``."""
        kernel = self._linear_kernel(sd)
        return conv_state("conv.", *fuse_conv_bn(kernel, *bn_args(sd, "bn."), BN_EPS), sd["conv.weight"].dtype)


class RepOptRepVGGBlock(_PlainDeployBlock):
    """RepOptimizers' RepVGG-form baseline, with that repository's key names.

    ``relu(bn_3x3(conv_3x3 x) + bn_1x1(conv_1x1 x) [+ bn_identity(x)])``; deploy as RepVGG:
    ``K = K3·t3 + pad(K1·t1) + Id·t_id``, ``b = Σ (β − μ·t)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, deploy: bool = False):
        super().__init__(in_channels, out_channels, stride)
        self._init_form(deploy)

    def _build_train(self) -> None:
        c_in, c_out = self.in_channels, self.out_channels
        self.conv_3x3 = nn.Conv2d(c_in, c_out, 3, self.stride, 1, bias=False)
        self.bn_3x3 = nn.BatchNorm2d(c_out)
        self.conv_1x1 = nn.Conv2d(c_in, c_out, 1, self.stride, 0, bias=False)
        self.bn_1x1 = nn.BatchNorm2d(c_out)
        if self.has_identity:
            self.bn_identity = nn.BatchNorm2d(c_out)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_3x3(self.conv_3x3(x)) + self.bn_1x1(self.conv_1x1(x))
        if self.has_identity:
            y = y + self.bn_identity(x)
        return y

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """Each branch ``fused_conv_bn`` / ``fused_bn``; then ``sum_branches`` at 3x3."""
        branches = [fused_conv_bn(sd, "conv_3x3.weight", "bn_3x3."), fused_conv_bn(sd, "conv_1x1.weight", "bn_1x1.")]
        if self.has_identity:
            branches.append(fused_bn(sd, "bn_identity.", self.in_channels, 1, 3))
        return conv_state("conv.", *sum_branches(branches, 3), sd["conv_3x3.weight"].dtype)
