"""Train a RepOpt model with a RepOptimizer on any number of processes, resumably, and write its deploy form.

    # one machine, 2 processes (CPU/gloo, or one GPU each with nccl)
    torchrun --nproc_per_node=2 examples/train_distributed.py --model RepOpt-VGG-B1 --steps 100 --out runs/b1
    # resume (any number of processes: the checkpoint is resharded)
    torchrun --nproc_per_node=4 examples/train_distributed.py --model RepOpt-VGG-B1 --steps 200 --out runs/b1
    # two machines, 8 GPUs each
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$HEAD:29500 \\
        examples/train_distributed.py --model RepOpt-VGG-L2 --batch-size 32 --image-size 224 --out /ckpt/l2

The model is sharded with FSDP2 per stage (``repzoo.distributed.shard``; ``--ddp`` for DDP instead),
the RepOptimizer is built after sharding from the released scales of ``--scales`` (a name, shipped
with repzoo) or your own Hyper-Search scale file, and trained on a small generated dataset (the
same on every process, split by a ``DistributedSampler``). Every ``--save-every`` steps a
``torch.distributed.checkpoint`` of the model, the optimizer and the step goes to ``--out``;
a later run resumes from the newest. At the end, rank 0 writes ``<out>/deploy.safetensors``: the
gathered weights converted to the plain deploy model.
"""
from __future__ import annotations

import argparse
import os
import re

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import repzoo
import repzoo.distributed
from repzoo.optim import create_repoptimizer


def dataset(n: int, size: int, classes: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))


def latest(out: str):
    steps = [int(m.group(1)) for d in (os.listdir(out) if os.path.isdir(out) else ())
             if (m := re.fullmatch(r"step_(\d+)", d))]
    return max(steps) if steps else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="RepOpt-VGG-B1")
    p.add_argument("--scales", default=None, help="released scales' name or a scale file (default: the model's)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--ddp", action="store_true", help="DistributedDataParallel instead of FSDP2")
    p.add_argument("--out", default="runs/repopt")
    args = p.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)
    model = repzoo.create_model(args.model, num_classes=args.num_classes).to(device)
    if args.ddp:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    else:
        wrapped = repzoo.distributed.shard(model)
    start = latest(args.out)
    opt = create_repoptimizer(model, args.scales or args.model, lr=args.lr, reinit=start is None)

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if start is not None:
        msd, osd = get_state_dict(model, opt)
        state = {"model": msd, "optim": osd}
        dcp.load(state, checkpoint_id=os.path.join(args.out, f"step_{start}"))
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        if rank == 0:
            print(f"resumed from step {start} on {world} processes")
    step = start or 0

    data = dataset(args.batch_size * world * 4, args.image_size, args.num_classes)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    model.train()
    while step < args.steps:
        sampler.set_epoch(step)
        for x, y in DataLoader(data, batch_size=args.batch_size, sampler=sampler):
            if step >= args.steps:
                break
            loss = F.cross_entropy(wrapped(x.to(device)), y.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if rank == 0 and step % max(1, args.save_every // 2) == 0:
                print(f"step {step}: loss {loss.item():.4f}")
            if step % args.save_every == 0 or step == args.steps:
                msd, osd = get_state_dict(model, opt)
                dcp.save({"model": msd, "optim": osd}, checkpoint_id=os.path.join(args.out, f"step_{step}"))

    full = repzoo.distributed.full_state_dict(wrapped)  # every rank takes part
    if rank == 0:
        deploy = repzoo.create_model(args.model, num_classes=args.num_classes, deploy=True, checkpoint_path=full)
        from repzoo.weights.checkpoint import save_state_dict

        save_state_dict(deploy.state_dict(), os.path.join(args.out, "deploy.safetensors"))
        print(f"wrote {os.path.join(args.out, 'deploy.safetensors')} (deploy form, {step} steps)")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
