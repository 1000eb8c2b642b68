"""RepOpt-VGG blocks (DingXiaoH/RepOptimizers), in every form the paper uses.

=================  ======================================================  ============================
form               train-time keys (relative to the block)                 forward
=================  ======================================================  ============================
target             ``conv.weight``, ``bn.*``                               ``relu(bn(conv x))``
hs / csla          ``conv.weight``, ``scale_conv.weight``,                 ``relu(bn(s_c·conv x +
                   ``conv_1x1.weight``, ``scale_1x1.weight``,              s_1·conv_1x1 x + s_id·x))``
                   [``scale_identity.weight``], ``bn.*``
repvgg             ``conv_3x3.weight``, ``bn_3x3.*``, ``conv_1x1.weight``,  ``relu(Σ bn_b(conv_b x))``
                   ``bn_1x1.*``, [``bn_identity.*``]
=================  ======================================================  ============================

Every form converts to the same deploy block: one 3x3 conv with bias, keys
``conv.weight`` and ``conv.bias`` (``relu(conv x)``) — the key names the reference's
own deploy-mode 'repvgg' block uses. The identity branch exists when ``in == out`` and
``stride == 1``.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Mapping, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import IncompatibleCheckpointError
from ..reparam import (ReparamBlock, bn_args, fuse_bn, fuse_conv_bn, identity_kernel, pad_kernel, scale_kernel,
                       sum_branches, without)

__all__ = [
    "ScaleLayer",
    "RepOptVGGBlock",
    "LinearAddBlock",
    "RepOptRepVGGBlock",
    "hs_scale_init",
    "scale_keys",
    "load_scales_into",
]

StateDict = Dict[str, torch.Tensor]
BN_EPS = 1e-5


class ScaleLayer(nn.Module):
    """A per-channel scale ``x · w[None, :, None, None]``; its only key is ``weight`` (shape ``(C,)``).

    ``scale_init`` is kept so that :meth:`reset_parameters` (and ``materialize`` after a
    build on the ``meta`` device) restores the initial value.
    """

    def __init__(self, num_features: int, scale_init: float = 1.0):
        super().__init__()
        self.num_features, self.scale_init = num_features, float(scale_init)
        self.weight = nn.Parameter(torch.empty(num_features))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.weight.fill_(self.scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, scale_init={self.scale_init:.4g}"


def hs_scale_init(block_index: int) -> float:
    """Initial ``scale_conv`` / ``scale_1x1`` of block ``i`` of a stage: 1 for ``i = 0``, else ``sqrt(2 / i)``."""
    return 1.0 if block_index == 0 else math.sqrt(2.0 / block_index)


class _PlainDeployBlock(ReparamBlock):
    """Shared deploy form of the RepOpt-VGG blocks: ``relu(conv(x))``, ``conv`` a 3x3 conv with bias."""

    _train_prefixes: Tuple[str, ...] = ()

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.has_identity = in_channels == out_channels and stride == 1

    def _finish(self, deploy: bool) -> None:
        if deploy:
            self._switch_to_deploy(device=None)
            self.deploy = True
        else:
            self._build_train()

    def _build_train(self) -> None:
        raise NotImplementedError

    def _switch_to_deploy(self, device=None) -> None:
        for name in list(self._modules):
            delattr(self, name)
        self.conv = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1, bias=True, device=device)

    def _deploy_sd(self, sd: Mapping[str, torch.Tensor], kernel: torch.Tensor, bias: torch.Tensor,
                   dtype: torch.dtype) -> StateDict:
        out = without(sd, self._train_prefixes)
        out["conv.weight"] = kernel.to(dtype)
        out["conv.bias"] = bias.to(dtype)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return F.relu(self.conv(x))
        return F.relu(self._train_forward(x))

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class RepOptVGGBlock(_PlainDeployBlock):
    """The target block (the reference's ``RealVGGBlock``): ``relu(bn(conv3x3(x)))``.

    Deploy: BN folded into the conv, ``K = W·t``, ``b = β − μ·t``.
    """

    _train_prefixes = ("conv.", "bn.")

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, deploy: bool = False):
        super().__init__(in_channels, out_channels, stride)
        self._finish(deploy)

    def _build_train(self) -> None:
        self.conv = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(self.out_channels)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """``K = W·t``, ``b = β − μ·t`` with ``t = γ / sqrt(var + ε)``."""
        kernel, bias = fuse_conv_bn(sd["conv.weight"], *bn_args(sd, "bn."), BN_EPS)
        return self._deploy_sd(sd, kernel, bias, sd["conv.weight"].dtype)


class LinearAddBlock(_PlainDeployBlock):
    """The Hyper-Search / CSLA block: ``relu(bn(s_c·conv3x3(x) + s_1·conv1x1(x) + s_id·x))``.

    ``csla=True`` freezes ``scale_conv`` and ``scale_1x1`` (``requires_grad=False``);
    ``scale_identity`` stays trainable, as in the reference. ``scale_init`` is the initial
    value of ``scale_conv`` and ``scale_1x1`` (see :func:`hs_scale_init`); ``scale_identity``
    starts at 1.

    Deploy: ``K = s_c·W3 + pad(s_1·W1) + s_id·Id``, then the BN folded in: one conv + bias.
    """

    _train_prefixes = ("conv.", "scale_conv.", "conv_1x1.", "scale_1x1.", "scale_identity.", "bn.")

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, scale_init: float = 1.0,
                 csla: bool = False, deploy: bool = False):
        super().__init__(in_channels, out_channels, stride)
        self.scale_init, self.csla = float(scale_init), csla
        self._finish(deploy)

    def _build_train(self) -> None:
        c_in, c_out = self.in_channels, self.out_channels
        # Registration order = the reference's state-dict order.
        self.conv = nn.Conv2d(c_in, c_out, 3, self.stride, 1, bias=False)
        self.scale_conv = ScaleLayer(c_out, self.scale_init)
        self.conv_1x1 = nn.Conv2d(c_in, c_out, 1, self.stride, 0, bias=False)
        self.scale_1x1 = ScaleLayer(c_out, self.scale_init)
        if self.has_identity:
            self.scale_identity = ScaleLayer(c_out, 1.0)
        self.bn = nn.BatchNorm2d(c_out)
        if self.csla:
            self.scale_conv.requires_grad_(False)
            self.scale_1x1.requires_grad_(False)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.scale_conv(self.conv(x)) + self.scale_1x1(self.conv_1x1(x))
        if self.has_identity:
            y = y + self.scale_identity(x)
        return self.bn(y)

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """``K = s_c·W3 + pad(s_1·W1) [+ s_id·Id]``; then ``fuse_conv_bn(K, bn)``."""
        w3 = sd["conv.weight"]
        kernel = scale_kernel(w3, sd["scale_conv.weight"]) + pad_kernel(
            scale_kernel(sd["conv_1x1.weight"], sd["scale_1x1.weight"]), 3)
        if self.has_identity:
            ident = identity_kernel(self.in_channels, 1, 3, dtype=w3.dtype, device=w3.device)
            kernel = kernel + scale_kernel(ident, sd["scale_identity.weight"])
        kernel, bias = fuse_conv_bn(kernel, *bn_args(sd, "bn."), BN_EPS)
        return self._deploy_sd(sd, kernel, bias, w3.dtype)


class RepOptRepVGGBlock(_PlainDeployBlock):
    """RepOptimizers' RepVGG-form baseline, with that repository's key names.

    ``relu(bn_3x3(conv_3x3 x) + bn_1x1(conv_1x1 x) [+ bn_identity(x)])``; deploy as RepVGG:
    ``K = K3·t3 + pad(K1·t1) + Id·t_id``, ``b = Σ (β − μ·t)``.
    """

    _train_prefixes = ("conv_3x3.", "bn_3x3.", "conv_1x1.", "bn_1x1.", "bn_identity.")

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, deploy: bool = False):
        super().__init__(in_channels, out_channels, stride)
        self._finish(deploy)

    def _build_train(self) -> None:
        c_in, c_out = self.in_channels, self.out_channels
        self.conv_3x3 = nn.Conv2d(c_in, c_out, 3, self.stride, 1, bias=False)
        self.bn_3x3 = nn.BatchNorm2d(c_out)
        self.conv_1x1 = nn.Conv2d(c_in, c_out, 1, self.stride, 0, bias=False)
        self.bn_1x1 = nn.BatchNorm2d(c_out)
        if self.has_identity:
            self.bn_identity = nn.BatchNorm2d(c_out)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_3x3(self.conv_3x3(x)) + self.bn_1x1(self.conv_1x1(x))
        if self.has_identity:
            y = y + self.bn_identity(x)
        return y

    def fuse_state_dict(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """Each branch ``fuse_conv_bn`` / ``fuse_bn``; then ``sum_branches`` at 3x3."""
        branches = [fuse_conv_bn(sd["conv_3x3.weight"], *bn_args(sd, "bn_3x3."), BN_EPS),
                    fuse_conv_bn(sd["conv_1x1.weight"], *bn_args(sd, "bn_1x1."), BN_EPS)]
        if self.has_identity:
            branches.append(fuse_bn(self.in_channels, 1, 3, *bn_args(sd, "bn_identity."), BN_EPS))
        kernel, bias = sum_branches(branches, 3)
        return self._deploy_sd(sd, kernel, bias, sd["conv_3x3.weight"].dtype)


# --------------------------------------------------------------------------- scales


def scale_keys(model: nn.Module) -> Dict[str, ScaleLayer]:
    """``{state-dict key: ScaleLayer}`` for every scale layer in ``model`` (``…scale_conv.weight`` …)."""
    return {f"{name}.weight" if name else "weight": m for name, m in model.named_modules() if isinstance(m, ScaleLayer)}


ScalesSource = Union[str, os.PathLike, Mapping[str, Any], nn.Module]


@torch.no_grad()
def load_scales_into(model: nn.Module, source: ScalesSource) -> nn.Module:
    """Copy the scales of ``source`` into ``model``'s scale layers, matched by hs key name.

    Every scale layer of ``model`` must find its key (shape included); other keys of the
    source (the conv kernels and the 100-class head of a full hs checkpoint) are ignored.
    ``requires_grad`` of each scale is left as the model set it (csla freezing).
    """
    from ..optim.scales import load_scales

    scales = load_scales(source)
    targets = scale_keys(model)
    missing = sorted(k for k in targets if k not in scales)
    wrong = sorted(k for k in targets if k in scales and tuple(scales[k].shape) != tuple(targets[k].weight.shape))
    if missing or wrong:
        lines = []
        if missing:
            more = f" … and {len(missing) - 6} more" if len(missing) > 6 else ""
            lines.append(f"missing scales ({len(missing)}): {', '.join(missing[:6])}{more}")
        if wrong:
            lines.append("mismatched shapes: " + "; ".join(
                f"{k}: scales {list(scales[k].shape)} vs model {list(targets[k].weight.shape)}" for k in wrong[:5]))
        raise IncompatibleCheckpointError(
            "The scales do not fit this model:\n  " + "\n  ".join(lines)
            + "\nPass the scale file of this very architecture (the hs model's scale parameters)."
        )
    for key, layer in targets.items():
        layer.weight.copy_(scales[key].to(layer.weight.dtype))
    return model


def fetch_default_scales(name: str):
    """The released scale file of ``name`` (``RepOpt-VGG-B1`` …), through :func:`repzoo.hub.fetch_scales`."""
    from ..errors import RepZooError, WeightsUnavailableError

    hint = (f"Pass the scale file yourself: create_model('{name}-csla', scales='path/to/{name}-scales.pth') "
            "(a released *-scales.pth, an hs checkpoint, a dict or a trained hs model).")
    try:
        from ..hub import fetch_scales
    except ImportError:
        raise RepZooError(f"This build of repzoo cannot fetch the released scales of {name}. {hint}") from None
    try:
        return fetch_scales(name)
    except (RepZooError, LookupError) as err:
        raise WeightsUnavailableError(f"Could not get the released scales of {name}: {err}\n{hint}") from err
