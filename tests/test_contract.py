"""The model contract: what timm users and the detection/segmentation necks rely on."""
import math

import pytest
import torch

import repzoo

MODELS = ["RepVGG-A0", "RepVGG-B1g2", "RepVGGplus-L2pse"]


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(0)
    return repzoo.create_model(request.param).eval()


def test_forward_features_and_head(model):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features, 2, 3)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        assert torch.equal(model.forward_head(feats), model(x))
    assert model(x).shape == (2, 1000) and model.num_classes == 1000
    assert model.get_classifier() is getattr(model, model.head_name)


def test_pretrained_cfg(model):
    cfg = model.pretrained_cfg
    for key in ("input_size", "interpolation", "crop_pct", "mean", "std", "num_classes"):
        assert key in cfg
    assert cfg["num_classes"] == 1000 and cfg["mean"] == (0.485, 0.456, 0.406)


def test_feature_info_matches_features_only(model):
    name = model.pretrained_cfg["architecture"]
    feats = repzoo.create_model(name, features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = feats(x)
    assert len(outs) == len(model.feature_info) == 5
    for out, info in zip(outs, model.feature_info):
        assert out.shape[1] == info["num_chs"] and 64 // out.shape[-1] == info["reduction"]
    assert feats.feature_info.channels() == [i["num_chs"] for i in model.feature_info]


def test_features_only_out_indices_and_deploy():
    torch.manual_seed(0)
    feats = repzoo.create_model("RepVGG-A0", features_only=True, out_indices=(2, 4), deploy=True).eval()
    outs = feats(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [96, 1280]
    assert feats.feature_info.reduction() == [8, 32]


def test_features_only_then_reparameterize_is_exact(float64):
    torch.manual_seed(0)
    feats = repzoo.create_model("RepVGG-A0", features_only=True, out_indices=(1, 3)).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ref = feats(x)
        repzoo.reparameterize(feats)
        assert all(((a - b).norm() / b.norm()) < 1e-10 for a, b in zip(feats(x), ref))


def test_features_only_keeps_the_declared_conv_bn_pairs(float64):
    """GhostNet's stem (conv_stem → bn1) is folded in a features model too, and both ways of getting
    the deploy features model give the same keys and the same features."""
    torch.manual_seed(0)
    feats = repzoo.create_model("RepGhostNet-0.5x", features_only=True, out_indices=(1, 4)).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ref = feats(x)
        repzoo.reparameterize(feats)
        assert isinstance(feats.bn1, torch.nn.Identity) and feats.conv_stem.bias is not None
        assert all(((a - b).norm() / b.norm()) < 1e-10 for a, b in zip(feats(x), ref))
    built = repzoo.create_model("RepGhostNet-0.5x", features_only=True, out_indices=(1, 4), deploy=True)
    assert set(built.state_dict()) == set(feats.state_dict())


def test_reset_classifier():
    model = repzoo.create_model("RepVGGplus-L2pse", num_classes=5)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model.pretrained_cfg["num_classes"] == 3
    model.eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    model.train()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)  # timm's convention: logits in training too
    aux = repzoo.create_model("RepVGGplus-L2pse", num_classes=5, aux_logits=True)
    aux.reset_classifier(3)
    assert aux.train()(torch.randn(2, 3, 32, 32))["stage2_aux"].shape == (2, 3)
    model.reset_classifier(0)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, model.num_features)


def test_in_chans_and_drop_rate():
    model = repzoo.create_model("RepVGG-A0", in_chans=1, drop_rate=0.5, num_classes=4)
    assert model.in_chans == 1 and model.drop_rate == 0.5
    model.train()
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    assert not torch.equal(model(x), model(x))  # dropout active in training
    model.eval()
    assert torch.equal(model(x), model(x))


def test_grad_checkpointing_gives_the_same_gradients(float64):
    torch.manual_seed(0)
    model = repzoo.create_model("RepVGG-A0", num_classes=3).train()
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing()
    model(x).sum().backward()
    assert all(torch.allclose(p.grad, ref[n], rtol=1e-10, atol=1e-12) for n, p in model.named_parameters())


def test_timm_data_config_reads_pretrained_cfg():
    from timm.data import resolve_data_config

    cfg = resolve_data_config(model=repzoo.create_model("RepVGG-D2se", num_classes=2))
    assert cfg["input_size"] == (3, 320, 320) and cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bilinear"


def _scales_kwargs(name):
    """A csla model without released scales takes them from its caller: give it ones."""
    from repzoo.weights.manifest import load_manifest
    from repzoo.weights.scales import scale_keys

    entry = repzoo.get_model_entry(name)
    if entry.scales is None or entry.scales in load_manifest().scale_names():
        return {}
    with torch.device("meta"):
        hs = repzoo.create_model(f"{entry.scales}-hs")
    return {"scales": {k: torch.ones(m.weight.shape) for k, m in scale_keys(hs).items()}}


def contract_input_size(model) -> tuple:
    """64×96 (small and not square), or the smallest size of that shape the model takes: the least common
    multiples with its ``input_multiple`` (RepMLPNet's partitions fix its input to multiples of 224 or 256)."""
    return tuple(math.lcm(size, multiple) for size, multiple in zip((64, 96), model.input_multiple))


def test_the_contract_input_is_64x96_unless_a_model_needs_multiples():
    with torch.device("meta"):
        assert contract_input_size(repzoo.create_model("RepVGG-A0")) == (64, 96)
        assert contract_input_size(repzoo.create_model("RepMLPNet-T224")) == (448, 672)  # 2x3 partitions


@pytest.mark.parametrize("name", repzoo.list_models())
def test_every_registered_model_follows_the_contract(name):
    """Shapes only, on the meta device: cheap enough for every variant of every family."""
    kwargs = _scales_kwargs(name)
    with torch.device("meta"):
        model = repzoo.create_model(name, num_classes=11, **kwargs).eval()
        height, width = contract_input_size(model)
        x = torch.empty(2, 3, height, width)
        feats = model.forward_features(x)
        assert feats.shape[:2] == (2, model.num_features)
        # timm's convention: pre-logits have head_hidden_size where a head adds a layer (GhostNet)
        hidden = getattr(model, "head_hidden_size", model.num_features)
        assert model.forward_head(feats, pre_logits=True).shape[-1] == hidden
        assert model(x).shape == (2, 11) and model.get_classifier().out_features == 11
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert model(x).shape == (2, hidden)  # no head: the pooled pre-logits, as timm
        headless = repzoo.create_model(name, num_classes=0, **kwargs).eval()
        assert headless(x).shape == (2, hidden) and headless.num_classes == 0
        stages = repzoo.create_model(name, features_only=True, **kwargs)
        outs = stages(x)
    assert [o.shape[1] for o in outs] == [i["num_chs"] for i in model.feature_info]
    assert [height // o.shape[-2] for o in outs] == [i["reduction"] for i in model.feature_info]
    assert [width // o.shape[-1] for o in outs] == [i["reduction"] for i in model.feature_info]
    assert {"input_size", "interpolation", "crop_pct", "mean", "std"} <= set(model.pretrained_cfg)
    assert model.pretrained_cfg["architecture"] == name
