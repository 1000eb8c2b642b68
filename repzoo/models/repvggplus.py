"""RepVGGplus (DingXiaoH/RepVGG ``repvggplus.py``): RepVGG with post-ReLU SE and auxiliary heads.

By timm's conventions ``forward`` returns the logits, in training as in eval, so timm's ``train.py``
and any plain loss work. The three auxiliary heads (keys ``stage1_aux.*``, ``stage2_aux.*``,
``stage3_first_aux.*``) are built only with ``aux_logits=True``: training-mode ``forward`` then returns
the reference's dict (``main`` and the three auxiliary logits) for the authors' recipe, and every key of
the released train files is the model's. Without them, ``create_model`` loads those files' other keys
(the auxiliary heads exist only for training). They are dropped at deploy (the reference's deploy
forward raises; this one works).
"""
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ..layers.conv_bn import ConvBn
from ..layers.repvgg_block import RepVGGBlock
from ..registry import register_model
from ..layers.pool import GlobalPool
from .base import RepClassifier, Stage
from .repvgg import D_BLOCKS, PAPER, stage_widths

__all__ = ["RepVGGplus"]

VARIANTS = {
    "RepVGGplus-L2pse": dict(num_blocks=D_BLOCKS, width_multiplier=(2.5, 2.5, 2.5, 5), use_post_se=True),
}

_AUX = ("stage1_aux", "stage2_aux", "stage3_first_aux")


class RepVGGplusStage(nn.Module):
    """A stage as ``blocks`` (keys ``stageN.blocks.i.*``)."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, stride: int, se, deploy: bool):
        super().__init__()
        self.blocks = Stage(*(
            RepVGGBlock(in_ch if i == 0 else out_ch, out_ch, stride=stride if i == 0 else 1, se=se, deploy=deploy)
            for i in range(num_blocks)
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def _aux_head(channels: int, num_classes: int) -> nn.Sequential:
    """``conv_bn_relu(C, C, 3, s2)`` → pool → flatten → ``Linear``: keys ``.0.conv``, ``.0.bn``, ``.3``."""
    conv = ConvBn(channels, channels, 3, stride=2, padding=1)
    conv.add_module("relu", nn.ReLU())
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), _aux_linear(channels, num_classes))


def _aux_linear(channels: int, num_classes: int, like: Union[torch.Tensor, None] = None) -> nn.Module:
    if num_classes <= 0:
        return nn.Identity()
    kw = {} if like is None else dict(device=like.device, dtype=like.dtype)
    return nn.Linear(channels, num_classes, **kw)


class RepVGGplus(RepClassifier):
    """``stage0``, ``stage1``, ``stage2``, ``stage3_first``, ``stage3_second``, ``stage4``, ``linear``,
    and with ``aux_logits=True`` (train form) ``stage1_aux``, ``stage2_aux``, ``stage3_first_aux``."""

    train_only_prefixes = tuple(f"{name}." for name in _AUX)

    def __init__(self, num_blocks: Sequence[int], width_multiplier: Sequence[float], use_post_se: bool = False,
                 num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, deploy: bool = False,
                 aux_logits: bool = False):
        super().__init__()
        self.aux_logits = aux_logits
        w = stage_widths(width_multiplier)
        se = "post" if use_post_se else None
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        half = num_blocks[2] // 2
        self.stage0 = RepVGGBlock(in_chans, w[0], stride=2, se=se, deploy=deploy)
        self.stage1 = RepVGGplusStage(w[0], w[1], num_blocks[0], 2, se, deploy)
        self.stage2 = RepVGGplusStage(w[1], w[2], num_blocks[1], 2, se, deploy)
        self.stage3_first = RepVGGplusStage(w[2], w[3], half, 2, se, deploy)
        self.stage3_second = RepVGGplusStage(w[3], w[3], num_blocks[2] - half, 1, se, deploy)
        self.stage4 = RepVGGplusStage(w[3], w[4], num_blocks[3], 2, se, deploy)
        self.num_features = w[4]
        self.global_pool = GlobalPool("avg")
        self.head_drop = nn.Dropout(drop_rate)
        self.linear = self._make_head(num_classes)
        if aux_logits and not deploy:
            for name, ch in zip(_AUX, w[1:4]):
                self.add_module(name, _aux_head(ch, num_classes))
        self.feature_info = [
            dict(num_chs=w[0], reduction=2, module="stage0"),
            dict(num_chs=w[1], reduction=4, module="stage1"),
            dict(num_chs=w[2], reduction=8, module="stage2"),
            dict(num_chs=w[3], reduction=16, module="stage3_second"),
            dict(num_chs=w[4], reduction=32, module="stage4"),
        ]

    def head_keys(self):
        keys = super().head_keys()
        for name in _AUX:
            keys += [f"{name}.3.weight", f"{name}.3.bias"]
        return keys

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        for name in _AUX:
            if hasattr(self, name):
                aux = getattr(self, name)
                aux[3] = _aux_linear(aux[0].conv.out_channels, num_classes, aux[0].conv.weight)

    def group_matcher(self, coarse: bool = False):
        return dict(stem=r"^stage0", blocks=r"^stage(\d+)" if coarse else r"^stage(\d+)\w*\.blocks\.(\d+)")

    def _feature_steps(self) -> List[nn.Module]:
        return [self.stage0, self.stage1, self.stage2, nn.Sequential(self.stage3_first, self.stage3_second),
                self.stage4]

    def _features(self, x: torch.Tensor):
        x = self.stage0(x)
        s1 = self.stage1(x)
        s2 = self.stage2(s1)
        s3 = self.stage3_first(s2)
        return s1, s2, s3, self.stage4(self.stage3_second(s3))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x)[-1]

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        s1, s2, s3, feats = self._features(x)
        logits = self.forward_head(feats)
        if not (self.aux_logits and self.training and hasattr(self, "stage1_aux")):
            return logits
        return {"main": logits, "stage1_aux": self.stage1_aux(s1), "stage2_aux": self.stage2_aux(s2),
                "stage3_first_aux": self.stage3_first_aux(s3)}


@register_model("RepVGGplus-L2pse", family="RepVGGplus", paper=PAPER, config=VARIANTS["RepVGGplus-L2pse"])
def repvggplus_l2pse(**kwargs) -> RepVGGplus:
    """RepVGGplus-L2pse: 127.15M deploy params, 84.06% top-1 (train 256, test 320)."""
    return RepVGGplus(**VARIANTS["RepVGGplus-L2pse"], **kwargs)
