"""``repzoo demo``: build a model, convert it, prove the forms agree, and time both; for a RepOpt target
model, also show the RepOptimizers paper's claim on the released scales (GR = CSLA, in float64)."""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from .factory import create_model
from .reparam import conversion_error, relative_difference, reparameterize

__all__ = ["run_demo", "run_repopt_demo", "randomize_bn"]


@torch.no_grad()
def randomize_bn(model: nn.Module, generator: Optional[torch.Generator] = None) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters (what training would), in place.

    Running means and shifts are drawn from U(-0.5, 0.5), running variances from U(0.5, 2) and scales from
    U(0.5, 1.5), in float64 from ``generator`` (default: torch's global one), then cast to the BN's dtype.
    """
    def draw(like: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(like.shape, generator=generator, dtype=torch.float64)).to(like)

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(draw(m.running_mean, -0.5, 0.5))
            m.running_var.copy_(draw(m.running_var, 0.5, 2.0))
            if m.affine:
                m.weight.copy_(draw(m.weight, 0.5, 1.5))
                m.bias.copy_(draw(m.bias, -0.5, 0.5))
    return model


def run_demo(name: str = "RepVGG-A0", batch_size: int = 8, image_size: Optional[int] = None) -> dict:
    """Build ``name``, convert it, prove in float64 that both forms compute the same, time both; for a
    RepOpt target model with released scales, then :func:`run_repopt_demo`."""
    from .registry import get_model_entry
    from .weights.manifest import load_manifest

    entry = get_model_entry(name)
    result = _conversion_demo(entry.name, batch_size, image_size)
    if entry.config.get("mode") == "target" and entry.name in load_manifest().scale_names():
        result["gr_equals_csla"] = run_repopt_demo(entry.name)
    return result


def _conversion_demo(name: str, batch_size: int, image_size: Optional[int]) -> dict:
    torch.manual_seed(0)
    train = randomize_bn(create_model(name)).eval()
    size = image_size or train.pretrained_cfg["input_size"][1]
    deploy = reparameterize(copy.deepcopy(train))

    # The proof runs in float64, converting a float64 copy: float32 rounding would hide a real error.
    rel = conversion_error(train, torch.randn(2, train.in_chans, size, size))
    params = [sum(p.numel() for p in m.parameters()) for m in (train, deploy)]
    x = torch.randn(batch_size, train.in_chans, size, size)
    from .bench import interleaved_images_per_second

    speed = interleaved_images_per_second([train, deploy], x)

    print(f"{name}: {size}x{size} input, batch {batch_size}, {torch.get_num_threads()} CPU threads")
    print(f"  float64 check   ‖Δ‖ / ‖y‖ = {rel:.2e}  ({'equal' if rel < 1e-10 else 'DIFFERENT'})")
    print(f"  train form      {params[0]:>12,} params  {speed[0]:8.1f} images/s")
    print(f"  deploy form     {params[1]:>12,} params  {speed[1]:8.1f} images/s")
    print(f"  speed-up        {speed[1] / speed[0]:.2f}x")
    if rel >= 1e-10:
        raise SystemExit("the deploy form does not compute what the train-time form computes")
    return dict(relative_difference=rel, params=params, images_per_second=speed)


def run_repopt_demo(name: str = "RepOpt-VGG-B1", steps: int = 3, image_size: int = 32, batch_size: int = 2) -> float:
    """The target model trained with a RepOptimizer follows the CSLA model trained with plain SGD.

    Both start at the same point (the target's kernels are the CSLA blocks' linear kernels; BN and
    head copied), both train ``steps`` steps in float64 on the same random batches (BN in eval mode), SGD with
    momentum 0.9 and Nesterov: the CSLA model with ``torch.optim.SGD``, the target with
    :func:`repzoo.optim.create_repoptimizer` and the released scales shipped with repzoo. Returns the
    largest relative difference of the kernels at the end.
    """
    from .optim import create_repoptimizer

    torch.manual_seed(0)
    # BatchNorm as the affine map of its running statistics (eval mode): batch statistics of a tiny batch
    # would amplify float64 rounding chaotically and hide the equivalence, which holds either way.
    csla = create_model(f"{name}-csla", num_classes=10).double().eval()
    target = create_model(name, num_classes=10).double().eval()
    opt = create_repoptimizer(target, name, reinit=False, lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.0)
    kernels = {k.name: k.name[: -len(".weight")].rsplit(".", 1)[0] for k in opt.handler.kernels}
    owner = {k: _kernel_owner(csla, block) for k, block in kernels.items()}
    with torch.no_grad():
        shared = {k: v for k, v in csla.state_dict().items() if k in target.state_dict() and k not in kernels}
        target.load_state_dict({**shared, **{k: owner[k].linear_kernel() for k in kernels}})
    sgd = torch.optim.SGD([p for p in csla.parameters() if p.requires_grad], lr=0.5, momentum=0.9, nesterov=True)
    print(f"{name}: RepOptimizer (target model) vs SGD (CSLA model of the released scales), float64, "
          f"{steps} steps of batch {batch_size} at {image_size}x{image_size}")
    start = {k: target.get_parameter(k).detach().clone() for k in kernels}
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for step in range(1, steps + 1):
        x = torch.randn(batch_size, 3, image_size, image_size, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (batch_size,), generator=g)
        for model, optimizer in ((csla, sgd), (target, opt)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        with torch.no_grad():
            # the gap between the two trajectories, relative to how far the CSLA kernels moved
            worst = max(relative_difference(target.get_parameter(k), owner[k].linear_kernel()) /
                        relative_difference(owner[k].linear_kernel(), start[k]) for k in kernels)
            moved = sum(relative_difference(target.get_parameter(k), start[k]) for k in kernels) / len(kernels)
        print(f"  step {step}: kernels moved {moved:.1e} (mean ‖K − K₀‖ / ‖K₀‖); the trajectories differ by at most "
              f"{worst:.1e} of that move over {len(kernels)} kernels")
    verdict = "the same trajectory" if worst < 1e-8 else "DIFFERENT"
    print(f"  {verdict}: structural re-parameterization moved into the optimizer")
    if worst >= 1e-8:
        raise SystemExit("the RepOptimizer did not follow the CSLA model")
    return worst


def _kernel_owner(csla: nn.Module, block: str) -> nn.Module:
    """The CSLA module whose linear kernel a target kernel stands for (``stage1.0`` / ``…ghost1``)."""
    module = csla.get_submodule(block)
    return module if hasattr(module, "linear_kernel") else csla.get_submodule(block.rsplit(".", 1)[0])


