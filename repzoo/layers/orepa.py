"""OREPA: online convolutional re-parameterization (Hu et al., CVPR 2022; JUGGHM/OREPA_CVPR2022).

An OREPA layer holds the parameters of several linear branches (no BN inside them), squeezes
them into **one** kernel at every forward (train and eval alike) and runs one convolution and
one BN. It trains at a fraction of a multi-branch block's memory and time, and deploys as one
conv with bias (the BN folded into the generated kernel).

Layers, their train-time keys (relative to the layer) → deploy keys:

* :class:`OREPA` (k×k): ``weight_orepa_{origin, avg_conv, pfir_conv, 1x1, 1x1_kxk_idconv1,
  1x1_kxk_conv2, gconv_dw, gconv_pw}``, ``vector`` (6, out), the buffers ``weight_orepa_avg_avg``,
  ``id_tensor``, ``weight_orepa_prior``, then ``bn.*`` → ``orepa_reparam.{weight, bias}``;
* :class:`OREPA1x1`: ``weight_or1x1_{origin, l2i_conv1, l2i_conv2}``, ``vector`` (2, out), ``bn.*``
  → ``or1x1_reparam.*``;
* :class:`OREPALargeConv` (the 7x7 stem): ``weight0 … weight{L-1}.*`` (each an :class:`OREPAKernel`:
  the OREPA keys without ``bn``), ``bn.*`` → ``or_large_reparam.*``;
* :class:`OREPARepVGGBlock`: ``rbr_identity.*``, ``rbr_dense.weight_rbr_*``, ``rbr_dense.vector``
  (5 or 6, out), its buffers, ``rbr_dense.bn.*``, ``rbr_1x1.{conv, bn}.*`` → ``rbr_reparam.*``.

The kernel of an :class:`OREPA` layer (``v_r = vector[r]`` scales output channel ``o``;
``g`` groups, ``I = in/g``, ``T`` the internal width)::

    K = v0·W_origin + v1·(A ⊗ avg) + v2·(B ⊗ prior) + v3·(C2 ∘ (C1 + Id)) + v4·pad(W_1x1) + v5·(pw ∘ dw)

with the functions of :mod:`repzoo.reparam.orepa` (``pattern_kernel``, ``compose_1x1_kxk``,
``dw_pw_kernel`` with the reference's interleaved row order, ``scaled_sum``; the large-kernel
stem composes its 3x3 kernels with ``chain_kernels``). The layers and :meth:`fuse_state_dict`
call the same functions, so a checkpoint converts to exactly what the layer computes.

The constant buffers (``weight_orepa_avg_avg`` = 1/k², the ``weight_orepa_prior`` frequency
prior, the ``id_tensor`` identity) are persistent, as in the reference: a released file brings
its own (float32-rounded) values and both the forward and the conversion use them as stored.
A fresh layer builds them in its own dtype and device.
"""

from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..reparam import (BN_EPS, ReparamBlock, average_pattern, bn_args, chain_kernels, compose_1x1_kxk_kernel, conv_state,
                       dw_pw_kernel, fuse_conv_bn, fused_bn, fused_conv_bn, identity_kernel, orepa_prior,
                       pattern_kernel, scale_kernel, scaled_sum, sum_branches)
from .conv_bn import ConvBn
from .repvgg_block import RepVGGBlock

__all__ = [
    "OREPA",
    "OREPA1x1",
    "OREPAKernel",
    "OREPALargeConv",
    "OREPAVGGConv",
    "OREPARepVGGBlock",
    "orepa_layer",
    "orepa_kernel",
    "orepa_internal_channels",
]

StateDict = Dict[str, torch.Tensor]
Tensors = Mapping[str, torch.Tensor]

#: OREPA's depthwise-separable branch: filters per input channel.
GCONV_MULTIPLIER = 8


def orepa_internal_channels(in_channels: int, groups: int) -> int:
    """OREPA's default width ``T`` of the 1x1 → k×k branch: ``in`` if ``groups <= 4``, else ``2·in``."""
    return in_channels if groups <= 4 else 2 * in_channels


def _sub(sd: Tensors, prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _work(sd: Tensors) -> StateDict:
    """Tensors in at least float32, for conversions (half-precision weights lose no digits)."""
    return {k: v.to(torch.promote_types(v.dtype, torch.float32)) if v.is_floating_point() else v for k, v in sd.items()}


def _check_padding(name: str, kernel_size: int, padding: Optional[int]) -> int:
    if kernel_size % 2 != 1:
        raise ValueError(f"{name} needs an odd kernel_size, not {kernel_size}")
    if padding is not None and padding != kernel_size // 2:
        raise ValueError(f"{name} pads by kernel_size // 2 = {kernel_size // 2} (its branches assume it), "
                         f"not {padding}")
    return kernel_size // 2


def _check_groups(name: str, in_channels: int, out_channels: int, groups: int) -> None:
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                         f"divisible by groups ({groups})")


def _constant(make, shape) -> torch.Tensor:
    """A constant buffer: ``make()``, or an empty tensor when built on the ``meta`` device (shapes only;
    the values come from a checkpoint or :meth:`reset_parameters`)."""
    if torch.empty(0).is_meta:
        return torch.empty(shape)
    return make()


# ----------------------------------------------------------------------------- the k×k kernel

def orepa_kernel(t: Dict[str, torch.Tensor], groups: int, kernel_size: int,
                 multiplier: int = GCONV_MULTIPLIER) -> torch.Tensor:
    """The online kernel of an :class:`OREPA` layer from its tensors (its state-dict keys)::

        K = v0·W_origin + v1·(A ⊗ avg) + v2·(B ⊗ prior) + v3·(C2 ∘ (C1 + Id)) + v4·pad(W_1x1)
            + v5·(pw ∘ dw)                                            (v_r = vector[r], per output channel)

    ``A ⊗ avg`` and ``B ⊗ prior``: :func:`~repzoo.reparam.pattern_kernel`; ``C2 ∘ C1``:
    :func:`~repzoo.reparam.compose_1x1_kxk`; ``pw ∘ dw``: :func:`~repzoo.reparam.dw_pw_kernel`
    (8 filters per channel, interleaved rows). Each scale multiplies the smallest factor it can.
    """
    v = t["vector"]
    first = t["weight_orepa_1x1_kxk_idconv1"] + t["id_tensor"].to(v.dtype)
    terms: List[Tuple[torch.Tensor, Optional[torch.Tensor]]] = [
        (t["weight_orepa_origin"], v[0]),
        (pattern_kernel(scale_kernel(t["weight_orepa_avg_conv"], v[1]), t["weight_orepa_avg_avg"]), None),
        (pattern_kernel(scale_kernel(t["weight_orepa_pfir_conv"], v[2]), t["weight_orepa_prior"]), None),
        (compose_1x1_kxk_kernel(first, scale_kernel(t["weight_orepa_1x1_kxk_conv2"], v[3]), groups), None),
        (scale_kernel(t["weight_orepa_1x1"], v[4]), None),
        (dw_pw_kernel(t["weight_orepa_gconv_dw"], t["weight_orepa_gconv_pw"], groups, multiplier, scale=v[5]), None),
    ]
    return scaled_sum(terms, kernel_size)


class _OREPABranches:
    """The branch tensors of an OREPA k×k layer, registered on the layer itself (the reference's
    key names); the host sets ``in_channels``, ``out_channels``, ``kernel_size``, ``groups`` and
    ``internal_channels`` first."""

    in_channels: int
    out_channels: int
    kernel_size: int
    groups: int
    internal_channels: int

    def _add_branches(self) -> None:
        c_in, c_out, k, g = self.in_channels, self.out_channels, self.kernel_size, self.groups
        t, i = self.internal_channels, c_in // g
        dtype = torch.get_default_dtype()
        shapes = [("weight_orepa_origin", (c_out, i, k, k)), ("weight_orepa_avg_conv", (c_out, i, 1, 1)),
                  ("weight_orepa_pfir_conv", (c_out, i, 1, 1)), ("weight_orepa_1x1", (c_out, i, 1, 1)),
                  ("weight_orepa_1x1_kxk_idconv1", (t, i, 1, 1)), ("weight_orepa_1x1_kxk_conv2", (c_out, t // g, k, k)),
                  ("weight_orepa_gconv_dw", (GCONV_MULTIPLIER * c_in, 1, k, k)),
                  ("weight_orepa_gconv_pw", (c_out, GCONV_MULTIPLIER * i, 1, 1)), ("vector", (6, c_out))]
        for name, shape in shapes:
            setattr(self, name, nn.Parameter(torch.empty(shape)))
        self.register_buffer("weight_orepa_avg_avg", _constant(lambda: average_pattern(k, dtype=dtype), (k, k)))
        self.register_buffer("id_tensor", _constant(lambda: identity_kernel(t, t // i, 1, dtype=dtype), (t, i, 1, 1)))
        self.register_buffer("weight_orepa_prior", _constant(lambda: orepa_prior(c_out, k, dtype=dtype), (c_out, k, k)))
        self._init_branches()

    def _branch_tensors(self) -> Dict[str, torch.Tensor]:
        """The branch tensors by key, read attribute by attribute: TorchScript compiles this, and
        torch.fx records each read, so a traced module composes its kernel from its current weights."""
        return {"vector": self.vector, "weight_orepa_origin": self.weight_orepa_origin,
                "weight_orepa_avg_conv": self.weight_orepa_avg_conv, "weight_orepa_avg_avg": self.weight_orepa_avg_avg,
                "weight_orepa_pfir_conv": self.weight_orepa_pfir_conv, "weight_orepa_prior": self.weight_orepa_prior,
                "weight_orepa_1x1_kxk_idconv1": self.weight_orepa_1x1_kxk_idconv1, "id_tensor": self.id_tensor,
                "weight_orepa_1x1_kxk_conv2": self.weight_orepa_1x1_kxk_conv2,
                "weight_orepa_1x1": self.weight_orepa_1x1, "weight_orepa_gconv_dw": self.weight_orepa_gconv_dw,
                "weight_orepa_gconv_pw": self.weight_orepa_gconv_pw}

    @torch.no_grad()
    def _init_branches(self) -> None:
        """The reference's initialization: Kaiming-uniform (a = 0) branches, a zero ``idconv1``, and
        ``vector`` rows 0.25, 0.25, 0, 0.5, 1, 0.5 (origin, avg, prior, 1x1-k×k, 1x1, gconv)."""
        for name in ("weight_orepa_origin", "weight_orepa_avg_conv", "weight_orepa_pfir_conv", "weight_orepa_1x1",
                     "weight_orepa_1x1_kxk_conv2", "weight_orepa_gconv_dw", "weight_orepa_gconv_pw"):
            nn.init.kaiming_uniform_(getattr(self, name), a=0.0)
        nn.init.zeros_(self.weight_orepa_1x1_kxk_idconv1)
        for row, value in enumerate((0.25, 0.25, 0.0, 0.5, 1.0, 0.5)):
            self.vector[row].fill_(value)

    @torch.no_grad()
    def _reset_constants(self) -> None:
        if self.weight_orepa_prior.is_meta:
            return
        k, t, i = self.kernel_size, self.internal_channels, self.in_channels // self.groups
        for name, value in (("weight_orepa_avg_avg", average_pattern(k)),
                            ("id_tensor", identity_kernel(t, t // i, 1)),
                            ("weight_orepa_prior", orepa_prior(self.out_channels, k))):
            buf = getattr(self, name)
            buf.copy_(value.to(device=buf.device, dtype=buf.dtype))


class OREPAKernel(_OREPABranches, nn.Module):
    """The branches of an OREPA k×k layer without a BN or a convolution: ``forward()`` returns the
    kernel (the reference's ``OREPA(weight_only=True)``; the pieces of :class:`OREPALargeConv`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, groups: int = 1,
                 internal_channels: Optional[int] = None):
        super().__init__()
        _check_padding(type(self).__name__, kernel_size, None)
        _check_groups(type(self).__name__, in_channels, out_channels, groups)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.groups = groups
        self.internal_channels = internal_channels or orepa_internal_channels(in_channels, groups)
        self._add_branches()

    def reset_parameters(self) -> None:
        self._init_branches()
        self._reset_constants()

    def forward(self) -> torch.Tensor:
        return orepa_kernel(self._branch_tensors(), self.groups, self.kernel_size)


class OREPA(_OREPABranches, ReparamBlock):
    """OREPA's k×k layer: ``act(bn(conv2d(x, K)))`` with the online kernel ``K`` (:func:`orepa_kernel`),
    one conv with bias (``orepa_reparam``) at deploy.

    Arguments as ``nn.Conv2d`` (``padding`` is ``kernel_size // 2``, no ``bias``: a BN follows);
    ``internal_channels``: the width ``T`` of the 1x1 → k×k branch (default
    :func:`orepa_internal_channels`); ``act``: a ReLU after the BN.
    """

    __constants__ = ReparamBlock.__constants__ + ["act"]

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: Optional[int] = None, dilation: int = 1, groups: int = 1,
                 internal_channels: Optional[int] = None, act: bool = False, deploy: bool = False):
        super().__init__()
        self.padding = _check_padding(type(self).__name__, kernel_size, padding)
        _check_groups(type(self).__name__, in_channels, out_channels, groups)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.dilation, self.groups, self.act = stride, dilation, groups, bool(act)
        self.internal_channels = internal_channels or orepa_internal_channels(in_channels, groups)
        self._init_form(deploy)

    def _build_train(self) -> None:
        self._add_branches()
        self.bn = nn.BatchNorm2d(self.out_channels)

    def _build_deploy(self) -> None:
        self.orepa_reparam = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                                       self.padding, self.dilation, self.groups, bias=True)

    def reset_parameters(self) -> None:
        if not self.deploy:
            self._init_branches()
            self._reset_constants()

    def weight_gen(self) -> torch.Tensor:
        """The online kernel (train form only)."""
        return orepa_kernel(self._branch_tensors(), self.groups, self.kernel_size)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.conv2d(x, self.weight_gen(), None, self.stride, self.padding, self.dilation, self.groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            y = self.orepa_reparam(x)
        else:
            y = self._train_forward(x)
        return F.relu(y) if self.act else y

    def fuse_state_dict(self, sd: Tensors) -> StateDict:
        """``fuse_conv_bn(orepa_kernel(sd), bn)``: exact, the train forward convolves with that kernel."""
        work = _work(sd)
        kernel = orepa_kernel(work, self.groups, self.kernel_size)
        return conv_state("orepa_reparam.", *fuse_conv_bn(kernel, *bn_args(work, "bn."), BN_EPS),
                          sd["weight_orepa_origin"].dtype)


# ----------------------------------------------------------------------------- 1x1

def orepa_1x1_kernel(t: Dict[str, torch.Tensor]) -> torch.Tensor:
    """``K[o, i] = v0[o]·origin[o, i] + v1[o]·Σ_t conv2[o, t]·conv1[t, i]`` (:class:`OREPA1x1`)."""
    v = t["vector"]
    terms: List[Tuple[torch.Tensor, Optional[torch.Tensor]]] = [
        (t["weight_or1x1_origin"], v[0]),
        (compose_1x1_kxk_kernel(t["weight_or1x1_l2i_conv1"], scale_kernel(t["weight_or1x1_l2i_conv2"], v[1])),
         None)]
    return scaled_sum(terms, 1)


class OREPA1x1(ReparamBlock):
    """OREPA's 1x1 layer: ``act(bn(conv2d(x, K, stride)))``, ``K = v0·W + v1·(W2 ∘ W1)``; deploy ``or1x1_reparam``.

    The 1x1 → 1x1 branch widens through ``min(in, out)`` channels; its square factor (``l2i_conv1``
    when ``out > in``, else ``l2i_conv2``) is a trainable parameter that starts as the identity.
    ``groups`` must be 1 (as in the reference).
    """

    __constants__ = ReparamBlock.__constants__ + ["act"]

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, act: bool = False, deploy: bool = False):
        super().__init__()
        if kernel_size != 1 or padding != 0 or groups != 1:
            raise ValueError(f"OREPA1x1 is a 1x1 conv without padding or groups (got kernel_size={kernel_size}, "
                             f"padding={padding}, groups={groups}); use OREPA for the others")
        self.in_channels, self.out_channels, self.stride, self.act = in_channels, out_channels, stride, bool(act)
        self.kernel_size, self.padding, self.dilation, self.groups = 1, 0, dilation, 1
        self._init_form(deploy)

    def _build_train(self) -> None:
        c_in, c_out = self.in_channels, self.out_channels
        mid = min(c_in, c_out)
        self.weight_or1x1_origin = nn.Parameter(torch.empty(c_out, c_in, 1, 1))
        self.weight_or1x1_l2i_conv1 = nn.Parameter(torch.empty(mid, c_in, 1, 1))
        self.weight_or1x1_l2i_conv2 = nn.Parameter(torch.empty(c_out, mid, 1, 1))
        self.vector = nn.Parameter(torch.empty(2, c_out))
        self.bn = nn.BatchNorm2d(c_out)
        self.reset_parameters()

    def _build_deploy(self) -> None:
        self.or1x1_reparam = nn.Conv2d(self.in_channels, self.out_channels, 1, self.stride, 0, bias=True)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming-uniform (a = 1) origin and non-square factor, the identity square factor, ``vector`` = 1, 0.5."""
        if self.deploy:
            return
        nn.init.kaiming_uniform_(self.weight_or1x1_origin, a=1.0)
        conv1, conv2 = self.weight_or1x1_l2i_conv1, self.weight_or1x1_l2i_conv2
        square, other = (conv1, conv2) if self.out_channels > self.in_channels else (conv2, conv1)
        nn.init.kaiming_uniform_(other, a=1.0)
        square.copy_(torch.eye(square.shape[0], dtype=square.dtype, device=square.device).reshape(square.shape))
        self.vector[0].fill_(1.0)
        self.vector[1].fill_(0.5)

    def weight_gen(self) -> torch.Tensor:
        return orepa_1x1_kernel({"vector": self.vector, "weight_or1x1_origin": self.weight_or1x1_origin,
                                 "weight_or1x1_l2i_conv1": self.weight_or1x1_l2i_conv1,
                                 "weight_or1x1_l2i_conv2": self.weight_or1x1_l2i_conv2})

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.conv2d(x, self.weight_gen(), None, self.stride, 0, self.dilation, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            y = self.or1x1_reparam(x)
        else:
            y = self._train_forward(x)
        return F.relu(y) if self.act else y

    def fuse_state_dict(self, sd: Tensors) -> StateDict:
        """``fuse_conv_bn(orepa_1x1_kernel(sd), bn)``."""
        work = _work(sd)
        return conv_state("or1x1_reparam.", *fuse_conv_bn(orepa_1x1_kernel(work), *bn_args(work, "bn."), BN_EPS),
                          sd["weight_or1x1_origin"].dtype)


# ----------------------------------------------------------------------------- the large-kernel stem

class OREPALargeConv(ReparamBlock):
    """OREPA's large-kernel layer (the 7x7 ResNet stem): ``L = (k − 1) / 2`` stacked 3x3 OREPA kernels
    (``weight0`` … ``weight{L-1}``, each an :class:`OREPAKernel`: in → out, then out → out) composed
    into one k×k kernel (:func:`~repzoo.reparam.chain_kernels`), then ``act(bn(conv2d(x, K, stride)))``.
    Deploy: ``or_large_reparam``.

    Every piece is grouped by ``groups`` (the reference leaves the last one ungrouped, which only a
    grouped stem, never built there, would notice).
    """

    __constants__ = ReparamBlock.__constants__ + ["act"]
    MAX_PIECES = 5

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 7, stride: int = 1,
                 padding: Optional[int] = None, dilation: int = 1, groups: int = 1, act: bool = False,
                 deploy: bool = False):
        super().__init__()
        self.padding = _check_padding(type(self).__name__, kernel_size, padding)
        if kernel_size <= 3:
            raise ValueError(f"OREPALargeConv composes 3x3 kernels into a larger one: kernel_size must be > 3, "
                             f"not {kernel_size} (use OREPA)")
        _check_groups(type(self).__name__, in_channels, out_channels, groups)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.dilation, self.groups, self.act = stride, dilation, groups, bool(act)
        self.num_kernels = (kernel_size - 1) // 2
        if self.num_kernels > self.MAX_PIECES:
            raise ValueError(f"OREPALargeConv composes at most {self.MAX_PIECES} 3x3 kernels: kernel_size "
                             f"{2 * self.MAX_PIECES + 1} at most, not {kernel_size}")
        self._init_form(deploy)

    def _build_train(self) -> None:
        for i in range(self.num_kernels):
            c_in = self.in_channels if i == 0 else self.out_channels
            self.add_module(f"weight{i}", OREPAKernel(c_in, self.out_channels, 3, self.groups))
        self.bn = nn.BatchNorm2d(self.out_channels)

    def _build_deploy(self) -> None:
        self.or_large_reparam = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                                          self.padding, self.dilation, self.groups, bias=True)

    def _kernel(self, t: Tensors) -> torch.Tensor:
        parts = [orepa_kernel(_sub(t, f"weight{i}."), self.groups, 3) for i in range(self.num_kernels)]
        return chain_kernels(parts, self.groups)

    def weight_gen(self) -> torch.Tensor:
        # spelled out (TorchScript resolves no computed attribute names): up to MAX_PIECES pieces
        parts: List[torch.Tensor] = [self.weight0()]
        if hasattr(self, "weight1"):
            parts.append(self.weight1())
        if hasattr(self, "weight2"):
            parts.append(self.weight2())
        if hasattr(self, "weight3"):
            parts.append(self.weight3())
        if hasattr(self, "weight4"):
            parts.append(self.weight4())
        return chain_kernels(parts, self.groups)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.conv2d(x, self.weight_gen(), None, self.stride, self.padding, self.dilation, self.groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            y = self.or_large_reparam(x)
        else:
            y = self._train_forward(x)
        return F.relu(y) if self.act else y

    def fuse_state_dict(self, sd: Tensors) -> StateDict:
        """``fuse_conv_bn(chain_kernels([orepa_kernel(weight_i) …]), bn)``."""
        work = _work(sd)
        return conv_state("or_large_reparam.", *fuse_conv_bn(self._kernel(work), *bn_args(work, "bn."), BN_EPS),
                          sd["weight0.weight_orepa_origin"].dtype)


def orepa_layer(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                act: bool = False, deploy: bool = False) -> ReparamBlock:
    """The OREPA layer for a ``kernel_size`` conv-BN, as the reference picks it: :class:`OREPA1x1` for 1x1,
    :class:`OREPA` below 7, :class:`OREPALargeConv` from 7 on (padding ``k // 2`` throughout)."""
    if kernel_size == 1:
        return OREPA1x1(in_channels, out_channels, 1, stride, groups=groups, act=act, deploy=deploy)
    cls = OREPALargeConv if kernel_size >= 7 else OREPA
    return cls(in_channels, out_channels, kernel_size, stride, groups=groups, act=act, deploy=deploy)


# ----------------------------------------------------------------------------- OREPA's RepVGG block

def orepa_vgg_kernel(t: Dict[str, torch.Tensor], multiplier: int = GCONV_MULTIPLIER) -> torch.Tensor:
    """The kernel of :class:`OREPAVGGConv` (``v_r = vector[r]``; no 1x1 branch; row 5, if any, unused)::

        K = v0·W_origin + v1·(A ⊗ avg) + v2·(B ⊗ prior) + v3·(C2 ∘ C1) + v4·(pw ∘ dw)

    ``C1 = idconv1 + Id`` (or ``conv1``); ``pw`` has ``8·in`` columns (groups = 1).
    """
    v = t["vector"]
    if "weight_rbr_1x1_kxk_idconv1" in t:
        first = t["weight_rbr_1x1_kxk_idconv1"] + t["id_tensor"].to(v.dtype)
    else:
        first = t["weight_rbr_1x1_kxk_conv1"]
    k = t["weight_rbr_origin"].shape[-1]
    terms: List[Tuple[torch.Tensor, Optional[torch.Tensor]]] = [
        (t["weight_rbr_origin"], v[0]),
        (pattern_kernel(scale_kernel(t["weight_rbr_avg_conv"], v[1]), t["weight_rbr_avg_avg"]), None),
        (pattern_kernel(scale_kernel(t["weight_rbr_pfir_conv"], v[2]), t["weight_rbr_prior"]), None),
        (compose_1x1_kxk_kernel(first, scale_kernel(t["weight_rbr_1x1_kxk_conv2"], v[3])), None),
        (dw_pw_kernel(t["weight_rbr_gconv_dw"], t["weight_rbr_gconv_pw"], 1, multiplier, scale=v[4]), None),
    ]
    return scaled_sum(terms, k)


class OREPAVGGConv(nn.Module):
    """The 3x3 branch of :class:`OREPARepVGGBlock` (the reference's ``OREPA_3x3_RepVGG``):
    ``bn(conv2d(x, K, stride, padding=1))`` with :func:`orepa_vgg_kernel`; no deploy form of its own
    (the block fuses it).

    ``vector`` has ``rows`` rows: 6 in a block with an identity branch, else 5. Row 5 is never
    used (the reference leaves it uninitialised; here it starts at 0); it is kept because the
    released files hold it. Kaiming-uniform (a = 1) branches, ``vector`` rows 0.25, 0.25, 0, 0.5, 0.5.
    """

    __constants__ = ["has_idconv"]

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, rows: int = 5,
                 internal_channels: Optional[int] = None):
        super().__init__()
        self.in_channels, self.out_channels, self.stride, self.kernel_size = in_channels, out_channels, stride, 3
        t = internal_channels or (in_channels if out_channels > 1 else 2 * in_channels)
        self.internal_channels = t
        c_in, c_out, k = in_channels, out_channels, 3
        dtype = torch.get_default_dtype()
        self.weight_rbr_origin = nn.Parameter(torch.empty(c_out, c_in, k, k))
        self.weight_rbr_avg_conv = nn.Parameter(torch.empty(c_out, c_in, 1, 1))
        self.weight_rbr_pfir_conv = nn.Parameter(torch.empty(c_out, c_in, 1, 1))
        self.has_idconv = t == c_in
        if self.has_idconv:
            self.weight_rbr_1x1_kxk_idconv1 = nn.Parameter(torch.empty(t, c_in, 1, 1))
        else:
            self.weight_rbr_1x1_kxk_conv1 = nn.Parameter(torch.empty(t, c_in, 1, 1))
        self.weight_rbr_1x1_kxk_conv2 = nn.Parameter(torch.empty(c_out, t, k, k))
        self.weight_rbr_gconv_dw = nn.Parameter(torch.empty(GCONV_MULTIPLIER * c_in, 1, k, k))
        self.weight_rbr_gconv_pw = nn.Parameter(torch.empty(c_out, GCONV_MULTIPLIER * c_in, 1, 1))
        self.vector = nn.Parameter(torch.empty(rows, c_out))
        self.register_buffer("weight_rbr_avg_avg", _constant(lambda: average_pattern(k, dtype=dtype), (k, k)))
        if self.has_idconv:
            self.register_buffer("id_tensor", _constant(lambda: identity_kernel(t, 1, 1, dtype=dtype), (t, c_in, 1, 1)))
        self.register_buffer("weight_rbr_prior", _constant(lambda: orepa_prior(c_out, k, dtype=dtype), (c_out, k, k)))
        self.bn = nn.BatchNorm2d(c_out)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, p in self.named_parameters(recurse=False):
            if name == "vector":
                p.zero_()
                for row, value in enumerate((0.25, 0.25, 0.0, 0.5, 0.5)):
                    p[row].fill_(value)
            elif name == "weight_rbr_1x1_kxk_idconv1":
                p.zero_()
            else:
                nn.init.kaiming_uniform_(p, a=1.0)
        if self.weight_rbr_prior.is_meta:
            return
        constants = {"weight_rbr_avg_avg": average_pattern(3), "weight_rbr_prior": orepa_prior(self.out_channels, 3)}
        if self.has_idconv:
            constants["id_tensor"] = identity_kernel(self.internal_channels, 1, 1)
        for name, value in constants.items():
            buf = getattr(self, name)
            buf.copy_(value.to(device=buf.device, dtype=buf.dtype))

    def weight_gen(self) -> torch.Tensor:
        t: Dict[str, torch.Tensor] = {
            "vector": self.vector, "weight_rbr_origin": self.weight_rbr_origin,
            "weight_rbr_avg_conv": self.weight_rbr_avg_conv, "weight_rbr_avg_avg": self.weight_rbr_avg_avg,
            "weight_rbr_pfir_conv": self.weight_rbr_pfir_conv, "weight_rbr_prior": self.weight_rbr_prior,
            "weight_rbr_1x1_kxk_conv2": self.weight_rbr_1x1_kxk_conv2,
            "weight_rbr_gconv_dw": self.weight_rbr_gconv_dw, "weight_rbr_gconv_pw": self.weight_rbr_gconv_pw}
        if self.has_idconv:
            t["weight_rbr_1x1_kxk_idconv1"] = self.weight_rbr_1x1_kxk_idconv1
            t["id_tensor"] = self.id_tensor
        else:
            t["weight_rbr_1x1_kxk_conv1"] = self.weight_rbr_1x1_kxk_conv1
        return orepa_vgg_kernel(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.conv2d(x, self.weight_gen(), None, self.stride, 1))


class OREPARepVGGBlock(RepVGGBlock):
    """OREPA's RepVGG block (the reference's ``RepVGGBlock_OREPA``, ``-t OREPA_VGG``):
    ``relu(rbr_dense(x) + rbr_1x1(x) + rbr_identity(x))`` with an :class:`OREPAVGGConv` as the 3x3
    branch (OREPA on the 3x3 branch only), ``rbr_reparam`` at deploy. ``groups`` must be 1.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, deploy: bool = False):
        if groups != 1:
            raise ValueError(f"OREPARepVGGBlock supports groups=1 only (the reference's grouped form fails), "
                             f"not {groups}")
        super().__init__(in_channels, out_channels, stride=stride, groups=1, se=None, deploy=deploy)

    def _build_train(self) -> None:
        c_in, c_out = self.in_channels, self.out_channels
        if self.has_identity:
            self.rbr_identity = nn.BatchNorm2d(c_in)
        self.rbr_dense = OREPAVGGConv(c_in, c_out, self.stride, rows=6 if self.has_identity else 5)
        self.rbr_1x1 = ConvBn(c_in, c_out, 1, self.stride, 0)

    def fuse_state_dict(self, sd: Tensors) -> StateDict:
        """``K = fuse(orepa_vgg_kernel, dense BN) + pad(K1·t1) + Id·t_id``, ``b = Σ (β − μ·t)``."""
        work = _work(sd)
        dense = _sub(work, "rbr_dense.")
        branches = [fuse_conv_bn(orepa_vgg_kernel(dense), *bn_args(dense, "bn."), BN_EPS),
                    fused_conv_bn(work, "rbr_1x1.conv.weight", "rbr_1x1.bn.")]
        if self.has_identity:
            branches.append(fused_bn(work, "rbr_identity.", self.in_channels, 1, kernel_size=1))
        return conv_state("rbr_reparam.", *sum_branches(branches, 3), sd["rbr_dense.weight_rbr_origin"].dtype)


# torch.fx records these kernel compositions as calls on the traced parameters (a traced model keeps
# following its weights) instead of tracing through their shape-dependent code.
torch.fx.wrap("orepa_kernel")
torch.fx.wrap("orepa_1x1_kernel")
torch.fx.wrap("orepa_vgg_kernel")
torch.fx.wrap("chain_kernels")
