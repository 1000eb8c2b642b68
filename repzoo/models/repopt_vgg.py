"""RepOpt-VGG: Re-parameterizing Your Optimizers rather than Architectures (Ding et al., ICLR 2023).

Keys follow DingXiaoH/RepOptimizers (``repoptimizer/repoptvgg_model.py``) so that the
released ``RepOpt-VGG-*`` files and scale files load as they are. Four forms per
architecture:

* ``RepOpt-VGG-B1`` — the target model, plain conv-BN-ReLU blocks, trained with a
  RepOptimizer (:mod:`repzoo.optim`);
* ``RepOpt-VGG-B1-hs`` — Hyper-Search: linear-add blocks with trainable scales;
* ``RepOpt-VGG-B1-csla`` — the same blocks with ``scale_conv`` / ``scale_1x1`` frozen and
  ``scale_identity`` trainable; ``create_model`` loads the scales (``scales=``, default the
  released file of the architecture, shipped with repzoo);
* ``RepOpt-VGG-B1-repvgg`` — RepOptimizers' RepVGG-form baseline (its own key names).

Every form converts to the same deploy model: one 3x3 conv with bias per block
(``stage0.conv.weight/bias``, ``stage{s}.{i}.conv.weight/bias``), ReLU, ``linear``.
"""
from typing import Dict, Sequence

from torch import nn

from ..layers.repopt import LinearAddBlock, RepOptRepVGGBlock, RepOptVGGBlock, hs_scale_init
from ..registry import register_model
from .base import VGGStyleClassifier
from .repvgg import stage_widths

__all__ = ["RepOptVGG", "MODES"]

PAPER = "https://arxiv.org/abs/2205.15242"
FAMILY = "RepOpt-VGG"
MODES = ("target", "hs", "csla", "repvgg")

B_BLOCKS, L_BLOCKS = (4, 6, 16, 1), (8, 14, 24, 1)

#: architecture -> (num_blocks, width_multiplier); every form of it shares the row.
ARCHS: Dict[str, dict] = {
    "RepOpt-VGG-B1": dict(num_blocks=B_BLOCKS, width_multiplier=(2, 2, 2, 4)),
    "RepOpt-VGG-B2": dict(num_blocks=B_BLOCKS, width_multiplier=(2.5, 2.5, 2.5, 5)),
    "RepOpt-VGG-L1": dict(num_blocks=L_BLOCKS, width_multiplier=(2, 2, 2, 4)),
    "RepOpt-VGG-L2": dict(num_blocks=L_BLOCKS, width_multiplier=(2.5, 2.5, 2.5, 5)),
}

def _block(mode: str, in_ch: int, out_ch: int, stride: int, index: int, deploy: bool) -> nn.Module:
    if mode == "target":
        return RepOptVGGBlock(in_ch, out_ch, stride, deploy=deploy)
    if mode == "repvgg":
        return RepOptRepVGGBlock(in_ch, out_ch, stride, deploy=deploy)
    return LinearAddBlock(in_ch, out_ch, stride, scale_init=hs_scale_init(index), csla=mode == "csla", deploy=deploy)


class RepOptVGG(VGGStyleClassifier):
    """RepOpt-VGG: ``stage0`` (one block), ``stage1..4`` (``nn.Sequential``), ``global_pool``, ``linear``.

    ``mode``: ``'target'``, ``'hs'``, ``'csla'`` or ``'repvgg'`` (see the module docstring).
    Strides are 2 in every stage; no SE, no groups (as ``main_repopt.py`` builds them).
    """

    def __init__(self, num_blocks: Sequence[int], width_multiplier: Sequence[float], mode: str = "target",
                 num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, deploy: bool = False):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        widths = stage_widths(width_multiplier)
        self.mode = mode
        self._build_body(widths, num_blocks, lambda i, o, stride, layer, index: _block(mode, i, o, stride, index, deploy),
                         num_classes, in_chans, drop_rate)


def _create(arch: str, mode: str, **kwargs) -> RepOptVGG:
    return RepOptVGG(**ARCHS[arch], mode=mode, **kwargs)


def _register(arch: str, mode: str):
    name = arch if mode == "target" else f"{arch}-{mode}"
    config = dict(ARCHS[arch], mode=mode)
    return register_model(name, family=FAMILY, paper=PAPER, config=config, scales=arch if mode == "csla" else None)


@_register("RepOpt-VGG-B1", "target")
def repopt_vgg_b1(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-B1 (target, train with a RepOptimizer): 51.84M params, 78.62% top-1."""
    return _create("RepOpt-VGG-B1", "target", **kwargs)


@_register("RepOpt-VGG-B1", "hs")
def repopt_vgg_b1_hs(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-B1 Hyper-Search model (trainable scales; the reference trains it on CIFAR-100)."""
    return _create("RepOpt-VGG-B1", "hs", **kwargs)


@_register("RepOpt-VGG-B1", "csla")
def repopt_vgg_b1_csla(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-B1 CSLA model (constant scales from ``scales=``, default: the released B1 file)."""
    return _create("RepOpt-VGG-B1", "csla", **kwargs)


@_register("RepOpt-VGG-B1", "repvgg")
def repopt_vgg_b1_repvgg(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-B1 in RepVGG form (the RepOptimizers baseline)."""
    return _create("RepOpt-VGG-B1", "repvgg", **kwargs)


@_register("RepOpt-VGG-B2", "target")
def repopt_vgg_b2(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-B2 (target): 80.33M params, 79.68% top-1."""
    return _create("RepOpt-VGG-B2", "target", **kwargs)


@_register("RepOpt-VGG-B2", "hs")
def repopt_vgg_b2_hs(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-B2 Hyper-Search model."""
    return _create("RepOpt-VGG-B2", "hs", **kwargs)


@_register("RepOpt-VGG-B2", "csla")
def repopt_vgg_b2_csla(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-B2 CSLA model (default scales: the released B2 file)."""
    return _create("RepOpt-VGG-B2", "csla", **kwargs)


@_register("RepOpt-VGG-B2", "repvgg")
def repopt_vgg_b2_repvgg(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-B2 in RepVGG form."""
    return _create("RepOpt-VGG-B2", "repvgg", **kwargs)


@_register("RepOpt-VGG-L1", "target")
def repopt_vgg_l1(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-L1 (target): 76.04M params, 79.82% top-1."""
    return _create("RepOpt-VGG-L1", "target", **kwargs)


@_register("RepOpt-VGG-L1", "hs")
def repopt_vgg_l1_hs(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-L1 Hyper-Search model."""
    return _create("RepOpt-VGG-L1", "hs", **kwargs)


@_register("RepOpt-VGG-L1", "csla")
def repopt_vgg_l1_csla(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-L1 CSLA model (default scales: the released L1 file)."""
    return _create("RepOpt-VGG-L1", "csla", **kwargs)


@_register("RepOpt-VGG-L1", "repvgg")
def repopt_vgg_l1_repvgg(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-L1 in RepVGG form."""
    return _create("RepOpt-VGG-L1", "repvgg", **kwargs)


@_register("RepOpt-VGG-L2", "target")
def repopt_vgg_l2(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-L2 (target): 118.13M params, 80.47% top-1."""
    return _create("RepOpt-VGG-L2", "target", **kwargs)


@_register("RepOpt-VGG-L2", "hs")
def repopt_vgg_l2_hs(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-L2 Hyper-Search model."""
    return _create("RepOpt-VGG-L2", "hs", **kwargs)


@_register("RepOpt-VGG-L2", "csla")
def repopt_vgg_l2_csla(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-L2 CSLA model (default scales: the released L2 file)."""
    return _create("RepOpt-VGG-L2", "csla", **kwargs)


@_register("RepOpt-VGG-L2", "repvgg")
def repopt_vgg_l2_repvgg(**kwargs) -> RepOptVGG:
    """RepOpt-VGG-L2 in RepVGG form."""
    return _create("RepOpt-VGG-L2", "repvgg", **kwargs)
