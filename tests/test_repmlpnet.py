"""RepMLPNet against the authors' code, DingXiaoH/RepMLP at commit 3eff13fa0257af28663880d870f327d665f0a8e2
(repmlpnet.py: the models and the conversion; test.py; convert.py).

Expected values come from outside the code under test: the signature files (keys, order, shapes), the
parameter counts measured on that code (below), a functional forward pass and locality injection written
here from repmlpnet.py (its reshapes, ``F.conv2d`` for the grouped FC, the ``kron`` form of the conv → FC
matrix), partitions cut out by hand, the released file formats and mmpretrain's key names (mmpretrain's
RepMLPNet conversion). Functions below name the part of repmlpnet.py they follow."""
import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import repzoo
from repzoo.errors import IncompatibleCheckpointError, InvalidArgumentError, RepZooError
from repzoo.layers import RepMLPBlock
from repzoo.models.repmlpnet import RepMLPNet
from repzoo.weights.adapters import adapt_state_dict, detect_key_style, key_styles

from conftest import REPO_ROOT, meta_model, n_params, randomize_bn, rel_diff, signature

#: trainable parameters (train form, deploy form), and test.py's state-dict numel (BN buffers included), as the
#: authors' repmlpnet.py builds them at 3eff13f
PARAMS = {
    "RepMLPNet-T224": ((38_293_608, 38_331_720), (38_340_029, 38_375_933)),
    "RepMLPNet-B224": ((68_242_712, 68_332_664), (68_345_239, 68_431_237)),
    "RepMLPNet-T256": ((58_687_848, 58_739_400), (58_734_269, 58_783_613)),
    "RepMLPNet-B256": ((96_447_512, 96_568_184), (96_550_039, 96_666_757)),
    "RepMLPNet-D256": ((86_887_648, 86_985_280), (87_000_105, 87_094_341)),
    "RepMLPNet-L256": ((117_641_560, 117_820_600), (117_779_073, 117_951_453)),
}
NAMES = list(PARAMS)
#: repmlpnet.py's builders: stage depths, partition sizes (h = w) and FC kernel sets
CONFIGS = {
    "RepMLPNet-T224": ((2, 2, 6, 2), (56, 28, 14, 7), (1, 4, 16, 128)),
    "RepMLPNet-B224": ((2, 2, 12, 2), (56, 28, 14, 7), (1, 4, 32, 128)),
    "RepMLPNet-T256": ((2, 2, 6, 2), (64, 32, 16, 8), (1, 4, 16, 128)),
    "RepMLPNet-B256": ((2, 2, 12, 2), (64, 32, 16, 8), (1, 4, 32, 128)),
    "RepMLPNet-D256": ((2, 2, 18, 2), (64, 32, 16, 8), (1, 4, 16, 128)),
    "RepMLPNet-L256": ((2, 2, 18, 2), (64, 32, 16, 8), (1, 4, 32, 256)),
}
NATIVE = {name: 4 * tiles[0] for name, (_, tiles, _) in CONFIGS.items()}
LARGE = pytest.mark.heavy  # the 256 variants and B224: large float64 forwards


def shapes(module):
    return [(k, list(v.shape)) for k, v in module.state_dict().items()]


# ----------------------------------------------------------------------------- an independent forward (RepMLPNet.forward)


def _bn(sd, key, x, prefix):
    g = lambda name: sd[key(prefix + name)]  # noqa: E731
    return F.batch_norm(x, g("running_mean"), g("running_var"), g("weight"), g("bias"), False, 0.0, 1e-5)


def _tile_mlp(sd, key, p, u, sets, deploy):
    """RepMLPBlock.forward (partition, fc3, reassembly) on one h×w partition, with the reference's reshapes and a grouped 1x1 conv for fc3."""
    n, c, h, w = u.shape
    v = u.reshape(-1, c, 1, h, 1, w).permute(0, 2, 4, 1, 3, 5).reshape(-1, sets * h * w, 1, 1)
    bias = sd[key(p + "fc3.bias")] if deploy else None
    z = F.conv2d(v, sd[key(p + "fc3.weight")], bias, groups=sets).reshape(-1, sets, h, w)
    if not deploy:
        z = _bn(sd, key, z, p + "fc3_bn.")
        for k in (1, 3):
            conv = F.conv2d(v.reshape(-1, sets, h, w), sd[key(p + f"repconv{k}.conv.weight")], padding=k // 2,
                            groups=sets)
            z = z + _bn(sd, key, conv, p + f"repconv{k}.bn.")
    return z.reshape(-1, 1, 1, sets, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def reference_block(sd, u, h, w, sets, deploy=False, p="", key=lambda k: k):
    """A RepMLPBlock: the gate of the whole input times the tile MLP applied to each partition by hand."""
    g = lambda name: sd[key(p + name)]  # noqa: E731
    pooled = u.mean(dim=(2, 3), keepdim=True)
    gate = torch.sigmoid(F.conv2d(F.relu(F.conv2d(pooled, g("gp.fc1.weight"), g("gp.fc1.bias"))),
                                  g("gp.fc2.weight"), g("gp.fc2.bias")))
    out = torch.empty_like(u)
    for a in range(u.shape[2] // h):
        for b in range(u.shape[3] // w):
            tile = (..., slice(a * h, (a + 1) * h), slice(b * w, (b + 1) * w))
            out[tile] = _tile_mlp(sd, key, p, u[tile], sets, deploy)
    return out * gate


def reference_forward(sd, name, x, deploy=False, key=lambda k: k):
    """RepMLPNet.forward: the logits from a state dict (``key`` maps the official names to the file's)."""
    depths, tiles, sets = CONFIGS[name]

    def conv_bn_relu(x, p, stride):
        return F.relu(_bn(sd, key, F.conv2d(x, sd[key(p + "conv.weight")], stride=stride), p + "bn."))

    x = conv_bn_relu(x, "conv_embedding.", 4)
    for s in range(4):
        for i in range(depths[s]):
            p = f"stages.{s}.{i}."
            y = x + reference_block(sd, _bn(sd, key, x, p + "prebn1."), tiles[s], tiles[s], sets[s], deploy,
                                    p + "repmlp_block.", key)
            f = p + "ffn_block.ffn_fc"
            hidden = F.gelu(_bn(sd, key, F.conv2d(_bn(sd, key, y, p + "prebn2."), sd[key(f + "1.conv.weight")]),
                                f + "1.bn."))
            x = y + _bn(sd, key, F.conv2d(hidden, sd[key(f + "2.conv.weight")]), f + "2.bn.")
        if s < 3:
            x = conv_bn_relu(x, f"embeds.{s}.", 2)
    x = _bn(sd, key, x, "head_norm.").mean(dim=(2, 3))
    return F.linear(x, sd[key("head.weight")], sd[key("head.bias")])


def kron_conv_to_fc(kernel, h, w):
    """RepMLPBlock._convert_conv_to_fc, in a closed form derived here: ``W_conv[s] = Σ_{du,dv} K[s,0,du,dv] · kron(D_h(du−P), D_w(dv−P))``."""
    sets, k = kernel.shape[0], kernel.shape[-1]
    pad = k // 2

    def shift(n, d):  # ones at (i, i + d)
        return torch.diag(torch.ones(n - abs(d), dtype=kernel.dtype), d) if abs(d) < n else torch.zeros(n, n)

    out = torch.zeros(sets, h * w, h * w, dtype=kernel.dtype)
    for du in range(k):
        for dv in range(k):
            out += kernel[:, 0, du, dv].reshape(-1, 1, 1) * torch.kron(shift(h, du - pad), shift(w, dv - pad))
    return out.reshape(sets * h * w, h * w, 1, 1)


def random_model(name, seed=0, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return randomize_bn(repzoo.create_model(name, **kwargs), gen).eval()


def random_block(c=8, h=4, w=3, sets=2, seed=0):
    torch.manual_seed(seed)
    block = RepMLPBlock(c, c, h, w, (1, 3), 4, sets)
    randomize_bn(block, torch.Generator().manual_seed(seed))
    with torch.no_grad():  # conv branches as strong as the FC, so a misplaced tap shows
        for k in (1, 3):
            getattr(block, f"repconv{k}").conv.weight.normal_(0, 1)
    return block.eval()


def small_net(**kwargs):
    """A RepMLPNet of the released structure at toy widths (native input 32): for backward passes and dtypes."""
    return RepMLPNet(channels=(8, 16, 32, 64), num_blocks=(1, 2, 1, 1), hs=(8, 4, 2, 1), sharesets_nums=(1, 2, 4, 8),
                     **kwargs)


# ----------------------------------------------------------------------------- keys and sizes


def test_every_variant_is_registered():
    assert sorted(repzoo.list_models("RepMLPNet*")) == sorted(NAMES)
    assert all(repzoo.get_model_entry(n.lower().replace("-", "_")).name == n for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_signatures_and_parameter_counts(name):
    """Keys, order and shapes (the signature files) of both forms; the deploy form has more parameters (an FC bias per block)."""
    sig = signature(name)
    train, deploy = meta_model(name), meta_model(name, deploy=True)
    with torch.device("meta"):
        converted = repzoo.reparameterize(meta_model(name))
    assert shapes(train) == list(sig["signature_train"].items())
    assert shapes(deploy) == list(sig["signature_deploy"].items())
    assert shapes(converted) == shapes(deploy)
    (p_train, p_deploy), (sd_train, sd_deploy) = PARAMS[name]
    assert (n_params(train), n_params(deploy), n_params(converted)) == (p_train, p_deploy, p_deploy)
    numel = lambda m: sum(v.numel() for v in m.state_dict().values())  # noqa: E731
    assert (numel(train), numel(deploy)) == (sd_train, sd_deploy)
    units = sum(CONFIGS[name][0])
    assert (len(sig["signature_train"]), len(sig["signature_deploy"])) == (44 * units + 31, 28 * units + 31)


def test_model_info_and_evaluation_configs():
    info = repzoo.model_info("repmlpnet_d256")
    assert info["family"] == "RepMLPNet" and info["paper"] == "https://arxiv.org/abs/2112.11081"
    assert (info["params_train"], info["params_deploy"]) == PARAMS["RepMLPNet-D256"][0]
    assert info["config"]["num_blocks"] == (2, 2, 18, 2) and info["hub_entry"] == "repmlpnet_d256"
    for name in NAMES:  # test.py: Resize(r) + CenterCrop(r), bilinear, at each variant's own resolution
        cfg = meta_model(name).pretrained_cfg
        r = NATIVE[name]
        assert cfg["input_size"] == (3, r, r) and cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bilinear"
        assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
        assert cfg["num_classes"] == 1000


def test_num_classes_is_the_interface():
    model = meta_model("RepMLPNet-T224", num_classes=7)
    assert model.num_classes == 7 and model.head.out_features == 7
    with pytest.raises(TypeError):
        meta_model("RepMLPNet-T224", num_class=7)


# ----------------------------------------------------------------------------- what the forward computes


def test_forward_is_the_references_at_the_native_resolution(float64):
    """RepMLPNet.forward written out independently (grouped conv for fc3, the reference's reshapes): train and deploy forms,
    and the train checkpoint converted on load (T224's case of ``test_conversion_is_exact_in_float64``)."""
    name = "RepMLPNet-T224"
    model = random_model(name)
    train_sd = dict(model.state_dict())
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reference_forward(train_sd, name, x)
        assert ref.abs().max() > 0.1
        assert rel_diff(model(x), ref) < 1e-12
        repzoo.reparameterize(model)
        assert rel_diff(reference_forward(model.state_dict(), name, x, deploy=True), ref) < 1e-10
        assert rel_diff(model(x), ref) < 1e-10
    loaded = repzoo.create_model(name, deploy=True, checkpoint_path=train_sd)
    assert shapes(loaded) == shapes(model)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_channel_c_uses_fc_kernel_set_c_mod_s(float64):
    """RepMLPBlock.forward's grouped fc3: consecutive channels go to different kernel sets (not c // (C/S))."""
    block = RepMLPBlock(4, 4, 2, 2, None, 4, 2).eval()
    with torch.no_grad():
        block.fc3.weight.zero_()
        block.fc3.weight[4:8] = torch.eye(4).reshape(4, 4, 1, 1)  # set 1 is the identity, set 0 is zero
        block.fc3_bn.running_var.fill_(1 - 1e-5)
        x = torch.randn(1, 4, 2, 2)
        out = block.forward_partitions(x)
    assert torch.allclose(out[:, 1::2], x[:, 1::2], rtol=1e-12, atol=0)
    assert torch.equal(out[:, 0::2], torch.zeros_like(x[:, 0::2]))


# ----------------------------------------------------------------------------- locality injection (RepMLPBlock.local_inject)


@pytest.mark.parametrize("sets, h, w, k", [(2, 4, 6, 3), (3, 5, 5, 5), (1, 2, 3, 5), (4, 1, 1, 3)])
def test_conv_to_fc_is_the_kron_formula_and_computes_the_conv(sets, h, w, k, float64):
    from repzoo.reparam import conv_to_fc

    kernel = torch.randn(sets, 1, k, k)
    fc = conv_to_fc(kernel, h, w)
    assert torch.equal(fc, kron_conv_to_fc(kernel, h, w))
    v = torch.randn(3, sets, h, w)
    by_fc = F.conv2d(v.reshape(3, sets * h * w, 1, 1), fc, groups=sets).reshape(3, sets, h, w)
    assert rel_diff(by_fc, F.conv2d(v, kernel, padding=k // 2, groups=sets)) < 1e-14


def test_block_conversion_is_the_reference_formula(float64):
    """local_inject / get_equivalent_fc3, written here: fuse each BN, 1x1 into the 3x3's centre, kron conv → FC, biases repeated hw times."""
    block = random_block(c=6, h=4, w=5, sets=3)
    sd = {k: v.clone() for k, v in block.state_dict().items()}
    hw = 4 * 5

    def scale_shift(p):
        t = sd[p + "weight"] / torch.sqrt(sd[p + "running_var"] + 1e-5)
        return t, sd[p + "bias"] - sd[p + "running_mean"] * t

    t, b = scale_shift("fc3_bn.")
    weight = sd["fc3.weight"] * t.repeat_interleave(hw).reshape(-1, 1, 1, 1)
    bias = b.repeat_interleave(hw)
    kernel = torch.zeros(3, 1, 3, 3)
    for k in (1, 3):
        t, b = scale_shift(f"repconv{k}.bn.")
        kernel[..., 1 - k // 2:2 + k // 2, 1 - k // 2:2 + k // 2] += sd[f"repconv{k}.conv.weight"] * t.reshape(-1, 1, 1, 1)
        bias = bias + b.repeat_interleave(hw)
    weight = weight + kron_conv_to_fc(kernel, 4, 5)
    block.reparameterize()
    assert list(block.state_dict()) == ["gp.fc1.weight", "gp.fc1.bias", "gp.fc2.weight", "gp.fc2.bias",
                                        "fc3.weight", "fc3.bias"]
    assert rel_diff(block.fc3.weight, weight) < 1e-14 and rel_diff(block.fc3.bias, bias) < 1e-14


@LARGE
@pytest.mark.parametrize("name", [n for n in NAMES if n != "RepMLPNet-T224"])  # T224: the test above
def test_conversion_is_exact_in_float64(name, float64):
    """Train form vs reparameterized vs the train checkpoint converted on load, at the native size."""
    model = random_model(name)
    train_sd = dict(model.state_dict())
    x = torch.randn(1, 3, NATIVE[name], NATIVE[name], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        repzoo.reparameterize(model)
        assert model.deploy and not any(("repconv" in k or "fc3_bn" in k) for k in model.state_dict())
        assert ref.abs().max() > 0.1
        assert rel_diff(model(x), ref) < 1e-10
    loaded = repzoo.create_model(name, deploy=True, checkpoint_path=train_sd)
    assert loaded.deploy and shapes(loaded) == shapes(model)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_reparameterize_is_idempotent_and_a_no_op_on_a_deploy_model(float64):
    """repmlpnet.py's locality_injection: its second call (or a call on a deploy model) raises; here it does nothing."""
    block = random_block()
    x = torch.randn(2, 8, 8, 6)
    with torch.no_grad():
        y = block(x)
        block.reparameterize()
        first = {k: v.clone() for k, v in block.state_dict().items()}
        repzoo.reparameterize(block)
        block.reparameterize()
        assert all(torch.equal(first[k], v) for k, v in block.state_dict().items())
        assert rel_diff(block(x), y) < 1e-13
    deploy = RepMLPBlock(8, 8, 4, 3, (1, 3), 4, 2, deploy=True)
    before = {k: v.clone() for k, v in deploy.state_dict().items()}
    repzoo.reparameterize(deploy)
    assert all(torch.equal(before[k], v) for k, v in deploy.state_dict().items())


def test_a_users_model_with_repmlp_blocks_converts(float64):
    """RepMLPBlock is a public layer (the authors use it as a building block); repzoo.reparameterize finds it in any module tree."""
    class UserNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.mlp = RepMLPBlock(8, 8, 4, 4, (3,), 2, 4)
            self.fc_only = RepMLPBlock(8, 8, 2, 2)  # reparam_conv_k=None: the FC and its BN only

        def forward(self, x):
            return self.fc_only(self.mlp(self.stem(x)))

    torch.manual_seed(3)
    net = randomize_bn(UserNet()).eval()
    x = torch.randn(2, 3, 8, 12)
    with torch.no_grad():
        y = net(x)
        repzoo.reparameterize(net)
        assert not any("bn" in k for k in net.state_dict())
        assert rel_diff(net(x), y) < 1e-13


@pytest.mark.parametrize("channels, h, sets", [(64, 56, 1), (512, 7, 128)])  # T224's first and last stages
def test_conversion_in_bfloat16_and_float16_agrees_with_float64(channels, h, sets):
    """repmlpnet.py's conversion fails outside the default dtype. Here it converts in float32 and
    rounds once: each converted bfloat16 value is the exact one to bfloat16 precision (half a unit in the last place)."""
    torch.manual_seed(0)
    block = randomize_bn(RepMLPBlock(channels, channels, h, h, (1, 3), 4, sets), torch.Generator().manual_seed(0))
    block = block.eval().to(torch.bfloat16)
    exact = copy.deepcopy(block).double().reparameterize().state_dict()  # the same (bf16-representable) weights
    for key, value in block.reparameterize().state_dict().items():
        assert value.dtype == torch.bfloat16
        ref = exact[key]
        # round to nearest with 8 significant bits: |error| <= u·|x|, u = 2^-8 (and float32's error is far smaller)
        assert torch.all((value.double() - ref).abs() <= 2 ** -8 * ref.abs() * (1 + 2 ** -12) + 1e-30), key
    assert 0 < rel_diff(block.fc3.weight.double(), exact["fc3.weight"]) < 2 ** -8


def test_bfloat16_and_float16_models_convert_and_run():
    net = randomize_bn(small_net(), torch.Generator().manual_seed(0)).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        ref = repzoo.reparameterize(copy.deepcopy(net).double())(x.double())
        for dtype, tol in ((torch.bfloat16, 5e-2), (torch.float16, 5e-3)):
            low = repzoo.reparameterize(copy.deepcopy(net).to(dtype))
            assert {p.dtype for p in low.parameters()} == {dtype}
            assert rel_diff(low(x.to(dtype)).double(), ref) < tol


# ----------------------------------------------------------------------------- input sizes (a partition grid over the input)


@pytest.mark.parametrize("name, size", [("RepMLPNet-T224", (256, 256)), ("RepMLPNet-T224", (192, 192)),
                                        ("RepMLPNet-T224", (227, 227)), ("RepMLPNet-T224", (224, 256)),
                                        ("RepMLPNet-B256", (224, 224)), ("RepMLPNet-L256", (288, 256))])
def test_a_wrong_resolution_names_the_sizes_that_work(name, size):
    model = meta_model(name)
    r = NATIVE[name]
    with pytest.raises(InvalidArgumentError, match=rf"multiples of {r} \({r}, {2 * r}, {3 * r}") as err:
        model(torch.empty(1, 3, *size, device="meta"))
    assert isinstance(err.value, RepZooError) and f"got {size[0]}x{size[1]}" in str(err.value)
    with pytest.raises(InvalidArgumentError, match=f"multiples of {r}"):
        model.forward_intermediates(torch.empty(1, 3, *size, device="meta"))
    with pytest.raises(InvalidArgumentError, match="multiple of 4 "):  # the block itself, in any model
        RepMLPBlock(8, 8, 4, 4)(torch.randn(1, 8, 4, 6))


@pytest.mark.parametrize("grid", [(2, 2), (2, 3), (3, 1)])
def test_a_large_input_is_computed_partition_by_partition(grid, float64):
    """The block on an input of several partitions equals the block applied to each partition by hand.

    With the gate made input-independent, the block on each cut-out partition gives that partition of
    the output; with its own gate (the whole input's), an independent per-partition implementation does.
    The reference's reassembly (rows (n, hp, wp, g) read back as (n, g, hp, wp)) would not.
    """
    block = random_block(c=8, h=4, w=3, sets=2)
    x = torch.randn(2, 8, 4 * grid[0], 3 * grid[1])
    sd = block.state_dict()
    with torch.no_grad():
        out = block(x)
        for form in ("train", "deploy"):
            assert rel_diff(out, reference_block(block.state_dict(), x, 4, 3, 2, form == "deploy")) < 1e-13
            scrambled = _references_scrambled_block(block, x)
            assert rel_diff(scrambled, out) > 0.1  # the bug is not reproduced
            constant_gate = copy.deepcopy(block)
            constant_gate.gp.fc2.weight.zero_()
            whole = constant_gate(x)
            for a in range(grid[0]):
                for b in range(grid[1]):
                    tile = (..., slice(4 * a, 4 * a + 4), slice(3 * b, 3 * b + 3))
                    assert rel_diff(whole[tile], constant_gate(x[tile].contiguous())) < 1e-13
            block.reparameterize()
            assert rel_diff(block(x), out) < 1e-13
    assert sd.keys() != block.state_dict().keys()


def _references_scrambled_block(block, x):
    """repmlpnet.py at HP·WP > 1 (its reassembly assumes rows ordered (n, g, hp, wp))."""
    n, c, height, width = x.shape
    h, w, s = block.h, block.w, block.sets
    hp, wp = height // h, width // w
    v = x.reshape(-1, c, hp, h, wp, w).permute(0, 2, 4, 1, 3, 5).reshape(-1, s * h * w, 1, 1)
    z = block.fc3(v).reshape(-1, s, h, w)
    if not block.deploy:
        t = v.reshape(-1, s, h, w)
        z = block.fc3_bn(z) + block.repconv1(t) + block.repconv3(t)
    return z.reshape(-1, hp, wp, s, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, height, width) * block.gp(x)


@pytest.mark.parametrize("size", [(448, 448), (224, 448)])
def test_multiples_of_the_native_resolution_work(size, float64):
    """2x and a non-square multiple: the partition-by-partition forward above, train == deploy, and the features."""
    name = "RepMLPNet-T224"
    model = random_model(name)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        train = model(x) if size == (224, 448) else None
        repzoo.reparameterize(model)
        out = model(x)
        assert rel_diff(out, reference_forward(model.state_dict(), name, x, deploy=True)) < 1e-10
        if train is not None:
            assert rel_diff(out, train) < 1e-10
        feats = model.forward_intermediates(x, intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in feats] == [(size[0] // r, size[1] // r) for r in (4, 8, 16, 32)]


# ----------------------------------------------------------------------------- the model contract


def test_features_heads_and_intermediates():
    model = meta_model("RepMLPNet-B256", num_classes=5)
    x = torch.empty(2, 3, 256, 512, device="meta")
    assert model.feature_info == [dict(num_chs=c, reduction=r, module=f"stages.{s}")
                                  for s, (c, r) in enumerate(zip((96, 192, 384, 768), (4, 8, 16, 32)))]
    feats = model.forward_features(x)
    assert feats.shape == (2, 768, 8, 16)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 768)
    assert model(x).shape == (2, 5) and model.get_classifier() is model.head
    last, inter = model.forward_intermediates(x, indices=2)
    assert last.shape == feats.shape and [t.shape[1] for t in inter] == [384, 768]
    with torch.device("meta"):
        stages = repzoo.create_model("RepMLPNet-B256", features_only=True, out_indices=(1, 3), deploy=True)
    assert [o.shape for o in stages(x)] == [(2, 192, 32, 64), (2, 768, 8, 16)]
    assert stages.feature_info.channels() == [192, 768] and stages.feature_info.reduction() == [8, 32]
    model.reset_classifier(0)
    assert model(x).shape == (2, 768)


def test_features_only_then_reparameterize_is_exact(float64):
    torch.manual_seed(0)
    feats = repzoo.create_model("RepMLPNet-T224", features_only=True, out_indices=(0, 2))
    randomize_bn(feats, torch.Generator().manual_seed(0)).eval()
    x = torch.randn(1, 3, 224, 448)
    with torch.no_grad():
        ref = feats(x)
        repzoo.reparameterize(feats)
        assert all(rel_diff(a, b) < 1e-10 for a, b in zip(feats(x), ref))


def test_group_matcher_orders_stem_stages_downsamplings_and_head():
    from timm.models import group_parameters

    model = meta_model("RepMLPNet-T224")
    groups = group_parameters(model, model.group_matcher())
    names = [sorted(v) for v in groups.values()]
    assert "conv_embedding.conv.weight" in names[0]
    flat = [n for group in names for n in group]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())
    order = {n: i for i, group in enumerate(names) for n in group}
    # timm's (99999,): a downsampling joins the group of the unit before it, head_norm the last unit's
    assert order["stages.0.0.prebn1.weight"] < order["stages.0.1.prebn1.weight"] == order["embeds.0.conv.weight"]
    assert order["embeds.0.conv.weight"] < order["stages.1.0.prebn1.weight"]
    assert order["head_norm.weight"] == order["stages.3.1.prebn2.weight"] == len(names) - 1 - ("head.weight" in names[-1])


def test_grad_checkpointing_reaches_the_blocks_and_gives_the_same_gradients(float64):
    """The reference's use_checkpoint never reaches its model (main_repmlp.py's TRAIN.USE_CHECKPOINT is not passed on); here every unit is recomputed in backward."""
    torch.manual_seed(0)
    model = randomize_bn(small_net(num_classes=3)).train()
    units = [m for m in model.modules() if type(m).__name__ == "RepMLPNetUnit"]
    calls = []
    for unit in units:
        unit.register_forward_pre_hook(lambda m, i: calls.append(m))  # (recomputation may stop early)
    x = torch.randn(2, 3, 32, 64)
    model(x).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert len(calls) == len(units) == 5
    model.zero_grad()
    calls.clear()
    model.set_grad_checkpointing()
    model(x).sum().backward()
    assert len(calls) == 2 * len(units)  # each unit ran again during backward
    assert all(torch.allclose(p.grad, ref[n], rtol=1e-10, atol=1e-13) for n, p in model.named_parameters())
    big = meta_model("RepMLPNet-L256")
    big.set_grad_checkpointing()
    assert all(stage.grad_checkpointing for stage in big.stages)


def test_torchscript_tracing_and_torch_compile():
    """Both forms script (the conv branches are found by name, the other form is never compiled); the deploy
    form traces and compiles without graph breaks (dynamo, eager backend: no code generation)."""
    net = randomize_bn(small_net(num_classes=4), torch.Generator().manual_seed(0)).eval()
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        for form in ("train", "deploy"):
            y = net(x)
            assert torch.allclose(torch.jit.script(net)(x), y, rtol=1e-5, atol=1e-6)
            if form == "train":
                repzoo.reparameterize(net)
        assert torch.allclose(torch.jit.trace(net, x, check_trace=False)(x), y, rtol=1e-5, atol=1e-6)
        torch._dynamo.reset()
        assert torch.allclose(torch.compile(net, backend="eager", fullgraph=True)(x), y, rtol=1e-5, atol=1e-6)
        with pytest.raises(Exception, match="multiples of 32"):
            torch.jit.script(net)(torch.randn(1, 3, 40, 32))


def test_hub_entries_and_demo(capsys):
    from repzoo.cli import main

    spec = importlib.util.spec_from_file_location("hubconf", REPO_ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert all("RepMLPNet" in getattr(hubconf, n.lower().replace("-", "_")).__doc__ for n in NAMES)
    assert main(["demo", "RepMLPNet-T224", "--batch-size", "1"]) == 0
    out = capsys.readouterr().out
    assert "224x224" in out and "equal" in out


# ----------------------------------------------------------------------------- released files (the authors' and mmpretrain's)


def test_released_train_files_load_strictly_in_both_forms(tmp_path):
    """A plain state dict (2022 release, convert.py's input), a DDP training save ``{'model', 'optimizer', …,
    'config'}`` with ``module.`` keys, a 2021 ``{'state_dict': ...}`` file, and convert.py's deploy output, in
    float32 as released. The train form takes the tensors as they are; the deploy form gets exactly what
    ``reparameterize`` computes (whose float64 equivalence is tested above)."""
    yacs = pytest.importorskip("yacs.config")
    name = "RepMLPNet-T224"
    model = random_model(name)
    sd = model.state_dict()
    converted = repzoo.reparameterize(copy.deepcopy(model)).state_dict()
    cfg = yacs.CfgNode({"MODEL": yacs.CfgNode({"ARCH": name})})
    files = {
        "RepMLPNet-T224-train.pth": dict(sd),
        "ckpt_epoch_99.pth": {"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}, "lr_scheduler": {},
                              "max_accuracy": 76.6, "epoch": 99, "config": cfg},
        "RepMLPNet-B256-train-acc8111.pth": {"state_dict": dict(sd)},  # the 2021 layout (here with T224's tensors)
    }
    same = lambda a, b: list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in b)  # noqa: E731
    for file_name, obj in files.items():
        torch.save(obj, tmp_path / file_name)
        assert same(repzoo.create_model(name, checkpoint_path=tmp_path / file_name).state_dict(), sd)
    for file_name in ("RepMLPNet-T224-train.pth", "ckpt_epoch_99.pth"):
        assert same(repzoo.create_model(name, deploy=True, checkpoint_path=tmp_path / file_name).state_dict(), converted)
    deploy_file = tmp_path / "RepMLPNet-T224-deploy.pth"
    torch.save(converted, deploy_file)
    assert same(repzoo.create_model(name, deploy=True, checkpoint_path=deploy_file).state_dict(), converted)
    with pytest.raises(IncompatibleCheckpointError, match="deploy"):
        repzoo.create_model(name, checkpoint_path=deploy_file)
    partial = {k: v for k, v in sd.items() if not k.endswith("repconv3.bn.running_var")}
    with pytest.raises(IncompatibleCheckpointError, match="missing keys"):  # strict, unlike the reference's test.py
        repzoo.create_model(name, checkpoint_path=partial)


def to_mmpretrain(key):
    """Official → mmpretrain keys, written from mmpretrain's key names (mmpretrain/models/backbones/repmlp.py) (the adapter maps the other way)."""
    renames = [("conv_embedding.conv.", "backbone.patch_embed.projection."),
               ("conv_embedding.bn.", "backbone.patch_embed.norm."),
               ("embeds.", "backbone.downsample_layers."), ("head_norm.", "backbone.final_norm."), ("head.", "head.fc.")]
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old):]
    assert key.startswith("stages.")
    key = "backbone." + key
    key = key.replace(".gp.fc1.", ".gp.conv1.conv.").replace(".gp.fc2.", ".gp.conv2.conv.")
    return key.replace(".prebn1.", ".norm1.").replace(".prebn2.", ".norm2.")


@pytest.mark.parametrize("name", ["RepMLPNet-B224", "RepMLPNet-B256"])
def test_mmpretrain_keys_are_a_pure_renaming(name):
    model = meta_model(name)
    official = model.state_dict()
    mm = {to_mmpretrain(k): v for k, v in official.items()}
    assert len(mm) == len(official)  # one to one
    assert detect_key_style(mm, name) == "mmpretrain" and detect_key_style(official, name) == "official"
    assert "mmpretrain" in key_styles("RepMLPNet")
    mapped = adapt_state_dict(mm, "mmpretrain", name)
    assert list(mapped) == list(official) and all(mapped[k] is official[k] for k in official)
    deploy = meta_model(name, deploy=True).state_dict()  # after mmpretrain's switch_to_deploy(): fc3.bias, no BNs
    assert list(adapt_state_dict({to_mmpretrain(k): v for k, v in deploy.items()}, "mmpretrain", name)) == list(deploy)
    with pytest.raises(IncompatibleCheckpointError, match="mmpretrain"):
        adapt_state_dict({"backbone.stages.0.0.x": official["head.bias"], "neck.fc.weight": official["head.bias"]},
                         "mmpretrain", name)


@LARGE
def test_mmpretrain_checkpoint_loads_and_computes_the_same(tmp_path, float64):
    """mmpretrain's converted B224 file ``{'meta', 'state_dict'}`` loads through the adapter: the train form holds
    its tensors under the official names, and the deploy form converted on load gives the float64 outputs of the
    same weights loaded from an official-key file, bit for bit."""
    name = "RepMLPNet-B224"
    official = random_model(name).state_dict()
    mm = {to_mmpretrain(k): v for k, v in official.items()}
    path = tmp_path / "repmlp-base_3rdparty_8xb64_in1k_20220330-1cb1f11b.pth"
    torch.save({"meta": {"epoch": 0}, "state_dict": mm}, path)
    train = repzoo.create_model(name, checkpoint_path=path)
    assert list(train.state_dict()) == list(official)
    assert all(torch.equal(v, official[k]) for k, v in train.state_dict().items())
    del train
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = repzoo.create_model(name, deploy=True, checkpoint_path=official).eval()(x)
        assert torch.equal(repzoo.create_model(name, deploy=True, checkpoint_path=path).eval()(x), ref)


def test_math_helpers_are_exported_and_each_variant_declares_its_input_multiple():
    import repzoo.reparam as reparam

    assert {"fuse_fc_bn", "conv_to_fc", "add_conv_to_fc_", "inject_locality_"} <= set(reparam.__all__)
    assert all(meta_model(n).input_multiple == (NATIVE[n], NATIVE[n]) for n in NAMES)
