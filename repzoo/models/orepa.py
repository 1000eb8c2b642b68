"""OREPA: Online Convolutional Re-parameterization (Hu et al., CVPR 2022), with its baselines.

The networks of JUGGHM/OREPA_CVPR2022, with its key names, so that the released ``.pth.tar``
files (``{'state_dict': {'module.…': …}}``) load as they are:

* ``OREPA-<arch>`` — every conv-BN an OREPA layer (:class:`~repzoo.layers.OREPA` for the 3x3s,
  :class:`~repzoo.layers.OREPA1x1` for the 1x1s, :class:`~repzoo.layers.OREPALargeConv` for
  the 7x7 stem; BasicBlock shortcuts stay plain, as in the reference);
* ``DBB-<arch>`` — every 3x3 a :class:`~repzoo.layers.DiverseBranchBlock`, the rest plain;
* ``<arch>`` — the plain conv-BN network (the same function as torchvision's ResNets);
* ``OREPA-RepVGG-<v>`` — RepVGG with OREPA on the 3x3 branch (:class:`~repzoo.layers.OREPARepVGGBlock`,
  the reference's ``-t OREPA_VGG``); ``Plain-RepVGG-<v>`` — the same body of conv-BN-ReLU blocks.

The block type is a constructor argument (``block_type='OREPA' | 'DBB' | 'plain'``); the
reference's module-level switch does not exist here. Every form deploys to one conv with bias per
layer: ``repzoo.reparameterize(model)`` or ``create_model(..., deploy=True)`` (a train-time
checkpoint converts on load). ``feature_info`` names the four stage outputs (strides 4 … 32).
"""
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.conv_bn import ConvBnBlock
from ..layers.dbb import DiverseBranchBlock
from ..layers.orepa import OREPARepVGGBlock, orepa_layer
from ..registry import register_model
from .base import StagedClassifier, VGGStyleClassifier
from .repvgg import VARIANTS as REPVGG_VARIANTS
from .repvgg import stage_widths

__all__ = ["OREPAResNet", "OREPAVGG", "BasicBlock", "Bottleneck", "conv_bn", "BLOCK_TYPES"]

PAPER = "https://arxiv.org/abs/2204.00826"
FAMILY = "OREPA"

#: ``block_type`` values (the reference's ``-t``: ``base`` is ``plain``, ``OREPA_VGG`` is ``OREPA`` on a VGG body)
BLOCK_TYPES = ("OREPA", "DBB", "plain")

#: ResNet-style architectures: block, blocks per stage, width multiplier, groups and width per group
RESNETS: Dict[str, dict] = {
    "ResNet-18": dict(block="basic", layers=(2, 2, 2, 2)),
    "ResNet-34": dict(block="basic", layers=(3, 4, 6, 3)),
    "ResNet-50": dict(block="bottleneck", layers=(3, 4, 6, 3)),
    "ResNet-101": dict(block="bottleneck", layers=(3, 4, 23, 3)),
    "ResNet-18-1.5x": dict(block="basic", layers=(2, 2, 2, 2), width_multiplier=1.5),
    "ResNet-18-2x": dict(block="basic", layers=(2, 2, 2, 2), width_multiplier=2.0),
    "ResNeXt-50": dict(block="bottleneck", layers=(3, 4, 6, 3), groups=32, width_per_group=4),
}
#: VGG-style architectures: RepVGG's blocks per stage and width multipliers
VGGS: Dict[str, dict] = {v: dict(REPVGG_VARIANTS[f"RepVGG-{v}"]) for v in ("A0", "A1", "A2", "B1")}


def _block_type(block_type: str) -> str:
    key = {"orepa": "OREPA", "dbb": "DBB", "plain": "plain", "base": "plain"}.get(str(block_type).lower())
    if key is None:
        raise ValueError(f"block_type must be one of {BLOCK_TYPES}, not {block_type!r}")
    return key


def conv_bn(block_type: str, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
            groups: int = 1, act: bool = False, deploy: bool = False) -> nn.Module:
    """The conv-BN(-ReLU) layer of a ``block_type`` network, chosen as the reference does:
    OREPA re-parameterizes every kernel size (:func:`~repzoo.layers.orepa.orepa_layer`), DBB only
    ``1 < k < 7``; everything else is a plain :class:`~repzoo.layers.ConvBnBlock`."""
    block_type = _block_type(block_type)
    if block_type == "OREPA":
        return orepa_layer(in_channels, out_channels, kernel_size, stride, groups, act=act, deploy=deploy)
    if block_type == "DBB" and 1 < kernel_size < 7:
        return DiverseBranchBlock(in_channels, out_channels, kernel_size, stride, groups=groups, act=act, deploy=deploy)
    return ConvBnBlock(in_channels, out_channels, kernel_size, stride, groups=groups, act=act, deploy=deploy)


# ----------------------------------------------------------------------------- ResNet blocks

class BasicBlock(nn.Module):
    """``relu(conv2(conv1(x)) + shortcut(x))``; ``shortcut`` (registered first, as its keys come first)
    is a plain 1x1 :class:`~repzoo.layers.ConvBnBlock` when the shape changes, whatever the block type."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, block_type: str = "OREPA", groups: int = 1,
                 width_per_group: int = 64, deploy: bool = False):
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("BasicBlock has groups=1 and width_per_group=64")
        if stride != 1 or in_channels != planes:
            self.shortcut = ConvBnBlock(in_channels, planes, 1, stride, deploy=deploy)
        else:
            self.shortcut = nn.Identity()
        self.conv1 = conv_bn(block_type, in_channels, planes, 3, stride, act=True, deploy=deploy)
        self.conv2 = conv_bn(block_type, planes, planes, 3, 1, deploy=deploy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """``relu(conv3(conv2(conv1(x))) + shortcut(x))``: 1x1 → 3x3 (stride, ``groups``) → 1x1 (×4), of width
    ``groups · int(planes · width_per_group / 64)`` (ResNeXt-50 32x4d: 32 · 4 …). The shortcut, when
    the shape changes, is a 1x1 conv-BN of the block type (an OREPA1x1 in OREPA networks)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, block_type: str = "OREPA", groups: int = 1,
                 width_per_group: int = 64, deploy: bool = False):
        super().__init__()
        width, out = groups * int(planes * width_per_group / 64), planes * self.expansion
        if stride != 1 or in_channels != out:
            self.shortcut = conv_bn(block_type, in_channels, out, 1, stride, deploy=deploy)
        else:
            self.shortcut = nn.Identity()
        self.conv1 = conv_bn(block_type, in_channels, width, 1, act=True, deploy=deploy)
        self.conv2 = conv_bn(block_type, width, width, 3, stride, groups, act=True, deploy=deploy)
        self.conv3 = conv_bn(block_type, width, out, 1, deploy=deploy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


# ----------------------------------------------------------------------------- models

class OREPAResNet(StagedClassifier):
    """OREPA's ResNet / ResNeXt: ``stage0`` (``conv1``: 7x7 stride 2 conv-BN-ReLU, ``maxpool``),
    ``stage1..4`` (:class:`~repzoo.models.base.Stage` of blocks, strides 1, 2, 2, 2), ``global_pool``, ``linear``.

    ``width_multiplier`` widens the stem too (ResNet-18-2x has a 128-channel stem, unlike
    torchvision's wide ResNets); ``block_type``: ``'OREPA'``, ``'DBB'`` or ``'plain'``.
    """

    def __init__(self, block: str = "basic", layers: Sequence[int] = (2, 2, 2, 2), width_multiplier: float = 1.0,
                 groups: int = 1, width_per_group: int = 64, block_type: str = "OREPA", num_classes: int = 1000,
                 in_chans: int = 3, drop_rate: float = 0.0, deploy: bool = False):
        super().__init__()
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        self.block_type = _block_type(block_type)
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        stem = int(64 * width_multiplier)
        self.stage0 = nn.Sequential(OrderedDict(
            conv1=conv_bn(self.block_type, in_chans, stem, 7, 2, act=True, deploy=deploy),
            maxpool=nn.MaxPool2d(3, 2, 1)))
        self.feature_info = []
        stages, widths, in_ch = [], [], stem
        for s, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
            planes = int(planes * width_multiplier)
            blocks = []
            for i in range(n):
                stride = (1 if s == 1 else 2) if i == 0 else 1
                blocks.append(block_cls(in_ch, planes, stride, self.block_type, groups, width_per_group, deploy=deploy))
                in_ch = planes * block_cls.expansion
            stages.append(blocks)
            widths.append(in_ch)
        self._add_stages(stages, widths, num_classes, drop_rate)

    def _feature_steps(self) -> List[nn.Module]:
        return [nn.Sequential(self.stage0, self.stage1), self.stage2, self.stage3, self.stage4]


class OREPAVGG(VGGStyleClassifier):
    """The RepVGG body (``stage0``, ``stage1..4``, ``global_pool``, ``linear``; every first block stride 2) with
    ``block_type`` blocks: ``'OREPA'`` — :class:`~repzoo.layers.OREPARepVGGBlock`; ``'plain'`` — a 3x3
    conv-BN-ReLU (:class:`~repzoo.layers.ConvBnBlock`); ``'DBB'`` — a
    :class:`~repzoo.layers.DiverseBranchBlock` with a ReLU (built by the reference, not released).
    ``feature_info``: the four stage outputs ``stage1..4`` (strides 4 … 32).
    """

    def __init__(self, num_blocks: Sequence[int], width_multiplier: Sequence[float], block_type: str = "OREPA",
                 num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, deploy: bool = False):
        super().__init__()
        self.block_type = _block_type(block_type)

        def make_block(in_ch: int, out_ch: int, stride: int, layer: int, index: int) -> nn.Module:
            if self.block_type == "OREPA":
                return OREPARepVGGBlock(in_ch, out_ch, stride, deploy=deploy)
            if self.block_type == "DBB":
                return DiverseBranchBlock(in_ch, out_ch, 3, stride, act=True, deploy=deploy)
            return ConvBnBlock(in_ch, out_ch, 3, stride, act=True, deploy=deploy)

        self._build_body(stage_widths(width_multiplier), num_blocks, make_block, num_classes, in_chans, drop_rate)
        self.feature_info = self.feature_info[1:]

    def _feature_steps(self) -> List[nn.Module]:
        return [nn.Sequential(self.stage0, self.stage1), self.stage2, self.stage3, self.stage4]


# ----------------------------------------------------------------------------- registry

#: registered name -> (architecture, block type)
MODELS: Dict[str, Tuple[str, str]] = {}
for _arch in RESNETS:
    MODELS[f"OREPA-{_arch}"] = (_arch, "OREPA")
    MODELS[f"DBB-{_arch}"] = (_arch, "DBB")
    MODELS[_arch] = (_arch, "plain")
for _v in VGGS:
    MODELS[f"OREPA-RepVGG-{_v}"] = (_v, "OREPA")
    MODELS[f"Plain-RepVGG-{_v}"] = (_v, "plain")
del _arch, _v


def _config(name: str) -> dict:
    arch, block_type = MODELS[name]
    if arch in RESNETS:
        return dict(RESNETS[arch], block_type=block_type)
    return dict(VGGS[arch], block_type=block_type)


def _create(name: str, **kwargs) -> nn.Module:
    arch = MODELS[name][0]
    return (OREPAResNet if arch in RESNETS else OREPAVGG)(**_config(name), **kwargs)


#: What the authors reported (OREPA README, paper Tables 2 and 4): top-1, training GPU memory (GB) and time per
#: batch (s). Plain-RepVGG and B1 have none; the paper's RepVGG-A* baselines are RepVGG blocks, not plain.
REPORTED_SETTING = "ImageNet, 120 epochs, batch 256 on 4x V100; the authors' re-training"
REPORTED: Dict[str, Tuple[float, float, float]] = {
    "ResNet-18": (71.21, 4.2, 0.086), "DBB-ResNet-18": (71.77, 7.5, 0.241), "OREPA-ResNet-18": (72.13, 5.2, 0.120),
    "ResNet-34": (74.13, 5.2, 0.116), "DBB-ResNet-34": (74.83, 11.1, 0.424), "OREPA-ResNet-34": (75.04, 6.7, 0.182),
    "ResNet-50": (76.70, 10.3, 0.204), "DBB-ResNet-50": (76.89, 13.7, 0.380), "OREPA-ResNet-50": (77.31, 11.2, 0.252),
    "ResNet-101": (77.71, 14.5, 0.382), "DBB-ResNet-101": (78.02, 19.7, 0.641),
    "OREPA-ResNet-101": (78.29, 16.1, 0.445),
    "ResNeXt-50": (77.14, 12.4, 0.286), "OREPA-ResNeXt-50": (77.66, 13.0, 0.343),
    "ResNet-18-1.5x": (73.69, 6.0, 0.121), "OREPA-ResNet-18-1.5x": (74.51, 7.4, 0.164),
    "ResNet-18-2x": (74.74, 7.4, 0.161), "OREPA-ResNet-18-2x": (75.61, 10.4, 0.229),
    "OREPA-RepVGG-A0": (73.04, 4.2, 0.136), "OREPA-RepVGG-A1": (74.85, 5.5, 0.147),
    "OREPA-RepVGG-A2": (76.72, 7.4, 0.210),
}


def _reported(name: str) -> dict:
    if name not in REPORTED:
        return {}
    top1, memory, time = REPORTED[name]
    return dict(top1=top1, train_gpu_memory_gb=memory, train_time_per_batch_s=time, setting=REPORTED_SETTING)


def _register(name: str):
    return register_model(name, family=FAMILY, paper=PAPER, config=_config(name), reported=_reported(name))


@_register("OREPA-ResNet-18")
def orepa_resnet_18(**kwargs) -> OREPAResNet:
    """ResNet-18 with OREPA layers: 37.76M train / 11.68M deploy params, 72.13% top-1."""
    return _create("OREPA-ResNet-18", **kwargs)


@_register("DBB-ResNet-18")
def dbb_resnet_18(**kwargs) -> OREPAResNet:
    """ResNet-18 with Diverse Branch Blocks: 26.29M train / 11.68M deploy params, 71.77% top-1."""
    return _create("DBB-ResNet-18", **kwargs)


@_register("ResNet-18")
def resnet_18(**kwargs) -> OREPAResNet:
    """Plain ResNet-18 (OREPA's baseline): 11.69M params, 71.21% top-1."""
    return _create("ResNet-18", **kwargs)


@_register("OREPA-ResNet-34")
def orepa_resnet_34(**kwargs) -> OREPAResNet:
    """ResNet-34 with OREPA layers: 71.72M train / 21.79M deploy params, 75.04% top-1."""
    return _create("OREPA-ResNet-34", **kwargs)


@_register("DBB-ResNet-34")
def dbb_resnet_34(**kwargs) -> OREPAResNet:
    """ResNet-34 with Diverse Branch Blocks: 49.90M train / 21.79M deploy params, 74.83% top-1."""
    return _create("DBB-ResNet-34", **kwargs)


@_register("ResNet-34")
def resnet_34(**kwargs) -> OREPAResNet:
    """Plain ResNet-34 (OREPA's baseline): 21.80M params, 74.13% top-1."""
    return _create("ResNet-34", **kwargs)


@_register("OREPA-ResNet-50")
def orepa_resnet_50(**kwargs) -> OREPAResNet:
    """ResNet-50 with OREPA layers: 68.58M train / 25.53M deploy params, 77.31% top-1."""
    return _create("OREPA-ResNet-50", **kwargs)


@_register("DBB-ResNet-50")
def dbb_resnet_50(**kwargs) -> OREPAResNet:
    """ResNet-50 with Diverse Branch Blocks: 40.68M train / 25.53M deploy params, 76.89% top-1."""
    return _create("DBB-ResNet-50", **kwargs)


@_register("ResNet-50")
def resnet_50(**kwargs) -> OREPAResNet:
    """Plain ResNet-50 (OREPA's baseline): 25.56M params, 76.70% top-1."""
    return _create("ResNet-50", **kwargs)


@_register("OREPA-ResNet-101")
def orepa_resnet_101(**kwargs) -> OREPAResNet:
    """ResNet-101 with OREPA layers: 122.49M train / 44.50M deploy params, 78.29% top-1."""
    return _create("OREPA-ResNet-101", **kwargs)


@_register("DBB-ResNet-101")
def dbb_resnet_101(**kwargs) -> OREPAResNet:
    """ResNet-101 with Diverse Branch Blocks: 73.09M train / 44.50M deploy params, 78.02% top-1."""
    return _create("DBB-ResNet-101", **kwargs)


@_register("ResNet-101")
def resnet_101(**kwargs) -> OREPAResNet:
    """Plain ResNet-101 (OREPA's baseline): 44.55M params, 77.71% top-1."""
    return _create("ResNet-101", **kwargs)


@_register("OREPA-ResNet-18-1.5x")
def orepa_resnet_18_1_5x(**kwargs) -> OREPAResNet:
    """ResNet-18, 1.5x wide, with OREPA layers: 84.35M train / 25.89M deploy params, 74.51% top-1."""
    return _create("OREPA-ResNet-18-1.5x", **kwargs)


@_register("DBB-ResNet-18-1.5x")
def dbb_resnet_18_1_5x(**kwargs) -> OREPAResNet:
    """ResNet-18, 1.5x wide, with Diverse Branch Blocks: 58.72M train / 25.89M deploy params (no result reported)."""
    return _create("DBB-ResNet-18-1.5x", **kwargs)


@_register("ResNet-18-1.5x")
def resnet_18_1_5x(**kwargs) -> OREPAResNet:
    """Plain ResNet-18, 1.5x wide (stem included): 25.90M params, 73.69% top-1."""
    return _create("ResNet-18-1.5x", **kwargs)


@_register("OREPA-ResNet-18-2x")
def orepa_resnet_18_2x(**kwargs) -> OREPAResNet:
    """ResNet-18, 2x wide ("WideResNet-18 (x2)"), OREPA layers: 149.41M train / 45.68M deploy params, 75.61% top-1."""
    return _create("OREPA-ResNet-18-2x", **kwargs)


@_register("DBB-ResNet-18-2x")
def dbb_resnet_18_2x(**kwargs) -> OREPAResNet:
    """ResNet-18, 2x wide, with Diverse Branch Blocks: 104.01M train / 45.68M deploy params (no result reported)."""
    return _create("DBB-ResNet-18-2x", **kwargs)


@_register("ResNet-18-2x")
def resnet_18_2x(**kwargs) -> OREPAResNet:
    """Plain ResNet-18, 2x wide (stem included): 45.69M params, 74.74% top-1."""
    return _create("ResNet-18-2x", **kwargs)


@_register("OREPA-ResNeXt-50")
def orepa_resnext_50(**kwargs) -> OREPAResNet:
    """ResNeXt-50 (32x4d) with OREPA layers: 63.71M train / 24.99M deploy params, 77.66% top-1."""
    return _create("OREPA-ResNeXt-50", **kwargs)


@_register("DBB-ResNeXt-50")
def dbb_resnext_50(**kwargs) -> OREPAResNet:
    """ResNeXt-50 (32x4d) with Diverse Branch Blocks: 26.99M train / 24.99M deploy params (no result reported)."""
    return _create("DBB-ResNeXt-50", **kwargs)


@_register("ResNeXt-50")
def resnext_50(**kwargs) -> OREPAResNet:
    """Plain ResNeXt-50 (32x4d): 25.03M params, 77.14% top-1."""
    return _create("ResNeXt-50", **kwargs)


@_register("OREPA-RepVGG-A0")
def orepa_repvgg_a0(**kwargs) -> OREPAVGG:
    """RepVGG-A0 with OREPA on the 3x3 branch: 24.75M train / 8.31M deploy params, 73.04% top-1."""
    return _create("OREPA-RepVGG-A0", **kwargs)


@_register("Plain-RepVGG-A0")
def plain_repvgg_a0(**kwargs) -> OREPAVGG:
    """The RepVGG-A0 body of plain conv-BN-ReLU blocks: 8.31M params."""
    return _create("Plain-RepVGG-A0", **kwargs)


@_register("OREPA-RepVGG-A1")
def orepa_repvgg_a1(**kwargs) -> OREPAVGG:
    """RepVGG-A1 with OREPA on the 3x3 branch: 39.71M train / 12.79M deploy params, 74.85% top-1."""
    return _create("OREPA-RepVGG-A1", **kwargs)


@_register("Plain-RepVGG-A1")
def plain_repvgg_a1(**kwargs) -> OREPAVGG:
    """The RepVGG-A1 body of plain conv-BN-ReLU blocks: 12.80M params."""
    return _create("Plain-RepVGG-A1", **kwargs)


@_register("OREPA-RepVGG-A2")
def orepa_repvgg_a2(**kwargs) -> OREPAVGG:
    """RepVGG-A2 with OREPA on the 3x3 branch: 81.79M train / 25.50M deploy params, 76.72% top-1."""
    return _create("OREPA-RepVGG-A2", **kwargs)


@_register("Plain-RepVGG-A2")
def plain_repvgg_a2(**kwargs) -> OREPAVGG:
    """The RepVGG-A2 body of plain conv-BN-ReLU blocks: 25.51M params."""
    return _create("Plain-RepVGG-A2", **kwargs)


@_register("OREPA-RepVGG-B1")
def orepa_repvgg_b1(**kwargs) -> OREPAVGG:
    """RepVGG-B1 with OREPA on the 3x3 branch: 167.95M train / 51.83M deploy params (no result reported)."""
    return _create("OREPA-RepVGG-B1", **kwargs)


@_register("Plain-RepVGG-B1")
def plain_repvgg_b1(**kwargs) -> OREPAVGG:
    """The RepVGG-B1 body of plain conv-BN-ReLU blocks: 51.84M params (RepOpt-VGG-B1's target)."""
    return _create("Plain-RepVGG-B1", **kwargs)
