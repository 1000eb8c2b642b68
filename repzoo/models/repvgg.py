"""RepVGG: Making VGG-style ConvNets Great Again (Ding et al., CVPR 2021).

Keys, widths and grouping follow DingXiaoH/RepVGG so that the released
``RepVGG-*-train.pth`` and converted ``*-deploy.pth`` files load as they are.
"""
from typing import Dict, Iterable, Mapping, Optional, Sequence

import torch

from ..errors import IncompatibleCheckpointError
from ..layers.repvgg_block import RepVGGBlock
from ..registry import register_model
from ..weights.adapters import register_key_adapter
from .base import VGGStyleClassifier

__all__ = ["RepVGG"]

PAPER = "https://arxiv.org/abs/2101.03697"
FAMILY = "RepVGG"

# Grouped 3x3 / 1x1 convs sit at layer indices 2, 4, …, 26 (1 = first block of stage1).
_GROUPED_LAYERS = range(2, 27, 2)
G2 = {layer: 2 for layer in _GROUPED_LAYERS}
G4 = {layer: 4 for layer in _GROUPED_LAYERS}

A_BLOCKS, B_BLOCKS, D_BLOCKS = (2, 4, 14, 1), (4, 6, 16, 1), (8, 14, 24, 1)

#: name -> (num_blocks, width_multiplier, groups_map, use_se)
VARIANTS: Dict[str, dict] = {
    "RepVGG-A0": dict(num_blocks=A_BLOCKS, width_multiplier=(0.75, 0.75, 0.75, 2.5)),
    "RepVGG-A1": dict(num_blocks=A_BLOCKS, width_multiplier=(1, 1, 1, 2.5)),
    "RepVGG-A2": dict(num_blocks=A_BLOCKS, width_multiplier=(1.5, 1.5, 1.5, 2.75)),
    "RepVGG-B0": dict(num_blocks=B_BLOCKS, width_multiplier=(1, 1, 1, 2.5)),
    "RepVGG-B1": dict(num_blocks=B_BLOCKS, width_multiplier=(2, 2, 2, 4)),
    "RepVGG-B1g2": dict(num_blocks=B_BLOCKS, width_multiplier=(2, 2, 2, 4), groups_map=G2),
    "RepVGG-B1g4": dict(num_blocks=B_BLOCKS, width_multiplier=(2, 2, 2, 4), groups_map=G4),
    "RepVGG-B2": dict(num_blocks=B_BLOCKS, width_multiplier=(2.5, 2.5, 2.5, 5)),
    "RepVGG-B2g2": dict(num_blocks=B_BLOCKS, width_multiplier=(2.5, 2.5, 2.5, 5), groups_map=G2),
    "RepVGG-B2g4": dict(num_blocks=B_BLOCKS, width_multiplier=(2.5, 2.5, 2.5, 5), groups_map=G4),
    "RepVGG-B3": dict(num_blocks=B_BLOCKS, width_multiplier=(3, 3, 3, 5)),
    "RepVGG-B3g2": dict(num_blocks=B_BLOCKS, width_multiplier=(3, 3, 3, 5), groups_map=G2),
    "RepVGG-B3g4": dict(num_blocks=B_BLOCKS, width_multiplier=(3, 3, 3, 5), groups_map=G4),
    "RepVGG-D2se": dict(num_blocks=D_BLOCKS, width_multiplier=(2.5, 2.5, 2.5, 5), use_se=True),
}


def stage_widths(width_multiplier: Sequence[float]) -> tuple:
    """RepVGG's widths: stage0 ``min(64, int(64a))``, then ``int(64a), int(128a), int(256a), int(512b)``."""
    a, b = width_multiplier[0], width_multiplier[3]
    return (min(64, int(64 * a)), int(64 * a), int(128 * a), int(256 * a), int(512 * b))


class RepVGG(VGGStyleClassifier):
    """RepVGG: ``stage0`` (one block), ``stage1..4`` (``nn.Sequential`` of blocks), ``global_pool``, ``linear``."""

    def __init__(self, num_blocks: Sequence[int], width_multiplier: Sequence[float],
                 groups_map: Optional[Dict[int, int]] = None, use_se: bool = False,
                 num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 deploy: bool = False):
        super().__init__()
        groups_map = groups_map or {}
        se = "pre" if use_se else None

        def make_block(in_ch, out_ch, stride, layer, index):
            return RepVGGBlock(in_ch, out_ch, stride=stride, groups=groups_map.get(layer, 1), se=se, deploy=deploy)

        self._build_body(stage_widths(width_multiplier), num_blocks, make_block, num_classes, in_chans, drop_rate)


def _create(name: str, **kwargs) -> RepVGG:
    return RepVGG(**VARIANTS[name], **kwargs)


def _register(name: str):
    return register_model(name, family=FAMILY, paper=PAPER, config=VARIANTS[name])


@_register("RepVGG-A0")
def repvgg_a0(**kwargs) -> RepVGG:
    """RepVGG-A0: 8.31M deploy params, 72.41% top-1."""
    return _create("RepVGG-A0", **kwargs)


@_register("RepVGG-A1")
def repvgg_a1(**kwargs) -> RepVGG:
    """RepVGG-A1: 12.79M deploy params, 74.46% top-1."""
    return _create("RepVGG-A1", **kwargs)


@_register("RepVGG-A2")
def repvgg_a2(**kwargs) -> RepVGG:
    """RepVGG-A2: 25.50M deploy params, 76.48% top-1."""
    return _create("RepVGG-A2", **kwargs)


@_register("RepVGG-B0")
def repvgg_b0(**kwargs) -> RepVGG:
    """RepVGG-B0: 14.34M deploy params, 75.14% top-1."""
    return _create("RepVGG-B0", **kwargs)


@_register("RepVGG-B1")
def repvgg_b1(**kwargs) -> RepVGG:
    """RepVGG-B1: 51.83M deploy params, 78.37% top-1."""
    return _create("RepVGG-B1", **kwargs)


@_register("RepVGG-B1g2")
def repvgg_b1g2(**kwargs) -> RepVGG:
    """RepVGG-B1g2: 41.36M deploy params, 77.78% top-1."""
    return _create("RepVGG-B1g2", **kwargs)


@_register("RepVGG-B1g4")
def repvgg_b1g4(**kwargs) -> RepVGG:
    """RepVGG-B1g4: 36.13M deploy params, 77.58% top-1."""
    return _create("RepVGG-B1g4", **kwargs)


@_register("RepVGG-B2")
def repvgg_b2(**kwargs) -> RepVGG:
    """RepVGG-B2: 80.32M deploy params, 78.78% top-1."""
    return _create("RepVGG-B2", **kwargs)


@_register("RepVGG-B2g2")
def repvgg_b2g2(**kwargs) -> RepVGG:
    """RepVGG-B2g2: 63.96M deploy params (no result released)."""
    return _create("RepVGG-B2g2", **kwargs)


@_register("RepVGG-B2g4")
def repvgg_b2g4(**kwargs) -> RepVGG:
    """RepVGG-B2g4: 55.78M deploy params, 79.38% top-1 (200 epochs)."""
    return _create("RepVGG-B2g4", **kwargs)


@_register("RepVGG-B3")
def repvgg_b3(**kwargs) -> RepVGG:
    """RepVGG-B3: 110.96M deploy params, 80.52% top-1 (200 epochs)."""
    return _create("RepVGG-B3", **kwargs)


@_register("RepVGG-B3g2")
def repvgg_b3g2(**kwargs) -> RepVGG:
    """RepVGG-B3g2: 87.40M deploy params (no result released)."""
    return _create("RepVGG-B3g2", **kwargs)


@_register("RepVGG-B3g4")
def repvgg_b3g4(**kwargs) -> RepVGG:
    """RepVGG-B3g4: 75.63M deploy params, 80.21% top-1 (200 epochs)."""
    return _create("RepVGG-B3g4", **kwargs)


@_register("RepVGG-D2se")
def repvgg_d2se(**kwargs) -> RepVGG:
    """RepVGG-D2se (SE before the ReLU): 120.39M deploy params, 83.55% top-1 at 320."""
    return _create("RepVGG-D2se", **kwargs)


# ----------------------------------------------------------------------------- timm re-hosts
# timm's ``repvgg_*`` (timm/models/byobnet.py; weights on the Hub as ``timm/repvgg_a0.rvgg_in1k`` …)
# hold the same tensors under other module names. The mapping is one-to-one, module by module:
#   stem.*                  -> stage0.*            stages.{s}.{i}.*       -> stage{s+1}.{i}.*
#   .conv_kxk.{conv,bn}.*   -> .rbr_dense.{conv,bn}.*
#   .conv_1x1.{conv,bn}.*   -> .rbr_1x1.{conv,bn}.*
#   .identity.*             -> .rbr_identity.*     .reparam_conv.*        -> .rbr_reparam.*  (deploy form)
#   .attn.fc1.* / .attn.fc2.* -> .se.down.* / .se.up.*   (RepVGG-D2se's SE, before the ReLU)
#   head.fc.*               -> linear.*
_TIMM_BLOCK = (("conv_kxk.", "rbr_dense."), ("conv_1x1.", "rbr_1x1."), ("identity.", "rbr_identity."),
               ("reparam_conv.", "rbr_reparam."), ("attn.fc1.", "se.down."), ("attn.fc2.", "se.up."))


def _timm_key(key: str) -> str:
    if key.startswith("head.fc."):
        return "linear." + key[len("head.fc."):]
    if key.startswith("stem."):
        prefix, rest = "stage0.", key[len("stem."):]
    elif key.startswith("stages."):
        _, s, i, rest = key.split(".", 3)
        prefix = f"stage{int(s) + 1}.{int(i)}."
    else:
        raise KeyError(key)
    for old, new in _TIMM_BLOCK:
        if rest.startswith(old):
            return prefix + new + rest[len(old):]
    raise KeyError(key)


def _is_timm(keys: Iterable[str]) -> bool:
    return any(k.startswith(("stem.", "stages.")) for k in keys)


@register_key_adapter("timm", FAMILY, detect=_is_timm)
def timm_to_official(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A timm ``repvgg_*`` state dict with DingXiaoH/RepVGG's key names (see the table above)."""
    out: Dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        try:
            out[_timm_key(key)] = value
        except (KeyError, ValueError):
            unknown.append(key)
    if unknown:
        raise IncompatibleCheckpointError(
            f"{len(unknown)} keys are not those of a timm repvgg_* model (e.g. {', '.join(unknown[:5])}); "
            "is this a checkpoint of another model? Load it with its own key_style."
        )
    return out
