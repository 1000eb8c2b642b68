"""The conversion math: pure tensor functions, each a formula.

Every re-parameterizable block of every family builds its deploy kernel from
these; nothing else in repzoo re-derives them.  Kernels are laid out as
``(out_channels, in_channels // groups, kh, kw)``.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
KernelBias = Tuple[Tensor, Tensor]

__all__ = [
    "bn_scale_shift",
    "fuse_conv_bn",
    "fuse_bn",
    "pad_kernel",
    "identity_kernel",
    "scale_kernel",
    "sum_branches",
]


def _work_dtype(t: Tensor) -> torch.dtype:
    """Fuse in at least float32 so half-precision weights do not lose digits."""
    return torch.promote_types(t.dtype, torch.float32)


def bn_scale_shift(
    running_mean: Tensor,
    running_var: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
) -> Tuple[Tensor, Tensor]:
    """Eval-mode BN as ``y = t * x + s``: ``t = γ / sqrt(var + ε)``, ``s = β - μ t``."""
    dt = _work_dtype(running_var)
    var, mean = running_var.to(dt), running_mean.to(dt)
    gamma = torch.ones_like(var) if weight is None else weight.to(dt)
    beta = torch.zeros_like(var) if bias is None else bias.to(dt)
    t = gamma / torch.sqrt(var + eps)
    return t, beta - mean * t


def fuse_conv_bn(
    kernel: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    conv_bias: Optional[Tensor] = None,
) -> KernelBias:
    """conv → BN as one conv: ``K' = K · t[:, None, None, None]``, ``b' = t · b_conv + s``."""
    t, s = bn_scale_shift(running_mean, running_var, weight, bias, eps)
    fused_bias = s if conv_bias is None else s + t * conv_bias.to(t.dtype)
    return kernel.to(t.dtype) * t.reshape(-1, 1, 1, 1), fused_bias


def fuse_bn(
    channels: int,
    groups: int,
    kernel_size: int,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
) -> KernelBias:
    """A bare BN (identity branch) as a conv: ``fuse_conv_bn(Id, BN)``."""
    ident = identity_kernel(channels, groups, kernel_size, dtype=running_var.dtype, device=running_var.device)
    return fuse_conv_bn(ident, running_mean, running_var, weight, bias, eps)


def pad_kernel(kernel: Tensor, kernel_size: int) -> Tensor:
    """Zero-pad a centred ``k×k`` kernel to ``kernel_size×kernel_size`` (1x1 → 3x3 puts it at the centre)."""
    pad_h = (kernel_size - kernel.shape[-2]) // 2
    pad_w = (kernel_size - kernel.shape[-1]) // 2
    if pad_h < 0 or pad_w < 0:
        raise ValueError("cannot pad a " + str(kernel.shape[-2]) + "x" + str(kernel.shape[-1]) + " kernel to "
                         + str(kernel_size))
    return F.pad(kernel, [pad_w, pad_w, pad_h, pad_h])


def identity_kernel(
    channels: int,
    groups: int = 1,
    kernel_size: int = 3,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
) -> Tensor:
    """The (grouped) identity as a conv kernel: ``Id[i, i mod (C/g), c, c] = 1`` at the centre ``c``."""
    in_per_group = channels // groups
    ident = torch.zeros(channels, in_per_group, kernel_size, kernel_size, dtype=dtype, device=device)
    rows = torch.arange(channels, device=device)
    centre = kernel_size // 2
    ident[rows, rows % in_per_group, centre, centre] = 1
    return ident


def scale_kernel(kernel: Tensor, scale: Tensor) -> Tensor:
    """A conv followed by a per-channel scale: ``K' = K · s[:, None, None, None]``."""
    return kernel * scale.to(kernel.dtype).reshape(-1, 1, 1, 1)


def sum_branches(branches: Iterable[KernelBias], kernel_size: int) -> KernelBias:
    """Parallel branches added after the conv: ``K = Σ pad(K_i)``, ``b = Σ b_i``.

    Smaller (centred) kernels are added into the centre of the result instead of being
    padded first: the same sum, without materializing the zero padding.
    """
    kernels, biases = zip(*branches)
    order = sorted(range(len(kernels)), key=lambda i: -kernels[i].shape[-1])
    kernel = pad_kernel(kernels[order[0]], kernel_size)
    for i in order[1:]:
        k = kernels[i]
        top, left = (kernel_size - k.shape[-2]) // 2, (kernel_size - k.shape[-1]) // 2
        kernel[..., top:top + k.shape[-2], left:left + k.shape[-1]] += k.to(kernel.dtype)
    return kernel, sum(biases)
