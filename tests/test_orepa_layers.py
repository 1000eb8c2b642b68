"""OREPA's and DBB's layers against the authors' code (JUGGHM/OREPA_CVPR2022 @ 3ed037b ``blocks.py``,
``basic.py``, ``dbb_transforms.py``), branch by branch.

Every expected value here is computed the way the reference describes the layer — as the
multi-branch network it stands for, one convolution per branch — never with repzoo's kernel
functions. The layers must equal it in float64 for k = 1, 3, 5, 7, grouped and not, stride 1
and 2; their conversions must equal the layers.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import repzoo
from repzoo.layers import (OREPA, OREPA1x1, BNAndPad, ConvBnBlock, DiverseBranchBlock, OREPALargeConv,
                           OREPARepVGGBlock, orepa_layer)
from repzoo.reparam import average_kernel, orepa_prior

from conftest import randomize_bn, rel_diff

pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and every buffer the math uses random (``vector``, the zero-initialised
    ``idconv1``, the constant buffers), BN statistics non-trivial."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1)
    for name, b in module.named_buffers():
        if name.endswith(("weight_orepa_avg_avg", "weight_orepa_prior", "id_tensor", "weight_rbr_avg_avg",
                          "weight_rbr_prior")):
            b.copy_(torch.rand(b.shape, generator=g, dtype=torch.float64) * 2 - 1)
    return randomize_bn(module, g)


def bn_eval(bn: nn.BatchNorm2d, y: torch.Tensor) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return ((y - bn.running_mean.reshape(shape)) / torch.sqrt(bn.running_var.reshape(shape) + bn.eps)
            * bn.weight.reshape(shape) + bn.bias.reshape(shape))


def per_channel(v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y * v.reshape(1, -1, 1, 1)


def depthwise(y: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Each channel of ``y`` correlated (valid) with its k×k pattern (one shared (k, k) or (C, k, k))."""
    c, k = y.shape[1], pattern.shape[-1]
    return F.conv2d(y, pattern.expand(c, k, k).reshape(c, 1, k, k), groups=c)


def crop(y: torch.Tensor, p: int) -> torch.Tensor:
    return y[..., p:y.shape[-2] - p, p:y.shape[-1] - p]


def orepa_branches(t, xp, k, groups, prefix="weight_orepa_", one_by_one=True, rows=(0, 1, 2, 3, 4, 5)):
    """The six branches of ``blocks.py``'s ``OREPA`` on an already padded input, each a valid convolution, summed
    (no BN): origin, 1x1 → avg pool, 1x1 → prior, 1x1 → k×k, 1x1, dw (8 per channel) → pw."""
    v = t["vector"]
    r_origin, r_avg, r_prior, r_kxk, r_1x1, r_gconv = rows
    g, c_in = groups, xp.shape[1]
    y = per_channel(v[r_origin], F.conv2d(xp, t[prefix + "origin"], groups=g))
    y = y + per_channel(v[r_avg], depthwise(F.conv2d(xp, t[prefix + "avg_conv"], groups=g), t[prefix + "avg_avg"]))
    y = y + per_channel(v[r_prior], depthwise(F.conv2d(xp, t[prefix + "pfir_conv"], groups=g), t[prefix + "prior"]))
    idconv = prefix + "1x1_kxk_idconv1"
    first = t[idconv] + t["id_tensor"] if idconv in t else t[prefix + "1x1_kxk_conv1"]
    y = y + per_channel(v[r_kxk], F.conv2d(F.conv2d(xp, first, groups=g), t[prefix + "1x1_kxk_conv2"], groups=g))
    if one_by_one:
        y = y + per_channel(v[r_1x1], crop(F.conv2d(xp, t[prefix + "1x1"], groups=g), k // 2))
    pw = t[prefix + "gconv_pw"]
    per_out = pw.shape[0] // g
    # output channel c·(out/g) + a reads pw row a·g + c (``OREPA``'s interleaved order in blocks.py)
    rows_ = [a * g + c for c in range(g) for a in range(per_out)]
    dw_out = F.conv2d(xp, t[prefix + "gconv_dw"], groups=c_in)
    return y + per_channel(v[r_gconv], F.conv2d(dw_out, pw[rows_], groups=g))


def explicit_orepa(layer: OREPA, x: torch.Tensor) -> torch.Tensor:
    t = dict(layer.state_dict())
    k, s = layer.kernel_size, layer.stride
    y = orepa_branches(t, F.pad(x, [k // 2] * 4), k, layer.groups)[..., ::s, ::s]
    return bn_eval(layer.bn, y)


def explicit_orepa_1x1(layer: OREPA1x1, x: torch.Tensor) -> torch.Tensor:
    t, s = layer.state_dict(), layer.stride
    v = t["vector"]
    y = per_channel(v[0], F.conv2d(x, t["weight_or1x1_origin"], stride=s))
    y = y + per_channel(v[1], F.conv2d(F.conv2d(x, t["weight_or1x1_l2i_conv1"], stride=s), t["weight_or1x1_l2i_conv2"]))
    return bn_eval(layer.bn, y)


def explicit_large(layer: OREPALargeConv, x: torch.Tensor) -> torch.Tensor:
    """``OREPA_LargeConv`` (blocks.py): the stack of valid convolutions with W0, rot180(W1), …, each W_l the OREPA branches of
    ``weight{l}``; a correlation with rot180(W) is flip ∘ (correlation with W) ∘ flip."""
    sd, g, k, s = layer.state_dict(), layer.groups, layer.kernel_size, layer.stride
    z = F.pad(x, [k // 2] * 4)
    for i in range(layer.num_kernels):
        t = {key[len(f"weight{i}."):]: v for key, v in sd.items() if key.startswith(f"weight{i}.")}
        if i == 0:
            z = orepa_branches(t, z, 3, g)
        else:
            z = orepa_branches(t, z.flip(-1, -2), 3, g).flip(-1, -2)
    return bn_eval(layer.bn, z[..., ::s, ::s])


def explicit_vgg_dense(block: OREPARepVGGBlock, x: torch.Tensor) -> torch.Tensor:
    dense = block.rbr_dense
    t, s = dense.state_dict(), dense.stride
    y = orepa_branches(t, F.pad(x, [1] * 4), 3, 1, prefix="weight_rbr_", one_by_one=False, rows=(0, 1, 2, 3, None, 4))
    return bn_eval(dense.bn, y[..., ::s, ::s])


INPUTS = [(2, 11, 13), (1, 8, 8)]  # (batch, H, W): one not square


def _inputs(c):
    torch.manual_seed(1)
    return [torch.randn(n, c, h, w, dtype=torch.float64) for n, h, w in INPUTS]


# ----------------------------------------------------------------------------- online kernels = their branches

@pytest.mark.parametrize("k, c_in, c_out, groups, stride", [
    (3, 8, 16, 1, 1), (3, 16, 16, 1, 2), (3, 16, 32, 4, 1), (3, 16, 16, 8, 2),  # G > 4: T = 2·in, interleaved pw
    (1, 8, 12, 1, 2), (1, 8, 16, 8, 1), (5, 6, 8, 2, 2), (7, 4, 8, 1, 1),
])
def test_orepa_kernel_equals_its_six_branches(k, c_in, c_out, groups, stride, float64):
    layer = randomize(OREPA(c_in, c_out, k, stride, groups=groups)).eval()
    for x in _inputs(c_in):
        y = layer(x)
        assert y.shape[-1] == (x.shape[-1] - 1) // stride + 1
        assert rel_diff(y, explicit_orepa(layer, x)) < 1e-12


@pytest.mark.parametrize("c_in, c_out, stride", [(8, 16, 1), (16, 8, 2), (8, 8, 1)])
def test_orepa_1x1_equals_its_two_branches(c_in, c_out, stride, float64):
    layer = randomize(OREPA1x1(c_in, c_out, stride=stride)).eval()
    for x in _inputs(c_in):
        assert rel_diff(layer(x), explicit_orepa_1x1(layer, x)) < 1e-12


@pytest.mark.parametrize("k, c_in, c_out, groups, stride", [(7, 3, 8, 1, 2), (7, 4, 8, 2, 1), (5, 4, 6, 1, 2)])
def test_large_kernel_equals_its_stack_of_3x3_orepa_kernels(k, c_in, c_out, groups, stride, float64):
    layer = randomize(OREPALargeConv(c_in, c_out, k, stride, groups=groups)).eval()
    assert [n for n, _ in layer.named_children()] == [f"weight{i}" for i in range((k - 1) // 2)] + ["bn"]
    for x in _inputs(c_in):
        assert rel_diff(layer(x), explicit_large(layer, x)) < 1e-12


@pytest.mark.parametrize("c_in, c_out, stride", [(8, 8, 1), (8, 16, 2)])
def test_orepa_repvgg_dense_branch_equals_its_five_branches(c_in, c_out, stride, float64):
    block = randomize(OREPARepVGGBlock(c_in, c_out, stride)).eval()
    assert block.rbr_dense.vector.shape == (6 if block.has_identity else 5, c_out)
    for x in _inputs(c_in):
        assert rel_diff(block.rbr_dense(x), explicit_vgg_dense(block, x)) < 1e-12


def test_the_unused_vector_row_changes_nothing(float64):
    block = randomize(OREPARepVGGBlock(8, 8)).eval()
    x = _inputs(8)[0]
    y = block(x)
    with torch.no_grad():
        block.rbr_dense.vector[5].normal_()
    assert torch.equal(block(x), y)


# ----------------------------------------------------------------------------- the constants

def test_constant_buffers_are_the_reference_constants_in_the_layer_dtype():
    def prior_by_hand(out):  # OREPA's prior branch (blocks.py), written out
        p = torch.zeros(out, 3, 3, dtype=torch.float64)
        for o in range(out):
            for h in range(3):
                for w in range(3):
                    p[o, h, w] = (math.cos(math.pi * (h + 0.5) * (o + 1) / 3) if o < out / 2
                                  else math.cos(math.pi * (w + 0.5) * (o + 1 - out / 2) / 3))
        return p

    for out in (5, 8):
        assert torch.allclose(orepa_prior(out, 3, dtype=torch.float64), prior_by_hand(out), rtol=0, atol=1e-15)
    f32 = OREPA(4, 6, 3)
    assert f32.weight_orepa_avg_avg.dtype == torch.float32
    assert f32.weight_orepa_avg_avg.double()[0, 0].item() == 0.1111111119389534  # the released files' value
    assert torch.equal(f32.weight_orepa_prior, prior_by_hand(6).float())
    with torch.device("meta"):
        assert OREPA(4, 6, 3).id_tensor.is_meta
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        f64 = OREPA(16, 16, 3, groups=8)  # T = 2·in: id_tensor (32, 2, 1, 1)
    finally:
        torch.set_default_dtype(old)
    assert f64.weight_orepa_avg_avg[1, 2].item() == 1 / 9 and f64.weight_orepa_prior.dtype == torch.float64
    ident = f64.id_tensor
    assert ident.shape == (32, 2, 1, 1) and ident.sum() == 32
    assert all(ident[t, t % 2, 0, 0] == 1 for t in range(32))
    assert average_kernel(4, 2, 3, dtype=torch.float64)[3, 1, 0, 2].item() == 1 / 9


def test_a_meta_built_layer_materializes_with_the_reference_constants_and_init():
    from repzoo.factory import materialize

    def layers():
        return nn.Sequential(OREPA(8, 16, 3, groups=8), OREPA1x1(8, 16), OREPALargeConv(3, 8, 7),
                             OREPARepVGGBlock(8, 8))

    with torch.device("meta"):
        meta = layers()
    materialize(meta)
    fresh = layers()
    for (name, got), want in zip(meta.state_dict().items(), fresh.state_dict().values()):
        assert not got.is_meta, name
        if name.endswith(("avg_avg", "prior", "id_tensor", "vector", "idconv1", "l2i_conv1", "running_var")):
            assert torch.equal(got, want), name


@pytest.mark.parametrize("make", [lambda: OREPA(16, 32, 3, 2), lambda: OREPA(16, 16, 3, groups=8),
                                  lambda: OREPALargeConv(3, 8, 7, 2)])
def test_float32_kernels_match_the_float64_branches(make):
    """The float32 path (the 1x1 → k×k product runs as a 1x1 conv there) against the explicit branches."""
    layer = randomize(make()).eval()
    explicit = explicit_large if isinstance(layer, OREPALargeConv) else explicit_orepa
    x = torch.randn(2, layer.in_channels, 9, 11)
    with torch.no_grad():
        assert rel_diff(layer(x).double(), explicit(copy.deepcopy(layer).double(), x.double())) < 1e-5


def test_reference_initialization():
    layer = OREPA(8, 8, 3)
    assert layer.vector[:, 0].tolist() == [0.25, 0.25, 0.0, 0.5, 1.0, 0.5]
    assert not layer.weight_orepa_1x1_kxk_idconv1.any()
    wide, narrow = OREPA1x1(4, 8), OREPA1x1(8, 4)
    assert torch.equal(wide.weight_or1x1_l2i_conv1[:, :, 0, 0], torch.eye(4))      # out > in: conv1 is the eye
    assert torch.equal(narrow.weight_or1x1_l2i_conv2[:, :, 0, 0], torch.eye(4))    # else conv2
    assert wide.vector[:, 0].tolist() == [1.0, 0.5]
    vgg = OREPARepVGGBlock(8, 8).rbr_dense
    assert vgg.vector[:5, 0].tolist() == [0.25, 0.25, 0.0, 0.5, 0.5]


# ----------------------------------------------------------------------------- OREPA's point: one conv per layer

class _CountConvs(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self, batch):
        super().__init__()
        self.batch, self.on_activations = batch, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default and args[0].shape[0] == self.batch:
            self.on_activations += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("make", [lambda: OREPA(8, 8, 3), lambda: OREPA1x1(8, 16), lambda: OREPALargeConv(8, 8, 7)])
def test_an_orepa_layer_trains_with_one_convolution(make):
    layer = make().train()
    x = torch.randn(5, 8, 12, 12, requires_grad=True)
    with _CountConvs(batch=5) as mode:
        layer(x).sum().backward()
    # forward: one; backward: its input and weight gradients (one convolution_backward, not counted here)
    assert mode.on_activations == 1


def _saved_bytes(layer, x):
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum()
    return sum(seen.values())


def test_orepa_saves_about_what_a_conv_bn_saves_and_far_less_than_dbb():
    torch.manual_seed(0)
    x = torch.randn(8, 32, 32, 32)
    plain, dbb, orepa = (_saved_bytes(m.train(), x) for m in (ConvBnBlock(32, 32, 3, act=True),
                                                             DiverseBranchBlock(32, 32, 3, act=True),
                                                             OREPA(32, 32, 3, act=True)))
    assert orepa <= 1.3 * plain and orepa <= 0.6 * dbb, (plain, dbb, orepa)


# ----------------------------------------------------------------------------- conversion of every layer

LAYERS = {
    "OREPA 3x3": lambda: OREPA(8, 16, 3, 2),
    "OREPA grouped": lambda: OREPA(16, 16, 3, groups=8),
    "OREPA 1x1": lambda: OREPA1x1(8, 16, stride=2),
    "OREPA 7x7 stem": lambda: OREPALargeConv(3, 8, 7, 2, act=True),
    "OREPA RepVGG block": lambda: OREPARepVGGBlock(8, 8),
    "DBB": lambda: DiverseBranchBlock(8, 16, 3, 2),
    "DBB grouped": lambda: DiverseBranchBlock(16, 32, 3, groups=4, act=True),
    "DBB depthwise": lambda: DiverseBranchBlock(8, 8, 3, groups=8),
    "DBB 5x5, wide 1x1-kxk": lambda: DiverseBranchBlock(8, 8, 5, internal_channels=12),
    "ConvBnBlock": lambda: ConvBnBlock(8, 16, 3, 2, act=True),
}


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", LAYERS)
def test_layer_conversion_is_exact_and_idempotent(name, float64):
    layer = randomize(LAYERS[name]()).eval()
    train_sd = dict(layer.state_dict())
    deploy = copy.deepcopy(layer)
    repzoo.reparameterize(deploy)
    assert deploy.deploy and len(deploy.state_dict()) == 2
    assert repzoo.convert_state_dict(deploy, train_sd).keys() == deploy.state_dict().keys()
    first = {k: v.clone() for k, v in deploy.state_dict().items()}
    repzoo.reparameterize(deploy)  # the authors' second switch_to_deploy() on an OREPA block raises; repzoo does nothing
    assert all(torch.equal(first[k], v) for k, v in deploy.state_dict().items())
    converted = repzoo.convert_state_dict(deploy, train_sd)  # a train state dict into the deploy layer
    assert all(torch.allclose(converted[k], v, rtol=0, atol=0) for k, v in deploy.state_dict().items())
    scripted = torch.jit.script(deploy)
    with torch.no_grad():
        for x in _inputs(layer.in_channels):
            y = layer(x)
            assert y.abs().max() > 0
            assert rel_diff(deploy(x), y) < 1e-12
            assert rel_diff(scripted(x), y) < 1e-12


def test_dbb_deploy_is_float64_exact_where_a_float32_average_is_not(float64, monkeypatch):
    """dbb_transforms.py builds the 1/k² averaging kernel in float32, which leaves a float64 DBB ~1e-8
    off; repzoo builds it in the weights' dtype. The same conversion with a float32 constant misses."""
    import repzoo.layers.dbb as dbb

    layer = randomize(DiverseBranchBlock(8, 8, 3)).eval()
    with torch.no_grad():
        layer.dbb_avg.avgbn.weight.fill_(50.0)  # make the averaging branch count
    x = _inputs(8)[0]
    with torch.no_grad():
        y = layer(x)
        assert rel_diff(repzoo.reparameterize(copy.deepcopy(layer))(x), y) < 1e-12
        exact = dbb.average_pattern
        monkeypatch.setattr(dbb, "average_pattern", lambda k, dtype=None, device=None:
                            exact(k, dtype=torch.float32, device=device).to(dtype))
        assert rel_diff(repzoo.reparameterize(copy.deepcopy(layer))(x), y) > 1e-10


def test_bn_and_pad_is_bn_of_the_zero_padded_input(float64):
    layer = randomize_bn(BNAndPad(2, 4)).eval()
    x = torch.randn(2, 4, 5, 6)
    assert rel_diff(layer(x), layer.bn(F.pad(x, [2] * 4))) < 1e-14


def test_layers_take_conv2d_arguments_and_refuse_what_they_cannot_do():
    for cls in (OREPA, DiverseBranchBlock, ConvBnBlock):
        layer = cls(in_channels=4, out_channels=8, kernel_size=3, stride=2, padding=1, groups=2)
        assert layer(torch.randn(1, 4, 9, 9)).shape == (1, 8, 5, 5)
    assert orepa_layer(4, 8, 1).__class__ is OREPA1x1 and orepa_layer(4, 8, 3).__class__ is OREPA
    assert orepa_layer(4, 8, 7).__class__ is OREPALargeConv
    with pytest.raises(ValueError, match="kernel_size // 2"):
        OREPA(4, 8, 3, padding=0)
    with pytest.raises(ValueError, match="groups"):
        OREPA1x1(4, 8, groups=2)
    with pytest.raises(ValueError, match="> 3"):
        OREPALargeConv(4, 8, 3)
    with pytest.raises(ValueError, match="divisible"):
        OREPA(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="dilation"):
        DiverseBranchBlock(4, 8, 3, dilation=2)


def test_a_users_model_of_these_layers_converts(float64):
    net = randomize(nn.Sequential(OREPALargeConv(3, 8, 7, 2, act=True), OREPA(8, 8, 3, act=True),
                                  DiverseBranchBlock(8, 16, 3, 2, act=True), OREPA1x1(16, 8))).eval()
    x = torch.randn(1, 3, 20, 18)
    with torch.no_grad():
        y = net(x)
        repzoo.reparameterize(net)
        assert repzoo.reparam.is_deploy(net)
        assert [k.split(".")[1] for k in net.state_dict()][::2] == ["or_large_reparam", "orepa_reparam",
                                                                     "dbb_reparam", "or1x1_reparam"]
        assert rel_diff(net(x), y) < 1e-12
