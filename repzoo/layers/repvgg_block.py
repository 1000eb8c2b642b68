"""The RepVGG block: 3x3-BN + 1x1-BN + identity-BN at training time, one 3x3 conv at deploy."""

from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..reparam import ReparamBlock, conv_state, fused_bn, fused_conv_bn, sum_branches
from .conv_bn import ConvBn
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

    __constants__ = ReparamBlock.__constants__ + ["has_identity", "se_pre", "se_post"]

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
                 se: Optional[str] = None, deploy: bool = False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.groups = stride, groups
        self.se_pre, self.se_post = se == "pre", se == "post"
        # Registration order is the state-dict order of the released files: SE first.
        if se == "pre":
            self.se = SEBlock(out_channels, out_channels // 16)
        elif se == "post":
            self.post_se = SEBlock(out_channels, out_channels // 4)
        elif se is not None:
            raise ValueError(f"se must be None, 'pre' or 'post', not {se!r}")
        self.has_identity = in_channels == out_channels and stride == 1
        self._init_form(deploy)

    def _build_train(self) -> None:
        c_in, c_out, g = self.in_channels, self.out_channels, self.groups
        if self.has_identity:
            self.rbr_identity = nn.BatchNorm2d(c_in)
        self.rbr_dense = ConvBn(c_in, c_out, 3, self.stride, 1, g)
        self.rbr_1x1 = ConvBn(c_in, c_out, 1, self.stride, 0, g)

    def _build_deploy(self) -> None:
        self.rbr_reparam = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1,
                                     groups=self.groups, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            y = self.rbr_reparam(x)
        else:
            y = self.rbr_dense(x) + self.rbr_1x1(x)
            if self.has_identity:
                y = y + self.rbr_identity(x)
        if self.se_pre:
            return F.relu(self.se(y))
        y = F.relu(y)
        return self.post_se(y) if self.se_post else y

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> dict:
        """``K = K3·t3 + pad(K1·t1) + Id·t_id``, ``b = Σ (β − μ·t)`` over the present branches."""
        branches = [fused_conv_bn(sd, "rbr_dense.conv.weight", "rbr_dense.bn."),
                    fused_conv_bn(sd, "rbr_1x1.conv.weight", "rbr_1x1.bn.")]
        if self.has_identity:
            branches.append(fused_bn(sd, "rbr_identity.", self.in_channels, self.groups, kernel_size=1))
        return conv_state("rbr_reparam.", *sum_branches(branches, 3), sd["rbr_dense.conv.weight"].dtype)
