"""Blocks shared by the families, usable in a user's own model; every re-parameterizable one is
converted by :func:`repzoo.reparameterize`. Tensors in, tensors out: no files, no network."""
from .conv_bn import ConvBn, ConvBnBlock
from .dbb import BNAndPad, DiverseBranchBlock, IdentityBasedConv1x1
from .ghost import ConvBnAct, RepGhostBottleneck, RepGhostModule, SqueezeExcite
from .repopt import LinearAddBlock, RepOptRepVGGBlock, RepOptVGGBlock
from .repmlp import GlobalPerceptron, PartitionFC, RepMLPBlock
from .orepa import (OREPA, OREPA1x1, OREPAKernel, OREPALargeConv, OREPARepVGGBlock, OREPAVGGConv, orepa_kernel,
                    orepa_layer)
from .pool import GlobalPool
from .repvgg_block import RepVGGBlock
from .scale import ScaleLayer
from .se import SEBlock

__all__ = [
    "ConvBn",
    "ConvBnBlock",
    "SEBlock",
    "ScaleLayer",
    "GlobalPool",
    "RepVGGBlock",
    "RepOptVGGBlock",
    "LinearAddBlock",
    "RepOptRepVGGBlock",
    "SqueezeExcite",
    "ConvBnAct",
    "RepGhostModule",
    "RepGhostBottleneck",
    "GlobalPerceptron",
    "PartitionFC",
    "RepMLPBlock",
    "OREPA",
    "OREPA1x1",
    "OREPALargeConv",
    "OREPAKernel",
    "OREPAVGGConv",
    "OREPARepVGGBlock",
    "orepa_layer",
    "orepa_kernel",
    "DiverseBranchBlock",
    "BNAndPad",
    "IdentityBasedConv1x1",
]
