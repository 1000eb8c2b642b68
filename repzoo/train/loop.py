"""``repzoo train``: a registered model trained on an image folder (``train/``, ``val/``) with a recipe.

Built on timm's parts: ``create_transform`` (RandAugment, colour jitter, random erasing), ``Mixup`` / CutMix,
label smoothing, ``CosineLRScheduler`` stepped per iteration, ``ModelEmaV3``; gradient clipping where the recipe
clips. A RepOpt target model trains with its RepOptimizer (released scales by default, or ``scales``); a
Hyper-Search (``-hs``) model writes its scale file. Every epoch writes ``last.pth`` (and ``best.pth``) in the
authors' ``{'model', 'optimizer', ...}`` layout, and a row of ``metrics.csv`` / ``metrics.json``; a run resumes
from ``last.pth`` at the start of the epoch it was killed in. At the end the deploy form is written as
``deploy.safetensors`` (the best epoch's weights, converted) and validated on ``val/``.
"""
from __future__ import annotations

import copy
import csv
import math
import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import RepZooError
from .data import ImageFolderDataset, class_indices, scan_image_folder
from .recipes import Recipe, default_recipe, get_recipe

__all__ = ["train", "decay_groups"]


def decay_groups(model, recipe: Recipe) -> List[dict]:
    """The parameter groups of the recipe's repository: who decays (and OREPA's 2x learning rate on biases)."""
    from ..optim import weight_decay_groups

    wd = recipe.weight_decay
    if recipe.decay_rule == "set_weight_decay":
        return weight_decay_groups(model, wd)
    groups: Dict[str, List] = {"decay": [], "no_decay": [], "bias": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if recipe.decay_rule == "repvgg":
            quiet = name.endswith(".bias") or name.endswith(("rbr_dense.bn.weight", "rbr_1x1.bn.weight"))
            groups["no_decay" if quiet else "decay"].append(p)
        else:  # orepa: sgd_optimizer
            if "bias" in name:
                groups["bias"].append(p)
            else:
                groups["no_decay" if ("bn" in name or "prior" in name) else "decay"].append(p)
    made = [dict(params=groups["decay"], weight_decay=wd), dict(params=groups["no_decay"], weight_decay=0.0),
            dict(params=groups["bias"], weight_decay=0.0, lr_scale=2.0)]
    return [g for g in made if g["params"]]


def _loaders(index, val_index, mapping, cfg, recipe: Recipe, batch_size, workers, image_size, mixup_on, seed):
    import torch
    from timm.data import create_transform

    common = dict(input_size=(3, image_size, image_size), mean=cfg["mean"], std=cfg["std"])
    train_tf = create_transform(**common, is_training=True, scale=recipe.scale, hflip=recipe.hflip,
                                color_jitter=recipe.color_jitter or None, auto_augment=recipe.auto_augment or None,
                                re_prob=recipe.reprob, interpolation="bilinear")
    val_tf = create_transform(**common, is_training=False, crop_pct=1.0, interpolation=cfg["interpolation"])
    train_set = ImageFolderDataset(index, train_tf, mapping, common["input_size"])
    val_set = ImageFolderDataset(val_index, val_tf, mapping, common["input_size"])
    g = torch.Generator().manual_seed(seed)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=g,
                                               num_workers=workers, drop_last=mixup_on or len(train_set) > batch_size,
                                               persistent_workers=workers > 0)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=batch_size * 2, num_workers=workers)
    return train_loader, val_loader


def _evaluate(model, loader, autocast) -> float:
    import torch

    model.eval()
    correct = total = 0
    with torch.no_grad(), autocast:
        for x, y, ok in loader:
            x, y = x[ok], y[ok]
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return 100.0 * correct / max(total, 1)


def train(model: str, data, output, *, recipe: Optional[str] = None, epochs: Optional[int] = None,
          lr: Optional[float] = None, batch_size: int = 64, image_size: Optional[int] = None, workers: int = 2,
          pretrained: bool = False, checkpoint=None, scales=None, resume: bool = True, seed: int = 0,
          bf16: bool = False, channels_last: bool = False, on_bad_image: str = "stop", progress: bool = True,
          **overrides: Any) -> Dict[str, Any]:
    """Train ``model`` on ``data/train``, validate on ``data/val`` each epoch, write into ``output``.

    ``recipe``: a name of :data:`repzoo.train.recipes.RECIPES` (default: the model's family's); ``epochs``,
    ``lr`` (for a batch of the recipe's ``base_batch``; scaled linearly) and the other recipe fields in
    ``overrides`` replace the recipe's. Returns the summary also written to ``output/summary.json``.
    """
    import numpy
    import torch
    from timm.data import Mixup, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    from ..factory import create_model
    from ..optim import create_repoptimizer, extract_scales, save_scales
    from ..registry import get_model_entry
    from ..reparam import reparameterize
    from ..weights.checkpoint import save_state_dict
    from ..weights.files import atomic_path, write_json

    name = get_model_entry(model).name
    rec = get_recipe(recipe or default_recipe(name), epochs=epochs, lr=lr, **overrides)
    data, output = Path(data), Path(output)
    for split in ("train", "val"):
        if not (data / split).is_dir():
            raise RepZooError(f"{data} has no {split}/ folder: training reads {data}/train/<class>/ and "
                              f"{data}/val/<class>/ (`repzoo data digits DIR` writes such a folder).")
    index = scan_image_folder(data / "train", on_bad_image=on_bad_image)
    val_index = scan_image_folder(data / "val", on_bad_image=on_bad_image)
    if val_index.classes != index.classes:
        raise RepZooError(f"{data}/val has other classes than {data}/train: both need the same class folders.")
    num_classes = len(index.classes)
    is_hs = name.endswith("-hs")
    torch.manual_seed(seed)
    net = create_model(name, num_classes=num_classes, pretrained=pretrained,
                       **({"checkpoint_path": checkpoint} if checkpoint else {}))
    repopt = getattr(net, "mode", None) == "target" or "RepOpt" in name and not is_hs and not name.endswith("-csla")
    scale_source = scales or (name if repopt else None)
    output.mkdir(parents=True, exist_ok=True)
    last = output / "last.pth"
    state = None
    if resume and last.exists():
        try:
            state = torch.load(last, map_location="cpu", weights_only=True)  # torch's safe unpickler
        except Exception as err:  # noqa: BLE001  (any unreadable file: say which and what to do)
            raise RepZooError(f"Cannot resume from {last} ({type(err).__name__}): remove it to start over, or "
                              "pass resume=False / --no-resume.") from None
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    scale = batch_size / rec.base_batch
    if repopt:
        opt = create_repoptimizer(net, scale_source, rec.optimizer, reinit=not (pretrained or checkpoint or state),
                                  weight_decay=rec.weight_decay, lr=rec.lr * scale)
    elif rec.optimizer == "adamw":
        opt = torch.optim.AdamW(decay_groups(net, rec), lr=rec.lr * scale, eps=1e-8, betas=(0.9, 0.999))
    else:
        opt = torch.optim.SGD(decay_groups(net, rec), lr=rec.lr * scale, momentum=0.9, nesterov=True)
    mixup_on = rec.mixup > 0 or rec.cutmix > 0
    cfg = resolve_data_config({}, model=net)
    size = image_size or cfg["input_size"][-1]
    mapping = class_indices(index, num_classes)
    train_loader, val_loader = _loaders(index, val_index, mapping, cfg, rec, batch_size, workers, size, mixup_on, seed)
    steps = len(train_loader)
    sched = CosineLRScheduler(opt, t_initial=rec.epochs * steps, lr_min=rec.min_lr * scale,
                              warmup_t=int(rec.warmup_epochs * steps), warmup_lr_init=rec.warmup_lr * scale,
                              t_in_epochs=False)
    mixup = Mixup(mixup_alpha=rec.mixup, cutmix_alpha=rec.cutmix, label_smoothing=rec.smoothing,
                  num_classes=num_classes) if mixup_on else None
    criterion = SoftTargetCrossEntropy() if mixup_on else (
        LabelSmoothingCrossEntropy(rec.smoothing) if rec.smoothing > 0 else torch.nn.CrossEntropyLoss())
    ema = ModelEmaV3(net, decay=rec.ema_decay) if rec.ema_decay > 0 else None
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    start_epoch, best, history = 0, -1.0, []
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None and "ema" in state:
            ema.module.load_state_dict(state["ema"])
        start_epoch, best, history = int(state["epoch"]) + 1, float(state["best_top1"]), list(state["history"])
        torch.set_rng_state(state["rng"])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=(rec.epochs - start_epoch) * steps, unit="step", desc=f"train {name}")
    skipped, t_start = 0, time.perf_counter()
    for epoch in range(start_epoch, rec.epochs):
        # the epoch's order and augmentations, the same after a resume (timm's crops draw from `random`; a
        # loader worker seeds `random` and torch from the loader's generator)
        train_loader.generator.manual_seed(seed + epoch)
        torch.manual_seed(seed * 1000 + epoch)
        random.seed(seed * 1000 + epoch)
        numpy.random.seed(seed * 1000 + epoch)
        net.train()
        loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
        for i, (x, y, ok) in enumerate(train_loader):
            if not bool(ok.all()):
                skipped += int((~ok).sum())
                x, y = x[ok], y[ok]
                if len(y) < 2:
                    continue
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if mixup is not None:
                x, y = mixup(x, y)
            with autocast:
                loss = criterion(net(x).float(), y)
            if not math.isfinite(loss.item()):
                raise RepZooError(f"The loss became {loss.item()} at epoch {epoch}, step {i}: lower --lr.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if rec.clip_grad > 0 and not repopt:
                torch.nn.utils.clip_grad_norm_(net.parameters(), rec.clip_grad)
            opt.step()
            sched.step_update(epoch * steps + i + 1)
            if ema is not None:
                ema.update(net, step=epoch * steps + i)
            loss_sum += loss.item() * len(x)
            seen += len(x)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        train_seconds = time.perf_counter() - t0
        top1 = _evaluate(net, val_loader, autocast)
        row = dict(epoch=epoch, train_loss=loss_sum / max(seen, 1), val_top1=top1,
                   lr=opt.param_groups[0]["lr"], train_images_per_second=seen / train_seconds,
                   **({"ema_val_top1": _evaluate(ema.module, val_loader, autocast)} if ema is not None else {}))
        history.append(row)
        improved = top1 > best
        best = max(best, top1)
        ckpt = dict(model=net.state_dict(), optimizer=opt.state_dict(), epoch=epoch, best_top1=best, history=history,
                    rng=torch.get_rng_state(), recipe=rec.to_dict(), arch=name, classes=index.classes,
                    **({"ema": ema.module.state_dict()} if ema is not None else {}))
        with atomic_path(last, "a checkpoint") as tmp:
            torch.save(ckpt, tmp)
        if improved:
            with atomic_path(output / "best.pth", "a checkpoint") as tmp:
                torch.save(ckpt, tmp)
        with atomic_path(output / "metrics.csv", "the metrics") as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=list(history[-1]))
                writer.writeheader()
                writer.writerows(history)
        write_json(output / "metrics.json", {"history": history}, "the metrics")
    if bar is not None:
        bar.close()
    summary: Dict[str, Any] = dict(model=name, recipe=rec.to_dict(), epochs=rec.epochs, classes=index.classes,
                                   best_top1=best, final_top1=history[-1]["val_top1"] if history else None,
                                   seconds=time.perf_counter() - t_start, skipped_images=skipped)
    if is_hs:
        summary["scales"] = str(save_scales(extract_scales(net), output / f"{name[:-3]}-scales.pth"))
    final = copy.deepcopy(net)
    if (output / "best.pth").exists():  # the deploy form is the best epoch's, as timm's model_best
        final.load_state_dict(torch.load(output / "best.pth", map_location="cpu", weights_only=True)["model"])
    deploy = reparameterize(final.eval())
    save_state_dict(deploy.state_dict(), output / "deploy.safetensors", metadata={"model": name})
    summary["deploy"] = str(output / "deploy.safetensors")
    summary["deploy_top1"] = _evaluate(deploy, val_loader, autocast)
    write_json(output / "summary.json", summary, "the summary")
    return summary
