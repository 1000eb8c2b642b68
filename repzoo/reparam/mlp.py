"""Locality injection (RepMLPNet): BN and depthwise conv branches merged into a partition FC.

A *partition FC* of ``S`` kernel sets acts on an ``h×w`` tile of each of ``S`` channels: it is a
grouped 1x1 conv over ``S·hw`` inputs (``hw = h·w``) whose kernel ``W`` has shape
``(S·hw, hw, 1, 1)``; set ``s`` maps tile position ``q = a·w + c`` to position ``p = i·w + j``
with ``W[s·hw + p, q]``. A depthwise ``k×k`` conv with zero padding ``k // 2`` *inside the tile*
is such an FC too (it is linear and never looks past the tile's border), and so is a BN over the
``S`` sets. These functions build those FCs and their sums, in at least float32 (as every fusion
in :mod:`.fuse`) and without ever materializing more than the one result kernel.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .fuse import _work_dtype, bn_scale_shift

Tensor = torch.Tensor
KernelBias = Tuple[Tensor, Tensor]

__all__ = ["fuse_fc_bn", "add_conv_to_fc_", "conv_to_fc", "inject_locality_"]


def fuse_fc_bn(
    kernel: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
) -> KernelBias:
    """A partition FC followed by a BN over its ``S`` sets, as one FC with a bias.

    With ``t = γ / sqrt(var + ε)`` and ``s = β − μ t`` per set and ``hw = rows / S``:
    ``W'[r] = t[r // hw] · W[r]`` and ``b'[r] = s[r // hw]`` (each set's scale and shift repeated
    over its ``hw`` output positions). One new kernel is allocated, in the working dtype.
    """
    t, s = bn_scale_shift(running_mean, running_var, weight, bias, eps)
    rows = kernel.shape[0]
    if rows % t.numel():
        raise ValueError(f"a kernel of {rows} rows is not {t.numel()} sets of equal size")
    per_set = rows // t.numel()
    fused = kernel.to(t.dtype, copy=True)
    fused.view(t.numel(), per_set, -1).mul_(t.view(-1, 1, 1))
    return fused, s.repeat_interleave(per_set)


def add_conv_to_fc_(fc: Tensor, kernel: Tensor, h: int, w: int) -> Tensor:
    """``fc += conv_to_fc(kernel, h, w)``, in place, touching only the entries the conv reaches.

    ``fc`` is a partition FC kernel (``(S·hw, hw)`` or ``(S·hw, hw, 1, 1)``, contiguous) and
    ``kernel`` a depthwise kernel ``(S, 1, k, k)`` with ``k`` odd. Tap ``(du, dv)`` connects
    output ``(i, j)`` to input ``(i + du − P, j + dv − P)``, ``P = k // 2``, where that lies in
    the tile: in the view ``fc[s, i, j, a, c]`` it is the diagonal ``a − i = du − P`` of the
    ``(i, a)`` plane crossed with the diagonal ``c − j = dv − P`` of the ``(j, c)`` plane, so each
    tap is one strided in-place add on a view (no index tensors, no dense conv matrix).
    """
    sets, k = kernel.shape[0], kernel.shape[-1]
    if kernel.shape[1] != 1 or kernel.shape[-2] != k or k % 2 == 0:
        raise ValueError(f"expected a depthwise (S, 1, k, k) kernel with k odd, not {tuple(kernel.shape)}")
    if fc.numel() != sets * (h * w) ** 2 or not fc.is_contiguous():
        raise ValueError(f"a contiguous ({sets}·{h * w}, {h * w}) FC kernel is needed, not {tuple(fc.shape)}")
    tile = fc.view(sets, h, w, h, w)  # (s, i, j, a, c): out (i, j), in (a, c)
    taps = kernel.to(fc.dtype).reshape(sets, k, k)
    pad = k // 2
    for du in range(k):
        if abs(du - pad) >= h:
            continue
        rows = torch.diagonal(tile, offset=du - pad, dim1=1, dim2=3)  # (s, j, c, i)
        for dv in range(k):
            if abs(dv - pad) >= w:
                continue
            band = torch.diagonal(rows, offset=dv - pad, dim1=1, dim2=2)  # (s, i, j)
            band.add_(taps[:, du, dv].view(sets, 1, 1))
    return fc


def conv_to_fc(kernel: Tensor, h: int, w: int) -> Tensor:
    """The partition FC ``(S·hw, hw, 1, 1)`` that computes a depthwise ``k×k`` conv (zero padding
    ``k // 2``, stride 1) on each ``h×w`` tile:

    ``W[s·hw + (i·w + j), a·w + c] = K[s, 0, a − i + P, c − j + P]`` when both kernel indices lie
    in ``[0, k)``, else 0 (``P = k // 2``; zero padding, no wrap-around).
    """
    sets = kernel.shape[0]
    fc = torch.zeros(sets * h * w, h * w, 1, 1, dtype=_work_dtype(kernel), device=kernel.device)
    return add_conv_to_fc_(fc, kernel, h, w)


def inject_locality_(fc: KernelBias, conv: Optional[KernelBias], h: int, w: int) -> KernelBias:
    """One FC for ``FC(v) + conv(v)`` on ``h×w`` tiles: ``W = W_fc + conv_to_fc(K)``,
    ``b[s·hw + p] = b_fc[s·hw + p] + b_conv[s]``.

    ``fc`` is the (BN-fused) FC's kernel and bias as :func:`fuse_fc_bn` returns them (a fresh,
    contiguous kernel in the working dtype): the kernel is updated in place, so the whole
    conversion holds one new copy of it. ``conv`` is the summed depthwise branches' kernel
    ``(S, 1, k, k)`` and bias ``(S,)`` (:func:`~repzoo.reparam.sum_branches`), or ``None``.
    """
    kernel, bias = fc
    if kernel.dtype != _work_dtype(kernel) or not kernel.is_contiguous():
        raise ValueError("inject_locality_ updates the FC kernel in place: pass fuse_fc_bn's output "
                         f"(contiguous, at least float32), not a {kernel.dtype} kernel")
    if conv is not None:
        add_conv_to_fc_(kernel, conv[0], h, w)
        bias = bias + conv[1].to(bias.dtype).repeat_interleave(h * w)
    return kernel, bias
