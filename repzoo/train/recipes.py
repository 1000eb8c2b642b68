"""The authors' training recipes as plain data, each citing its source (repository, commit, file).

The learning rate is the one for a global batch of ``base_batch``; ``repzoo train`` scales it linearly with
the batch it runs (as ``main.py`` / ``main_repopt.py`` / ``main_repmlp.py`` do).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Tuple

from ..errors import RepZooError

__all__ = ["Recipe", "RECIPES", "get_recipe", "default_recipe"]


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    optimizer: str = "sgd"  #: 'sgd' (momentum 0.9, nesterov) or 'adamw'
    epochs: int = 120
    lr: float = 0.1
    base_batch: int = 256
    weight_decay: float = 1e-4
    decay_rule: str = "set_weight_decay"  #: which parameters decay: 'set_weight_decay', 'repvgg', 'orepa'
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    auto_augment: str = ""  #: timm's auto_augment string ('rand-m15-...'), '' for none
    hflip: float = 0.5
    scale: Tuple[float, float] = (0.08, 1.0)
    color_jitter: float = 0.0
    reprob: float = 0.0
    clip_grad: float = 0.0
    ema_decay: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


RECIPES: Dict[str, Recipe] = {r.name: r for r in [
    Recipe("repvgg", "DingXiaoH/RepVGG README (120 epochs, simple augmentation: table.PNG), train.py: SGD 0.9, "
           "cosine from 0.1, global batch 256, wd 1e-4 without decay on fc.bias, bn.bias, rbr_dense.bn.weight and "
           "rbr_1x1.bn.weight; RandomResizedCrop + flip", decay_rule="repvgg"),
    Recipe("repvggplus", "DingXiaoH/RepVGG README, RepVGGplus-L2pse: 300 epochs, lr 0.1, wd 4e-5, label smoothing 0.1, "
           "raug15 (RandAugment magnitude 15), mixup 0.2; main.py: SGD nesterov 0.9, timm cosine per iteration",
           epochs=300, weight_decay=4e-5, smoothing=0.1, auto_augment="rand-m15-n2", mixup=0.2, warmup_epochs=5,
           warmup_lr=1e-6),
    Recipe("repopt-vgg", "DingXiaoH/RepOptimizers main_repopt.py / config: 120 epochs, lr 0.1 per 256, wd 4e-5, "
           "warmup 5, label smoothing 0.1, AUG.PRESET raug15, mixup 0; RepOptimizerSGD nesterov 0.9; no clipping",
           weight_decay=4e-5, warmup_epochs=5, warmup_lr=1e-6, smoothing=0.1, auto_augment="rand-m15-n2"),
    Recipe("repopt-vgg-hs", "DingXiaoH/RepOptimizers README, Hyper-Search on CIFAR-100: 240 epochs, lr 0.1, wd 4e-5, "
           "warmup 10, label smoothing 0.1, clip 5.0; RandomCrop(32, pad 4) + flip", epochs=240, weight_decay=4e-5,
           warmup_epochs=10, warmup_lr=1e-6, smoothing=0.1, clip_grad=5.0, scale=(0.6, 1.0)),
    Recipe("repghost", "DingXiaoH/RepOptimizers main_repopt.py for GhostNets (timm loaders): 300 epochs, BASE_LR 0.6 "
           "(scaled by batch/256, run at 128x8), wd 1e-5, warmup 5 from 1e-4, label smoothing 0.1, color jitter 0.4, "
           "random erasing 0.2", epochs=300, lr=0.6, weight_decay=1e-5, warmup_epochs=5, warmup_lr=1e-4, smoothing=0.1,
           color_jitter=0.4, reprob=0.2),
    Recipe("repopt-ghostnet-hs", "DingXiaoH/RepOptimizers: the Ghost Hyper-Search, 600 epochs on CIFAR-100 with clip "
           "5.0", epochs=600, lr=0.6, weight_decay=1e-5, warmup_epochs=5, warmup_lr=1e-4,
           smoothing=0.1, clip_grad=5.0, scale=(0.6, 1.0)),
    Recipe("orepa", "JUGGHM/OREPA_CVPR2022 train.py defaults: 120 epochs, global batch 256, SGD 0.9, lr 0.1, wd 1e-4 "
           "without decay on names with bias, bn or prior; RandomResizedCrop + flip", decay_rule="orepa"),
    Recipe("repmlpnet", "DingXiaoH/RepMLP main_repmlp.py / config.py: AdamW, 100 epochs, lr 0.001 per 256, wd 0.1, "
           "warmup 10 from 5e-7, label smoothing 0.1, raug15, mixup 0.4, cutmix 1.0, clip 5.0, EMA off",
           optimizer="adamw", epochs=100, lr=1e-3, weight_decay=0.1, warmup_epochs=10, warmup_lr=5e-7,
           smoothing=0.1, auto_augment="rand-m15-n2", mixup=0.4, cutmix=1.0, clip_grad=5.0),
]}

_FAMILY = {"RepVGG": "repvgg", "RepVGGplus": "repvggplus", "RepOpt-VGG": "repopt-vgg", "RepGhostNet": "repghost",
           "RepOpt-GhostNet": "repghost", "OREPA": "orepa", "RepMLPNet": "repmlpnet"}


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """A recipe by name, with ``overrides`` (``None`` values are ignored)."""
    if name not in RECIPES:
        raise RepZooError(f"Unknown recipe {name!r}: the recipes are {', '.join(sorted(RECIPES))}.")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})


def default_recipe(model: str) -> str:
    """The recipe of a registered model's family (a Hyper-Search model gets its family's search recipe)."""
    from ..registry import get_model_entry

    entry = get_model_entry(model)
    if entry.name.endswith("-hs"):
        return "repopt-ghostnet-hs" if "Ghost" in entry.name else "repopt-vgg-hs"
    family = entry.family
    for prefix in sorted(_FAMILY, key=len, reverse=True):
        if family.startswith(prefix) or entry.name.startswith(prefix):
            return _FAMILY[prefix]
    return "orepa" if ("OREPA" in entry.name or "DBB" in entry.name) else "repvgg"
