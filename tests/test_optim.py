"""RepOptimizers: scales I/O, the two rules (Initialization: DingXiaoH/RepOptimizers @ 2e45ff5
``RepOptVGGHandler.reinitialize``; Iteration: its ``generate_grad_mults``), the
update rules (``repoptimizer/repoptimizer_sgd.py`` / ``repoptimizer_adamw.py``), the weight-decay grouping
(``optimizer.py``'s ``set_weight_decay``), resuming, dtype/device following, AMP, the real models."""
from __future__ import annotations

import math
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import repzoo
from repzoo.errors import CheckpointError, IncompatibleCheckpointError, RepZooError
from repzoo.optim import (
    RepOptimizerAdamW,
    RepOptimizerSGD,
    create_repoptimizer,
    extract_scales,
    get_handler,
    load_scales,
    save_scales,
    weight_decay_groups,
)

from conftest import B1_SCALES, GHOST_SCALES, SCALES_DIR

B1, GHOST = B1_SCALES, GHOST_SCALES
SCALES = SCALES_DIR


# ----------------------------------------------------------------------- small models
class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class TinyTarget(nn.Module):
    """Target-form key names: ``stage0.conv.weight``, ``stage1.{0,1}.conv.weight``, ``linear.*``."""

    def __init__(self, c=6, classes=5):
        super().__init__()
        self.stage0 = Block(3, c)
        self.stage1 = nn.Sequential(Block(c, c), Block(c, c))
        self.linear = nn.Linear(c, classes)

    def forward(self, x):
        x = self.stage1(self.stage0(x))
        return self.linear(x.mean((2, 3)))


def tiny_scales(c=6, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r():
        return torch.rand(c, generator=g) * 2 - 0.5  # includes negatives

    return OrderedDict([
        ("stage0.scale_conv.weight", r()), ("stage0.scale_1x1.weight", r()),
        ("stage1.0.scale_conv.weight", r()), ("stage1.0.scale_1x1.weight", r()),
        ("stage1.1.scale_conv.weight", r()), ("stage1.1.scale_1x1.weight", r()),
        ("stage1.1.scale_identity.weight", r().abs() + 0.1),
    ])


class TinyGhost(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.blocks = nn.ModuleDict({"0": nn.ModuleDict({"0": nn.ModuleDict({"ghost1": nn.Module()})})})
        mod = self.blocks["0"]["0"]["ghost1"]
        mod.primary_conv = nn.Sequential(nn.Conv2d(3, c, 1, bias=False), nn.BatchNorm2d(c))
        mod.cheap_operation = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False))
        mod.final_bn = nn.BatchNorm2d(c)


def _data(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(n)]


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


# ------------------------------------------------------------------- scale files I/O
def test_load_real_scale_files():
    vgg = load_scales(B1)
    assert len(vgg) == 79 and all(v.dtype == torch.float32 and v.dim() == 1 for v in vgg.values())
    assert sum(k.endswith("scale_identity.weight") for k in vgg) == 23
    assert torch.equal(vgg["stage1.1.scale_identity.weight"],
                       torch.load(B1, weights_only=True)["stage1.1.scale_identity.weight"])
    assert len(load_scales(GHOST)) == 64


def test_load_scales_from_hs_checkpoint_drops_head_and_weights(tmp_path):
    hs = TinyTarget()
    sd = dict(hs.state_dict())
    sd.update(tiny_scales())
    sd["linear.weight"] = torch.zeros(100, 6)  # the CIFAR-100 head of a Hyper-Search run
    path = tmp_path / "latest.pth"
    torch.save({"model": sd, "epoch": 239, "max_accuracy": 71.2}, path)
    got = load_scales(path)
    assert list(got) == list(tiny_scales())
    assert all(torch.equal(got[k], v) for k, v in tiny_scales().items())
    assert list(load_scales({"model": sd})) == list(tiny_scales())


def test_save_and_extract_scales_round_trip(tmp_path):
    model = TinyTarget()
    for name, value in tiny_scales().items():  # make an "hs model": scales as parameters
        *path, leaf = name.split(".")
        mod = model.get_submodule(".".join(path[:-1])) if len(path) > 1 else model
        scale = nn.Module()
        scale.weight = nn.Parameter(value.clone())
        setattr(mod, path[-1], scale)
    got = extract_scales(model)
    assert set(got) == set(tiny_scales())
    for suffix in (".pth", ".safetensors"):
        path = save_scales(got, tmp_path / f"s{suffix}")
        back = load_scales(path)
        assert all(torch.equal(back[k], got[k]) for k in got)
    assert torch.equal(torch.load(tmp_path / "s.pth", weights_only=True)["stage0.scale_conv.weight"],
                       tiny_scales()["stage0.scale_conv.weight"])
    assert set(load_scales(model)) == set(got)
    as64 = load_scales({k: v.double() / 3 for k, v in got.items()})  # float64 scales are not rounded
    assert all(as64[k].dtype == torch.float64 and torch.equal(as64[k], got[k].double() / 3) for k in got)


def test_load_scales_by_name_through_the_hub(monkeypatch):
    monkeypatch.setenv("REPZOO_MIRROR", str(SCALES))
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    got = load_scales("RepOpt-VGG-B1")
    ref = torch.load(B1, weights_only=True)
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)


def test_load_scales_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_scales(tmp_path / "nope.pth")
    torch.save({"conv.weight": torch.zeros(2, 2, 3, 3)}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="no RepOptimizer scales"):
        load_scales(tmp_path / "w.pth")
    rep = {"blocks.0.0.ghost1.cheap_operation.1.weight": torch.ones(4),
           "blocks.0.0.ghost1.cheap_operation.1.running_mean": torch.zeros(4)}
    with pytest.raises(CheckpointError, match="BatchNorm"):
        load_scales(rep)


# ------------------------------------------------------------- the two rules (Initialization, Iteration)
@pytest.mark.parametrize("rule,p", [("sgd", 2), ("adamw", 1)])
def test_vgg_grad_mults_equal_the_formula(rule, p):
    model, scales = TinyTarget(), tiny_scales()
    mults = get_handler(model, scales, rule).named_grad_mults()
    assert set(mults) == {"stage0.conv.weight", "stage1.0.conv.weight", "stage1.1.conv.weight"}
    for blk in ("stage0", "stage1.0", "stage1.1"):
        w = model.get_parameter(f"{blk}.conv.weight")
        s_c, s_1 = scales[f"{blk}.scale_conv.weight"].double(), scales[f"{blk}.scale_1x1.weight"].double()
        expect = torch.empty(w.shape, dtype=torch.float64)
        for c in range(w.shape[0]):
            for d in range(w.shape[1]):
                for h in range(3):
                    for k in range(3):
                        v = s_c[c] ** p
                        if h == k == 1:
                            v = v + s_1[c] ** p
                            if blk == "stage1.1" and c == d:
                                v = v + 1
                        expect[c, d, h, k] = v
        assert mults[f"{blk}.conv.weight"].dtype == torch.float32
        torch.testing.assert_close(mults[f"{blk}.conv.weight"].double(), expect, rtol=1e-6, atol=0)


@pytest.mark.parametrize("rule,p", [("sgd", 2), ("adamw", 1)])
def test_ghost_grad_mults_equal_the_formula(rule, p):
    model = TinyGhost()
    s = {"blocks.0.0.ghost1.cheap_operation.1.weight": torch.tensor([0.5, -1.5, 2.0, 0.25]),
         "blocks.0.0.ghost1.fusion_scale.weight": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    m = get_handler(model, s, rule).named_grad_mults()["blocks.0.0.ghost1.cheap_operation.0.weight"]
    expect = (s["blocks.0.0.ghost1.cheap_operation.1.weight"] ** p).view(4, 1, 1, 1).expand(4, 1, 3, 3).clone()
    expect[:, 0, 1, 1] += 1
    torch.testing.assert_close(m, expect, rtol=0, atol=1e-7)


def test_vgg_reinit_equals_the_formula():
    torch.manual_seed(0)
    model, scales = TinyTarget(), tiny_scales()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    handler = get_handler(model, scales)
    handler.reinitialize(generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the fresh 1x1 kernels, in block order: nn.Conv2d's default init
    for blk in ("stage0", "stage1.0", "stage1.1"):
        w = before[f"{blk}.conv.weight"].double()
        c_out, c_in = w.shape[:2]
        bound = 1 / math.sqrt(c_in)
        w1 = torch.empty(c_out, c_in, 1, 1).uniform_(-bound, bound, generator=g).double()
        s_c, s_1 = scales[f"{blk}.scale_conv.weight"].double(), scales[f"{blk}.scale_1x1.weight"].double()
        expect = w * s_c.view(-1, 1, 1, 1)
        expect[:, :, 1, 1] += w1[:, :, 0, 0] * s_1.view(-1, 1)
        if blk == "stage1.1":
            expect[:, :, 1, 1] += torch.diag(scales["stage1.1.scale_identity.weight"].double())
        torch.testing.assert_close(model.get_parameter(f"{blk}.conv.weight").double(), expect, rtol=1e-6, atol=1e-7)
    assert torch.equal(model.linear.weight, before["linear.weight"])


def test_ghost_reinit_equals_the_formula():
    model = TinyGhost()
    w = model.blocks["0"]["0"]["ghost1"].cheap_operation[0].weight.detach().clone()
    s_cheap, s_fusion = torch.tensor([0.5, -1.5, 2.0, 0.25]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    s = {"blocks.0.0.ghost1.cheap_operation.1.weight": s_cheap, "blocks.0.0.ghost1.fusion_scale.weight": s_fusion}
    get_handler(model, s).reinitialize()
    expect = w * s_cheap.view(4, 1, 1, 1)
    expect[:, 0, 1, 1] += s_fusion
    torch.testing.assert_close(model.blocks["0"]["0"]["ghost1"].cheap_operation[0].weight, expect)


def test_reinit_refuses_a_trained_model():
    model = TinyTarget()
    with torch.no_grad():
        model.stage1[0].bn.weight[2] = 0.7
    w = model.stage0.conv.weight.detach().clone()
    with pytest.raises(RepZooError, match="reinit=False"):
        create_repoptimizer(model, tiny_scales())
    assert torch.equal(model.stage0.conv.weight, w)
    create_repoptimizer(model, tiny_scales(), reinit=False)  # fine-tuning is allowed
    assert torch.equal(model.stage0.conv.weight, w)


def test_handler_refuses_wrong_scales_and_the_hs_form():
    with pytest.raises(IncompatibleCheckpointError, match="another model"):
        get_handler(TinyTarget(c=8), tiny_scales())
    extra = dict(tiny_scales(), **{"stage2.0.scale_conv.weight": torch.ones(6), "stage2.0.scale_1x1.weight": torch.ones(6)})
    with pytest.raises(IncompatibleCheckpointError, match="stage2.0.conv.weight"):
        get_handler(TinyTarget(), extra)
    hs = TinyTarget()
    hs.stage0.scale_conv = nn.Module()
    hs.stage0.scale_conv.weight = nn.Parameter(torch.ones(6))
    with pytest.raises(RepZooError, match="target form"):
        get_handler(hs, tiny_scales())


# --------------------------------------------------------------- weight-decay grouping
def test_weight_decay_groups_follow_the_reference_rule():
    model = TinyTarget()
    model.stage1[1].scale_identity = nn.Module()
    model.stage1[1].scale_identity.weight = nn.Parameter(torch.ones(6))  # 1-D but "identity.weight": decays
    model.stage1[1].rbr_identity = nn.BatchNorm2d(6)  # RepVGG's identity BN gamma decays too, its beta not
    model.frozen = nn.Parameter(torch.ones(3, 3), requires_grad=False)
    decay, no_decay = weight_decay_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in decay["params"]) == sorted([
        "stage0.conv.weight", "stage1.0.conv.weight", "stage1.1.conv.weight", "linear.weight",
        "stage1.1.scale_identity.weight", "stage1.1.rbr_identity.weight"])
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted([
        "stage0.bn.weight", "stage0.bn.bias", "stage1.0.bn.weight", "stage1.0.bn.bias", "stage1.1.bn.weight",
        "stage1.1.bn.bias", "linear.bias", "stage1.1.rbr_identity.bias"])


# ------------------------------------------------------------------- the update rules
def _one_param(seed=0, shape=(3, 2, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(shape, generator=g, dtype=torch.float64)
    grads = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(4)]
    mult = torch.rand(shape, generator=g, dtype=torch.float64) * 3 - 1
    return p, grads, mult


@pytest.mark.parametrize("kw", [dict(momentum=0.9, nesterov=True, weight_decay=0.1),
                                dict(momentum=0.8, dampening=0.3, weight_decay=0.05),
                                dict(weight_decay=0.0, maximize=True)])
@pytest.mark.parametrize("fused", [False, True])
def test_sgd_equals_torch_sgd_on_the_multiplied_gradient(kw, fused):
    """RepOptimizerSGD (repoptimizer_sgd.py): d = g⊙M, then decay, momentum, nesterov — torch's SGD fed g⊙M does exactly that."""
    p0, grads, mult = _one_param()
    a, b = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    ours = RepOptimizerSGD([a], lr=0.1, grad_mults={a: mult}, fused=fused, **kw)
    ref = torch.optim.SGD([b], lr=0.1, foreach=False, **kw)
    for g in grads:
        a.grad, b.grad = g.clone(), g * mult
        ours.step()
        ref.step()
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    assert torch.equal(a.grad, grads[-1])  # the user's gradient is left alone


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_follows_the_reference_formula(amsgrad):
    """RepOptimizerAdamW (repoptimizer_adamw.py) written out per step: M on the gradient before the moments and on m in the update."""
    p0, grads, mult = _one_param(1)
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.99, 1e-8, 0.1
    a = p0.clone().requires_grad_()
    ours = RepOptimizerAdamW([a], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, amsgrad=amsgrad,
                             grad_mults={a: mult})
    p, m, v, vmax = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0), torch.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        a.grad = g.clone()
        ours.step()
        gm = g * mult
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * gm
        v = b2 * v + (1 - b2) * gm * gm
        vmax = torch.maximum(vmax, v)
        second = vmax if amsgrad else v
        p = p - lr / (1 - b1 ** t) * (m * mult) / (second.sqrt() / math.sqrt(1 - b2 ** t) + eps)
        torch.testing.assert_close(a.detach(), p, rtol=1e-13, atol=1e-15)
    # the stored first moment is the plain one: no compounding by M (the reference's foreach bug)
    torch.testing.assert_close(ours.state[a]["exp_avg"], m, rtol=1e-13, atol=1e-15)


def test_without_multipliers_they_are_torch_sgd_and_adamw():
    p0, grads, _ = _one_param(2)
    for ours_cls, ref_cls, kw in ((RepOptimizerSGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
                                  (RepOptimizerAdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1))):
        a, b = p0.clone().requires_grad_(), p0.clone().requires_grad_()
        ours, ref = ours_cls([a], **kw), ref_cls([b], **kw)
        for g in grads:
            a.grad, b.grad = g.clone(), g.clone()
            ours.step()
            ref.step()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fused", [False, True])
def test_step_is_vectorized(monkeypatch, fused):
    """The number of tensor-op launches does not grow with the number of parameters."""
    calls = []
    for name in ("_foreach_mul", "_foreach_mul_", "_foreach_add", "_foreach_add_", "_fused_sgd_"):
        real = getattr(torch, name)

        def counting(*args, _real=real, **kwargs):
            calls.append(1)
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch, name, counting)
    counts = []
    for n in (2, 20):
        params = [torch.zeros(4, requires_grad=True) for _ in range(n)]
        opt = RepOptimizerSGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, fused=fused,
                              grad_mults={p: torch.full((4,), 2.0) for p in params[::2]})
        for _ in range(3):
            for p in params:
                p.grad = torch.ones(4)
            calls.clear()
            opt.step()
        counts.append(len(calls))
    assert counts[0] == counts[1] > 0


# ------------------------------------------------------------------------ resuming
@pytest.mark.filterwarnings("ignore:.*mixed sign")
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_resume_from_checkpoint_matches_uninterrupted_training(kind, tmp_path):
    batches = _data(6)
    kw = dict(lr=0.05) if kind == "sgd" else dict(lr=0.01)
    torch.manual_seed(0)
    full = TinyTarget()
    opt = create_repoptimizer(full, tiny_scales(), kind, **kw)
    start = {k: v.clone() for k, v in full.state_dict().items()}
    _train(full, opt, batches)

    part = TinyTarget()
    part.load_state_dict(start)
    opt = create_repoptimizer(part, tiny_scales(), kind, reinit=False, **kw)
    _train(part, opt, batches[:3])
    torch.save({"model": part.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ckpt.pth")
    del part, opt

    ckpt = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    resumed = TinyTarget()
    resumed.load_state_dict(ckpt["model"])
    cls = RepOptimizerSGD if kind == "sgd" else RepOptimizerAdamW  # a bare optimizer: the multipliers
    opt = cls(weight_decay_groups(resumed, 0.0), **kw)              # come back from the state dict
    opt.load_state_dict(ckpt["optimizer"])
    assert sum("grad_mult" in s for s in opt.state.values()) == 3
    _train(resumed, opt, batches[3:])
    for k, v in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k


def test_multipliers_follow_dtype_after_model_to():
    model = TinyTarget()
    opt = create_repoptimizer(model, tiny_scales(), "sgd")
    mult32 = opt.state[model.stage0.conv.weight]["grad_mult"].clone()
    model.double()
    _train(model, opt, [(x.double(), y) for x, y in _data(2)])
    mult = opt.state[model.stage0.conv.weight]["grad_mult"]
    assert mult.dtype == torch.float64 and mult.device == model.stage0.conv.weight.device
    assert opt.state[model.stage0.conv.weight]["momentum_buffer"].dtype == torch.float64
    torch.testing.assert_close(mult.float(), mult32)
    # and load_state_dict casts the saved float32 multipliers to a float64 model's dtype
    m64 = TinyTarget().double()
    opt64 = RepOptimizerSGD(weight_decay_groups(m64, 0.0), lr=0.1, momentum=0.9)
    opt64.load_state_dict(create_repoptimizer(TinyTarget(), tiny_scales()).state_dict())
    assert opt64.state[m64.stage0.conv.weight]["grad_mult"].dtype == torch.float64


# ----------------------------------------------------------------------------- AMP
def test_grad_scaler_on_cpu_gives_the_unscaled_result_and_skips_inf_steps():
    batches = _data(3)
    torch.manual_seed(0)
    plain = TinyTarget()
    start = {k: v.clone() for k, v in plain.state_dict().items()}
    opt = create_repoptimizer(plain, tiny_scales(), "sgd", lr=0.05)
    start = {k: v.clone() for k, v in plain.state_dict().items()}
    _train(plain, opt, batches)

    scaled = TinyTarget()
    scaled.load_state_dict(start)
    opt = create_repoptimizer(scaled, tiny_scales(), "sgd", reinit=False, lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1000)
    for x, y in batches:
        opt.zero_grad()
        scaler.scale(F.cross_entropy(scaled(x), y)).backward()
        scaler.step(opt)
        scaler.update()
    for k, v in plain.state_dict().items():  # a power-of-two scale is exact
        torch.testing.assert_close(scaled.state_dict()[k], v, rtol=1e-6, atol=1e-7)

    before = {k: v.clone() for k, v in scaled.state_dict().items()}
    opt.zero_grad()
    x, y = batches[0]
    scaler.scale(F.cross_entropy(scaled(x), y) * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 2.0 ** 10
    assert all(torch.equal(scaled.state_dict()[k], v) for k, v in before.items() if "running" not in k
               and "num_batches" not in k)


@pytest.mark.filterwarnings("ignore:.*mixed sign")
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_works_under_autocast(kind):
    model = TinyTarget()
    opt = create_repoptimizer(model, tiny_scales(), kind, lr=0.01)
    before = model.stage1[1].conv.weight.detach().clone()
    for x, y in _data(2):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    w = model.stage1[1].conv.weight
    assert w.dtype == torch.float32 and torch.isfinite(w).all() and not torch.equal(w, before)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_under_autocast_the_step_is_the_reference_rule_on_the_autocast_gradients(kind):
    """bf16 autocast: the update is the rule applied to the (float32) gradients autocast produced."""
    torch.manual_seed(0)
    model = TinyTarget()
    kw = dict(lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0) if kind == "sgd" else dict(lr=0.01, weight_decay=0.0)
    opt = create_repoptimizer(model, tiny_scales(), kind, reinit=False, **kw)
    x, y = _data(1)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    w = model.stage1[1].conv.weight
    g, m, before = w.grad.clone(), opt.grad_mult(w), w.detach().clone()
    assert g.dtype == torch.float32
    opt.step()
    if kind == "sgd":
        expected = before - 0.01 * g * m
    else:  # the first AdamW step: m̂ = g', v̂ = g'², step = lr · M ⊙ g' / (|g'| + eps)
        gm = g * m
        expected = before - 0.01 * (gm * m) / (gm.abs() + 1e-8)
    assert torch.allclose(w, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.heavy  # torch.compile
def test_torch_compile_of_the_model_gives_the_eager_trajectory(float64):
    eager, compiled = TinyTarget(), TinyTarget()
    compiled.load_state_dict(eager.state_dict())
    start = {k: v.clone() for k, v in eager.state_dict().items()}
    opts = [create_repoptimizer(m, tiny_scales(), reinit=False, lr=0.05, momentum=0.9) for m in (eager, compiled)]
    data = [(x.double(), y) for x, y in _data(3)]
    _train(eager, opts[0], data)
    _train(torch.compile(compiled, backend="eager" if not _compiler() else "inductor"), opts[1], data)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        if a.is_floating_point():
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), name
    assert not torch.allclose(eager.stage1[1].conv.weight, start["stage1.1.conv.weight"])  # it trained


def _compiler() -> bool:
    import shutil

    return shutil.which("c++") is not None or shutil.which("gcc") is not None


# --------------------------------------------------------------------------- misc
def test_clipping_arguments_warn():
    with pytest.warns(UserWarning, match="clipping breaks the equivalence"):
        opt = create_repoptimizer(TinyTarget(), tiny_scales(), clip_grad=5.0)
    assert "clip_grad" not in opt.defaults


def test_import_repzoo_does_not_import_optim():
    code = "import sys, repzoo; print('repzoo.optim' in sys.modules); print(repzoo.optim.create_repoptimizer.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "create_repoptimizer"]


# --------------------------------------------------------------------- real models
def test_vgg_handler_covers_every_block_of_repopt_vgg_b1():
    model = repzoo.create_model("RepOpt-VGG-B1")
    handler = get_handler(model, load_scales(B1))
    assert len(handler) == 28 and sum(k.has_identity for k in handler.kernels) == 23
    kernels = {n for n, p in model.named_parameters() if p.dim() == 4}
    assert {k.name for k in handler.kernels} == kernels  # every conv of the target model
    with pytest.raises(IncompatibleCheckpointError):
        get_handler(repzoo.create_model("RepOpt-VGG-B2"), load_scales(B1))


def test_ghost_handler_covers_every_cheap_operation_of_repopt_ghostnet_05x():
    model = repzoo.create_model("RepOpt-GhostNet-0.5x")
    handler = get_handler(model, load_scales(GHOST))
    cheap = {n for n, _ in model.named_parameters() if n.endswith("cheap_operation.0.weight")}
    assert len(handler) == 32 and {k.name for k in handler.kernels} == cheap


def test_create_repoptimizer_from_a_real_hs_model():
    hs = repzoo.create_model("RepOpt-GhostNet-0.5x-hs", num_classes=100)
    with pytest.raises(RepZooError, match="target form"):
        create_repoptimizer(hs, load_scales(GHOST))
    scales = load_scales(hs)
    assert set(scales) == set(torch.load(GHOST, weights_only=True))
    model = repzoo.create_model("RepOpt-GhostNet-0.5x", num_classes=10)
    w = model.get_parameter("blocks.6.1.ghost1.cheap_operation.0.weight").detach().clone()
    opt = create_repoptimizer(model, hs, "sgd", lr=0.1)
    assert opt.param_groups[0]["weight_decay"] == 1e-5 and opt.param_groups[0]["nesterov"]
    s_cheap = scales["blocks.6.1.ghost1.cheap_operation.1.weight"].view(-1, 1, 1, 1)
    s_fusion = scales["blocks.6.1.ghost1.fusion_scale.weight"]
    expect = w * s_cheap
    expect[:, 0, 1, 1] += s_fusion
    torch.testing.assert_close(model.get_parameter("blocks.6.1.ghost1.cheap_operation.0.weight"), expect)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert torch.isfinite(model.get_parameter("blocks.6.1.ghost1.cheap_operation.0.weight")).all()


@pytest.mark.parametrize("cls, bad", [
    (RepOptimizerSGD, dict(lr=-0.1)), (RepOptimizerSGD, dict(momentum=-0.9)),
    (RepOptimizerSGD, dict(weight_decay=-1e-4)), (RepOptimizerSGD, dict(nesterov=True)),
    (RepOptimizerAdamW, dict(lr=-1e-3)), (RepOptimizerAdamW, dict(eps=-1e-8)),
    (RepOptimizerAdamW, dict(weight_decay=-0.01)), (RepOptimizerAdamW, dict(betas=(1.0, 0.999))),
])
def test_invalid_hyper_parameters_are_refused(cls, bad):
    with pytest.raises(ValueError):
        cls([nn.Parameter(torch.zeros(2))], **bad)


def test_state_from_an_older_release_gets_the_late_defaults():
    opt = RepOptimizerSGD([nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    state = opt.__getstate__()
    for group in state["param_groups"]:
        del group["fused"], group["maximize"]
    opt.__setstate__(state)
    assert opt.param_groups[0]["fused"] is None and opt.param_groups[0]["maximize"] is False


def test_save_scales_takes_a_trained_hs_model(tmp_path):
    hs = repzoo.create_model("RepOpt-GhostNet-0.5x-hs", num_classes=10)
    path = save_scales(hs, tmp_path / "scales.pth")
    assert set(torch.load(path, weights_only=True)) == set(extract_scales(hs)) and len(extract_scales(hs)) == 64
