"""RepOptimizer steps under FSDP2 — a benchmark, not a test.

    python benchmarks/bench_distributed.py                       # 2 processes, CPU / gloo, RepOpt-VGG-B1
    python benchmarks/bench_distributed.py --nproc 1 --model RepOpt-GhostNet-0.5x
    python benchmarks/bench_distributed.py --device cuda --nproc 8 --train-steps 20   # nccl, one GPU each

Per process: the model is sharded per stage (``repzoo.distributed.shard``); the RepOptimizer's SGD
step and ``torch.optim.SGD(foreach=True)``'s step run on the same sharded parameters with the same
gradients (medians of ``--iters`` after warm-up; goal: RepOptimizer ≤ 1.3× torch's). With
``--train-steps`` the full training step's images/s is measured too (batch per process, 224² on a GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _time(fn, iters: int, sync) -> float:
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def worker(rank: int, args, port: int, out: str) -> None:
    import repzoo
    import repzoo.distributed
    from repzoo.optim import create_repoptimizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=args.nproc)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, args.threads))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model = repzoo.create_model(args.model).to(device)
    repzoo.distributed.shard(model)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # the same (sharded) gradients for both optimizers
        p.grad = torch.ones_like(p) * 1e-3
    rep = create_repoptimizer(model, args.model, reinit=False, lr=1e-9)  # tiny lr: the weights barely move
    ref = torch.optim.SGD(params, lr=1e-9, momentum=0.9, nesterov=True, weight_decay=4e-5, foreach=True)
    t_rep = _time(rep.step, args.iters, sync)
    t_ref = _time(ref.step, args.iters, sync)
    result = dict(rank=rank, repoptimizer_ms=t_rep * 1e3, torch_sgd_ms=t_ref * 1e3)
    if args.train_steps:
        size = args.image_size
        x = torch.randn(args.batch_size, 3, size, size, device=device)
        y = torch.randint(0, 1000, (args.batch_size,), device=device)

        def train_step():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            rep.zero_grad()
            loss.backward()
            rep.step()

        t = _time(train_step, args.train_steps, sync)
        result["train_images_per_s_per_process"] = args.batch_size / t
    gathered = [None] * args.nproc
    dist.all_gather_object(gathered, result)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="RepOpt-VGG-B1")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = os.path.join(tempfile.mkdtemp(), "result.json")
    mp.start_processes(worker, args=(args, port, out), nprocs=args.nproc, start_method="spawn")
    with open(out) as f:
        results = json.load(f)
    rep = statistics.median(r["repoptimizer_ms"] for r in results)
    ref = statistics.median(r["torch_sgd_ms"] for r in results)
    print(f"{args.model}, FSDP2 over {args.nproc} {args.device} process(es): optimizer step "
          f"RepOptimizer {rep:.1f} ms vs torch.optim.SGD(foreach=True) {ref:.1f} ms = {rep / ref:.2f}x (goal <= 1.3x)")
    if args.train_steps:
        ips = sum(r["train_images_per_s_per_process"] for r in results)
        print(f"  training step: {ips:.1f} images/s in all ({ips / args.nproc:.1f} per process), "
              f"batch {args.batch_size} per process at {args.image_size}x{args.image_size}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), results=results, ratio=rep / ref), f, indent=1)


if __name__ == "__main__":
    main()
