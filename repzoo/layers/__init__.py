"""Blocks shared by the families, usable in a user's own model; every re-parameterizable one is
converted by :func:`repzoo.reparameterize`. Tensors in, tensors out: no files, no network."""
from .conv_bn import ConvBn
from .ghost import ConvBnAct, RepGhostBottleneck, RepGhostModule, SqueezeExcite
from .repopt import LinearAddBlock, RepOptRepVGGBlock, RepOptVGGBlock
from .repmlp import GlobalPerceptron, PartitionFC, RepMLPBlock
from .repvgg_block import RepVGGBlock
from .scale import ScaleLayer
from .se import SEBlock

__all__ = [
    "ConvBn",
    "SEBlock",
    "ScaleLayer",
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
]
