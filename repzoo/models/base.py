"""The model contract every repzoo classifier follows (timm's surface)."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..reparam import reparam_blocks

__all__ = ["RepClassifier"]


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
        """True when every re-parameterizable block is in its deploy form."""
        return all(block.deploy for _, block in reparam_blocks(self))

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
