"""Global pooling with timm's ``global_pool`` switch: ``'avg'`` / ``'max'`` pool and flatten, ``''`` passes
the feature map through unpooled. No parameters, so swapping the pool never changes a state dict."""
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError

__all__ = ["GlobalPool", "POOL_TYPES"]

POOL_TYPES = ("avg", "max", "")


class GlobalPool(nn.Module):
    """``(N, C, H, W)`` → ``(N, C)`` for ``'avg'`` / ``'max'``; ``''`` returns the input as it is."""

    def __init__(self, pool_type: str = "avg"):
        super().__init__()
        if pool_type not in POOL_TYPES:
            raise InvalidArgumentError(f"global_pool={pool_type!r} is not one of {POOL_TYPES}: use 'avg' (the default), "
                             "'max', or '' for the unpooled feature map")
        self.pool_type = pool_type

    def is_identity(self) -> bool:
        return not self.pool_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "avg":
            return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # quantized tensors pool too (mean does not)
        if self.pool_type == "max":
            return torch.flatten(F.adaptive_max_pool2d(x, 1), 1)
        return x

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"
