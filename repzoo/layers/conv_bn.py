"""Conv + BN pairs, with the authors' key names (``conv``, ``bn``)."""
from __future__ import annotations

from typing import Mapping, Tuple

import torch
from torch import nn

from ..reparam import bn_args, fuse_bn, fuse_conv_bn

__all__ = ["ConvBn", "fused_conv_bn", "fused_bn"]


class ConvBn(nn.Sequential):
    """``Conv2d(bias=False)`` then ``BatchNorm2d``: keys ``conv.weight``, ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, groups: int = 1, dilation: int = 1):
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                                          dilation=dilation, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_channels))


def fused_conv_bn(sd: Mapping[str, torch.Tensor], prefix: str, eps: float = 1e-5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of a ``ConvBn`` read from a state dict under ``prefix`` (e.g. ``rbr_dense.``)."""
    return fuse_conv_bn(sd[prefix + "conv.weight"], *bn_args(sd, prefix + "bn."), eps)


def fused_bn(sd: Mapping[str, torch.Tensor], prefix: str, channels: int, groups: int,
             kernel_size: int, eps: float = 1e-5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of a bare BN (identity branch) read from a state dict under ``prefix``."""
    return fuse_bn(channels, groups, kernel_size, *bn_args(sd, prefix), eps)
