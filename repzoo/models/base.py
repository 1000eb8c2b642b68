"""The model contract every repzoo classifier follows (timm's surface)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..reparam import conv_bn_pairs, reparam_blocks

__all__ = ["RepClassifier", "VGGStyleClassifier"]


class RepClassifier(nn.Module):
    """Base of every classification model.

    A subclass sets ``num_classes``, ``num_features``, ``feature_info``, ``head_name`` (the
    attribute holding the final ``nn.Linear``), ``drop_rate`` and implements
    ``forward_features``; it may set ``train_only_prefixes`` (state-dict prefixes of modules
    dropped at deploy) and override :meth:`drop_train_only_modules`.
    """

    num_classes: int
    num_features: int
    feature_info: List[Dict[str, Any]]
    head_name: str = "linear"
    train_only_prefixes: Sequence[str] = ()
    pretrained_cfg: Dict[str, Any]
    grad_checkpointing: bool = False

    @property
    def deploy(self) -> bool:
        """True when every re-parameterizable block is in its deploy form (and every declared conv-BN pair folded)."""
        pairs_folded = all(not isinstance(getattr(m, bn), nn.modules.batchnorm._BatchNorm)
                           for _, m, _, bn in conv_bn_pairs(self))
        return pairs_folded and all(block.deploy for _, block in reparam_blocks(self))

    def head_keys(self) -> List[str]:
        """State-dict keys that depend on ``num_classes``."""
        return [f"{self.head_name}.weight", f"{self.head_name}.bias"]

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_name)

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        """A fresh head for ``num_classes`` (0: ``forward`` returns pooled features)."""
        if global_pool != "avg":
            raise ValueError(f"only global_pool='avg' is supported, not {global_pool!r}")
        self.num_classes = num_classes
        ref = next(self.parameters())
        head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0 else nn.Identity()
        setattr(self, self.head_name, head)
        if hasattr(self, "pretrained_cfg"):
            self.pretrained_cfg = dict(self.pretrained_cfg, num_classes=num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^stage0", blocks=r"^stage(\d+)" if coarse else r"^stage(\d+)\.(\d+)")

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run one block, through activation checkpointing when it is enabled and training."""
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.gap(x), 1)
        x = self.head_drop(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def drop_train_only_modules(self) -> None:
        """Delete modules that exist only for training (called by ``repzoo.reparameterize``)."""
        for prefix in self.train_only_prefixes:
            name = prefix.rstrip(".")
            if hasattr(self, name):
                delattr(self, name)


class VGGStyleClassifier(RepClassifier):
    """The VGG-style body shared by RepVGG and RepOpt-VGG.

    ``stage0`` (one block, stride 2), ``stage1..4`` (``nn.Sequential``, first block stride 2),
    ``gap``, ``head_drop``, ``linear``. ``make_block(in_ch, out_ch, stride, layer, index)`` builds
    each block; ``layer`` counts blocks from 1 (stage0 is 0), ``index`` is the position in its stage.
    """

    def _build_body(self, widths: Sequence[int], num_blocks: Sequence[int], make_block: Callable[..., nn.Module],
                    num_classes: int, in_chans: int, drop_rate: float) -> None:
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.stage0 = make_block(in_chans, widths[0], 2, 0, 0)
        self.feature_info = [dict(num_chs=widths[0], reduction=2, module="stage0")]
        in_ch, layer = widths[0], 1
        for s, (n, out_ch) in enumerate(zip(num_blocks, widths[1:]), start=1):
            blocks = []
            for i in range(n):
                blocks.append(make_block(in_ch, out_ch, 2 if i == 0 else 1, layer, i))
                in_ch, layer = out_ch, layer + 1
            self.add_module(f"stage{s}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_ch, reduction=2 ** (s + 1), module=f"stage{s}"))
        self.num_features = widths[-1]
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.linear = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._run(self.stage0, x)
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            for block in stage:
                x = self._run(block, x)
        return x
