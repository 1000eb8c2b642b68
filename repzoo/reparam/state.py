"""State-dict helpers for conversions: read a BN or a conv-BN pair out of a state dict, write a conv back.

A block's ``fuse_state_dict`` reads its train-time tensors with these and returns its deploy
tensors; the math itself is in :mod:`repzoo.reparam.fuse`.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch

from .fuse import fuse_bn, fuse_conv_bn

__all__ = ["BN_EPS", "bn_args", "fused_conv_bn", "fused_bn", "conv_state"]

StateDict = Dict[str, torch.Tensor]
KernelBias = Tuple[torch.Tensor, torch.Tensor]

#: The BatchNorm eps of every reference implementation (PyTorch's default).
BN_EPS = 1e-5


def bn_args(sd: Mapping[str, torch.Tensor], prefix: str) -> Tuple[Optional[torch.Tensor], ...]:
    """``(running_mean, running_var, weight, bias)`` of the BN stored under ``prefix`` (for ``fuse_*``)."""
    return (sd[prefix + "running_mean"], sd[prefix + "running_var"], sd.get(prefix + "weight"), sd.get(prefix + "bias"))


def fused_conv_bn(sd: Mapping[str, torch.Tensor], weight: str, bn: str, eps: float = BN_EPS,
                  bias: Optional[str] = None) -> KernelBias:
    """The conv ``sd[weight]`` (and ``sd[bias]``) followed by the BN under ``bn`` (a prefix ending in ``.``),
    as one kernel and bias (in the fusion's working dtype)."""
    return fuse_conv_bn(sd[weight], *bn_args(sd, bn), eps, sd.get(bias) if bias else None)


def fused_bn(sd: Mapping[str, torch.Tensor], bn: str, channels: int, groups: int, kernel_size: int,
             eps: float = BN_EPS) -> KernelBias:
    """A bare BN under ``bn`` (an identity branch) as a ``kernel_size`` conv of ``groups`` groups."""
    return fuse_bn(channels, groups, kernel_size, *bn_args(sd, bn), eps)


def conv_state(prefix: str, kernel: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> StateDict:
    """``{prefix + 'weight': kernel, prefix + 'bias': bias}``, cast back to the weights' ``dtype``."""
    return {f"{prefix}weight": kernel.to(dtype), f"{prefix}bias": bias.to(dtype)}
