"""RepOptimizers: the structural prior of a re-parameterized model moved into the optimizer.

>>> import repzoo, repzoo.optim
>>> model = repzoo.create_model("RepOpt-VGG-B1")
>>> opt = repzoo.optim.create_repoptimizer(model, "RepOpt-VGG-B1", lr=0.1)   # released scales

A target (plain) model trained with a RepOptimizer follows the trajectory of the
constant-scale linear-addition (CSLA) model given by Hyper-Search scales (Ding et al.,
"Re-parameterizing Your Optimizers rather than Architectures", ICLR 2023). See
``docs/repoptimizer.md``.
"""
from .adamw import RepOptimizerAdamW
from .base import RepOptimizer
from .factory import create_repoptimizer
from .handlers import (
    RepOptGhostNetHandler,
    RepOptHandler,
    RepOptVGGHandler,
    ScaledKernel,
    get_handler,
    weight_decay_groups,
)
from ..weights.scales import SCALE_SUFFIXES, extract_scales, is_scale_key, load_scales, save_scales
from .sgd import RepOptimizerSGD

__all__ = [
    "create_repoptimizer",
    "load_scales",
    "save_scales",
    "extract_scales",
    "is_scale_key",
    "SCALE_SUFFIXES",
    "RepOptimizer",
    "RepOptimizerSGD",
    "RepOptimizerAdamW",
    "RepOptHandler",
    "RepOptVGGHandler",
    "RepOptGhostNetHandler",
    "ScaledKernel",
    "get_handler",
    "weight_decay_groups",
]
