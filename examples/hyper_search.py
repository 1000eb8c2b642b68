"""Hyper-Search → scale file → RepOptimizer → target model, end to end on CPU.

RepOptimizers (Ding et al., ICLR 2023) train a plain VGG-style "target" model whose
optimizer carries the structural prior of a multi-branch model. The recipe:

1. **Hyper-Search**: train the ``-hs`` model (blocks ``s_conv·conv3x3 + s_1x1·conv1x1 +
   s_id·x`` with trainable scales) on a small dataset (the paper: CIFAR-100, 240 epochs);
2. take its scales (``repzoo.optim.extract_scales``) and write a scale file
   (``repzoo.optim.save_scales``);
3. build the target model and a RepOptimizer from the scales
   (``repzoo.optim.create_repoptimizer``: Rule of Initialization + Rule of Iteration);
4. train the target model (the paper: ImageNet, 120 epochs) — without gradient clipping.

This script runs the whole loop in seconds on a generated 10-class dataset with a small
RepOpt-VGG (``--arch small``); ``--arch RepOpt-VGG-B1`` uses the real B1 layout.

    python examples/hyper_search.py --hs-steps 20 --target-steps 20 --out ./hs_run
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import repzoo
from repzoo.models.repopt_vgg import RepOptVGG
from repzoo.optim import create_repoptimizer, extract_scales, load_scales, save_scales, weight_decay_groups

SMALL = dict(num_blocks=(1, 2, 2, 1), width_multiplier=(0.25, 0.25, 0.25, 0.25))  # widths 16, 16, 32, 64, 128


def build(arch: str, mode: str, num_classes: int) -> nn.Module:
    """A RepOpt-VGG in ``mode`` ('hs' or 'target'): the small layout, or a registered architecture."""
    if arch == "small":
        return RepOptVGG(**SMALL, mode=mode, num_classes=num_classes)
    return repzoo.create_model(arch if mode == "target" else f"{arch}-{mode}", num_classes=num_classes)


def make_dataset(num_classes: int, size: int, n: int, seed: int = 0):
    """Class-conditional images: a smooth random template per class plus noise (learnable, not trivial)."""
    g = torch.Generator().manual_seed(seed)
    templates = F.interpolate(torch.randn(num_classes, 3, 4, 4, generator=g), size=size, mode="bilinear",
                              align_corners=False)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    images = templates[labels] + 2.0 * torch.randn(n, 3, size, size, generator=g)
    return images, labels


def batches(images, labels, batch_size: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (batch_size,), generator=g)
        yield images[idx], labels[idx]


def train(model: nn.Module, opt: torch.optim.Optimizer, data, clip: float = 0.0) -> List[float]:
    model.train()
    losses = []
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if clip > 0:  # allowed in Hyper-Search only (the reference clips at 5.0)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, images, labels) -> float:
    model.eval()
    return (model(images).argmax(1) == labels).float().mean().item()


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="small", help="'small' or a RepOpt-VGG architecture (RepOpt-VGG-B1)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hs-steps", type=int, default=30)
    parser.add_argument("--target-steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", default=None, help="folder for the scale file (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    t0 = time.time()
    images, labels = make_dataset(args.num_classes, args.img_size, 40 * args.num_classes, args.seed)
    test_images, test_labels = make_dataset(args.num_classes, args.img_size, 20 * args.num_classes, args.seed)
    test_images, test_labels = test_images[: 10 * args.num_classes], test_labels[: 10 * args.num_classes]

    # 1. Hyper-Search: the hs model, its scales trainable, plain SGD with the reference's decay groups.
    hs = build(args.arch, "hs", args.num_classes)
    hs_opt = torch.optim.SGD(weight_decay_groups(hs, 4e-5), lr=args.lr, momentum=0.9, nesterov=True)
    hs_losses = train(hs, hs_opt, batches(images, labels, args.batch_size, args.hs_steps, args.seed + 1), clip=5.0)
    print(f"hyper-search: {args.hs_steps} steps, loss {hs_losses[0]:.3f} -> {hs_losses[-1]:.3f}, "
          f"test acc {accuracy(hs, test_images, test_labels):.2f}")

    # 2. The scales, as a scale file (the same format as the released *-scales.pth).
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="repzoo_hs_"))
    scale_path = save_scales(extract_scales(hs), out / f"{args.arch}-scales.pth")
    scales = load_scales(scale_path)
    print(f"scales: {len(scales)} tensors -> {scale_path}")

    # 3. The target model and its RepOptimizer (re-initialized from the scales; no clipping from here on).
    target = build(args.arch, "target", args.num_classes)
    opt = create_repoptimizer(target, scale_path, "sgd", lr=args.lr)
    print(f"target: {opt.handler}")

    # 4. Train the target model.
    losses = train(target, opt, batches(images, labels, args.batch_size, args.target_steps, args.seed + 2))
    acc = accuracy(target, test_images, test_labels)
    print(f"target: {args.target_steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, test acc {acc:.2f} "
          f"({time.time() - t0:.1f} s)")
    assert all(math.isfinite(v) for v in losses)
    return dict(scale_path=scale_path, scales=scales, hs_losses=hs_losses, target_losses=losses,
                target_accuracy=acc, hs_model=hs, target_model=target, optimizer=opt)


if __name__ == "__main__":
    main()
