"""RepGhostNet and RepOpt-GhostNet (RepOptimizers' ``repoptimizer/repoptghostnet_model.py``).

* ``RepGhostNet-<w>`` — the RepGhost baseline ('rep' mode: a BN after the cheap depthwise
  conv and a ``fusion_bn`` branch, keys ``…ghost{1,2}.fusion_bn.*``);
* ``RepOpt-GhostNet-<w>`` — the target model (``final_bn`` only), trained with a RepOptimizer;
* ``RepOpt-GhostNet-<w>-hs`` / ``-csla`` — Hyper-Search and constant-scale models
  (``fusion_scale`` and a cheap ``ScaleLayer``, then ``final_bn``); ``create_model`` gives a
  csla model its scales (``scales=``; released only for 0.5x, the default there).

Widths 0.5x … 2.0x. The timm re-host of the RepGhost authors' weights (``repghostnet_050``
…) loads through the ``timm`` key adapter registered here. Deploy keys: see
:mod:`repzoo.layers.ghost`; the stem's ``bn1`` is folded into ``conv_stem`` (which gains a bias).
"""
import re
from typing import Dict, Iterable, List, Mapping

import torch
from torch import nn

from ..layers.ghost import ConvBnAct, RepGhostBottleneck, make_divisible
from ..registry import register_model
from ..weights.adapters import register_key_adapter
from ..layers.pool import GlobalPool
from .base import RepClassifier, Stage

__all__ = ["RepGhostNet", "GHOST_CFGS"]

PAPER = "https://arxiv.org/abs/2211.06088"
REPOPT_PAPER = "https://arxiv.org/abs/2205.15242"

#: Stages of bottlenecks, rows ``(kernel, expansion, out, se_ratio, stride)`` at width 1.
GHOST_CFGS = (
    ((3, 8, 16, 0, 1),),
    ((3, 24, 24, 0, 2),),
    ((3, 36, 24, 0, 1),),
    ((5, 36, 40, 0.25, 2),),
    ((5, 60, 40, 0.25, 1),),
    ((3, 120, 80, 0, 2),),
    ((3, 100, 80, 0, 1), (3, 120, 80, 0, 1), (3, 120, 80, 0, 1), (3, 240, 112, 0.25, 1), (3, 336, 112, 0.25, 1)),
    ((5, 336, 160, 0.25, 2),),
    ((5, 480, 160, 0, 1), (5, 480, 160, 0.25, 1), (5, 480, 160, 0, 1), (5, 480, 160, 0.25, 1)),
)
HEAD_CHANNELS = 1280

#: width -> the width's spelling in the names, and timm's name of the RepGhostNet at that width.
WIDTHS: Dict[float, str] = {0.5: "0.5x", 0.58: "0.58x", 0.8: "0.8x", 1.0: "1.0x", 1.11: "1.11x",
                            1.3: "1.3x", 1.5: "1.5x", 2.0: "2.0x"}
TIMM_NAMES: Dict[float, str] = {w: f"repghostnet_{round(w * 100):03d}" for w in WIDTHS}


class RepGhostNet(RepClassifier):
    """RepGhostNet in mode ``rep``, ``target``, ``hs`` or ``csla``.

    ``conv_stem``/``bn1``/``act1``, ``blocks`` (``nn.Sequential`` of stages; ``blocks.9`` is the
    final 1x1 :class:`ConvBnAct`), then the head: ``global_pool``, ``conv_head`` (1x1 to 1280,
    with bias), ``act2``, ``flatten``, ``head_drop`` (``drop_rate``, 0.2) and ``classifier``.
    ``forward_head(pre_logits=True)`` returns the 1280-wide ``conv_head`` features.

    ``feature_info`` names the last stage at each stride (``blocks.0``, ``blocks.2``, ``blocks.4``,
    ``blocks.6``, ``blocks.9``); timm's ``FeatureListNet`` reaches them with
    ``flatten_sequential=True`` (see :attr:`feature_flatten_sequential`).
    """

    head_name = "classifier"
    first_conv = "conv_stem"
    #: timm's GhostNet head: pool, then ``conv_head`` (1x1 to 1280); ``global_pool=''`` runs ``conv_head``
    #: on the unpooled map
    pools_early = True
    feature_flatten_sequential = True
    #: the stem's conv and BN keep the reference's sibling names; folded at deploy (conv_stem gains a bias)
    conv_bn_pairs = (("conv_stem", "bn1"),)

    def __init__(self, width: float = 1.0, mode: str = "rep", num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.2, deploy: bool = False):
        super().__init__()
        self.width, self.mode = width, mode
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        stem = make_divisible(16 * width, 4)
        self.conv_stem = nn.Conv2d(in_chans, stem, 3, 2, 1, bias=deploy)
        self.bn1 = nn.Identity() if deploy else nn.BatchNorm2d(stem)
        self.act1 = nn.ReLU()
        self.feature_info = []
        stages, in_ch, reduction, run = [], stem, 2, 0
        for s, cfg in enumerate(GHOST_CFGS):
            blocks = []
            for k, exp, c, se_ratio, stride in cfg:
                out_ch, mid_ch = make_divisible(c * width, 4), make_divisible(exp * width, 4)
                # Consecutive same-width stride-1 blocks, for the hs scale init.
                run = run + 1 if stride == 1 and in_ch == out_ch else 1
                blocks.append(RepGhostBottleneck(in_ch, mid_ch, out_ch, k, stride, se_ratio, mode=mode,
                                                 num_stage_blocks=run, deploy=deploy))
                in_ch, reduction = out_ch, reduction * stride
            stages.append(Stage(*blocks))
            if s + 1 == len(GHOST_CFGS) or GHOST_CFGS[s + 1][0][4] > 1:
                self.feature_info.append(dict(num_chs=in_ch, reduction=reduction, module=f"blocks.{s}"))
        last = make_divisible(GHOST_CFGS[-1][-1][1] * width * 2, 4)
        stages.append(Stage(ConvBnAct(in_ch, last, 1, deploy=deploy)))
        self.feature_info[-1] = dict(num_chs=last, reduction=reduction, module=f"blocks.{len(GHOST_CFGS)}")
        self.blocks = nn.Sequential(*stages)
        self.num_features, self.head_hidden_size = last, HEAD_CHANNELS
        self.global_pool = GlobalPool("avg")
        self.conv_head = nn.Conv2d(last, HEAD_CHANNELS, 1, bias=True)
        self.act2 = nn.ReLU()
        self.flatten = nn.Identity()  # GlobalPool flattens; kept for timm's module names
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = self._make_head(num_classes)

    def group_matcher(self, coarse: bool = False) -> Dict[str, object]:
        return dict(stem=r"^conv_stem|^bn1", blocks=[(r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)", None),
                                                     (r"^conv_head", (99999,))])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.act1(self.bn1(self.conv_stem(x))))

    def _feature_steps(self) -> List[nn.Module]:
        ends = [int(info["module"].split(".")[1]) for info in self.feature_info]
        starts = [0] + [e + 1 for e in ends[:-1]]
        steps = [self.blocks[s:e + 1] for s, e in zip(starts, ends)]
        steps[0] = nn.Sequential(self.conv_stem, self.bn1, self.act1, steps[0])
        return steps

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if not self.global_pool.is_identity():
            x = x[:, :, None, None]  # conv_head is a 1x1 conv
        x = self.act2(self.conv_head(x))
        if not self.global_pool.is_identity():
            x = torch.flatten(x, 1)
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)


def _create(width: float, mode: str, **kwargs) -> RepGhostNet:
    return RepGhostNet(width=width, mode=mode, **kwargs)


def _register(name: str, width: float, mode: str):
    if mode == "rep":
        return register_model(name, family="RepGhostNet", paper=PAPER, config=dict(width=width, mode=mode),
                              aliases=(TIMM_NAMES[width],))
    return register_model(name, family="RepOpt-GhostNet", paper=REPOPT_PAPER, config=dict(width=width, mode=mode),
                          scales=f"RepOpt-GhostNet-{WIDTHS[width]}" if mode == "csla" else None)


_TIMM_FUSION_BN = re.compile(r"\.fusion_bn\.0\.")


def _is_timm(keys: Iterable[str]) -> bool:
    return any(".fusion_bn.0." in k for k in keys)


@register_key_adapter("timm", "RepGhostNet", detect=_is_timm)
def timm_to_official(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """timm's ``repghostnet_*`` keys to RepOptimizers': ``…ghost{1,2}.fusion_bn.0.*`` → ``…fusion_bn.*``.

    Every other key of timm's train-form RepGhostNet is already the reference's.
    """
    return {_TIMM_FUSION_BN.sub(".fusion_bn.", k): v for k, v in state_dict.items()}


@_register("RepGhostNet-0.5x", 0.5, "rep")
def repghostnet_0_5x(**kwargs) -> RepGhostNet:
    """RepGhostNet-0.5x (the RepGhost baseline, 'rep' mode)."""
    return _create(0.5, "rep", **kwargs)


@_register("RepGhostNet-0.58x", 0.58, "rep")
def repghostnet_0_58x(**kwargs) -> RepGhostNet:
    """RepGhostNet-0.58x (the RepGhost baseline, 'rep' mode)."""
    return _create(0.58, "rep", **kwargs)


@_register("RepGhostNet-0.8x", 0.8, "rep")
def repghostnet_0_8x(**kwargs) -> RepGhostNet:
    """RepGhostNet-0.8x (the RepGhost baseline, 'rep' mode)."""
    return _create(0.8, "rep", **kwargs)


@_register("RepGhostNet-1.0x", 1.0, "rep")
def repghostnet_1_0x(**kwargs) -> RepGhostNet:
    """RepGhostNet-1.0x (the RepGhost baseline, 'rep' mode)."""
    return _create(1.0, "rep", **kwargs)


@_register("RepGhostNet-1.11x", 1.11, "rep")
def repghostnet_1_11x(**kwargs) -> RepGhostNet:
    """RepGhostNet-1.11x (the RepGhost baseline, 'rep' mode)."""
    return _create(1.11, "rep", **kwargs)


@_register("RepGhostNet-1.3x", 1.3, "rep")
def repghostnet_1_3x(**kwargs) -> RepGhostNet:
    """RepGhostNet-1.3x (the RepGhost baseline, 'rep' mode)."""
    return _create(1.3, "rep", **kwargs)


@_register("RepGhostNet-1.5x", 1.5, "rep")
def repghostnet_1_5x(**kwargs) -> RepGhostNet:
    """RepGhostNet-1.5x (the RepGhost baseline, 'rep' mode)."""
    return _create(1.5, "rep", **kwargs)


@_register("RepGhostNet-2.0x", 2.0, "rep")
def repghostnet_2_0x(**kwargs) -> RepGhostNet:
    """RepGhostNet-2.0x (the RepGhost baseline, 'rep' mode)."""
    return _create(2.0, "rep", **kwargs)


@_register("RepOpt-GhostNet-0.5x", 0.5, "target")
def repopt_ghostnet_0_5x(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-0.5x (target, train with a RepOptimizer)."""
    return _create(0.5, "target", **kwargs)


@_register("RepOpt-GhostNet-0.5x-hs", 0.5, "hs")
def repopt_ghostnet_0_5x_hs(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-0.5x Hyper-Search model (trainable scales)."""
    return _create(0.5, "hs", **kwargs)


@_register("RepOpt-GhostNet-0.5x-csla", 0.5, "csla")
def repopt_ghostnet_0_5x_csla(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-0.5x CSLA model (constant scales; default: the released 0.5x file)."""
    return _create(0.5, "csla", **kwargs)


@_register("RepOpt-GhostNet-0.58x", 0.58, "target")
def repopt_ghostnet_0_58x(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-0.58x (target, train with a RepOptimizer)."""
    return _create(0.58, "target", **kwargs)


@_register("RepOpt-GhostNet-0.58x-hs", 0.58, "hs")
def repopt_ghostnet_0_58x_hs(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-0.58x Hyper-Search model (trainable scales)."""
    return _create(0.58, "hs", **kwargs)


@_register("RepOpt-GhostNet-0.58x-csla", 0.58, "csla")
def repopt_ghostnet_0_58x_csla(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-0.58x CSLA model (constant scales from ``scales=``)."""
    return _create(0.58, "csla", **kwargs)


@_register("RepOpt-GhostNet-0.8x", 0.8, "target")
def repopt_ghostnet_0_8x(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-0.8x (target, train with a RepOptimizer)."""
    return _create(0.8, "target", **kwargs)


@_register("RepOpt-GhostNet-0.8x-hs", 0.8, "hs")
def repopt_ghostnet_0_8x_hs(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-0.8x Hyper-Search model (trainable scales)."""
    return _create(0.8, "hs", **kwargs)


@_register("RepOpt-GhostNet-0.8x-csla", 0.8, "csla")
def repopt_ghostnet_0_8x_csla(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-0.8x CSLA model (constant scales from ``scales=``)."""
    return _create(0.8, "csla", **kwargs)


@_register("RepOpt-GhostNet-1.0x", 1.0, "target")
def repopt_ghostnet_1_0x(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-1.0x (target, train with a RepOptimizer)."""
    return _create(1.0, "target", **kwargs)


@_register("RepOpt-GhostNet-1.0x-hs", 1.0, "hs")
def repopt_ghostnet_1_0x_hs(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-1.0x Hyper-Search model (trainable scales)."""
    return _create(1.0, "hs", **kwargs)


@_register("RepOpt-GhostNet-1.0x-csla", 1.0, "csla")
def repopt_ghostnet_1_0x_csla(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-1.0x CSLA model (constant scales from ``scales=``)."""
    return _create(1.0, "csla", **kwargs)


@_register("RepOpt-GhostNet-1.11x", 1.11, "target")
def repopt_ghostnet_1_11x(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-1.11x (target, train with a RepOptimizer)."""
    return _create(1.11, "target", **kwargs)


@_register("RepOpt-GhostNet-1.11x-hs", 1.11, "hs")
def repopt_ghostnet_1_11x_hs(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-1.11x Hyper-Search model (trainable scales)."""
    return _create(1.11, "hs", **kwargs)


@_register("RepOpt-GhostNet-1.11x-csla", 1.11, "csla")
def repopt_ghostnet_1_11x_csla(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-1.11x CSLA model (constant scales from ``scales=``)."""
    return _create(1.11, "csla", **kwargs)


@_register("RepOpt-GhostNet-1.3x", 1.3, "target")
def repopt_ghostnet_1_3x(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-1.3x (target, train with a RepOptimizer)."""
    return _create(1.3, "target", **kwargs)


@_register("RepOpt-GhostNet-1.3x-hs", 1.3, "hs")
def repopt_ghostnet_1_3x_hs(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-1.3x Hyper-Search model (trainable scales)."""
    return _create(1.3, "hs", **kwargs)


@_register("RepOpt-GhostNet-1.3x-csla", 1.3, "csla")
def repopt_ghostnet_1_3x_csla(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-1.3x CSLA model (constant scales from ``scales=``)."""
    return _create(1.3, "csla", **kwargs)


@_register("RepOpt-GhostNet-1.5x", 1.5, "target")
def repopt_ghostnet_1_5x(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-1.5x (target, train with a RepOptimizer)."""
    return _create(1.5, "target", **kwargs)


@_register("RepOpt-GhostNet-1.5x-hs", 1.5, "hs")
def repopt_ghostnet_1_5x_hs(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-1.5x Hyper-Search model (trainable scales)."""
    return _create(1.5, "hs", **kwargs)


@_register("RepOpt-GhostNet-1.5x-csla", 1.5, "csla")
def repopt_ghostnet_1_5x_csla(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-1.5x CSLA model (constant scales from ``scales=``)."""
    return _create(1.5, "csla", **kwargs)


@_register("RepOpt-GhostNet-2.0x", 2.0, "target")
def repopt_ghostnet_2_0x(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-2.0x (target, train with a RepOptimizer)."""
    return _create(2.0, "target", **kwargs)


@_register("RepOpt-GhostNet-2.0x-hs", 2.0, "hs")
def repopt_ghostnet_2_0x_hs(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-2.0x Hyper-Search model (trainable scales)."""
    return _create(2.0, "hs", **kwargs)


@_register("RepOpt-GhostNet-2.0x-csla", 2.0, "csla")
def repopt_ghostnet_2_0x_csla(**kwargs) -> RepGhostNet:
    """RepOpt-GhostNet-2.0x CSLA model (constant scales from ``scales=``)."""
    return _create(2.0, "csla", **kwargs)
