"""Train-to-deploy conversion: the math (:mod:`.fuse`) and the machinery (:mod:`.base`)."""

#: Bumped whenever a conversion's output changes; the deploy cache is keyed by it.
CONVERSION_VERSION = 2  # 2: GhostNet's stem BN is folded into conv_stem
from .base import ReparamBlock, bn_args, conv_bn_pairs, conversion_error, convert_state_dict, reparam_blocks, reparameterize, without
from .fuse import (
    bn_scale_shift,
    fuse_bn,
    fuse_conv_bn,
    identity_kernel,
    pad_kernel,
    scale_kernel,
    sum_branches,
)

__all__ = [
    "CONVERSION_VERSION",
    "ReparamBlock",
    "reparameterize",
    "convert_state_dict",
    "reparam_blocks",
    "conversion_error",
    "conv_bn_pairs",
    "bn_args",
    "without",
    "bn_scale_shift",
    "fuse_bn",
    "fuse_conv_bn",
    "identity_kernel",
    "pad_kernel",
    "scale_kernel",
    "sum_branches",
]
