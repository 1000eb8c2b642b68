"""GR = CSLA, the RepOptimizers paper's central claim, in float64.

A constant-scale linear-addition (CSLA) stack trained with torch's own optimizer and the plain
target stack trained with repzoo's RepOptimizer (multipliers built by name from the REAL
released scale files) must hold the same equivalent kernels step after step. The CSLA
equivalent kernel is computed here, independently: ``s_conv·W + pad(s_1x1·W1) + s_id·I``
(VGG) and ``s_cheap·W_dw + s_fusion·Id_dw`` (Ghost).
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repzoo.reparam import relative_difference
from repzoo.optim import RepOptimizerSGD, create_repoptimizer, get_handler

from conftest import B1_SCALES, GHOST_SCALES

B1, GHOST = B1_SCALES, GHOST_SCALES
N = 8  # channels per block after slicing


_rel = relative_difference


# --------------------------------------------------------------------------------- VGG
class CslaBlock(nn.Module):
    """relu(bn(s_conv·conv(x) + s_1x1·conv_1x1(x) + s_id·x)), s_conv/s_1x1 frozen, s_id trainable."""

    def __init__(self, cin, cout, s_conv, s_1x1, s_id=None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.conv_1x1 = nn.Conv2d(cin, cout, 1, 1, 0, bias=False)
        self.register_buffer("s_conv", s_conv.clone())
        self.register_buffer("s_1x1", s_1x1.clone())
        self.scale_identity = None if s_id is None else nn.Parameter(s_id.clone())
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = self.conv(x) * self.s_conv.view(1, -1, 1, 1) + self.conv_1x1(x) * self.s_1x1.view(1, -1, 1, 1)
        if self.scale_identity is not None:
            y = y + x * self.scale_identity.view(1, -1, 1, 1)
        return F.relu(self.bn(y))

    def equivalent_kernel(self):
        k = self.conv.weight * self.s_conv[:, None, None, None]
        k = k + F.pad(self.conv_1x1.weight * self.s_1x1[:, None, None, None], [1, 1, 1, 1])
        if self.scale_identity is not None:
            c = k.shape[0]
            ident = torch.zeros_like(k)
            ident[:, :, 1, 1] = torch.eye(c, dtype=k.dtype)
            k = k + ident * self.scale_identity[:, None, None, None]
        return k


class TargetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _vgg_pair(block_names, positive_only):
    """CSLA and target stacks ``stage2.<i>`` built from the real B1 scales (N channels each)."""
    scales = torch.load(B1, weights_only=True)
    csla, target, sliced, cin = OrderedDict(), OrderedDict(), {}, 3
    for name in block_names:
        blk = f"stage2.{name}"
        s_conv = scales[f"{blk}.scale_conv.weight"].double()
        s_1x1 = scales[f"{blk}.scale_1x1.weight"].double()
        has_id = f"{blk}.scale_identity.weight" in scales
        positive = (s_conv > 0) & (s_1x1 > 0)
        if positive_only:
            idx = torch.nonzero(positive).flatten()[:N]
        else:  # the negative channels first: SGD-GR holds for any sign
            idx = torch.cat([torch.nonzero(~positive).flatten()[:3], torch.nonzero(positive).flatten()])[:N]
        s_id = scales[f"{blk}.scale_identity.weight"].double()[idx] if has_id else None
        if has_id:
            assert cin == N
        sliced[f"{blk}.scale_conv.weight"] = s_conv[idx]
        sliced[f"{blk}.scale_1x1.weight"] = s_1x1[idx]
        if has_id:
            sliced[f"{blk}.scale_identity.weight"] = s_id
        csla[name] = CslaBlock(cin, N, s_conv[idx], s_1x1[idx], s_id)
        target[name] = TargetBlock(cin, N)
        cin = N
    c_model = nn.Module()
    c_model.stage2 = nn.Sequential(csla)
    t_model = nn.Module()
    t_model.stage2 = nn.Sequential(target)
    c_model.double()
    t_model.double()
    with torch.no_grad():
        for name in block_names:
            t_model.stage2[list(target).index(name)].conv.weight.copy_(
                c_model.stage2[list(csla).index(name)].equivalent_kernel())
    return c_model, t_model, sliced


def _csla_groups(model, wd):
    """The reference grouping written out: conv kernels and scale_identity decay, BN does not."""
    decay = [p for n, p in model.named_parameters() if n.endswith(("conv.weight", "conv_1x1.weight", "identity"))]
    no_decay = [p for n, p in model.named_parameters() if ".bn." in n]
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    return [dict(params=decay, weight_decay=wd), dict(params=no_decay, weight_decay=0.0)]


def _train(c_model, t_model, c_opt, t_opt, steps, shape, check):
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        target = torch.randn(shape[0], N, shape[2], shape[3], generator=g, dtype=torch.float64)
        for model, opt in ((c_model, c_opt), (t_model, t_opt)):
            opt.zero_grad()
            loss = ((model.stage2(x) if hasattr(model, "stage2") else model(x)) - target).pow(2).mean()
            loss.backward()
            opt.step()
        check()


@pytest.mark.parametrize("nesterov,dampening", [(True, 0.0), (False, 0.1)])
def test_sgd_vgg_blocks_with_and_without_identity(nesterov, dampening):
    names = ["0", "3", "4"]  # stage2.0 has no identity; stage2.3/2.4 have one and negative scales
    c_model, t_model, scales = _vgg_pair(names, positive_only=False)
    assert any((s < 0).any() for s in scales.values())
    kw = dict(lr=0.05, momentum=0.9, nesterov=nesterov, dampening=dampening)
    c_opt = torch.optim.SGD(_csla_groups(c_model, 0.05), **kw)
    t_opt = create_repoptimizer(t_model, scales, "sgd", reinit=False, weight_decay=0.05, **kw)
    before = t_model.stage2[1].conv.weight.detach().clone()

    def check():
        for i in range(len(names)):
            a, b = t_model.stage2[i].conv.weight, c_model.stage2[i].equivalent_kernel()
            assert _rel(a, b) < 1e-9, (names[i], _rel(a, b))
            assert _rel(t_model.stage2[i].bn.weight, c_model.stage2[i].bn.weight) < 1e-9

    _train(c_model, t_model, c_opt, t_opt, 6, (4, 3, 8, 8), check)
    assert _rel(t_model.stage2[1].conv.weight.detach(), before) > 1e-3  # it did train


def test_adamw_vgg_blocks_on_same_sign_scales():
    names = ["0", "1", "4"]
    c_model, t_model, scales = _vgg_pair(names, positive_only=True)
    # eps enters the two sides differently (eps/|s| per branch vs eps/|M|): take it negligible
    kw = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-16)
    c_opt = torch.optim.AdamW(_csla_groups(c_model, 0.1), **kw)
    t_opt = create_repoptimizer(t_model, scales, "adamw", reinit=False, weight_decay=0.1, **kw)

    def check():
        for i in range(len(names)):
            a, b = t_model.stage2[i].conv.weight, c_model.stage2[i].equivalent_kernel()
            assert _rel(a, b) < 1e-9, (names[i], _rel(a, b))

    _train(c_model, t_model, c_opt, t_opt, 6, (4, 3, 8, 8), check)


def test_adamw_differs_where_signs_are_mixed():
    """What does not hold: with a negative s_conv, AdamW-GR moves the kernel differently."""
    names = ["0", "3", "4"]
    c_model, t_model, scales = _vgg_pair(names, positive_only=False)
    kw = dict(lr=0.01, eps=1e-16)
    c_opt = torch.optim.AdamW(_csla_groups(c_model, 0.0), **kw)
    with pytest.warns(UserWarning, match="mixed sign"):
        t_opt = create_repoptimizer(t_model, scales, "adamw", reinit=False, weight_decay=0.0, **kw)
    _train(c_model, t_model, c_opt, t_opt, 3, (4, 3, 8, 8), lambda: None)
    assert _rel(t_model.stage2[2].conv.weight, c_model.stage2[2].equivalent_kernel()) > 1e-4


# ------------------------------------------------------------------------------- Ghost
class GhostModule(nn.Module):
    """primary 1x1 conv → x1; x2 = cheap(x1) [+ s_fusion·x1 in CSLA]; final_bn; relu."""

    def __init__(self, cin, c, s_cheap=None, s_fusion=None):
        super().__init__()
        self.primary_conv = nn.Sequential(nn.Conv2d(cin, c, 1, bias=False))
        dw = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.csla = s_cheap is not None
        self.cheap_operation = nn.Sequential(dw)
        if self.csla:
            self.register_buffer("s_cheap", s_cheap.clone())
            self.fusion_scale = nn.Parameter(s_fusion.clone())
        self.final_bn = nn.BatchNorm2d(c)

    def forward(self, x):
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        if self.csla:
            x2 = x2 * self.s_cheap.view(1, -1, 1, 1) + x1 * self.fusion_scale.view(1, -1, 1, 1)
        return F.relu(self.final_bn(x2))

    def equivalent_kernel(self):
        k = self.cheap_operation[0].weight * self.s_cheap[:, None, None, None]
        ident = torch.zeros_like(k)
        ident[:, 0, 1, 1] = 1
        return k + ident * self.fusion_scale[:, None, None, None]


def _ghost_pair(modules):
    scales = torch.load(GHOST, weights_only=True)
    c_model, t_model, sliced, cin = nn.Module(), nn.Module(), {}, 3
    c_model.blocks, t_model.blocks = nn.ModuleDict(), nn.ModuleDict()
    for m in modules:
        s, i, ghost = m.split(".")
        s_cheap = scales[f"blocks.{m}.cheap_operation.1.weight"].double()
        s_fusion = scales[f"blocks.{m}.fusion_scale.weight"].double()
        c = s_cheap.numel()
        for model, kw in ((c_model, dict(s_cheap=s_cheap, s_fusion=s_fusion)), (t_model, {})):
            if s not in model.blocks:
                model.blocks[s] = nn.ModuleDict()
            if i not in model.blocks[s]:
                model.blocks[s][i] = nn.ModuleDict()
            model.blocks[s][i][ghost] = GhostModule(cin, c, **kw)
        sliced[f"blocks.{m}.cheap_operation.1.weight"] = s_cheap
        sliced[f"blocks.{m}.fusion_scale.weight"] = s_fusion
        cin = c
    c_model.double()
    t_model.double()
    t_model.load_state_dict({k: v for k, v in c_model.state_dict().items()
                             if k in t_model.state_dict()})
    with torch.no_grad():
        for m in modules:
            s, i, ghost = m.split(".")
            t_model.blocks[s][i][ghost].cheap_operation[0].weight.copy_(c_model.blocks[s][i][ghost].equivalent_kernel())

    def run(model, x):
        for m in modules:
            s, i, ghost = m.split(".")
            x = model.blocks[s][i][ghost](x)
        return x

    return c_model, t_model, sliced, run


def _ghost_case(modules, optimizer, kw, wd, steps=5):
    c_model, t_model, scales, run = _ghost_pair(modules)
    # fusion_scale decays on the CSLA side: the target's identity part decays with its kernel
    decay = [p for n, p in c_model.named_parameters() if n.endswith(("conv.0.weight", "operation.0.weight", "fusion_scale"))]
    no_decay = [p for n, p in c_model.named_parameters() if "final_bn" in n]
    assert len(decay) + len(no_decay) == len(list(c_model.parameters()))
    torch_cls = torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW
    c_opt = torch_cls([dict(params=decay, weight_decay=wd), dict(params=no_decay, weight_decay=0.0)], **kw)
    t_opt = create_repoptimizer(t_model, scales, optimizer, reinit=False, weight_decay=wd, **kw)
    assert len(t_opt.handler) == len(modules)
    g = torch.Generator().manual_seed(1)
    c_last = scales[f"blocks.{modules[-1]}.cheap_operation.1.weight"].numel()
    for _ in range(steps):
        x = torch.randn(6, 3, 7, 7, generator=g, dtype=torch.float64)
        y = torch.randn(6, c_last, 7, 7, generator=g, dtype=torch.float64)
        for model, opt in ((c_model, c_opt), (t_model, t_opt)):
            opt.zero_grad()
            (run(model, x) - y).pow(2).mean().backward()
            opt.step()
        for m in modules:
            s, i, ghost = m.split(".")
            a = t_model.blocks[s][i][ghost].cheap_operation[0].weight
            b = c_model.blocks[s][i][ghost].equivalent_kernel()
            assert _rel(a, b) < 1e-9, (m, _rel(a, b))


def test_sgd_ghost_modules():
    # blocks.3.0 has negative cheap / fusion scales
    _ghost_case(["0.0.ghost1", "0.0.ghost2", "3.0.ghost1", "3.0.ghost2"], "sgd",
                dict(lr=0.05, momentum=0.9, nesterov=True), wd=0.05)


def test_adamw_ghost_modules_with_positive_scales():
    scales = torch.load(GHOST, weights_only=True)
    modules = ["0.0.ghost1", "0.0.ghost2", "1.0.ghost1"]
    assert all((scales[f"blocks.{m}.cheap_operation.1.weight"] > 0).all() for m in modules)
    _ghost_case(modules, "adamw", dict(lr=0.01, eps=1e-16), wd=0.1)


# ------------------------------------------------- the same with repzoo's own csla / target blocks
def test_sgd_with_repzoos_csla_and_target_blocks():
    """repzoo's LinearAddBlock(csla) / RepGhostModule('csla') vs RepOptVGGBlock / RepGhostModule('target')."""
    from repzoo.layers.ghost import RepGhostModule
    from repzoo.layers.repopt import LinearAddBlock, RepOptVGGBlock
    from repzoo.weights.scales import load_scales_into

    b1, ghost = torch.load(B1, weights_only=True), torch.load(GHOST, weights_only=True)
    names, scales = ["0", "4", "5"], {}
    for n in names:  # the first N channels of stage2.0 (no identity), 2.4 and 2.5 (identity, negatives)
        for kind in ("conv", "1x1", "identity"):
            key = f"stage2.{n}.scale_{kind}.weight"
            if key in b1:
                scales[key] = b1[key][:N].double()
    for m in ("ghost1", "ghost2"):
        for leaf in ("cheap_operation.1.weight", "fusion_scale.weight"):
            scales[f"blocks.0.0.{m}.{leaf}"] = ghost[f"blocks.0.0.{m}.{leaf}"].double()

    def build(csla):
        model = nn.Module()
        model.stage2 = nn.Sequential(OrderedDict(
            (n, LinearAddBlock(3 if i == 0 else N, N, 1, csla=True) if csla else RepOptVGGBlock(3 if i == 0 else N, N, 1))
            for i, n in enumerate(names)))
        model.blocks = nn.ModuleDict({"0": nn.ModuleDict({"0": nn.ModuleDict({
            "ghost1": RepGhostModule(N, 4, relu=True, mode="csla" if csla else "target"),
            "ghost2": RepGhostModule(4, 8, relu=False, mode="csla" if csla else "target")})})})
        return model.double()

    def forward(model, x):
        g = model.blocks["0"]["0"]
        return g["ghost2"](g["ghost1"](model.stage2(x)))

    def kernels(model, csla):
        out = []
        for blk in model.stage2:
            if not csla:
                out.append(blk.conv.weight)
                continue
            k = blk.conv.weight * blk.scale_conv.weight[:, None, None, None]
            k = k + F.pad(blk.conv_1x1.weight * blk.scale_1x1.weight[:, None, None, None], [1, 1, 1, 1])
            if hasattr(blk, "scale_identity"):
                k = k + torch.eye(N, dtype=k.dtype)[:, :, None, None] * F.pad(
                    blk.scale_identity.weight[:, None, None, None], [1, 1, 1, 1])
            out.append(k)
        for m in ("ghost1", "ghost2"):
            mod = model.blocks["0"]["0"][m]
            if not csla:
                out.append(mod.cheap_operation[0].weight)
                continue
            k = mod.cheap_operation[0].weight * mod.cheap_operation[1].weight[:, None, None, None]
            ident = torch.zeros_like(k)
            ident[:, 0, 1, 1] = mod.fusion_scale.weight
            out.append(k + ident)
        return out

    csla, target = build(True), build(False)
    load_scales_into(csla, scales)
    target.load_state_dict({k: v for k, v in csla.state_dict().items() if k in target.state_dict()}, strict=False)
    with torch.no_grad():
        for t, c in zip(kernels(target, False), kernels(csla, True)):
            t.copy_(c)
    wd = 0.02
    trainable = [(n, p) for n, p in csla.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.dim() == 4 or n.endswith(("scale_identity.weight", "fusion_scale.weight"))]
    no_decay = [p for n, p in trainable if not (p.dim() == 4 or n.endswith(("identity.weight", "fusion_scale.weight")))]
    kw = dict(lr=0.05, momentum=0.9, nesterov=True)
    c_opt = torch.optim.SGD([dict(params=decay, weight_decay=wd), dict(params=no_decay, weight_decay=0.0)], **kw)
    # one model with both families: one handler per family (create_repoptimizer takes one family)
    ghost_scales = {k: v for k, v in scales.items() if k.startswith("blocks.")}
    vgg_scales = {k: v for k, v in scales.items() if k.startswith("stage2.")}
    mults = {**get_handler(target, ghost_scales).grad_mults(), **get_handler(target, vgg_scales).grad_mults()}
    t_opt = RepOptimizerSGD(
        [dict(params=[p for p in target.parameters() if p.dim() == 4], weight_decay=wd),
         dict(params=[p for p in target.parameters() if p.dim() != 4], weight_decay=0.0)], grad_mults=mults, **kw)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
        y = torch.randn(4, 8, 8, 8, generator=g, dtype=torch.float64)
        for model, opt in ((csla, c_opt), (target, t_opt)):
            opt.zero_grad()
            (forward(model, x) - y).pow(2).mean().backward()
            opt.step()
        for a, b in zip(kernels(target, False), kernels(csla, True)):
            assert _rel(a, b) < 1e-9, _rel(a, b)
