"""``repzoo train``'s images/s against a bare loop on pre-loaded tensors — a benchmark, not a test.

    python benchmarks/bench_train.py                                   # RepVGG-A0, digits, 32 px, batch 64, 2 workers
    python benchmarks/bench_train.py --model RepOpt-GhostNet-0.5x --repeats 5
    python benchmarks/bench_train.py --device cuda --batch-size 256

The real loop is ``repzoo.train.train`` on the digits image folder (``repzoo data digits``): the image-folder
loader with ``--workers`` processes running the recipe's augmentation (timm's ``create_transform``, uint8 out),
the batch normalized in the main process (``BatchPrep``), the scheduler stepped per iteration, the loss check.
Its figure is the steady state of a 4-epoch run: the mean ``train_images_per_second`` (``metrics.json``: the
training steps alone) of epochs 3 and 4. The first two pay once for starting the loaders' workers: each fork
makes the main process copy on write every page it then touches (the training workers fork at epoch 1, the
validation workers after it). The bare loop is the same model, optimizer, loss and batch size on tensors
loaded once, the same number of steps (after one warm-up pass). The runs alternate, bare first and last, and
each real run is divided by the mean of the bare runs just before and after it: this machine's speed drifts
by more than the gap measured within a minute, so only neighbours are compared. The median of those ratios is
the figure (goal: ≥ 0.9x, i.e. the data path is not the bottleneck). The CPU seconds per batch of the
training step and of the data path (process time, which other jobs do not inflate) say how much of the work
the data path is.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path


def real_loop(args, data: Path, out: Path) -> float:
    from repzoo.train import train

    train(args.model, data, out, epochs=4, batch_size=args.batch_size, image_size=args.image_size,
          workers=args.workers, device=args.device, resume=False, progress=False)
    history = json.loads((out / "metrics.json").read_text())["history"]
    return statistics.mean(row["train_images_per_second"] for row in history[2:])


def preload(args, data: Path):
    """Every training image through the eval transform, as one tensor, and the labels."""
    import torch
    from timm.data import create_transform

    from repzoo.train.data import ImageFolderDataset, class_indices, scan_image_folder

    index = scan_image_folder(data / "train")
    tf = create_transform(input_size=(3, args.image_size, args.image_size), is_training=False, crop_pct=1.0)
    dataset = ImageFolderDataset(index, tf, class_indices(index, len(index.classes)), (3, args.image_size,
                                                                                       args.image_size))
    xs, ys = zip(*[dataset[i][:2] for i in range(len(dataset))])
    return torch.stack(xs), torch.tensor(ys), len(index.classes)


def loader_cpu_seconds_per_batch(args, data: Path, batches: int = 10) -> float:
    """CPU seconds the data path spends on one batch in the steady state (the training transform, collate, the
    main process's `BatchPrep`; decoding too where the real loop does not cache the images): the real loop's
    training loader run in this process (no workers), after one pass, timed by process_time: what the workers
    add, unaffected by other load."""
    import torch
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from repzoo.train.data import (BatchPrep, EpochSampler, ImageFolderDataset, cache_fits, class_indices,
                                   scan_image_folder, train_transform)
    from repzoo.train.recipes import default_recipe, get_recipe

    rec = get_recipe(default_recipe(args.model))
    index = scan_image_folder(data / "train")
    cache = cache_fits([index, scan_image_folder(data / "val")], args.workers)  # the real loop's rule
    dataset = ImageFolderDataset(index, train_transform(rec, args.image_size, IMAGENET_DEFAULT_MEAN),
                                 class_indices(index, len(index.classes)), (3, args.image_size, args.image_size),
                                 with_index=True, blank_dtype="uint8", cache_images=cache)
    prep = BatchPrep(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, device=args.device, reprob=rec.reprob)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=EpochSampler(dataset),
                                         num_workers=0)
    for _ in loader:  # the first pass (fills the cache, as the real loop's first epoch)
        pass
    it = iter(loader)
    t = time.process_time()
    for _ in range(batches):
        prep(next(it)[0])
    return (time.process_time() - t) / batches


def bare_loop(args, images, labels, num_classes: int, steps: int) -> float:
    """The same model, optimizer (the recipe's groups and learning rate) and loss, on tensors in memory."""
    import torch

    import repzoo
    from repzoo.train.loop import decay_groups
    from repzoo.train.recipes import default_recipe, get_recipe

    dev = torch.device(args.device)
    rec = get_recipe(default_recipe(args.model))
    torch.manual_seed(0)
    model = repzoo.create_model(args.model, num_classes=num_classes).to(dev).train()
    lr = rec.lr * args.batch_size / rec.base_batch
    if "RepOpt" in model.__class__.__name__ or getattr(model, "mode", None) == "target":
        from repzoo.optim import create_repoptimizer

        opt = create_repoptimizer(model, args.model, rec.optimizer, weight_decay=rec.weight_decay, lr=lr)
    else:
        opt = torch.optim.SGD(decay_groups(model, rec), lr=lr, momentum=0.9, nesterov=True)
    criterion = torch.nn.CrossEntropyLoss()
    batches = [(images[i:i + args.batch_size].to(dev), labels[i:i + args.batch_size].to(dev))
               for i in range(0, steps * args.batch_size, args.batch_size)]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def run():
        for x, y in batches:
            loss = criterion(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
        sync()

    run()  # warm-up, as the real loop's first epoch
    t, cpu = time.perf_counter(), time.process_time()
    run()
    bare_loop.cpu_per_step = (time.process_time() - cpu) / steps
    return steps * args.batch_size / (time.perf_counter() - t)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="RepVGG-A0")
    parser.add_argument("--data", default=None, help="an image folder with train/ and val/ (default: the digits, "
                        "written to a temporary folder)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)

    from repzoo.machine import machine
    from repzoo.train import write_digits_folder

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "digits"
        if not args.data:
            write_digits_folder(data, size=args.image_size)
        images, labels, num_classes = preload(args, data)
        steps = len(images) // args.batch_size  # the real loop's steps per epoch (its last partial batch dropped)
        # bare, real, bare, real, ..., bare: each real run is compared with the bare runs just before and after it
        # (the machine's drift over a minute is larger than the gap measured), and the ratios' median reported
        bare = [bare_loop(args, images, labels, num_classes, steps)]
        step_cpu, real, ratios, data_cpu = [bare_loop.cpu_per_step], [], [], []
        for r in range(args.repeats):
            real.append(real_loop(args, data, Path(tmp) / f"run{r}"))
            bare.append(bare_loop(args, images, labels, num_classes, steps))
            step_cpu.append(bare_loop.cpu_per_step)
            data_cpu.append(loader_cpu_seconds_per_batch(args, data))
            ratios.append(real[-1] / statistics.mean(bare[-2:]))
            print(f"repeat {r + 1}: repzoo train {real[-1]:.1f} img/s, bare loop before / after {bare[-2]:.1f} / "
                  f"{bare[-1]:.1f} img/s, ratio {ratios[-1]:.2f}x; CPU s per batch: training step "
                  f"{step_cpu[-1]:.3f}, data path {data_cpu[-1]:.3f}", flush=True)
    report = dict(machine=machine(args.device), model=args.model, batch_size=args.batch_size,
                  image_size=args.image_size, workers=args.workers, steps=steps, repeats=args.repeats,
                  train_images_per_second=statistics.median(real), bare_images_per_second=statistics.median(bare),
                  command="python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    report["ratio"], report["ratios"] = statistics.median(ratios), ratios
    report["step_cpu_seconds"], report["data_cpu_seconds"] = statistics.median(step_cpu), statistics.median(data_cpu)
    report["data_cpu_share"] = report["data_cpu_seconds"] / (report["data_cpu_seconds"] + report["step_cpu_seconds"])
    m = report["machine"]
    print(f"machine: {m['cpu']} ({m['cores']} cores, {m['threads']} threads), torch {m['torch']}, {m['device']}")
    print(f"{args.model} at {args.image_size} px, batch {args.batch_size}, {args.workers} workers, {steps} steps, "
          f"medians of {args.repeats}: repzoo train {report['train_images_per_second']:.1f} img/s, bare loop "
          f"{report['bare_images_per_second']:.1f} img/s; median ratio to the neighbouring bare runs "
          f"{report['ratio']:.2f}x (goal >= 0.9x)")
    print(f"CPU seconds per batch (process time, robust to other load): training step "
          f"{report['step_cpu_seconds']:.3f}, data path {report['data_cpu_seconds']:.3f}: the data path is "
          f"{100 * report['data_cpu_share']:.1f} % of the work")
    print(f"command: {report['command']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
