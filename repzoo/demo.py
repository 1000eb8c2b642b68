"""``repzoo demo``: build a model, convert it, prove the forms agree, and time both."""
from __future__ import annotations

import copy
import time
from typing import Optional

import torch
from torch import nn

from .factory import create_model
from .reparam import conversion_error, reparameterize

__all__ = ["run_demo", "randomize_bn", "images_per_second"]


@torch.no_grad()
def randomize_bn(model: nn.Module, generator: Optional[torch.Generator] = None) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters (what training would)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            r = lambda lo, hi: torch.empty(n).uniform_(lo, hi, generator=generator).to(m.running_mean)  # noqa: E731
            m.running_mean.copy_(r(-0.5, 0.5))
            m.running_var.copy_(r(0.5, 2.0))
            if m.affine:
                m.weight.copy_(r(0.5, 1.5))
                m.bias.copy_(r(-0.5, 0.5))
    return model


@torch.no_grad()
def images_per_second(model: nn.Module, x: torch.Tensor, warmup: int = 2, min_time: float = 1.0) -> float:
    for _ in range(warmup):
        model(x)
    n, start = 0, time.perf_counter()
    while True:
        model(x)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and n >= 3:
            return n * x.shape[0] / elapsed


def run_demo(name: str = "RepVGG-A0", batch_size: int = 8, image_size: Optional[int] = None) -> dict:
    torch.manual_seed(0)
    train = randomize_bn(create_model(name)).eval()
    size = image_size or train.pretrained_cfg["input_size"][1]
    deploy = reparameterize(copy.deepcopy(train))

    # The proof runs in float64, converting a float64 copy: float32 rounding would hide a real error.
    rel = conversion_error(train, torch.randn(2, train.in_chans, size, size))
    params = [sum(p.numel() for p in m.parameters()) for m in (train, deploy)]
    x = torch.randn(batch_size, train.in_chans, size, size)
    speed = [images_per_second(m, x) for m in (train, deploy)]

    print(f"{name}: {size}x{size} input, batch {batch_size}, {torch.get_num_threads()} CPU threads")
    print(f"  float64 check   ‖Δ‖ / ‖y‖ = {rel:.2e}  ({'equal' if rel < 1e-10 else 'DIFFERENT'})")
    print(f"  train form      {params[0]:>12,} params  {speed[0]:8.1f} images/s")
    print(f"  deploy form     {params[1]:>12,} params  {speed[1]:8.1f} images/s")
    print(f"  speed-up        {speed[1] / speed[0]:.2f}x")
    if rel >= 1e-10:
        raise SystemExit("the deploy form does not compute what the train-time form computes")
    return dict(relative_difference=rel, params=params, images_per_second=speed)
