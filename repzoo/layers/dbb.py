"""The Diverse Branch Block (Ding et al., CVPR 2021), as JUGGHM/OREPA_CVPR2022 and
DingXiaoH/DiverseBranchBlock build it (same keys, same function).

Train form, four branches summed (keys relative to the block)::

    dbb_origin   k×k conv → BN                                  dbb_origin.{conv, bn}.*
    dbb_1x1      1x1 conv (stride) → BN                         dbb_1x1.{conv, bn}.*           (groups < out)
    dbb_avg      1x1 conv → BN-and-pad → k×k avg pool → BN      dbb_avg.conv.*, dbb_avg.bn.bn.*, dbb_avg.avgbn.*
    dbb_1x1_kxk  1x1 conv (identity-based) → BN-and-pad → k×k conv → BN
                                                                dbb_1x1_kxk.idconv1.weight (or conv1.weight),
                                                                dbb_1x1_kxk.bn1.bn.*, .conv2.weight, .bn2.*

Deploy: one k×k conv with bias, ``dbb_reparam``. The BN-and-pad layer pads a branch with the
value its BN gives a zero input, which is what makes the 1x1 → k×k and 1x1 → average merges
exact (:func:`~repzoo.reparam.compose_1x1_kxk` with biases). The averaging kernel is built in
the weights' dtype, so a float64 conversion is exact (the reference's float32 constant is not).
"""

from collections import OrderedDict
from typing import Dict, Mapping, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..reparam import (BN_EPS, ReparamBlock, average_kernel, average_pattern, bn_args, bn_scale_shift, compose_1x1_kxk,
                       conv_state, fuse_conv_bn, fused_conv_bn, identity_kernel, pattern_kernel, scale_kernel,
                       sum_branches)
from .conv_bn import ConvBn

__all__ = ["DiverseBranchBlock", "BNAndPad", "IdentityBasedConv1x1"]

StateDict = Dict[str, torch.Tensor]


def plus_identity(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``weight + Id`` for a (C, C/g, 1, 1) kernel (a function torch.fx records, with ``weight`` traced)."""
    return weight + identity_kernel(weight.shape[0], groups, 1, dtype=weight.dtype, device=weight.device)


def bn_pad_value(y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: Optional[torch.Tensor],
                 bias: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """What a BN (running statistics) gives for a zero input, ``β − μ·γ / sqrt(σ² + ε)``, shaped (1, C, 1, 1)
    in ``y``'s dtype. A function torch.fx records with the BN's tensors as inputs (no constant baked in)."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = weight * scale
    value = -mean * scale
    if bias is not None:
        value = value + bias
    return value.to(y.dtype).reshape(1, -1, 1, 1)


torch.fx.wrap("plus_identity")
torch.fx.wrap("bn_pad_value")


class IdentityBasedConv1x1(nn.Conv2d):
    """A 1x1 conv (``channels`` → ``channels``, ``groups``) whose kernel is ``weight + Id``, with
    ``Id[i, i mod (C/g)] = 1`` built in the weight's dtype at each call (it is no state-dict entry);
    ``weight`` starts at zero. Key: ``weight``."""

    def __init__(self, channels: int, groups: int = 1):
        super().__init__(channels, channels, 1, groups=groups, bias=False)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)

    def kernel(self) -> torch.Tensor:
        return plus_identity(self.weight, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel(), None, 1, 0, 1, self.groups)


class BNAndPad(nn.Module):
    """``bn(x)`` padded by ``pad`` with the per-channel value ``bn`` gives a zero input,
    ``β − μ·γ / sqrt(σ² + ε)`` (running statistics, also in training, as the reference). Key: ``bn.*``.

    In eval mode this is ``bn(zero_pad(x))``.
    """

    def __init__(self, pad: int, channels: int):
        super().__init__()
        self.pad = pad
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        p = self.pad
        if p <= 0:
            return y
        bn = self.bn
        value = bn_pad_value(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
        inside = F.pad(torch.ones_like(y[:1, :1]), [p, p, p, p]) > 0  # no item assignment: torch.fx traces it
        return torch.where(inside, F.pad(y, [p, p, p, p]), value)


class DiverseBranchBlock(ReparamBlock):
    """``act(Σ branches(x))`` → ``act(dbb_reparam(x))`` (see the module docstring for the branches).

    Arguments as ``nn.Conv2d`` (``padding`` is ``kernel_size // 2``, ``dilation`` 1, no ``bias``);
    ``internal_channels``: the width of the 1x1 → k×k branch (default ``in`` when
    ``groups < out``, else ``2·in``); ``act``: a ReLU after the sum. With ``groups >= out``
    (depthwise) the average branch pools the input itself and there is no 1x1 branch.
    """

    __constants__ = ReparamBlock.__constants__ + ["act", "has_1x1"]

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: Optional[int] = None, dilation: int = 1, groups: int = 1,
                 internal_channels: Optional[int] = None, act: bool = False, deploy: bool = False):
        super().__init__()
        name = type(self).__name__
        if kernel_size % 2 != 1 or (padding is not None and padding != kernel_size // 2):
            raise ValueError(f"{name} needs an odd kernel_size and padding = kernel_size // 2 "
                             f"(got {kernel_size}, {padding})")
        if dilation != 1:
            raise ValueError(f"{name} supports dilation=1 only (its average and 1x1 branches are not dilated)")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels and out_channels must be divisible by groups")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dilation, self.groups = stride, kernel_size // 2, 1, groups
        self.act = bool(act)
        self.has_1x1 = groups < out_channels
        if not self.has_1x1 and in_channels != out_channels:
            raise ValueError(f"{name} with groups >= out_channels pools its input: in_channels must equal out_channels")
        self.internal_channels = internal_channels or (in_channels if self.has_1x1 else 2 * in_channels)
        self._init_form(deploy)

    def _build_train(self) -> None:
        c_in, c_out, k, s, p, g, t = (self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                                      self.groups, self.internal_channels)
        self.dbb_origin = ConvBn(c_in, c_out, k, s, p, g)
        if self.has_1x1:
            avg = OrderedDict(conv=nn.Conv2d(c_in, c_out, 1, 1, 0, groups=g, bias=False), bn=BNAndPad(p, c_out),
                              avg=nn.AvgPool2d(k, s, 0))
        else:
            avg = OrderedDict(avg=nn.AvgPool2d(k, s, p))
        avg["avgbn"] = nn.BatchNorm2d(c_out)
        self.dbb_avg = nn.Sequential(avg)
        if self.has_1x1:
            self.dbb_1x1 = ConvBn(c_in, c_out, 1, s, 0, g)
        first = (OrderedDict(idconv1=IdentityBasedConv1x1(c_in, g)) if t == c_in
                 else OrderedDict(conv1=nn.Conv2d(c_in, t, 1, 1, 0, groups=g, bias=False)))
        self.dbb_1x1_kxk = nn.Sequential(OrderedDict(
            **first, bn1=BNAndPad(p, t), conv2=nn.Conv2d(t, c_out, k, s, 0, groups=g, bias=False),
            bn2=nn.BatchNorm2d(c_out)))

    def _build_deploy(self) -> None:
        self.dbb_reparam = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                                     groups=self.groups, bias=True)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dbb_origin(x)
        if self.has_1x1:
            y = y + self.dbb_1x1(x)
        return y + self.dbb_avg(x) + self.dbb_1x1_kxk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            y = self.dbb_reparam(x)
        else:
            y = self._train_forward(x)
        return F.relu(y) if self.act else y

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """Each branch as one k×k conv with bias, then summed (``sum_branches``)::

            origin, 1x1:   fused_conv_bn (the 1x1 padded to k×k)
            1x1 → k×k:     compose_1x1_kxk(fuse(idconv1 + Id, bn1), fuse(conv2, bn2))
            1x1 → avg:     fuse(conv, bn) = (a1, d1), then the pool and avgbn (t, s) per channel:
                           K = t·a1 ⊗ avg, b = s + t·d1  (= compose_1x1_kxk with fuse(average_kernel, avgbn))
                           (depthwise: fuse(average_kernel, avgbn) alone)
        """
        k, g = self.kernel_size, self.groups
        dtype = sd["dbb_origin.conv.weight"].dtype
        branches = [fused_conv_bn(sd, "dbb_origin.conv.weight", "dbb_origin.bn.")]
        if self.has_1x1:
            branches.append(fused_conv_bn(sd, "dbb_1x1.conv.weight", "dbb_1x1.bn."))
        if "dbb_1x1_kxk.idconv1.weight" in sd:
            w = sd["dbb_1x1_kxk.idconv1.weight"]
            first = w + identity_kernel(self.in_channels, g, 1, dtype=w.dtype, device=w.device)
        else:
            first = sd["dbb_1x1_kxk.conv1.weight"]
        f1, c1 = fuse_conv_bn(first, *bn_args(sd, "dbb_1x1_kxk.bn1.bn."), BN_EPS)
        f2, c2 = fused_conv_bn(sd, "dbb_1x1_kxk.conv2.weight", "dbb_1x1_kxk.bn2.")
        branches.append(compose_1x1_kxk(f1, f2, g, c1, c2))
        if self.has_1x1:
            # compose_1x1_kxk(a1, fuse(average_kernel, avgbn)) without the zeros of the averaging kernel:
            # K[o, i] = t[o]·a1[o, i]·avg, b[o] = s[o] + t[o]·d1[o] (average pooling is per channel)
            a1, d1 = fused_conv_bn(sd, "dbb_avg.conv.weight", "dbb_avg.bn.bn.")
            t, s = bn_scale_shift(*bn_args(sd, "dbb_avg.avgbn."), BN_EPS)
            avg = average_pattern(k, dtype=a1.dtype, device=a1.device)
            branches.append((pattern_kernel(scale_kernel(a1, t), avg), s + t * d1))
        else:
            avg = average_kernel(self.out_channels, g, k, dtype=f2.dtype, device=f2.device)
            branches.append(fuse_conv_bn(avg, *bn_args(sd, "dbb_avg.avgbn."), BN_EPS))
        return conv_state("dbb_reparam.", *sum_branches(branches, k), dtype)
