"""Squeeze-and-excitation blocks with the authors' key names."""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SEBlock"]


class SEBlock(nn.Module):
    """RepVGG's SE: ``x · σ(up(relu(down(avgpool(x)))))``, 1x1 convs ``down`` / ``up`` with bias.

    Pools globally. (DingXiaoH/RepVGG pools with a kernel of the input's *width*, which is
    global only for square inputs; the results agree there.)
    """

    def __init__(self, channels: int, internal: int):
        super().__init__()
        self.down = nn.Conv2d(channels, internal, 1, bias=True)
        self.up = nn.Conv2d(internal, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.up(F.relu(self.down(s))))
        return x * s
