"""``repzoo train``'s images/s against a bare loop on pre-loaded tensors — a benchmark, not a test.

    python benchmarks/bench_train.py                                   # RepVGG-A0, digits, 32 px, batch 64, 2 workers
    python benchmarks/bench_train.py --model RepOpt-GhostNet-0.5x --repeats 5
    python benchmarks/bench_train.py --device cuda --batch-size 256

The real loop is ``repzoo.train.train`` on the digits image folder (``repzoo data digits``): the image-folder
loader with ``--workers`` processes running the recipe's augmentation (timm's ``create_transform``, uint8 out),
the batch normalized in the main process (``BatchPrep``), the scheduler stepped per iteration, the loss check.
Its figure for an epoch is that epoch's ``train_images_per_second`` (``metrics.json``: the training steps
alone). The bare loop is the same model, optimizer, loss and batch size on tensors loaded once, the same
number of steps, built once and warmed up. The two alternate at the grain of an epoch, in one process: the
bare loop runs before the first epoch and after each one (``train``'s ``on_epoch_end``, while the loaders'
workers wait), and each real epoch is divided by the mean of the bare passes just before and after it: this
machine's speed drifts by more than the gap measured within a minute, so only neighbours a few seconds apart
are compared. The first two epochs of a run are left out (they pay once for starting the loaders' workers).
The median of the ratios is the figure (goal: ≥ 0.9x, i.e. the data path is not the bottleneck). The CPU
seconds per batch of the training step and of the data path (process time, which other jobs do not inflate)
say how much of the work the data path is.
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

#: the epochs of each run left out of the figure: the loaders' workers start in them
SKIP_EPOCHS = 2

def real_run(args, data: Path, out: Path, bare: "BareLoop"):
    """One ``repzoo train`` run of ``args.epochs`` epochs with a bare pass before it and after each epoch:
    the real epochs' images/s and the ratio of each (after the first `SKIP_EPOCHS`) to its two neighbours."""
    from repzoo.train import train

    passes = [bare.run()]
    summary = train(args.model, data, out, epochs=args.epochs, batch_size=args.batch_size,
                    image_size=args.image_size, workers=args.workers, device=args.device, resume=False,
                    progress=False, on_epoch_end=lambda row: passes.append(bare.run()))
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert len(history) == summary["epochs"] == len(passes) - 1
    real = [row["train_images_per_second"] for row in history]
    ratios = [real[e] / statistics.mean(passes[e:e + 2]) for e in range(SKIP_EPOCHS, len(real))]
    return real[SKIP_EPOCHS:], passes[SKIP_EPOCHS:], ratios


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


class BareLoop:
    """The same model, optimizer (the real loop's `build_optimizer`, at its learning rate) and loss, on tensors
    in memory: built once and warmed up; `run` times one pass of ``steps`` steps (images/s) and keeps its CPU s
    per step."""

    def __init__(self, args, images, labels, num_classes: int, steps: int):
        import torch

        import repzoo
        from repzoo.train.loop import build_optimizer
        from repzoo.train.recipes import default_recipe, get_recipe

        dev = torch.device(args.device)
        rec = get_recipe(default_recipe(args.model))
        torch.manual_seed(0)
        self.model = repzoo.create_model(args.model, num_classes=num_classes).to(dev).train()
        self.opt = build_optimizer(self.model, args.model, rec, rec.lr * args.batch_size / rec.base_batch)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.batches = [(images[i:i + args.batch_size].to(dev), labels[i:i + args.batch_size].to(dev))
                        for i in range(0, steps * args.batch_size, args.batch_size)]
        self.sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        self.cpu_per_step: list = []
        self._steps()  # warm-up

    def _steps(self) -> None:
        for x, y in self.batches:
            loss = self.criterion(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            loss.item()
        self.sync()

    def run(self) -> float:
        t, cpu = time.perf_counter(), time.process_time()
        self._steps()
        wall = time.perf_counter() - t
        self.cpu_per_step.append((time.process_time() - cpu) / len(self.batches))
        return len(self.batches) * len(self.batches[0][0]) / wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="RepVGG-A0")
    parser.add_argument("--data", default=None, help="an image folder with train/ and val/ (default: the digits, "
                        "written to a temporary folder)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of repzoo train (default 3)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs a run (default 8; the first 2 left out)")
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
        bare = BareLoop(args, images, labels, num_classes, steps)
        real, passes, ratios, data_cpu = [], [], [], []
        for r in range(args.repeats):
            run_real, run_passes, run_ratios = real_run(args, data, Path(tmp) / f"run{r}", bare)
            real += run_real
            passes += run_passes
            ratios += run_ratios
            data_cpu.append(loader_cpu_seconds_per_batch(args, data))
            print(f"run {r + 1}: repzoo train {', '.join(f'{v:.0f}' for v in run_real)} img/s by epoch, bare "
                  f"{', '.join(f'{v:.0f}' for v in run_passes)}; ratios "
                  f"{', '.join(f'{v:.2f}' for v in run_ratios)}; CPU s per batch: training step "
                  f"{statistics.median(bare.cpu_per_step):.3f}, data path {data_cpu[-1]:.3f}", flush=True)
    report = dict(machine=machine(args.device), model=args.model, batch_size=args.batch_size,
                  image_size=args.image_size, workers=args.workers, steps=steps, repeats=args.repeats,
                  epochs=args.epochs, skipped_epochs=SKIP_EPOCHS,
                  train_images_per_second=statistics.median(real), bare_images_per_second=statistics.median(passes),
                  command="python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    report["ratio"], report["ratios"] = statistics.median(ratios), ratios
    report["step_cpu_seconds"] = statistics.median(bare.cpu_per_step)
    report["data_cpu_seconds"] = statistics.median(data_cpu)
    report["data_cpu_share"] = report["data_cpu_seconds"] / (report["data_cpu_seconds"] + report["step_cpu_seconds"])
    m = report["machine"]
    print(f"machine: {m['cpu']} ({m['cores']} cores, {m['threads']} threads), torch {m['torch']}, {m['device']}")
    print(f"{args.model} at {args.image_size} px, batch {args.batch_size}, {args.workers} workers, {steps} steps, "
          f"{args.repeats} runs of {args.epochs} epochs, medians: repzoo train "
          f"{report['train_images_per_second']:.1f} img/s, bare loop {report['bare_images_per_second']:.1f} img/s; "
          f"median ratio to the neighbouring bare passes "
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
