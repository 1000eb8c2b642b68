"""Workers for tests/test_distributed.py: each runs in a process of its own (gloo on 127.0.0.1, CPU, float64).

Every scenario trains a small model for a few steps on batches that are the same on every rank before
they are split, and writes what the test compares into ``out_dir``.
"""
from __future__ import annotations

import os
import socket
import time
from contextlib import closing
from typing import Callable, Dict

import torch
import torch.distributed as dist
import torch.nn.functional as F

import repzoo
import repzoo.distributed
from repzoo.models import RepOptVGG
from repzoo.optim import create_repoptimizer, extract_scales

SMALL = dict(num_blocks=(1, 2, 1, 1), width_multiplier=(0.25, 0.25, 0.25, 0.25), num_classes=5)
BATCH, SIZE, STEPS = 8, 16, 3
#: a registry model of each family (small variants: two processes hold them in float64)
FAMILY_MODELS = ("RepVGG-A0", "RepGhostNet-0.5x", "RepOpt-GhostNet-0.5x-hs", "OREPA-ResNet-18", "RepMLPNet-tiny")
#: RepMLPNet's registered variants take 224 / 256 px; the family's own model class, two small stages, takes 32 px
TINY_REPMLPNET = dict(channels=(8, 16), num_blocks=(1, 1), hs=(2, 1), sharesets_nums=(2, 4))


def family_model(name: str, deploy: bool = False):
    """A model of each family with 4 classes: a registered variant, or the small RepMLPNet."""
    if name == "RepMLPNet-tiny":
        from repzoo.models.repmlpnet import RepMLPNet

        return RepMLPNet(**TINY_REPMLPNET, num_classes=4, deploy=deploy)
    return repzoo.create_model(name, num_classes=4, deploy=deploy)
SGD = dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
ADAMW = dict(optimizer="adamw", lr=1e-3, weight_decay=1e-2)


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_scales() -> Dict[str, torch.Tensor]:
    """Hyper-Search scales of the small model: random, signs mixed (SGD-GR holds for any)."""
    torch.manual_seed(7)
    hs = RepOptVGG(mode="hs", **SMALL).double()
    with torch.no_grad():
        for name, p in hs.named_parameters():
            if "scale" in name:
                p.copy_(torch.randn_like(p))
    return extract_scales(hs)


def small_model(mode: str = "target") -> torch.nn.Module:
    torch.manual_seed(0)
    return RepOptVGG(mode=mode, **SMALL).double().eval()  # BN as running-stat affines: the same on any split


def batches():
    g = torch.Generator().manual_seed(123)
    for _ in range(STEPS):
        yield torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64), torch.randint(0, 5, (BATCH,), generator=g)


def local(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    n = t.shape[0] // world
    return t[rank * n:(rank + 1) * n]


def train(model, opt, rank: int, world: int, steps=None, accumulate: int = 1, ddp=None) -> None:
    for i, (x, y) in enumerate(batches()):
        if steps is not None and i not in steps:
            continue
        x, y = local(x, rank, world), local(y, rank, world)
        opt.zero_grad()
        chunks = list(zip(x.chunk(accumulate), y.chunk(accumulate)))
        for j, (xc, yc) in enumerate(chunks):
            last = j == len(chunks) - 1
            ctx = ddp.no_sync() if ddp is not None and not last else _nullcontext()
            with ctx:
                (F.cross_entropy(model(xc), yc) / accumulate).backward()
        opt.step()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------------------- scenarios


def fsdp_repoptimizer(rank, world, out_dir, kind: str) -> None:
    """FSDP2 per stage + a RepOptimizer built after sharding (reinit on the sharded kernels for SGD)."""
    model = small_model()
    repzoo.distributed.shard(model)
    torch.manual_seed(1)  # the reinit's random 1x1 draws: rank 0's are used on every rank
    opt = create_repoptimizer(model, small_scales(), reinit=kind == "sgd", **(SGD if kind == "sgd" else ADAMW))
    train(model, opt, rank, world)
    full = repzoo.distributed.full_state_dict(model)
    if rank == 0:
        torch.save(full, os.path.join(out_dir, f"fsdp_{kind}.pt"))


def ddp_repoptimizer(rank, world, out_dir, accumulate: int) -> None:
    model = small_model()
    torch.manual_seed(1)
    opt = create_repoptimizer(model, small_scales(), reinit=True, **SGD)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    train(ddp, opt, rank, world, accumulate=accumulate, ddp=ddp)
    if rank == 0:
        torch.save(repzoo.distributed.full_state_dict(ddp), os.path.join(out_dir, f"ddp_{accumulate}.pt"))


def fsdp_checkpoint(rank, world, out_dir) -> None:
    """Two steps sharded, then a torch.distributed.checkpoint save of the model and the optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model = small_model()
    repzoo.distributed.shard(model)
    torch.manual_seed(1)
    opt = create_repoptimizer(model, small_scales(), reinit=True, **SGD)
    train(model, opt, rank, world, steps={0, 1})
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=os.path.join(out_dir, "dcp"))


def fsdp_gr_equals_csla(rank, world, out_dir) -> None:
    """The sharded target model with the RepOptimizer; the CSLA model's trajectory is computed unsharded."""
    model = small_model()
    repzoo.distributed.shard(model)
    opt = create_repoptimizer(model, small_scales(), reinit=False, optimizer="sgd", lr=0.05, momentum=0.9,
                              nesterov=True, weight_decay=0.0)
    with torch.no_grad():
        start = torch.load(os.path.join(out_dir, "gr_start.pt"), weights_only=True)
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, StateDictOptions

        set_model_state_dict(model, start, options=StateDictOptions(full_state_dict=True))
    train(model, opt, rank, world)
    full = repzoo.distributed.full_state_dict(model)
    if rank == 0:
        torch.save(full, os.path.join(out_dir, "gr_target.pt"))


def every_family(rank, world, out_dir) -> None:
    """A registry model of each family: sharded per stage, one step, gathered, converted to deploy."""
    results = {}
    for name in FAMILY_MODELS:
        torch.manual_seed(0)
        model = family_model(name).double().eval()
        repzoo.distributed.shard(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        y = torch.tensor([0, 1, 2, 3])
        F.cross_entropy(model(local(x, rank, world)), local(y, rank, world)).backward()
        opt.step()
        full = repzoo.distributed.full_state_dict(model)
        if rank == 0:
            results[name] = full
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "families.pt"))


SCENARIOS: Dict[str, Callable] = {
    "fsdp_sgd": lambda r, w, o: fsdp_repoptimizer(r, w, o, "sgd"),
    "fsdp_adamw": lambda r, w, o: fsdp_repoptimizer(r, w, o, "adamw"),
    "ddp": lambda r, w, o: ddp_repoptimizer(r, w, o, 1),
    "ddp_no_sync": lambda r, w, o: ddp_repoptimizer(r, w, o, 2),
    "fsdp_checkpoint": fsdp_checkpoint,
    "fsdp_gr": fsdp_gr_equals_csla,
    "families": every_family,
}


def worker(rank: int, world: int, port: int, out_dir: str, names) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for name in names:
            t = time.perf_counter()
            SCENARIOS[name](rank, world, out_dir)
            dist.barrier()
            if rank == 0:
                with open(os.path.join(out_dir, f"{name}.done"), "w") as f:
                    f.write(f"{time.perf_counter() - t:.2f}\n")
    finally:
        dist.destroy_process_group()
