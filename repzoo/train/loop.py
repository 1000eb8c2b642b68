"""``repzoo train``: a registered model trained on an image folder (``train/``, ``val/``) with a recipe.

Built on timm's parts: ``create_transform`` (RandAugment, colour jitter), ``RandomErasing``, ``Mixup`` / CutMix,
label smoothing, ``CosineLRScheduler`` stepped per iteration, ``ModelEmaV3``; gradient clipping where the recipe
clips. A RepOpt target model trains with its RepOptimizer (released scales by default, or ``scales``); a
Hyper-Search (``-hs``) model writes its scale file. Every epoch writes ``last.pth`` (and ``best.pth``) in the
authors' ``{'model', 'optimizer', ...}`` layout, and a row of ``metrics.csv`` / ``metrics.json``; a run resumes
from ``last.pth`` at the start of the epoch it was killed in. At the end the deploy form is written as
``deploy.safetensors`` (the best epoch's weights, converted) and validated on ``val/``.
"""
from __future__ import annotations

import copy
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..errors import RepZooError
from .data import (BatchPrep, EpochSampler, ImageFolderDataset, cache_fits, class_indices, scan_image_folder,
                   train_transform)
from .recipes import Recipe, default_recipe, get_recipe

__all__ = ["train", "decay_groups", "uses_repoptimizer", "build_optimizer"]


def uses_repoptimizer(net, name: str) -> bool:
    """Whether ``net`` (the registered model ``name``) trains with a RepOptimizer: a RepOpt target model (not its
    Hyper-Search or CSLA form)."""
    return getattr(net, "mode", None) == "target" or ("RepOpt" in name and not name.endswith(("-hs", "-csla")))


def build_optimizer(net, name: str, recipe: Recipe, lr: float, *, scales=None, reinit: bool = True):
    """The recipe's optimizer for ``net`` at learning rate ``lr``: a RepOptimizer built from ``scales`` (default
    the released scales of ``name``; ``reinit`` as the authors re-initialize) for a RepOpt target, else AdamW or
    SGD (momentum 0.9, nesterov) over the recipe's weight-decay groups."""
    import torch

    if uses_repoptimizer(net, name):
        from ..optim import create_repoptimizer

        return create_repoptimizer(net, scales or name, recipe.optimizer, reinit=reinit,
                                   weight_decay=recipe.weight_decay, lr=lr)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(decay_groups(net, recipe), lr=lr, eps=1e-8, betas=(0.9, 0.999))
    return torch.optim.SGD(decay_groups(net, recipe), lr=lr, momentum=0.9, nesterov=True)


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


class _EvalShard:
    """This process's share of an evaluation set: positions ``rank, rank + world, ...``, padded to the same length
    on every process (FSDP needs as many forward passes on each); a padded position is not counted."""

    def __init__(self, dataset: ImageFolderDataset, rank: int = 0, world: int = 1):
        self.dataset, n = dataset, len(dataset)
        self.positions = list(range(rank, -(-n // world) * world, world))

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        p = self.positions[i]
        x, y, ok = self.dataset[p % len(self.dataset)]
        return x, y, ok, p


def _loaders(index, val_index, mapping, cfg, recipe: Recipe, batch_size, workers, image_size, mixup_on, engine,
             cache_images: Optional[bool] = None):
    import torch
    from timm.data import create_transform

    common = dict(input_size=(3, image_size, image_size), mean=cfg["mean"], std=cfg["std"])
    val_tf = create_transform(**common, is_training=False, crop_pct=1.0, interpolation=cfg["interpolation"])
    if cache_images is None:
        cache_images = cache_fits([index, val_index], workers)
    train_set = ImageFolderDataset(index, train_transform(recipe, image_size, cfg["mean"]), mapping, common["input_size"],
                                   with_index=True, blank_dtype="uint8", cache_images=cache_images)
    val_set = ImageFolderDataset(val_index, val_tf, mapping, common["input_size"], cache_images=cache_images)
    # one shuffle of the whole set per epoch (DistributedSampler.set_epoch), split over the processes
    sampler = EpochSampler(train_set, num_replicas=engine.world, rank=engine.rank)
    per_process = len(sampler)
    pin = engine.device.type == "cuda"
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, sampler=sampler,
                                               num_workers=workers, pin_memory=pin,
                                               drop_last=mixup_on or per_process > batch_size,
                                               persistent_workers=workers > 0)
    val_loader = torch.utils.data.DataLoader(_EvalShard(val_set, engine.rank, engine.world), batch_size=batch_size * 2,
                                             num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    return train_loader, val_loader


def _evaluate(model, loader, autocast, engine=None, on_bad_image: str = "skip") -> float:
    """Top-1 (percent) of ``model`` over ``loader`` (an :class:`_EvalShard`'s); with ``engine``, the counts of every
    process are summed, so the figure is the one a single process gets."""
    import torch

    model.eval()
    shard: _EvalShard = loader.dataset
    n = len(shard.dataset)
    device = engine.device if engine is not None else next(model.parameters()).device
    correct = total = 0
    with torch.no_grad(), autocast:
        for x, y, ok, pos in loader:
            if on_bad_image == "stop" and not bool(ok.all()):
                bad = shard.dataset.samples[int(pos[~ok][0]) % n][0]
                raise RepZooError(f"Cannot decode {bad}: remove or replace it, or pass --on-bad-image skip to leave "
                                  "such files out (they are counted).")
            keep = (ok & (pos < n)).to(device)
            pred = model(x.to(device, non_blocking=True)).argmax(1)
            correct += int(((pred == y.to(device)) & keep).sum())
            total += int(keep.sum())
    if engine is not None:
        correct, total = engine.sum([correct, total])
    return 100.0 * correct / max(total, 1)


def _precision(device, amp: bool, bf16: bool, fsdp: bool):
    """The autocast dtype (None: float32) and whether a GradScaler is needed (float16 on CUDA)."""
    import torch

    if not (amp or bf16):
        return None, False
    if bf16 or device.type != "cuda" or torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    if fsdp:
        raise RepZooError("This GPU has no bfloat16, and float16 with a gradient scaler is not offered with --fsdp: "
                          "leave out --amp, or train with DDP (leave out --fsdp).")
    return torch.float16, True


def train(model: str, data, output, *, recipe: Optional[str] = None, epochs: Optional[int] = None,
          lr: Optional[float] = None, batch_size: int = 64, image_size: Optional[int] = None, workers: int = 2,
          pretrained: bool = False, checkpoint=None, scales=None, resume: bool = True, seed: int = 0,
          bf16: bool = False, amp: bool = False, channels_last: bool = False, compile: bool = False,
          fsdp: bool = False, device: Optional[str] = None, on_bad_image: str = "stop", progress: bool = True,
          cache_images: Optional[bool] = None, on_epoch_end: Optional[Callable[[Dict[str, Any]], None]] = None,
          **overrides: Any) -> Dict[str, Any]:
    """Train ``model`` on ``data/train``, validate on ``data/val`` each epoch, write into ``output``.

    ``recipe``: a name of :data:`repzoo.train.recipes.RECIPES` (default: the model's family's); ``epochs``,
    ``lr`` (for a global batch of the recipe's ``base_batch``; scaled linearly with the global batch) and the
    other recipe fields in ``overrides`` replace the recipe's. Returns the summary also written to
    ``output/summary.json``.

    Under ``torchrun`` every process runs this function: DDP by default, FSDP2 with ``fsdp``; ``batch_size``
    is per process (the global batch is ``batch_size`` x processes). ``amp``: bfloat16 autocast (float16 with
    a gradient scaler on a GPU without bfloat16); ``bf16``: bfloat16 autocast. ``compile``: ``torch.compile``
    of the training model (``True``, or a backend name). ``device``: default a GPU (this process's) when
    there is one, else the CPU. ``cache_images``: keep the decoded images in the loaders' memory (decoding is
    most of the data path's work); default: when a copy of both splits per loader worker fits in 1 GiB.
    ``on_epoch_end``: called on the main process with each epoch's metrics row once its checkpoint is
    written (for logging elsewhere, or a benchmark's own measurement between epochs).
    """
    from .engine import Engine

    engine = Engine(fsdp=fsdp, device=device)
    try:
        return _train(engine, model, data, output, recipe=recipe, epochs=epochs, lr=lr, batch_size=batch_size,
                      image_size=image_size, workers=workers, pretrained=pretrained, checkpoint=checkpoint,
                      scales=scales, resume=resume, seed=seed, bf16=bf16, amp=amp, channels_last=channels_last,
                      compile=compile, on_bad_image=on_bad_image, progress=progress, cache_images=cache_images,
                      on_epoch_end=on_epoch_end, overrides=overrides)
    finally:
        engine.close()


def _train(engine, model, data, output, *, recipe, epochs, lr, batch_size, image_size, workers, pretrained, checkpoint,
           scales, resume, seed, bf16, amp, channels_last, compile, on_bad_image, progress, cache_images,
           on_epoch_end, overrides):
    import numpy
    import torch
    from timm.data import Mixup, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    from ..factory import create_model
    from ..optim import extract_scales, save_scales
    from ..registry import get_model_entry
    from ..reparam import reparameterize
    from ..weights.checkpoint import save_state_dict
    from ..weights.files import atomic_path, write_json
    from .records import Records

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
    if engine.fsdp and rec.ema_decay > 0:
        raise RepZooError("--ema is not offered with --fsdp (the EMA copy would be a whole model on every process): "
                          "leave out --ema, or train with DDP (leave out --fsdp).")
    num_classes = len(index.classes)
    is_hs = name.endswith("-hs")
    dev = engine.device
    torch.manual_seed(seed)
    net = create_model(name, num_classes=num_classes, pretrained=pretrained,
                       **({"checkpoint_path": checkpoint} if checkpoint else {}))
    repopt = uses_repoptimizer(net, name)
    last = output / "last.pth"
    state = None
    if resume and last.exists():  # every process reads it (on several machines, --output is a shared folder)
        try:
            state = torch.load(last, map_location="cpu", weights_only=True)  # torch's safe unpickler
        except Exception as err:  # noqa: BLE001  (any unreadable file: say which and what to do)
            raise RepZooError(f"Cannot resume from {last} ({type(err).__name__}): remove it to start over, or "
                              "pass resume=False / --no-resume.") from None
    template = copy.deepcopy(net)  # a plain copy for the deploy form and the scales at the end
    net = net.to(dev, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    autocast_dtype, use_scaler = _precision(dev, amp, bf16, engine.fsdp)
    if engine.fsdp:
        engine.wrap(net)  # sharded in place; the optimizer comes after (its multipliers are sharded alike)
    scale = batch_size * engine.world / rec.base_batch  # the learning rate follows the global batch
    opt = build_optimizer(net, name, rec, rec.lr * scale, scales=scales, reinit=not (pretrained or checkpoint or state))
    mixup_on = rec.mixup > 0 or rec.cutmix > 0
    cfg = resolve_data_config({}, model=template)
    size = image_size or cfg["input_size"][-1]
    mapping = class_indices(index, num_classes)
    train_loader, val_loader = _loaders(index, val_index, mapping, cfg, rec, batch_size, workers, size, mixup_on,
                                        engine, cache_images)
    steps = len(train_loader)
    if steps == 0:
        raise RepZooError(f"{data}/train has too few images for one batch of {batch_size} per process: lower "
                          "--batch-size.")
    sched = CosineLRScheduler(opt, t_initial=rec.epochs * steps, lr_min=rec.min_lr * scale,
                              warmup_t=int(rec.warmup_epochs * steps), warmup_lr_init=rec.warmup_lr * scale,
                              t_in_epochs=False)
    prep = BatchPrep(cfg["mean"], cfg["std"], device=dev, reprob=rec.reprob, channels_last=channels_last)
    mixup = Mixup(mixup_alpha=rec.mixup, cutmix_alpha=rec.cutmix, label_smoothing=rec.smoothing,
                  num_classes=num_classes) if mixup_on else None
    criterion = SoftTargetCrossEntropy() if mixup_on else (
        LabelSmoothingCrossEntropy(rec.smoothing) if rec.smoothing > 0 else torch.nn.CrossEntropyLoss())
    ema = ModelEmaV3(net, decay=rec.ema_decay) if rec.ema_decay > 0 else None
    autocast = torch.autocast(dev.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None)
    scaler = torch.amp.GradScaler(dev.type) if use_scaler else None
    start_epoch, best, history = 0, -1.0, []
    if state is not None:
        try:
            engine.load(net, opt, state["model"], state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise RepZooError(f"Cannot resume from {last}: it does not fit this run ({type(err).__name__}: "
                              f"{str(err)[:200]}). Train into another --output, or pass --no-resume.") from None
        if ema is not None and "ema" in state:
            ema.module.load_state_dict(state["ema"])
        start_epoch, best, history = int(state["epoch"]) + 1, float(state["best_top1"]), list(state["history"])
    step_model = net if engine.fsdp else engine.wrap(net)  # DDP wraps after the optimizer (it broadcasts rank 0's)
    if compile:
        step_model = torch.compile(step_model, **({"backend": compile} if isinstance(compile, str) else {}))
    records = Records(output, history, start_epoch)
    bar = None
    if progress and engine.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=(rec.epochs - start_epoch) * steps, unit="step", desc=f"train {name}")
    skipped, t_start = 0, time.perf_counter()
    try:
        for epoch in range(start_epoch, rec.epochs):
            # the epoch's order and augmentations, the same after a resume: the order is the sampler's shuffle of
            # the epoch, each image's augmentation is seeded by (epoch, image) in whichever worker loads it;
            # mixup and the model's own randomness draw from the main process's seeds
            stream = seed * 1000 + epoch
            train_loader.sampler.set_epoch(stream)
            torch.manual_seed(stream + 7919 * engine.rank)
            random.seed(stream + 7919 * engine.rank)
            numpy.random.seed(stream + 7919 * engine.rank)
            net.train()
            loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
            for i, (x, y, ok, where) in enumerate(train_loader):
                weight = 1.0
                if not bool(ok.all()):
                    if on_bad_image == "stop":
                        bad = train_loader.dataset.samples[int(where[~ok][0])][0]
                        raise RepZooError(f"Cannot decode {bad}: remove or replace it, or pass --on-bad-image skip "
                                          "to leave such files out (they are counted).")
                    skipped += int((~ok).sum())
                    if int(ok.sum()) >= 2:
                        x, y = x[ok], y[ok]
                    elif engine.world == 1:
                        continue
                    else:  # every process must step together: this one adds nothing to the gradient
                        weight = 0.0
                x, y = prep(x), y.to(dev, non_blocking=True)
                if mixup is not None:
                    x, y = mixup(x, y)
                with autocast:
                    loss = criterion(step_model(x).float(), y)
                value = loss.item()
                if not math.isfinite(value):
                    raise RepZooError(f"The loss became {value} at epoch {epoch}, step {i}: lower --lr.")
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss * weight).backward()
                    if rec.clip_grad > 0 and not repopt:
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(net.parameters(), rec.clip_grad)
                    scaler.step(opt)
                    scaler.update()
                else:
                    (loss * weight if weight != 1.0 else loss).backward()
                    if rec.clip_grad > 0 and not repopt:
                        torch.nn.utils.clip_grad_norm_(net.parameters(), rec.clip_grad)
                    opt.step()
                sched.step_update(epoch * steps + i + 1)
                if ema is not None:
                    ema.update(net, step=epoch * steps + i)
                loss_sum += value * len(x) * weight
                seen += len(x) if weight else 0
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{value:.3f}", refresh=False)
            train_seconds = time.perf_counter() - t0
            loss_sum, seen = engine.sum([loss_sum, seen])
            engine.sync_buffers(net)
            top1 = _evaluate(net, val_loader, autocast, engine, on_bad_image)
            row = dict(epoch=epoch, train_loss=loss_sum / max(seen, 1), val_top1=top1,
                       lr=opt.param_groups[0]["lr"], train_images_per_second=seen / train_seconds,
                       **({"ema_val_top1": _evaluate(ema.module, val_loader, autocast, engine)} if ema is not None
                          else {}))
            improved = top1 > best
            best = max(best, top1)
            model_sd, optim_sd = engine.state(net, opt)  # full tensors on the main process
            if engine.main:
                output.mkdir(parents=True, exist_ok=True)
                ckpt = dict(model=model_sd, optimizer=optim_sd, epoch=epoch, best_top1=best,
                            history=history + [row], rng=torch.get_rng_state(), recipe=rec.to_dict(), arch=name,
                            classes=index.classes, world_size=engine.world,
                            **({"ema": ema.module.state_dict()} if ema is not None else {}))
                with atomic_path(last, "a checkpoint") as tmp:
                    torch.save(ckpt, tmp)
                if improved:
                    with atomic_path(output / "best.pth", "a checkpoint") as tmp:
                        torch.save(ckpt, tmp)
                records.add(row)
                if on_epoch_end is not None:
                    on_epoch_end(dict(row))
            else:
                history.append(row)
    finally:
        if bar is not None:
            bar.close()
        records.close()
    skipped = int(engine.sum([skipped])[0])
    last_sd, _ = engine.state(net, opt)  # a collective under FSDP: every process takes part
    summary: Dict[str, Any] = {}
    if engine.main:
        summary = dict(model=name, recipe=rec.to_dict(), epochs=rec.epochs, classes=index.classes,
                       best_top1=best, final_top1=history[-1]["val_top1"] if history else None,
                       seconds=time.perf_counter() - t_start, skipped_images=skipped, world_size=engine.world,
                       engine="fsdp" if engine.fsdp else ("ddp" if engine.distributed else "single"))
        output.mkdir(parents=True, exist_ok=True)
        final = template
        final.load_state_dict(last_sd)
        if is_hs:
            summary["scales"] = str(save_scales(extract_scales(final), output / f"{name[:-3]}-scales.pth"))
        if (output / "best.pth").exists():  # the deploy form is the best epoch's, as timm's model_best
            final.load_state_dict(torch.load(output / "best.pth", map_location="cpu", weights_only=True)["model"])
        deploy = reparameterize(final.to(dev).eval())
        save_state_dict(deploy.state_dict(), output / "deploy.safetensors", metadata={"model": name})
        summary["deploy"] = str(output / "deploy.safetensors")
        # the deploy form is validated by the main process alone, on the whole val split
        whole = torch.utils.data.DataLoader(_EvalShard(val_loader.dataset.dataset), batch_size=val_loader.batch_size,
                                            num_workers=workers)
        summary["deploy_top1"] = _evaluate(deploy, whole, autocast)
        write_json(output / "summary.json", summary, "the summary")
    return dict(engine.broadcast(summary), rank=engine.rank)
