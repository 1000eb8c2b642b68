"""RepMLPNet's block (DingXiaoH/RepMLP, ``repmlpnet.py``): a partition FC with a global perceptron
and, at training time, depthwise conv branches that locality injection merges into the FC.

Keys (relative to the block), train form::

    gp.fc1.{weight,bias}  gp.fc2.{weight,bias}        global perceptron (1x1 convs, C → C/r → C)
    fc3.weight            (S·hw, hw, 1, 1)           the partition FC, S kernel sets of hw×hw
    fc3_bn.*              BN over the S sets
    repconv{k}.conv.weight (S, 1, k, k), repconv{k}.bn.*   one depthwise conv-BN per k, in the order given

Deploy form: ``gp.*``, ``fc3.weight`` and ``fc3.bias`` (S·hw): the BNs and conv branches live in the FC.
"""

from typing import Mapping, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError
from ..reparam import BN_EPS, ReparamBlock, bn_args, conv_state, fuse_fc_bn, fused_conv_bn, inject_locality_, sum_branches
from .conv_bn import ConvBn

__all__ = ["GlobalPerceptron", "PartitionFC", "RepMLPBlock"]


class GlobalPerceptron(nn.Module):
    """``sigmoid(fc2(relu(fc1(mean over H, W of x))))``, an ``N×C×1×1`` gate; keys ``fc1.*``, ``fc2.*``."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x))))


class PartitionFC(nn.Conv2d):
    """The partition FC ``fc3``: a 1x1 conv of ``sets`` groups over ``(rows, sets·hw, 1, 1)``.

    Its parameters are the reference's ``Conv2d(S·hw, S·hw, 1, groups=S)`` (same shapes, same
    initialization); it computes the same function as a batched matrix product, which is several
    times faster on CPU than a grouped convolution of 1x1 images:
    ``out[r, s, p] = Σ_q W[s·hw + p, q] · x[r, s, q] (+ b[s·hw + p])``.
    """

    def __init__(self, sets: int, hw: int, bias: bool = False):
        super().__init__(sets * hw, sets * hw, 1, groups=sets, bias=bias)
        self.sets, self.hw = sets, hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, sets, hw = x.shape[0], self.sets, self.hw
        weight = self.weight.view(sets, hw, hw)
        if sets == 1:
            out = F.linear(x.reshape(rows, hw), weight[0], self.bias)
        else:
            out = torch.matmul(x.reshape(rows, sets, hw).transpose(0, 1), weight.transpose(1, 2)).transpose(0, 1)
            bias = self.bias
            if bias is not None:
                out = out + bias.view(sets, hw)
        return out.reshape(rows, sets * hw, 1, 1)


def checked_partitions(x: torch.Tensor, h: int, w: int, channels: int) -> torch.Tensor:
    """``x`` when it has ``channels`` channels and cuts into ``h×w`` partitions; else an error saying what
    fits. torch.fx records it as one call (the check runs on the real input, not the traced shape)."""
    c, height, width = x.shape[1], x.shape[2], x.shape[3]
    if height % h != 0 or width % w != 0 or height == 0 or width == 0:
        raise InvalidArgumentError(
            f"RepMLPBlock cuts its input into {h}x{w} partitions: the height must be a multiple of {h} "
            f"({h}, {2 * h}, {3 * h}, ...) and the width a multiple of {w} ({w}, {2 * w}, {3 * w}, ...), "
            f"not {height}x{width}")
    if c != channels:
        raise InvalidArgumentError(f"RepMLPBlock has {channels} channels, not {c}")
    return x


torch.fx.wrap("checked_partitions")


class RepMLPBlock(ReparamBlock):
    """``FC(partitions of x) · GP(x)``, with ``BN(FC) + Σ_k BN_k(conv_k)`` on each partition at training time.

    The input ``(N, C, H, W)`` is cut into ``h×w`` partitions (``H``, ``W`` multiples of ``h``, ``w``);
    channel ``c`` of each partition uses kernel set ``c mod S`` of the FC (``S = num_sharesets``),
    as in the reference. The conv branches (depthwise ``k×k``, zero padding ``k // 2``) work inside
    each partition, so locality injection folds them exactly into the FC (:mod:`repzoo.reparam.mlp`).
    The global perceptron pools the whole input and gates the output.

    Unlike the reference, an input of several partitions is computed partition by partition
    (the reference mixes partitions with channel groups when ``H > h`` or ``W > w``), and a size
    that is no multiple of the partition raises :class:`~repzoo.errors.InvalidArgumentError`.

    Args follow the reference's ``RepMLPBlock``: ``in_channels == out_channels``, ``h``, ``w`` the
    partition, ``reparam_conv_k`` the odd conv kernel sizes (``None`` or ``()``: FC only),
    ``globalperceptron_reduce`` the GP's reduction, ``num_sharesets`` the FC's kernel sets (divides C).
    """

    __constants__ = ReparamBlock.__constants__ + ["h", "w", "sets", "channels"]

    def __init__(self, in_channels: int, out_channels: int, h: int, w: int,
                 reparam_conv_k: Optional[Sequence[int]] = None, globalperceptron_reduce: int = 4,
                 num_sharesets: int = 1, deploy: bool = False):
        super().__init__()
        if in_channels != out_channels:
            raise InvalidArgumentError(f"RepMLPBlock keeps its width: in_channels ({in_channels}) must equal "
                                       f"out_channels ({out_channels})")
        kernels = tuple(int(k) for k in (reparam_conv_k or ()))
        if any(k < 1 or k % 2 == 0 for k in kernels) or len(set(kernels)) != len(kernels):
            raise InvalidArgumentError(f"reparam_conv_k must be distinct odd kernel sizes, not {reparam_conv_k}")
        if h < 1 or w < 1 or num_sharesets < 1 or in_channels % num_sharesets:
            raise InvalidArgumentError(f"RepMLPBlock needs h, w >= 1 and num_sharesets dividing the channels; got "
                                       f"h={h}, w={w}, num_sharesets={num_sharesets}, channels={in_channels}")
        hidden = in_channels // globalperceptron_reduce
        if hidden < 1:
            raise InvalidArgumentError(f"globalperceptron_reduce={globalperceptron_reduce} leaves no hidden channel "
                                       f"of {in_channels}")
        self.channels, self.h, self.w, self.sets = in_channels, h, w, num_sharesets
        self.reparam_conv_k: Tuple[int, ...] = kernels
        self.globalperceptron_reduce = globalperceptron_reduce
        self.gp = GlobalPerceptron(in_channels, hidden)
        self._init_form(deploy)

    # ------------------------------------------------------------------ forms
    def _build_train(self) -> None:
        s, hw = self.sets, self.h * self.w
        self.fc3 = PartitionFC(s, hw, bias=False)
        self.fc3_bn = nn.BatchNorm2d(s)
        for k in self.reparam_conv_k:
            self.add_module(f"repconv{k}", ConvBn(s, s, k, 1, k // 2, groups=s))

    def _build_deploy(self) -> None:
        self.fc3 = PartitionFC(self.sets, self.h * self.w, bias=True)

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> dict:
        """Locality injection: ``W = t_fc·W3 + conv_to_fc(Σ_k pad(t_k·K_k))``, ``b = s_fc + Σ_k s_k``
        (per set, repeated over the ``hw`` positions), with ``t, s`` each BN's scale and shift."""
        fc = fuse_fc_bn(sd["fc3.weight"], *bn_args(sd, "fc3_bn."), BN_EPS)
        branches = [fused_conv_bn(sd, f"repconv{k}.conv.weight", f"repconv{k}.bn.") for k in self.reparam_conv_k]
        conv = sum_branches(branches, max(self.reparam_conv_k)) if branches else None
        kernel, bias = inject_locality_(fc, conv, self.h, self.w)
        return conv_state("fc3.", kernel, bias, sd["fc3.weight"].dtype)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_partitions(x) * self.gp(x)

    def forward_partitions(self, x: torch.Tensor) -> torch.Tensor:
        """The block without its gate: FC (and conv branches) on each ``h×w`` partition of ``x``."""
        x = checked_partitions(x, self.h, self.w, self.channels)
        n, c, height, width = x.shape
        h, w, s = self.h, self.w, self.sets
        hp, wp = height // h, width // w
        # (n, c, hp, h, wp, w) -> (n, hp, wp, c, h, w) -> rows of S channels of one partition
        v = x.reshape(n, c, hp, h, wp, w).permute(0, 2, 4, 1, 3, 5).reshape(-1, s * h * w, 1, 1)
        z = self.fc3(v).reshape(-1, s, h, w)
        if not self.deploy:
            z = self.fc3_bn(z)
            tiles = v.reshape(-1, s, h, w)
            for name, branch in self.named_children():
                if name.startswith("repconv"):
                    z = z + branch(tiles)
        return z.reshape(n, hp, wp, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, height, width)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, partition={self.h}x{self.w}, sets={self.sets}, "
                f"reparam_conv_k={self.reparam_conv_k}, deploy={self.deploy}")
