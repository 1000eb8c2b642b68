"""Conv + BN pairs, with the authors' key names (``conv``, ``bn``)."""

from torch import nn

__all__ = ["ConvBn"]


class ConvBn(nn.Sequential):
    """``Conv2d(bias=False)`` then ``BatchNorm2d``: keys ``conv.weight``, ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, groups: int = 1, dilation: int = 1):
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                                          dilation=dilation, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_channels))
