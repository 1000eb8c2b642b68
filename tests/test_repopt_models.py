"""RepOpt-VGG in every form: keys, sizes, Hyper-Search init, CSLA freezing and scales, deploy conversion.

Expected values: parameter counts and init values measured on the authors' RepOptVGG (DingXiaoH/RepOptimizers @ 2e45ff5, repoptimizer/repoptvgg_model.py,
LinearAddBlock / ScaleLayer in scale_layer.py), the signature files and the released scale files.
"""
import math

import pytest
import torch

import repzoo
from repzoo.errors import IncompatibleCheckpointError, InvalidArgumentError

from conftest import B1_SCALES, GHOST_SCALES, SCALES_DIR, SCALES_MODEL, meta_model, n_params, randomize_bn, rel_diff, signature

SCALE_SUFFIXES = ("scale_conv.weight", "scale_1x1.weight", "scale_identity.weight")


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- keys and sizes


@pytest.mark.parametrize("name", ["RepOpt-VGG-B1", "RepOpt-VGG-B2", "RepOpt-VGG-L1", "RepOpt-VGG-L2",
                                  "RepOpt-VGG-B1-hs"])
def test_train_signature_matches_reference(name):
    expected = signature(name)["signature_train"]
    got = [(k, list(v.shape)) for k, v in meta_model(name).state_dict().items()]
    assert got == [(k, list(v)) for k, v in expected.items()]  # keys, order and shapes


@pytest.mark.parametrize("name, params", [
    ("RepOpt-VGG-B1", 51_841_832), ("RepOpt-VGG-B2", 80_330_536), ("RepOpt-VGG-L1", 76_037_928),
    ("RepOpt-VGG-L2", 118_132_776), ("RepOpt-VGG-B1-hs", 57_405_672), ("RepOpt-VGG-B1-csla", 57_405_672),
    ("RepOpt-VGG-B1-repvgg", 57_415_016),
])
def test_param_counts_match_reference(name, params):
    assert n_params(meta_model(name)) == params


def test_csla_and_repvgg_keys():
    """csla has exactly the hs keys; the repvgg form uses RepOptimizers' own branch names."""
    hs = signature("RepOpt-VGG-B1-hs")["signature_train"]
    assert list(meta_model("RepOpt-VGG-B1-csla").state_dict()) == list(hs)
    keys = set(meta_model("RepOpt-VGG-B1-repvgg").state_dict())
    for k in ("stage0.conv_3x3.weight", "stage0.bn_3x3.running_var", "stage0.conv_1x1.weight", "stage0.bn_1x1.bias",
              "stage1.1.bn_identity.weight", "stage4.0.conv_3x3.weight", "linear.weight"):
        assert k in keys
    assert "stage1.0.bn_identity.weight" not in keys and "stage0.bn_identity.weight" not in keys
    assert not any("rbr_" in k for k in keys)


@pytest.mark.parametrize("form", ["", "-hs", "-csla", "-repvgg"])
def test_every_form_has_the_same_plain_deploy_form(form):
    deploy = meta_model(f"RepOpt-VGG-B1{form}", deploy=True).state_dict()
    keys = list(deploy)
    blocks = ["stage0"] + [f"stage{s}.{i}" for s, n in zip(range(1, 5), (4, 6, 16, 1)) for i in range(n)]
    assert keys == [f"{b}.conv.{p}" for b in blocks for p in ("weight", "bias")] + ["linear.weight", "linear.bias"]
    assert deploy["stage1.0.conv.weight"].shape == (128, 64, 3, 3)
    # the target's params, each BN's weight and bias replaced by one conv bias
    assert n_params(meta_model(f"RepOpt-VGG-B1{form}", deploy=True)) == 51_841_832 - sum(
        [64, 4 * 128, 6 * 256, 16 * 512, 2048])


# ----------------------------------------------------------------------------- hs init, csla freezing


@pytest.fixture(scope="module")
def b1_csla():
    torch.manual_seed(0)
    return repzoo.create_model("RepOpt-VGG-B1-csla", scales=B1_SCALES)


def test_hs_initial_scales():
    model = repzoo.create_model("RepOpt-VGG-B1-hs")
    sd = model.state_dict()
    # conv_scale_init is 1.0 for block 0 of a stage, sqrt(2/i) for block i >= 1 (DingXiaoH/RepOptimizers @ 2e45ff5, repoptimizer/repoptvgg_model.py):
    # stage1.1 1.4142, stage1.3 0.8165, stage3.15 0.3651
    for blk, value in [("stage1.1", 1.4142), ("stage1.3", 0.8165), ("stage3.15", 0.3651)]:
        for which in ("scale_conv", "scale_1x1"):
            t = sd[f"{blk}.{which}.weight"]
            assert torch.allclose(t, torch.full_like(t, value), atol=5e-5)
    for blk in ("stage0", "stage1.0", "stage2.0", "stage3.0", "stage4.0"):  # block 0 of a stage and stage0: 1.0
        assert torch.all(sd[f"{blk}.scale_conv.weight"] == 1) and torch.all(sd[f"{blk}.scale_1x1.weight"] == 1)
    identity = [k for k in sd if k.endswith("scale_identity.weight")]
    assert len(identity) == 23 and all(torch.all(sd[k] == 1) for k in identity)
    assert torch.all(sd["stage2.4.scale_conv.weight"] == math.sqrt(2 / 4))
    assert all(p.requires_grad for p in model.parameters())


def test_hs_init_survives_a_meta_build():
    """A model built on the meta device and materialized gets the same initial scales."""
    from repzoo.factory import materialize

    model = materialize(meta_model("RepOpt-VGG-B1-hs"))
    assert torch.allclose(model.stage3[15].scale_1x1.weight, torch.full((512,), 0.3651), atol=5e-5)
    assert torch.all(model.stage3[15].scale_identity.weight == 1)


def _check_csla_freezing(model):
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    # In 'csla' mode scale_conv and scale_1x1 have requires_grad=False, scale_identity stays trainable (DingXiaoH/RepOptimizers @ 2e45ff5, repoptimizer/repoptvgg_model.py)
    assert sorted(frozen) == sorted(f"{b}.{w}.weight" for b in _B1_BLOCKS for w in ("scale_conv", "scale_1x1"))
    assert sum(n.endswith("scale_identity.weight") for n, p in model.named_parameters() if p.requires_grad) == 23


_B1_BLOCKS = ["stage0"] + [f"stage{s}.{i}" for s, n in zip(range(1, 5), (4, 6, 16, 1)) for i in range(n)]


def test_csla_freezes_exactly_like_the_reference(b1_csla):
    _check_csla_freezing(b1_csla)


def test_real_b1_scale_file_loads_into_csla(b1_csla):
    scales = torch.load(B1_SCALES, weights_only=True)
    sd = b1_csla.state_dict()
    assert len(scales) == 79 and all(torch.equal(sd[k], v) for k, v in scales.items())
    assert {k for k in sd if k.endswith(SCALE_SUFFIXES)} == set(scales)


def test_scales_from_a_dict_or_an_hs_checkpoint():
    """An hs checkpoint {'model': ...} with the 100-class head gives the same csla model."""
    scales = torch.load(B1_SCALES, weights_only=True)
    with torch.device("meta"):
        hs = repzoo.create_model("RepOpt-VGG-B1-hs", num_classes=100).state_dict()
    hs = {k: torch.zeros(v.shape) for k, v in hs.items() if not k.startswith("stage3")}  # sizes only
    hs.update(scales)
    model = repzoo.create_model("RepOpt-VGG-B1-csla", scales={"model": hs})
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in scales.items())


@pytest.mark.parametrize("arch", ["RepOpt-VGG-B1", "RepOpt-VGG-B2", "RepOpt-VGG-L1", "RepOpt-VGG-L2"])
def test_csla_default_scales_are_the_released_files_offline(monkeypatch, arch):
    """No argument, no network, no cache: the packaged copies of the released files are used."""
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    model = repzoo.create_model(f"{arch}-csla")
    released = torch.load(SCALES_DIR / SCALES_MODEL[arch], weights_only=True)
    sd = model.state_dict()
    assert len(released) in (79, 139) and all(torch.equal(sd[k], v) for k, v in released.items())


def test_wrong_scale_file_is_refused():
    with pytest.raises(IncompatibleCheckpointError, match="missing scales"):
        repzoo.create_model("RepOpt-VGG-B1-csla", scales=GHOST_SCALES)
    with pytest.raises(IncompatibleCheckpointError, match="mismatched shapes"):
        repzoo.create_model("RepOpt-VGG-B2-csla", scales=B1_SCALES)
    with pytest.raises(InvalidArgumentError, match="csla"):
        repzoo.create_model("RepOpt-VGG-B1-hs", scales=B1_SCALES)


# ----------------------------------------------------------------------------- deploy conversion

SMALL = dict(num_blocks=(2, 3, 2, 1), width_multiplier=(0.5, 0.5, 0.5, 0.5), num_classes=7)


@torch.no_grad()
def _randomize_scales(model, gen):
    for name, p in model.named_parameters():
        if name.endswith(SCALE_SUFFIXES):  # like the released ones: both signs, |s| up to ~1.5
            p.copy_(torch.empty(p.shape).uniform_(-1.5, 1.5, generator=gen))


def _inputs():
    return [torch.randn(2, 3, 32, 48), torch.randn(1, 3, 40, 40)]


@pytest.mark.parametrize("mode", ["target", "hs", "csla", "repvgg"])
def test_deploy_conversion_is_exact(mode, float64, tmp_path):
    """Train form == reparameterized form == train checkpoint converted on load (float64)."""
    from repzoo.models import RepOptVGG

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = randomize_bn(RepOptVGG(mode=mode, **SMALL), gen).eval()
    _randomize_scales(model, gen)
    xs = _inputs()
    with torch.no_grad():
        refs = [model(x) for x in xs]
    path = tmp_path / "train.pth"
    torch.save(model.state_dict(), path)

    repzoo.reparameterize(model)
    assert model.deploy and all(k.endswith(".conv.weight") or k.endswith(".conv.bias") or k.startswith("linear.")
                                for k in model.state_dict())
    loaded = repzoo.load_checkpoint(RepOptVGG(mode=mode, deploy=True, **SMALL), path).eval()
    with torch.no_grad():
        for x, ref in zip(xs, refs):
            assert rel_diff(model(x), ref) < 1e-10
            assert rel_diff(loaded(x), ref) < 1e-10
    repzoo.reparameterize(model)  # idempotent
    assert model.state_dict().keys() == loaded.state_dict().keys()
    with pytest.raises(IncompatibleCheckpointError, match="deploy"):
        torch.save(loaded.state_dict(), path)
        repzoo.load_checkpoint(RepOptVGG(mode=mode, **SMALL), path)


def test_b1_csla_with_real_scales_converts_on_load(float64, tmp_path):
    """The registered model, its real scale file, create_model(deploy=True, checkpoint_path=train file)."""
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = randomize_bn(repzoo.create_model("RepOpt-VGG-B1-csla", scales=B1_SCALES), gen).eval()
    with torch.no_grad():
        model.stage2[1].scale_identity.weight.mul_(0.5)  # trainable: moved by training
    xs = [torch.randn(1, 3, 32, 48), torch.randn(1, 3, 24, 24)]
    with torch.no_grad():
        refs = [model(x) for x in xs]
    path = tmp_path / "train.pth"
    torch.save({"model": model.state_dict()}, path)
    del model
    loaded = repzoo.create_model("RepOpt-VGG-B1-csla", deploy=True, checkpoint_path=path).eval()
    assert loaded.deploy and loaded.stage1[2].conv.bias.dtype == torch.float64
    with torch.no_grad():
        for x, ref in zip(xs, refs):
            assert rel_diff(loaded(x), ref) < 1e-10


def test_csla_checkpoint_keeps_freezing_and_values(b1_csla, tmp_path):
    path = tmp_path / "csla.pth"
    torch.save({"model": b1_csla.state_dict()}, path)
    loaded = repzoo.create_model("RepOpt-VGG-B1-csla", checkpoint_path=path)  # no scales= needed
    _check_csla_freezing(loaded)
    assert torch.equal(loaded.stage2[3].scale_conv.weight, b1_csla.stage2[3].scale_conv.weight)


# ----------------------------------------------------------------------------- model contract


def test_contract_head_features_and_cfg(b1_csla):
    model = b1_csla.eval()
    cfg = model.pretrained_cfg
    assert cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 1.0 and cfg["input_size"] == (3, 224, 224)
    assert cfg["architecture"] == "RepOpt-VGG-B1-csla" and cfg["num_classes"] == 1000
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        f = model.forward_features(x)
        assert f.shape == (1, 2048, 1, 2) and model(x).shape == (1, 1000)
        assert model.forward_head(f, pre_logits=True).shape == (1, 2048)
        assert model.get_classifier() is model.linear
        model.reset_classifier(3)
        assert model(x).shape == (1, 3) and model.pretrained_cfg["num_classes"] == 3
    assert [i["reduction"] for i in model.feature_info] == [2, 4, 8, 16, 32]
    assert [i["num_chs"] for i in model.feature_info] == [64, 128, 256, 512, 2048]


def test_features_only():
    with torch.device("meta"):
        feats = repzoo.create_model("RepOpt-VGG-B2-hs", features_only=True, out_indices=(1, 4))
        outs = feats(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape[1:]) for o in outs] == [(160, 16, 24), (2560, 2, 3)]


def test_aliases_resolve():
    for alias, name in [("repopt_vgg_b1_hs", "RepOpt-VGG-B1-hs"), ("RepOptVGG-L2-csla", "RepOpt-VGG-L2-csla"),
                        ("repopt_vgg_b2_repvgg", "RepOpt-VGG-B2-repvgg")]:
        assert repzoo.get_model_entry(alias).name == name
    assert len(repzoo.list_models("RepOpt-VGG-*")) == 16
