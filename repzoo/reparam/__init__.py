"""Train-to-deploy conversion: the math (:mod:`.fuse`; RepMLPNet's locality injection in :mod:`.mlp`;
OREPA's and DBB's kernels in :mod:`.orepa`), state-dict helpers (:mod:`.state`), the block protocol
(:mod:`.block`) and whole-tree conversion (:mod:`.tree`)."""

#: Bumped whenever a conversion's output changes; the deploy cache is keyed by it.
CONVERSION_VERSION = 2  # 2: GhostNet's stem BN is folded into conv_stem

from .block import ReparamBlock  # noqa: E402
from .fuse import bn_scale_shift, fuse_bn, fuse_conv_bn, identity_kernel, pad_kernel, scale_kernel, sum_branches  # noqa: E402
from .mlp import add_conv_to_fc_, conv_to_fc, fuse_fc_bn, inject_locality_  # noqa: E402
from .orepa import (average_kernel, average_pattern, chain_kernels, compose_1x1_kxk,  # noqa: E402
                    compose_1x1_kxk_kernel, dw_pw_kernel, orepa_prior, pattern_kernel, scaled_sum)
from .state import BN_EPS, bn_args, conv_state, fused_bn, fused_conv_bn  # noqa: E402
from .tree import (conv_bn_pairs, conversion_error, convert_state_dict, is_deploy, model_signature,  # noqa: E402
                   relative_difference, reparam_blocks, reparameterize)

__all__ = [
    "CONVERSION_VERSION",
    "ReparamBlock",
    "reparameterize",
    "convert_state_dict",
    "model_signature",
    "is_deploy",
    "reparam_blocks",
    "conv_bn_pairs",
    "conversion_error",
    "relative_difference",
    "BN_EPS",
    "bn_args",
    "fused_conv_bn",
    "fused_bn",
    "conv_state",
    "bn_scale_shift",
    "fuse_bn",
    "fuse_conv_bn",
    "identity_kernel",
    "pad_kernel",
    "scale_kernel",
    "sum_branches",
    "fuse_fc_bn",
    "add_conv_to_fc_",
    "conv_to_fc",
    "inject_locality_",
    "average_pattern",
    "average_kernel",
    "orepa_prior",
    "pattern_kernel",
    "compose_1x1_kxk",
    "compose_1x1_kxk_kernel",
    "dw_pw_kernel",
    "scaled_sum",
    "chain_kernels",
]
