"""Conv + BN pairs, with the authors' key names (``conv``, ``bn``)."""

from typing import Dict, Mapping, Optional

import torch
from torch import nn

from ..reparam import ReparamBlock, conv_state, fused_conv_bn

__all__ = ["ConvBn", "ConvBnBlock"]


class ConvBn(nn.Sequential):
    """``Conv2d(bias=False)`` then ``BatchNorm2d``: keys ``conv.weight``, ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, groups: int = 1, dilation: int = 1):
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                                          dilation=dilation, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_channels))


class ConvBnBlock(ReparamBlock):
    """``act(bn(conv(x)))`` → ``act(conv(x))``: a conv-BN that folds into one conv with bias at deploy.

    The plain baseline layer of OREPA's and DBB's networks (the reference's ``ConvBN``). Keys:
    train ``conv.weight``, ``bn.*``; deploy ``conv.weight``, ``conv.bias`` (the same name, now
    with a bias). Arguments as ``nn.Conv2d`` (no ``bias``; ``padding`` defaults to ``k // 2``);
    ``act``: apply a ReLU.
    """

    __constants__ = ReparamBlock.__constants__ + ["act"]

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: Optional[int] = None, dilation: int = 1, groups: int = 1, act: bool = False,
                 deploy: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.padding = kernel_size // 2 if padding is None else padding
        self.act = bool(act)
        self._init_form(deploy)

    def _conv(self, bias: bool) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         dilation=self.dilation, groups=self.groups, bias=bias)

    def _build_train(self) -> None:
        self.conv = self._conv(bias=False)
        self.bn = nn.BatchNorm2d(self.out_channels)

    def _build_deploy(self) -> None:
        self.conv = self._conv(bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            y = self.conv(x)
        else:
            y = self.bn(self.conv(x))
        return torch.relu(y) if self.act else y

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``K = W·t``, ``b = β − μ·t`` (``fused_conv_bn``)."""
        return conv_state("conv.", *fused_conv_bn(sd, "conv.weight", "bn."), sd["conv.weight"].dtype)
