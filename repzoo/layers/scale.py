"""A per-channel scale layer (RepOptimizers' ``ScaleLayer``), shared by the RepOpt-VGG and Ghost blocks."""

import torch
from torch import nn

__all__ = ["ScaleLayer"]


class ScaleLayer(nn.Module):
    """A per-channel scale ``x · w[None, :, None, None]``; its only key is ``weight`` (shape ``(C,)``).

    ``scale_init`` is kept so that :meth:`reset_parameters` (and ``materialize`` after a
    build on the ``meta`` device) restores the initial value.
    """

    def __init__(self, num_features: int, scale_init: float = 1.0):
        super().__init__()
        self.num_features, self.scale_init = num_features, float(scale_init)
        self.weight = nn.Parameter(torch.empty(num_features))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.weight.fill_(self.scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, scale_init={self.scale_init:.4g}"
