"""RepGhostNet / RepOpt-GhostNet: keys, sizes, hs init, csla scales, deploy conversion, timm adapter.

Expected values come from DingXiaoH/RepOptimizers @ 2e45ff5 ``repoptimizer/repoptghostnet_model.py`` (the channel
table ``cfgs``, parameter counts measured on it, the block modes and the cheap scale's init), the signature files, the released scale file
and timm's own ``repghostnet_*`` models (an independent implementation).
"""
import math

import pytest
import torch

import repzoo
from repzoo.weights.adapters import adapt_state_dict
from repzoo.errors import IncompatibleCheckpointError, RepZooError

from conftest import GHOST_SCALES, meta_model, n_params, randomize_bn, rel_diff, signature

WIDTHS = ["0.5x", "0.58x", "0.8x", "1.0x", "1.11x", "1.3x", "1.5x", "2.0x"]
TIMM = dict(zip(WIDTHS, ["050", "058", "080", "100", "111", "130", "150", "200"]))
SCALE_SUFFIXES = ("fusion_scale.weight", "cheap_operation.1.weight")

# repoptghostnet_model.py's cfgs, resolved at 0.5x: (block, in, out, stride)
TABLE_05X = [("0.0", 8, 8, 1), ("1.0", 8, 12, 2), ("2.0", 12, 12, 1), ("3.0", 12, 20, 2), ("4.0", 20, 20, 1),
             ("5.0", 20, 40, 2), ("6.0", 40, 40, 1), ("6.1", 40, 40, 1), ("6.2", 40, 40, 1), ("6.3", 40, 56, 1),
             ("6.4", 56, 56, 1), ("7.0", 56, 80, 2), ("8.0", 80, 80, 1), ("8.1", 80, 80, 1), ("8.2", 80, 80, 1),
             ("8.3", 80, 80, 1)]


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- keys and sizes


@pytest.mark.parametrize("name", ["RepGhostNet-0.5x", "RepOpt-GhostNet-0.5x"])
def test_train_signature_matches_reference(name):
    expected = signature(name)["signature_train"]
    got = [(k, list(v.shape)) for k, v in meta_model(name).state_dict().items()]
    assert got == [(k, list(v)) for k, v in expected.items()]


@pytest.mark.parametrize("width, rep, target", [
    ("0.5x", 2_313_968, 2_309_008), ("0.58x", 2_546_388, 2_540_620), ("0.8x", 3_278_968, 3_271_064),
    ("1.0x", 4_073_604, 4_063_716), ("1.11x", 4_539_984, 4_529_040), ("1.3x", 5_478_612, 5_465_748),
    ("1.5x", 6_575_336, 6_560_488), ("2.0x", 9_796_124, 9_776_348),
])
def test_param_counts_match_reference(width, rep, target):
    assert n_params(meta_model(f"RepGhostNet-{width}")) == rep
    assert n_params(meta_model(f"RepOpt-GhostNet-{width}")) == target


def test_hs_and_csla_keys():
    """hs/csla: fusion_scale and a cheap ScaleLayer instead of the BNs, then final_bn; no fusion_bn."""
    hs = meta_model("RepOpt-GhostNet-0.5x-hs").state_dict()
    assert list(hs) == list(meta_model("RepOpt-GhostNet-0.5x-csla").state_dict())
    g = "blocks.3.0.ghost2."
    assert [k[len(g):] for k in hs if k.startswith(g)] == [
        "primary_conv.0.weight", "primary_conv.1.weight", "primary_conv.1.bias", "primary_conv.1.running_mean",
        "primary_conv.1.running_var", "primary_conv.1.num_batches_tracked", "fusion_scale.weight",
        "final_bn.weight", "final_bn.bias", "final_bn.running_mean", "final_bn.running_var",
        "final_bn.num_batches_tracked", "cheap_operation.0.weight", "cheap_operation.1.weight"]
    assert hs[g + "cheap_operation.1.weight"].shape == (20,)
    assert not any("fusion_bn" in k for k in hs)


def test_channels_follow_the_reference_table():
    model = meta_model("RepGhostNet-0.5x")
    for blk, c_in, c_out, stride in TABLE_05X:
        s, i = map(int, blk.split("."))
        b = model.blocks[s][i]
        assert (b.ghost1.in_chs, b.ghost2.out_chs, b.stride) == (c_in, c_out, stride), blk
    assert model.blocks[9][0].conv.weight.shape == (480, 80, 1, 1) and model.conv_head.weight.shape == (1280, 480, 1, 1)
    assert model.blocks[3][0].se.conv_reduce.weight.shape == (8, 20, 1, 1)  # SE reduced to _make_divisible(20 · 0.25, 4) = 8 channels (repoptghostnet_model.py)
    assert model.blocks[6][4].se.conv_reduce.weight.shape == (44, 168, 1, 1)  # SE44


# ----------------------------------------------------------------------------- hs init, csla


def test_hs_initial_scales():
    """repoptghostnet_model.py: cheap scale sqrt(2/(n+1)), n = 2b-1 (ghost1) / 2b (ghost2), b = run of same-width s1 blocks."""
    sd = repzoo.create_model("RepOpt-GhostNet-0.5x-hs").state_dict()
    b = 0
    for blk, c_in, c_out, stride in TABLE_05X:
        b = b + 1 if (stride == 1 and c_in == c_out) else 1
        for ghost, n in (("ghost1", 2 * b - 1), ("ghost2", 2 * b)):
            cheap = sd[f"blocks.{blk}.{ghost}.cheap_operation.1.weight"]
            assert torch.allclose(cheap, torch.full_like(cheap, math.sqrt(2 / (n + 1))), rtol=0, atol=1e-7)
            assert torch.all(sd[f"blocks.{blk}.{ghost}.fusion_scale.weight"] == 1)
    assert torch.allclose(sd["blocks.6.2.ghost1.cheap_operation.1.weight"], torch.full((60,), 0.5))  # b = 4, n = 7


def _check_csla_freezing(model):
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    modules = [f"blocks.{blk}.{g}" for blk, *_ in TABLE_05X for g in ("ghost1", "ghost2")]
    assert frozen == sorted(f"{m}.cheap_operation.1.weight" for m in modules)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.endswith("fusion_scale.weight"))


def test_real_scale_file_loads_into_csla_and_freezes_like_the_reference():
    scales = torch.load(GHOST_SCALES, weights_only=True)
    model = repzoo.create_model("RepOpt-GhostNet-0.5x-csla", scales=GHOST_SCALES)
    sd = model.state_dict()
    assert len(scales) == 64 and {k for k in sd if k.endswith(SCALE_SUFFIXES)} == set(scales)
    assert all(torch.equal(sd[k], v) for k, v in scales.items())
    _check_csla_freezing(model)


def test_csla_default_scales(monkeypatch):
    monkeypatch.setenv("REPZOO_OFFLINE", "1")  # the packaged copy of the released 0.5x file
    model = repzoo.create_model("RepOpt-GhostNet-0.5x-csla")
    scales = torch.load(GHOST_SCALES, weights_only=True)
    k = "blocks.8.3.ghost2.cheap_operation.1.weight"
    assert torch.equal(model.state_dict()[k], scales[k])
    with pytest.raises(RepZooError, match="scales="):  # no released file for the other widths
        repzoo.create_model("RepOpt-GhostNet-1.0x-csla")
    with pytest.raises(IncompatibleCheckpointError):
        repzoo.create_model("RepOpt-GhostNet-1.0x-csla", scales=GHOST_SCALES)


# ----------------------------------------------------------------------------- deploy conversion


@torch.no_grad()
def _randomize_scales(model, gen):
    for name, p in model.named_parameters():
        if name.endswith(SCALE_SUFFIXES):
            p.copy_(torch.empty(p.shape).uniform_(-1.5, 1.5, generator=gen))


@pytest.mark.parametrize("name", ["RepGhostNet-0.5x", "RepOpt-GhostNet-0.5x", "RepOpt-GhostNet-0.5x-hs",
                                  "RepOpt-GhostNet-0.5x-csla", "RepGhostNet-1.11x"])
def test_deploy_conversion_is_exact(name, float64, tmp_path):
    """Train form == reparameterized == train checkpoint converted on load, float64, two input sizes."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    kwargs = dict(scales=GHOST_SCALES) if name.endswith("csla") else {}
    model = randomize_bn(repzoo.create_model(name, **kwargs), gen).eval()
    if name.endswith("-hs"):
        _randomize_scales(model, gen)
    xs = [torch.randn(2, 3, 32, 48), torch.randn(1, 3, 40, 24)]
    with torch.no_grad():
        refs = [model(x) for x in xs]
    path = tmp_path / "train.pth"
    torch.save(model.state_dict(), path)

    repzoo.reparameterize(model)
    loaded = repzoo.create_model(name, deploy=True, checkpoint_path=path).eval()
    assert model.deploy and loaded.deploy
    keys = set(model.state_dict())
    assert keys == set(loaded.state_dict())
    # every conv-BN pair and branch is folded, the stem's included
    assert [k for k in keys if k.endswith("running_var")] == []
    assert "conv_stem.bias" in keys
    with torch.no_grad():
        for x, ref in zip(xs, refs):
            assert rel_diff(model(x), ref) < 1e-10
            assert rel_diff(loaded(x), ref) < 1e-10
    repzoo.reparameterize(model)  # idempotent
    assert set(model.state_dict()) == keys


def test_deploy_keys():
    sd = meta_model("RepOpt-GhostNet-0.5x-hs", deploy=True).state_dict()
    for k, shape in [("blocks.3.0.ghost1.primary_conv.0.weight", (20, 12, 1, 1)),
                     ("blocks.3.0.ghost1.primary_conv.0.bias", (20,)),
                     ("blocks.3.0.ghost1.cheap_operation.0.weight", (20, 1, 3, 3)),
                     ("blocks.3.0.ghost1.cheap_operation.0.bias", (20,)),
                     ("blocks.3.0.conv_dw.weight", (20, 1, 5, 5)), ("blocks.3.0.conv_dw.bias", (20,)),
                     ("blocks.3.0.shortcut.0.weight", (12, 1, 5, 5)), ("blocks.3.0.shortcut.0.bias", (12,)),
                     ("blocks.3.0.shortcut.1.weight", (20, 12, 1, 1)), ("blocks.3.0.shortcut.1.bias", (20,)),
                     ("blocks.3.0.se.conv_reduce.weight", (8, 20, 1, 1)), ("blocks.9.0.conv.bias", (480,)),
                     ("conv_stem.weight", (8, 3, 3, 3)), ("conv_stem.bias", (8,)), ("conv_head.bias", (1280,))]:
        assert tuple(sd[k].shape) == shape, k
    folded = ("bn_dw", "final_bn", "fusion", "shortcut.2", "shortcut.3", "bn1", "running_var", "cheap_operation.1")
    assert [k for k in sd if any(s in k for s in folded)] == []
    rep = meta_model("RepGhostNet-0.5x", deploy=True).state_dict()
    assert {k: v.shape for k, v in rep.items()} == {k: v.shape for k, v in sd.items()}


# ----------------------------------------------------------------------------- timm's weights


def _timm_vs_repzoo(width, deploy):
    import timm

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    ref = randomize_bn(timm.create_model(f"repghostnet_{TIMM[width]}"), gen).eval()
    mapped = adapt_state_dict(ref.state_dict(), "timm", f"RepGhostNet-{width}")
    model = repzoo.create_model(f"RepGhostNet-{width}", deploy=deploy)
    repzoo.load_checkpoint(model, mapped)  # strict; converts for a deploy model
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        return rel_diff(model.eval()(x), ref(x))


@pytest.mark.parametrize("width", WIDTHS)
def test_timm_key_adapter_is_exact(width, float64):
    assert _timm_vs_repzoo(width, deploy=False) < 1e-10


def test_timm_weights_convert_to_deploy(float64):
    assert _timm_vs_repzoo("0.5x", deploy=True) < 1e-10


def test_timm_key_adapter_renames_only_fusion_bn():
    import timm

    with torch.device("meta"):
        keys = list(timm.create_model("repghostnet_050").state_dict())
    mapped = list(adapt_state_dict(dict.fromkeys(keys), "timm", "RepGhostNet-0.5x"))
    assert sum(a != b for a, b in zip(keys, mapped)) == 5 * 32  # BN weight/bias/mean/var/count, 32 modules
    assert all(b == a.replace(".fusion_bn.0.", ".fusion_bn.") for a, b in zip(keys, mapped))
    assert mapped == list(meta_model("RepGhostNet-0.5x").state_dict())


# ----------------------------------------------------------------------------- model contract


def test_contract_head_and_cfg():
    torch.manual_seed(0)
    model = repzoo.create_model("RepOpt-GhostNet-0.5x", num_classes=10).eval()
    cfg = model.pretrained_cfg
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875 and cfg["num_classes"] == 10
    assert model.drop_rate == 0.2 and model.head_drop.p == 0.2
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        f = model.forward_features(x)
        assert f.shape == (2, model.num_features, 2, 3) and model.num_features == 480
        assert model.forward_head(f, pre_logits=True).shape == (2, 1280)
        assert torch.equal(model.forward_head(f), model(x)) and model(x).shape == (2, 10)
    assert model.get_classifier() is model.classifier
    model.reset_classifier(3)
    assert model.classifier.in_features == 1280 and model(x).shape == (2, 3)
    assert model.pretrained_cfg["num_classes"] == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, 1280)
    model.train().set_grad_checkpointing(True)
    model(x).sum().backward()


def test_feature_info_with_timm_feature_net():
    from timm.models import FeatureListNet

    torch.manual_seed(0)
    model = repzoo.create_model("RepGhostNet-1.0x").eval()
    assert [i["reduction"] for i in model.feature_info] == [2, 4, 8, 16, 32]
    feats = FeatureListNet(model, out_indices=(0, 1, 2, 3, 4), flatten_sequential=model.feature_flatten_sequential)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = feats(x)
        last = model.forward_features(x)
    assert [o.shape[1] for o in outs] == [i["num_chs"] for i in model.feature_info] == [16, 24, 40, 112, 960]
    assert [64 // o.shape[-1] for o in outs] == [2, 4, 8, 16, 32]
    assert torch.equal(outs[-1], last)


def test_aliases_resolve():
    for alias, name in [("repghostnet_0_5x", "RepGhostNet-0.5x"),
                        ("repopt_ghostnet_1_11x_hs", "RepOpt-GhostNet-1.11x-hs"),
                        ("RepOptGhostNet-2.0x-csla", "RepOpt-GhostNet-2.0x-csla")]:
        assert repzoo.get_model_entry(alias).name == name
    assert repzoo.get_model_entry("RepGhostNet-0.5x").family == "RepGhostNet"
    assert len(repzoo.list_models("RepGhostNet-*")) == 8 and len(repzoo.list_models("RepOpt-GhostNet-*")) == 24
