"""timm's generic model contract, over repzoo's models in both forms (train and deploy), through
``timm.create_model('repzoo_...')`` as a timm user builds them.

The checks follow what timm's own generic tests ask of every timm model (tests/test_models.py of
huggingface/pytorch-image-models): forward and backward, the default cfg and its consistency with the
model, ``forward_features`` / ``forward_head(pre_logits=True)``, ``reset_classifier(0[, ''])``,
``forward_intermediates``, ``features_only`` (list and getter wrappers), TorchScript and torch.fx —
written here for repzoo, with two more demands: the traced module must follow changed weights, and
both forms must pass.

Tiers: the default tier runs every check on a small model of most families and block types
(:data:`SAMPLE`), plus the cheap cfg checks on every registered model (built on the ``meta``
device); the heavy tier runs every check on the rest of the sample (:data:`HEAVY_SAMPLE`: RepVGGplus,
RepOpt-VGG, OREPA's RepVGG, the plain ResNet) and every check but TorchScript / FX on every other
registered model up to :data:`HEAVY_MAX_PARAMS` (TorchScript and FX are per-block code paths, which the
two samples cover block type by block type; the largest are sampled, as timm's generic runs leave its
largest out).

Not applicable, by design: the ``-csla`` models freeze their constant scales (RepOptimizers' "constant
scale linear addition"), so their scale parameters get no gradient; the check asserts that exactly
those are frozen. OREPA's train form has no ``<first_conv>.weight`` (its stem kernel is composed from
``weight_orepa_*`` parameters): ``first_conv`` names the module that owns them.
"""
import math

import pytest
import torch

import repzoo

timm = pytest.importorskip("timm")
import repzoo.integrations.timm as rz_timm  # noqa: E402  (registers the models)

#: the default tier's sample: RepVGG, RepGhostNet, RepOpt-GhostNet (csla), RepMLPNet, OREPA's OREPA and DBB blocks
SAMPLE = ["RepVGG-A0", "RepGhostNet-0.5x", "RepOpt-GhostNet-0.5x-csla", "RepMLPNet-T224", "OREPA-ResNet-18",
          "DBB-ResNet-18"]
#: the rest of the sample, in the heavy tier (large, or slow to trace and script on a 2-core machine):
#: RepVGGplus (140M parameters in its train form), RepOpt-VGG (its hs form), OREPA's RepVGG blocks, the plain ResNet
HEAVY_SAMPLE = ["RepVGGplus-L2pse", "RepOpt-VGG-B1-hs", "OREPA-RepVGG-A0", "ResNet-18"]
FORMS = ["train", "deploy"]
NUM_CLASSES = 10
CFG_FIELDS = ("input_size", "interpolation", "crop_pct", "mean", "std", "num_classes", "pool_size", "first_conv",
              "classifier", "architecture")


def _scales(name: str) -> dict:
    """A ``-csla`` model without released scales takes those of its ``-hs`` model (freshly initialized)."""
    entry = repzoo.get_model_entry(name)
    if entry.scales is None or entry.scales in repzoo.weights.manifest.load_manifest().scale_names():
        return {}
    with torch.device("cpu"):  # real scales, also while a meta-device build is under way
        return dict(scales=repzoo.create_model(name[: -len("-csla")] + "-hs"))


_BUILT = {}


def _timm_model(name: str, form: str, **kwargs):
    """``timm.create_model('repzoo_...', deploy=...)``; the plain build (``num_classes`` only) is made once
    per module and copied, so that checks that mutate it stay independent."""
    import copy

    if set(kwargs) <= {"num_classes"}:
        key = (name, form, kwargs.get("num_classes", 1000))
        if key not in _BUILT:
            if not any(k[0] == name for k in _BUILT):
                _BUILT.clear()  # one model (both forms) at a time: the checks of one model run together
            _BUILT[key] = _build(name, form, **kwargs)
        return copy.deepcopy(_BUILT[key])
    return _build(name, form, **kwargs)


def _build(name: str, form: str, **kwargs):
    torch.manual_seed(0)
    if form == "train":
        kwargs.update(_scales(name))
    return timm.create_model(rz_timm.timm_name(name), deploy=form == "deploy", **kwargs)


def _input_size(model) -> int:
    """timm's rule: the cfg's size for fixed-size models, else a small one (64: two maps at stride 32)."""
    cfg = model.pretrained_cfg
    return cfg["input_size"][-1] if cfg.get("fixed_input_size") else 64


def _spatial(size: int, reduction: int) -> int:
    return math.ceil(size / reduction)


def _close(a, b, tol=1e-4):
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


# ----------------------------------------------------------------------------- the checks

def check_forward_backward(name, form):
    model = _timm_model(name, form, num_classes=NUM_CLASSES).train()
    size = _input_size(model)
    out = model(torch.randn(2, 3, size, size))
    assert torch.is_tensor(out) and out.shape == (2, NUM_CLASSES) and not torch.isnan(out).any()
    out.mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert no_grad == frozen, f"parameters without a gradient: {no_grad[:5]}"
    if name.endswith("-csla") and form == "train":  # the constant scales, frozen by design
        scales = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, repzoo.layers.ScaleLayer)
                  for p, _ in mod.named_parameters(recurse=False)}
        assert frozen and all(n in scales or n.rpartition(".")[2].startswith("scale_") for n in frozen), frozen[:5]
    else:
        assert not frozen


def check_cfg_and_head(name, form):
    from timm.data import resolve_data_config

    model = _timm_model(name, form, num_classes=NUM_CLASSES).eval()
    cfg, sd = model.default_cfg, model.state_dict()
    assert cfg is model.pretrained_cfg or cfg == model.pretrained_cfg
    for key in CFG_FIELDS:
        assert key in cfg, key
    assert cfg["architecture"] == rz_timm.timm_name(name) and cfg["num_classes"] == model.num_classes == NUM_CLASSES
    assert model.num_features > 0 and model.head_hidden_size > 0
    assert cfg["classifier"] + ".weight" in sd and sd[cfg["classifier"] + ".weight"].shape == (NUM_CLASSES, model.head_hidden_size)
    firsts = (cfg["first_conv"],) if isinstance(cfg["first_conv"], str) else cfg["first_conv"]
    for first in firsts:
        owned = [k for k in sd if k.startswith(first + ".") and sd[k].dim() == 4 and sd[k].shape[1] == 3]
        assert owned, f"{first} holds no conv weight taking the 3 input channels"
        if not (form == "train" and name.startswith("OREPA-")):  # OREPA composes its stem kernel
            assert first + ".weight" in sd
    reduction = model.feature_info[-1]["reduction"]
    assert cfg["pool_size"] == tuple(_spatial(s, reduction) for s in cfg["input_size"][1:])
    assert resolve_data_config(model=model)["input_size"] == tuple(cfg["input_size"])
    registered = timm.models.get_pretrained_cfg(rz_timm.timm_name(name))
    assert (registered.input_size, registered.pool_size, registered.classifier) == \
        (tuple(cfg["input_size"]), cfg["pool_size"], cfg["classifier"])
    if form == "train":
        assert registered.first_conv == cfg["first_conv"]
    if getattr(model, "input_multiple", (1, 1)) != (1, 1):
        assert cfg["fixed_input_size"] and registered.fixed_input_size
        assert tuple(registered.min_input_size[1:]) == tuple(model.input_multiple)

    size = _input_size(model)
    x = torch.randn(1, 3, size, size)
    side = _spatial(size, reduction)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, model.num_features, side, side)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        assert _close(model.forward_head(feats), model(x))
        # no classifier: the pooled pre-logits
        model.reset_classifier(0)
        assert model.num_classes == 0 and model.default_cfg["num_classes"] == 0
        assert _close(model(x), pre)
        # no classifier, no pooling: the unpooled map (through the head's own layer where it pools early)
        model.reset_classifier(0, "")
        unpooled = model(x)
        width = model.head_hidden_size if model.pools_early else model.num_features
        assert unpooled.shape == (1, width, side, side)
        if not model.pools_early and not hasattr(model, "head_norm"):  # RepMLPNet normalizes before it pools
            assert torch.equal(unpooled, feats)
        model.reset_classifier(0, "max")
        assert _close(model(x), model.forward_head(feats, pre_logits=True))
    with torch.device("meta"):
        built = _build(name, form, num_classes=0, global_pool="")
    assert built.get_classifier().__class__ is torch.nn.Identity and built.global_pool.pool_type == ""
    built.load_state_dict(model.state_dict(), assign=True)
    with torch.no_grad():
        assert _close(built.eval()(x), unpooled)


def check_intermediates_and_features(name, form):
    from timm.data import resolve_data_config

    model = _timm_model(name, form, num_classes=NUM_CLASSES).eval()
    n = len(model.feature_info)
    size = _input_size(model)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert len(maps) == n >= 3
        for info, m in zip(model.feature_info, maps):
            assert m.shape == (1, info["num_chs"], _spatial(size, info["reduction"]), _spatial(size, info["reduction"]))
        assert _close(final, model.forward_features(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last_two) == 2 and all(torch.equal(a, b) for a, b in zip(last_two, maps[-2:]))
        early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(early, maps[:2]))
        _, picked = model.forward_intermediates(x, indices=[-1])
        assert torch.equal(picked[0], maps[-1])

    # timm.create_model(features_only=...) builds the wrappers (on the meta device: the plumbing and the
    # cfg); the same wrappers around copies of the model give the features
    import copy

    from repzoo.factory import features

    kinds = [dict(), dict(feature_cls="getter"), dict(feature_cfg=dict(feature_cls="getter", out_indices=(1, -1)))]
    channels = [model.feature_info[1]["num_chs"], model.feature_info[-1]["num_chs"]]
    for kind in kinds:
        indices = {} if "feature_cfg" in kind else dict(out_indices=(1, -1))
        with torch.device("meta"):
            wrapper = _build(name, form, features_only=True, **indices, **kind)
        assert wrapper.feature_info.channels() == channels
        assert wrapper.default_cfg["input_size"] == model.pretrained_cfg["input_size"]
        assert resolve_data_config(model=wrapper)["input_size"] == tuple(model.pretrained_cfg["input_size"])
        if kind:
            assert type(wrapper).__name__ == "FeatureGetterNet"
        wrapper = features(copy.deepcopy(model), (1, -1), kind.get("feature_cls"))
        with torch.no_grad():
            outs = wrapper.eval()(x)
        assert len(outs) == 2 and all(_close(o, m) for o, m in zip(outs, (maps[1], maps[-1])))


def check_torchscript(name, form):
    model = _timm_model(name, form, num_classes=NUM_CLASSES).eval()
    size = _input_size(model)
    x = torch.randn(1, 3, size, size)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert _close(scripted(x), model(x))


def check_fx(name, form):
    """torch.fx with timm's tracer settings (its leaf modules and wrapped functions), traced once: eval
    forward equal, a train step's backward reaches every trainable parameter, the weights are followed."""
    from timm.models import get_notrace_functions, get_notrace_modules

    model = _timm_model(name, form, num_classes=NUM_CLASSES)
    size = _input_size(model)
    x = torch.randn(2, 3, size, size)
    leaves = tuple(get_notrace_modules())

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    tracer = Tracer(autowrap_functions=tuple(get_notrace_functions()))
    traced = torch.fx.GraphModule(model, tracer.trace(model))
    assert sum(p.numel() for p in traced.parameters()) == sum(p.numel() for p in model.parameters())
    assert "_tensor_constant" not in traced.code  # no tensor computed at trace time (composed kernels, BN values)
    out = traced.train()(x)
    assert out.shape == (2, NUM_CLASSES)
    out.mean().backward()
    assert all(p.grad is not None for p in traced.parameters() if p.requires_grad)
    traced.eval()
    model.eval()
    with torch.no_grad():
        assert _close(traced(x), model(x))
        # the traced module follows its weights: change them, and the output changes as the model's does
        before = traced(x).clone()
        for p in traced.parameters():
            p.mul_(1.5)
        after = traced(x)
        assert not torch.allclose(after, before)
        assert _close(after, model(x))
        for p in traced.parameters():
            p.mul_(0).add_(torch.randn_like(p) * 0.05)
        assert _close(traced(x), model(x))


CHECKS = [check_forward_backward, check_cfg_and_head, check_intermediates_and_features, check_torchscript,
          check_fx]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__[len("check_"):])
@pytest.mark.parametrize("name", SAMPLE)
def test_contract_sample(name, check, form):
    check(name, form)


@pytest.mark.heavy
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__[len("check_"):])
@pytest.mark.parametrize("name", HEAVY_SAMPLE)
def test_contract_heavy_sample(name, check, form):
    check(name, form)


# every other model: the heavy tier (the largest sampled: models over HEAVY_MAX_PARAMS train-form parameters
# are left to the sample of their family, as timm leaves its largest out of its generic runs)
HEAVY_MAX_PARAMS = 70_000_000


@pytest.mark.heavy
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("check", [check_forward_backward, check_cfg_and_head, check_intermediates_and_features],
                         ids=lambda c: c.__name__[len("check_"):])
@pytest.mark.parametrize("name", [n for n in repzoo.list_models() if n not in SAMPLE + HEAVY_SAMPLE])
def test_contract_every_model(name, check, form):
    with torch.device("meta"):
        n = sum(p.numel() for p in repzoo.get_model_entry(name).builder().parameters())
    if n > HEAVY_MAX_PARAMS:
        pytest.skip(f"{n / 1e6:.0f}M parameters: sampled (its family's code runs in test_contract_sample)")
    check(name, form)
# ----------------------------------------------------------------------------- every model, cheaply

@pytest.mark.parametrize("name", repzoo.list_models())
def test_cfg_of_every_model_matches_the_model(name):
    """On the ``meta`` device, both forms: the cfg fields timm reads name the model's own modules, and the
    registered cfgs (packaged ``timm_cfgs.json``) are what the models say."""
    assert rz_timm.model_facts()[name] == rz_timm.compute_model_facts(name)
    for deploy in (False, True):
        kwargs = {} if deploy else _scales(name)
        with torch.device("meta"):
            model = timm.create_model(rz_timm.timm_name(name), deploy=deploy, **kwargs)
        cfg, sd = model.pretrained_cfg, model.state_dict()
        assert cfg["classifier"] + ".weight" in sd and model.head_hidden_size == sd[cfg["classifier"] + ".weight"].shape[1]
        firsts = (cfg["first_conv"],) if isinstance(cfg["first_conv"], str) else cfg["first_conv"]
        assert all(any(k.startswith(f + ".") and sd[k].shape[1] == 3 for k in sd) for f in firsts)
        reduction = model.feature_info[-1]["reduction"]
        assert cfg["pool_size"] == tuple(_spatial(s, reduction) for s in cfg["input_size"][1:])


def test_list_pretrained_lists_every_model_and_tag_with_weights():
    from repzoo.weights import manifest

    known = manifest.load_manifest()
    expected = {f"{rz_timm.timm_name(n)}.{tag}" for n in known.names() for tag in known.tags(n)}
    assert len({n for n in known.names()}) == 43
    assert set(timm.list_pretrained("repzoo_*")) == expected
    for name in expected:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.has_weights and cfg.num_classes == 1000


def test_repvggplus_trains_with_a_plain_loss_and_loads_the_released_keys():
    """timm's convention: the auxiliary heads only with ``aux_logits=True``; the default model still
    takes a released train file, which holds them."""
    with torch.device("meta"):
        full = repzoo.create_model("RepVGGplus-L2pse", aux_logits=True)
    torch.manual_seed(0)
    sd = {k: torch.randn(v.shape) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
          for k, v in full.state_dict().items()}
    sd = {k: (v.abs() + 0.5 if k.endswith("running_var") else v) for k, v in sd.items()}
    model = timm.create_model("repzoo_repvggplus_l2pse", checkpoint_path=None)
    loaded = repzoo.create_model("RepVGGplus-L2pse", checkpoint_path=sd)
    assert not hasattr(loaded, "stage1_aux") and any(k.startswith("stage1_aux") for k in sd)
    assert torch.equal(loaded.state_dict()["linear.weight"], sd["linear.weight"])
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert torch.is_tensor(out) and out.shape == (2, 1000)
