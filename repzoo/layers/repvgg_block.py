"""The RepVGG block: 3x3-BN + 1x1-BN + identity-BN at training time, one 3x3 conv at deploy."""
from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..reparam import ReparamBlock, sum_branches, without
from .conv_bn import ConvBn, fused_bn, fused_conv_bn
from .se import SEBlock

__all__ = ["RepVGGBlock"]


class RepVGGBlock(ReparamBlock):
    """``relu(rbr_dense(x) + rbr_1x1(x) + rbr_identity(x))`` → ``relu(rbr_reparam(x))``.

    Key names follow DingXiaoH/RepVGG (``rbr_dense.conv``, ``rbr_dense.bn``, ``rbr_1x1.*``,
    a bare BN ``rbr_identity.*``; deploy ``rbr_reparam.weight/bias``). The identity branch
    exists when ``in == out`` and ``stride == 1``.

    ``se``: ``None``; ``"pre"`` — RepVGG-D2se's SE (``se.*``, C/16) before the ReLU;
    ``"post"`` — RepVGGplus's SE (``post_se.*``, C/4) after the ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
                 se: Optional[str] = None, deploy: bool = False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.groups = stride, groups
        self.se_mode = se
        # Registration order is the state-dict order of the released files: SE first.
        if se == "pre":
            self.se = SEBlock(out_channels, out_channels // 16)
        elif se == "post":
            self.post_se = SEBlock(out_channels, out_channels // 4)
        elif se is not None:
            raise ValueError(f"se must be None, 'pre' or 'post', not {se!r}")
        self.has_identity = in_channels == out_channels and stride == 1
        if deploy:
            self._switch_to_deploy(device=None)
            self.deploy = True
        else:
            self.rbr_identity = nn.BatchNorm2d(in_channels) if self.has_identity else None
            self.rbr_dense = ConvBn(in_channels, out_channels, 3, stride, 1, groups)
            self.rbr_1x1 = ConvBn(in_channels, out_channels, 1, stride, 0, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            y = self.rbr_reparam(x)
        else:
            y = self.rbr_dense(x) + self.rbr_1x1(x)
            if self.rbr_identity is not None:
                y = y + self.rbr_identity(x)
        if self.se_mode == "pre":
            return F.relu(self.se(y))
        y = F.relu(y)
        return self.post_se(y) if self.se_mode == "post" else y

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> dict:
        """``K = K3·t3 + pad(K1·t1) + Id·t_id``, ``b = Σ (β − μ·t)`` over the present branches."""
        branches = [fused_conv_bn(sd, "rbr_dense."), fused_conv_bn(sd, "rbr_1x1.")]
        if self.has_identity:
            branches.append(fused_bn(sd, "rbr_identity.", self.in_channels, self.groups, kernel_size=1))
        kernel, bias = sum_branches(branches, 3)
        dtype = sd["rbr_dense.conv.weight"].dtype
        out = without(sd, ("rbr_dense.", "rbr_1x1.", "rbr_identity."))
        out["rbr_reparam.weight"] = kernel.to(dtype)
        out["rbr_reparam.bias"] = bias.to(dtype)
        return out

    def _switch_to_deploy(self, device=None) -> None:
        for name in ("rbr_dense", "rbr_1x1", "rbr_identity"):
            if hasattr(self, name):
                delattr(self, name)
        self.rbr_reparam = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1,
                                     groups=self.groups, bias=True, device=device)
