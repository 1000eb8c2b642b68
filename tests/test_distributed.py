"""Training at scale with torch's own engines: FSDP2 and DDP, two processes on 127.0.0.1 (gloo, CPU, float64).

One launch runs every scenario of ``distributed_workers.py``; each is compared here with the same
training in one process on the full batch.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import distributed_workers as W
import repzoo
import repzoo.distributed
from repzoo.optim import create_repoptimizer
from repzoo.weights.scales import load_scales_into

from conftest import rel_diff

WORLD = 2
TIMEOUT = 420


def _rel_sd(a, b):
    return max(rel_diff(a[k].double(), b[k].double()) for k in b if b[k].is_floating_point() and b[k].norm() > 0)


def _one_process(kind="sgd", reinit=True, steps=None):
    model = W.small_model()
    torch.manual_seed(1)
    opt = create_repoptimizer(model, W.small_scales(), reinit=reinit, **(W.SGD if kind == "sgd" else W.ADAMW))
    W.train(model, opt, 0, 1, steps=steps)
    return model, opt


def _csla_start(out_dir):
    """The CSLA model of the small scales, and the target state it starts the RepOptimizer from."""
    torch.manual_seed(0)
    csla = repzoo.models.RepOptVGG(mode="csla", **W.SMALL).double().eval()
    load_scales_into(csla, W.small_scales())
    target = W.small_model()
    sd = {k: v for k, v in csla.state_dict().items() if k in target.state_dict()}
    for name, block in csla.named_modules():
        if hasattr(block, "linear_kernel"):
            sd[f"{name}.conv.weight"] = block.linear_kernel()
    torch.save(sd, os.path.join(out_dir, "gr_start.pt"))
    return csla


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Start the two processes once, with every scenario; the folder they wrote to."""
    out = tmp_path_factory.mktemp("distributed")
    csla = _csla_start(str(out))
    names = list(W.SCENARIOS)
    ctx = mp.start_processes(W.worker, args=(WORLD, W.free_port(), str(out), names), nprocs=WORLD, join=False,
                             start_method="spawn")
    import time

    deadline = time.monotonic() + TIMEOUT
    while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the distributed scenarios did not finish in {TIMEOUT} s")
    return out, csla


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_fsdp2_with_a_repoptimizer_equals_one_process(launched, kind):
    out, _ = launched
    sharded = torch.load(out / f"fsdp_{kind}.pt", weights_only=True)
    model, _ = _one_process(kind, reinit=kind == "sgd")
    assert _rel_sd(sharded, model.state_dict()) < 1e-12


@pytest.mark.parametrize("accumulate", [1, 2])
def test_ddp_with_a_repoptimizer_equals_one_process(launched, accumulate):
    out, _ = launched
    ddp = torch.load(out / f"ddp_{accumulate}.pt", weights_only=True)
    model, _ = _one_process("sgd")
    assert _rel_sd(ddp, model.state_dict()) < 1e-12


def test_a_two_process_checkpoint_resumes_in_one_process(launched):
    """Saved by 2 processes (sharded), resumed by 1: the third step is the one an unbroken run takes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    out, _ = launched
    model = W.small_model()
    opt = create_repoptimizer(model, W.small_scales(), reinit=False, **W.SGD)
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(out / "dcp"))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    assert float(opt.state[model.stage1[0].conv.weight]["step"]) == 2
    W.train(model, opt, 0, 1, steps={2})
    unbroken, _ = _one_process("sgd")
    assert _rel_sd(model.state_dict(), unbroken.state_dict()) < 1e-12


def test_gr_equals_csla_under_fsdp2(launched):
    """The sharded target model trained with the RepOptimizer follows the unsharded CSLA model."""
    out, csla = launched
    sgd = torch.optim.SGD([p for p in csla.parameters() if p.requires_grad], lr=0.05, momentum=0.9, nesterov=True)
    W.train(csla, sgd, 0, 1)
    target = torch.load(out / "gr_target.pt", weights_only=True)
    start = torch.load(out / "gr_start.pt", weights_only=True)
    for name, block in csla.named_modules():
        if hasattr(block, "linear_kernel"):
            key = f"{name}.conv.weight"
            moved = rel_diff(block.linear_kernel(), start[key])
            assert moved > 1e-4, key  # the kernels did move
            assert rel_diff(target[key], block.linear_kernel()) < 1e-9 * max(1.0, moved), key


@pytest.mark.parametrize("name", W.FAMILY_MODELS)
def test_every_family_trains_sharded_and_converts(launched, name):
    out, _ = launched
    full = torch.load(out / "families.pt", weights_only=True)[name]
    torch.manual_seed(0)
    model = W.family_model(name).double().eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert _rel_sd(full, model.state_dict()) < 1e-12  # the sharded step is the full-batch step
    torch.set_default_dtype(torch.float64)  # the deploy model adopts the float64 weights as they are
    try:
        deploy = repzoo.load_checkpoint(W.family_model(name, deploy=True), full).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    probe = torch.randn(2, 3, 48, 40, dtype=torch.float64)
    with torch.no_grad():
        assert rel_diff(deploy(probe), model(probe)) < 1e-10


def test_fsdp2_stage_wrapping_needs_stages_called_as_modules():
    """What made FSDP2 fail before: stages iterated block by block. Every family calls its stages."""
    for name in ("RepVGG-A0", "RepGhostNet-0.5x", "RepVGGplus-L2pse", "RepOpt-VGG-B1"):
        with torch.device("meta"):
            model = repzoo.create_model(name)
        calls = []
        for unit in repzoo.distributed.shard_units(model):
            unit.register_forward_pre_hook(lambda m, args, seen=calls: seen.append(m))
        with torch.device("meta"):
            model(torch.empty(1, 3, 64, 64))
        assert len(calls) == len(repzoo.distributed.shard_units(model)) > 0, name
