"""The kernel math of OREPA and DBB: pure tensor functions, each a formula.

OREPA (online re-parameterization) builds its one k×k kernel from these at every forward; the
deploy conversion of OREPA and of the Diverse Branch Block (DBB) uses the same functions, so a
layer and the state-dict converter never compute a kernel in two ways. Kernels are laid out as
``(out_channels, in_channels // groups, kh, kw)``; a 1x1 kernel as ``(out, in // groups, 1, 1)``.

Constants (averaging patterns, the frequency prior, identities) are built in the dtype and on
the device the caller names: the model's own, so a float64 model holds an exact ``1/k²``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .fuse import identity_kernel, pad_kernel

Tensor = torch.Tensor

__all__ = [
    "average_pattern",
    "average_kernel",
    "orepa_prior",
    "pattern_kernel",
    "compose_1x1_kxk",
    "dw_pw_kernel",
    "scaled_sum",
    "chain_kernels",
]


def average_pattern(kernel_size: int, dtype: Optional[torch.dtype] = None,
                    device: Optional[torch.device] = None) -> Tensor:
    """The k×k averaging pattern: ``avg[h, w] = 1 / k²`` (shape ``(k, k)``), in ``dtype``."""
    return torch.full((kernel_size, kernel_size), 1.0 / kernel_size ** 2, dtype=dtype, device=device)


def average_kernel(channels: int, groups: int, kernel_size: int, dtype: Optional[torch.dtype] = None,
                   device: Optional[torch.device] = None) -> Tensor:
    """Average pooling (k×k, zeros padded and counted) as a grouped conv kernel:
    ``Avg[c, c mod (C/g), h, w] = 1 / k²``, shape ``(C, C/g, k, k)``.

    It is built in ``dtype`` (the reference builds it in float32 whatever the model's dtype, which
    leaves a float64 DBB conversion ~1e-8 off).
    """
    ident = identity_kernel(channels, groups, 1, dtype=dtype, device=device)
    return ident * average_pattern(kernel_size, dtype=dtype, device=device)


def orepa_prior(out_channels: int, kernel_size: int = 3, dtype: Optional[torch.dtype] = None,
                device: Optional[torch.device] = None) -> Tensor:
    """OREPA's frequency prior, shape ``(out, k, k)``, with ``half = out / 2`` (a real division)::

        prior[o, h, w] = cos(π (h + ½)(o + 1) / k)           for o <  half
                       = cos(π (w + ½)(o + 1 − half) / k)    for o >= half

    For ``k = 3`` this is the reference's table. The reference fills only ``h, w < 3`` and leaves
    the rest of a larger kernel uninitialised; here the same DCT-style basis covers any ``k``.
    Computed in float64 and rounded once to ``dtype``.
    """
    o = torch.arange(out_channels, dtype=torch.float64, device=device).reshape(-1, 1, 1)
    pos = torch.arange(kernel_size, dtype=torch.float64, device=device) + 0.5
    half = out_channels / 2
    rows = torch.cos(math.pi * pos.reshape(1, -1, 1) * (o + 1) / kernel_size).expand(-1, -1, kernel_size)
    cols = torch.cos(math.pi * pos.reshape(1, 1, -1) * (o + 1 - half) / kernel_size).expand(-1, kernel_size, -1)
    prior = torch.where(o < half, rows, cols)
    return prior.to(torch.get_default_dtype() if dtype is None else dtype)


def pattern_kernel(weight: Tensor, pattern: Tensor) -> Tensor:
    """A 1x1 conv followed by a fixed per-channel k×k depthwise pattern, as one kernel::

        K[o, i, h, w] = W[o, i, 0, 0] · P[o, h, w]        (P of shape (k, k) is shared by every o)

    OREPA's averaging branch (``P = avg``) and its prior branch (``P = prior``).
    """
    pattern = pattern.to(weight.dtype)
    if pattern.dim() == 2:
        pattern = pattern.unsqueeze(0)
    return weight * pattern.unsqueeze(1)


def compose_1x1_kxk_kernel(first: Tensor, second: Tensor, groups: int = 1) -> Tensor:
    """The kernel ``K`` of :func:`compose_1x1_kxk` (no biases; TorchScript compiles it)."""
    t_all, in_per_group = first.shape[0], first.shape[1]
    out, t_per_group, kh, kw = second.shape
    first = first.to(second.dtype)
    if groups == 1:
        return _compose_dense(first.reshape(t_all, in_per_group), second)
    f = first.reshape(groups, t_per_group, in_per_group)
    s = second.reshape(groups, out // groups, t_per_group, kh, kw)
    return torch.einsum("gti,gothw->goihw", f, s).reshape(out, in_per_group, kh, kw)


def compose_1x1_kxk(first: Tensor, second: Tensor, groups: int = 1, first_bias: Optional[Tensor] = None,
                    second_bias: Optional[Tensor] = None) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """A 1x1 conv ``first`` (T, I, 1, 1) then a k×k conv ``second`` (out, T/g, k, k), both with ``groups``,
    as one k×k conv (out, I, k, k). With ``g(o) = o div (out/g)`` and ``n = T/g``::

        K[o, i, h, w] = Σ_{t<n} second[o, t, h, w] · first[g(o)·n + t, i]
        b[o]          = second_bias[o] + Σ_{t,h,w} second[o, t, h, w] · first_bias[g(o)·n + t]

    Exact when the intermediate map is padded with ``first_bias`` (DBB's BN-and-pad layer does
    that; OREPA's branches have no bias). Returns ``K`` when neither bias is given, else ``(K, b)``.
    """
    kernel = compose_1x1_kxk_kernel(first, second, groups)
    if first_bias is None and second_bias is None:
        return kernel
    out, t_per_group, kh, kw = second.shape
    bias = torch.zeros(out, dtype=kernel.dtype, device=kernel.device)
    if first_bias is not None:
        b1 = first_bias.to(kernel.dtype).reshape(groups, 1, t_per_group, 1, 1)
        s = second.reshape(groups, out // groups, t_per_group, kh, kw)
        bias = bias + (s * b1).sum(dim=(2, 3, 4)).reshape(out)
    if second_bias is not None:
        bias = bias + second_bias.to(kernel.dtype)
    return kernel, bias


def _compose_dense(first: Tensor, second: Tensor) -> Tensor:
    """``K[o, i] = Σ_t second[o, t] · first[t, i]`` for ``first`` (T, I): the kernel ``second`` read as a batch
    of ``out`` T-channel k×k images through the 1x1 conv ``firstᵀ`` (one fast conv in float32/bf16,
    forward and backward); float64 on the CPU, which has no fast conv, as one matrix product."""
    t, i = first.shape
    out, _, kh, kw = second.shape
    if second.dtype == torch.float64 and second.device.type == "cpu":
        product = second.permute(0, 2, 3, 1).reshape(out * kh * kw, t) @ first
        return product.reshape(out, kh, kw, i).permute(0, 3, 1, 2).contiguous()
    return F.conv2d(second, first.t().reshape(i, t, 1, 1))


def dw_pw_kernel(dw: Tensor, pw: Tensor, groups: int = 1, multiplier: int = 8, interleaved: bool = True,
                 scale: Optional[Tensor] = None) -> Tensor:
    """A depthwise k×k conv with ``m = multiplier`` filters per input channel (``dw``: (m·in, 1, k, k)),
    then a grouped pointwise conv (``pw``: (out, m·I, 1, 1), ``I = in/g``), as one kernel (out, I, k, k)::

        K[c·(out/g) + a, j, h, w] = s[c·(out/g) + a] · Σ_{t<m} dw[(c·I + j)·m + t, 0, h, w]
                                                            · pw[r(c, a), j·m + t]

    for group ``c < g``, ``a < out/g``, ``j < I``, with ``s = scale`` (per output channel; default 1).
    OREPA reads the pointwise rows in the interleaved order ``r(c, a) = a·g + c`` (it reshapes ``pw``
    as (out/g, g, I, m)); ``interleaved=False`` reads them naturally, ``r(c, a) = c·(out/g) + a``.
    For ``g = 1`` both are ``K[a, j] = s[a] · Σ_t dw[j·m + t] · pw[a, j·m + t]``.
    """
    out, per_group = pw.shape[0], pw.shape[1]
    in_per_group = per_group // multiplier
    kh, kw = dw.shape[-2:]
    d = dw.reshape(groups, in_per_group, multiplier, kh, kw)
    if interleaved:
        p = pw.reshape(out // groups, groups, in_per_group, multiplier).transpose(0, 1)
    else:
        p = pw.reshape(groups, out // groups, in_per_group, multiplier)
    if scale is not None:
        p = p * scale.to(p.dtype).reshape(groups, out // groups, 1, 1)
    return torch.einsum("cjthw,cajt->cajhw", d, p.to(d.dtype)).reshape(out, in_per_group, kh, kw)


def scaled_sum(terms: List[Tuple[Tensor, Optional[Tensor]]], kernel_size: int) -> Tensor:
    """``K = Σ_r s_r[o] · pad(K_r)``: kernels scaled per output channel (``s_r`` may be ``None``: 1),
    smaller (centred) ones zero-padded to ``kernel_size``, and summed. No input is modified."""
    total: Optional[Tensor] = None
    for kernel, scale in terms:
        if scale is not None:
            kernel = _scaled(kernel, scale)
        if kernel.shape[-2] != kernel_size or kernel.shape[-1] != kernel_size:
            kernel = pad_kernel(kernel, kernel_size)
        total = kernel if total is None else total + kernel.to(total.dtype)
    if total is None:
        raise ValueError("scaled_sum needs at least one term")
    return total


def _scaled(kernel: Tensor, scale: Tensor) -> Tensor:
    return kernel * scale.to(kernel.dtype).reshape(-1, 1, 1, 1)


def chain_kernels(kernels: List[Tensor], groups: int = 1) -> Tensor:
    """Kernels ``W_0 … W_{L-1}`` (each (out_l, in_l/g, k_l, k_l)) composed into one large kernel::

        X_0 = W_0ᵀ (dims 0, 1 swapped)
        X_l = conv2d(X_{l-1}, W_l, padding = k_l − 1, groups = g)     (a full correlation)
        K   = X_{L-1}ᵀ

    ``K`` is the kernel of the stack of *valid* convolutions with ``W_0``, then ``rot180(W_1)``, …,
    ``rot180(W_{L-1})`` (OREPA's large-kernel stem: three 3x3 kernels give one 7x7).
    """
    x = kernels[0].transpose(0, 1)
    for w in kernels[1:]:
        x = F.conv2d(x, w.to(x.dtype), padding=(w.shape[-2] - 1, w.shape[-1] - 1), groups=groups)
    return x.transpose(0, 1).contiguous()
