"""RepVGG / RepVGGplus against the reference: key signatures, parameter counts, exact conversion."""

import pytest
import torch

import repzoo
from repzoo.layers.se import SEBlock

from conftest import randomize_bn, rel_diff, signature

# Trainable parameters of the train-time and deploy forms (1000 classes), counted on the authors' builders
# (DingXiaoH/RepVGG @ eae7c52, repvgg.py and repvggplus.py; the deploy form after their switch_to_deploy).
PARAMS = {
    "RepVGG-A0": (9_108_968, 8_309_384),
    "RepVGG-A1": (14_092_264, 12_789_864),
    "RepVGG-A2": (28_210_600, 25_499_944),
    "RepVGG-B0": (15_817_960, 14_339_048),
    "RepVGG-B1": (57_415_016, 51_829_480),
    "RepVGG-B1g2": (45_782_376, 41_360_104),
    "RepVGG-B1g4": (39_966_056, 36_125_416),
    "RepVGG-B2": (89_022_376, 80_315_112),
    "RepVGG-B2g2": (70_846_376, 63_956_712),
    "RepVGG-B2g4": (61_758_376, 55_777_512),
    "RepVGG-B3": (123_085_288, 110_960_872),
    "RepVGG-B3g2": (96_911_848, 87_404_776),
    "RepVGG-B3g4": (83_825_128, 75_626_728),
    "RepVGG-D2se": (133_334_836, 120_387_572),
    "RepVGGplus-L2pse": (146_062_864, 127_151_960),
}
NAMES = list(PARAMS)


def shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_every_repvgg_variant_is_covered():
    assert sorted(repzoo.list_models("RepVGG*")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_signatures_and_parameter_counts(name):
    sig = signature(name)
    kwargs = dict(aux_logits=True) if name.startswith("RepVGGplus") else {}  # the released files hold the aux heads
    with torch.device("meta"):
        train = repzoo.create_model(name, **kwargs)
        deploy = repzoo.create_model(name, deploy=True)
        converted = repzoo.reparameterize(repzoo.create_model(name))
    assert shapes(train) == sig["signature_train"]
    assert list(shapes(train)) == list(sig["signature_train"])  # the released files' key order too
    assert shapes(deploy) == sig["signature_deploy"]
    assert shapes(converted) == sig["signature_deploy"]
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(train), count(deploy)) == PARAMS[name]


INPUTS = [(2, 3, 32, 32), (1, 3, 40, 72)]  # one square, one not


@pytest.mark.parametrize("name", NAMES)
def test_conversion_is_exact_in_float64(name, float64):
    """Train-time vs reparameterized vs converted-on-load, on random weights and BN statistics."""
    torch.manual_seed(0)
    model = randomize_bn(repzoo.create_model(name)).eval()
    train_sd = dict(model.state_dict())
    xs = [torch.randn(*s) for s in INPUTS]
    with torch.no_grad():
        ref = [model(x) for x in xs]
        repzoo.reparameterize(model)
        assert model.deploy and not any("rbr_dense" in k for k in model.state_dict())
        loaded = repzoo.create_model(name, deploy=True, checkpoint_path=train_sd).eval()
        for x, y in zip(xs, ref):
            assert y.abs().max() > 0
            assert rel_diff(model(x), y) < 1e-10
            assert rel_diff(loaded(x), y) < 1e-10


def test_reparameterize_is_idempotent_and_works_on_a_users_model(float64):
    torch.manual_seed(1)

    class UserNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = randomize_bn(repzoo.create_model("RepVGG-A0", num_classes=0))
            self.head = torch.nn.Linear(1280, 3)

        def forward(self, x):
            return self.head(self.backbone(x))

    net = UserNet().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = net(x)
        repzoo.reparameterize(net)
        first = {k: v.clone() for k, v in net.state_dict().items()}
        repzoo.reparameterize(net)
        assert net.state_dict().keys() == first.keys()
        assert all(torch.equal(first[k], v) for k, v in net.state_dict().items())
        assert rel_diff(net(x), y) < 1e-10


def test_conversion_follows_model_dtype_and_device():
    model = randomize_bn(repzoo.create_model("RepVGG-A0")).eval().half()
    repzoo.reparameterize(model)
    assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_repvggplus_train_mode_returns_the_reference_dict_and_eval_logits():
    """The numbers of both forms are compared in test_conversion_is_exact_in_float64. The auxiliary
    heads are opt-in (timm's convention: ``forward`` returns the logits)."""
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    plain = repzoo.create_model("RepVGGplus-L2pse", num_classes=7)
    assert torch.is_tensor(plain.train()(x)) and not hasattr(plain, "stage1_aux")
    model = repzoo.create_model("RepVGGplus-L2pse", num_classes=7, aux_logits=True)
    out = model.train()(x)
    assert set(out) == {"main", "stage1_aux", "stage2_aux", "stage3_first_aux"}
    assert all(v.shape == (2, 7) for v in out.values())
    logits = model.eval()(x)
    assert torch.is_tensor(logits) and logits.shape == (2, 7)
    repzoo.reparameterize(model)
    assert not any(k.startswith(("stage1_aux", "stage2_aux", "stage3_first_aux")) for k in model.state_dict())
    assert torch.is_tensor(model.train()(x))  # the deploy form has no aux heads, also in train mode


def test_d2se_se_pools_globally(float64):
    """Square input: equals the reference's avg_pool2d(kernel=W); non-square: the global mean."""
    torch.manual_seed(3)
    se = SEBlock(32, 2)

    def by_hand(x, pooled):
        return x * torch.sigmoid(se.up(torch.relu(se.down(pooled))))

    square = torch.randn(2, 32, 6, 6)
    ref_pool = torch.nn.functional.avg_pool2d(square, kernel_size=square.size(3))
    assert rel_diff(se(square), by_hand(square, ref_pool)) < 1e-12
    wide = torch.randn(2, 32, 4, 9)
    assert rel_diff(se(wide), by_hand(wide, wide.mean(dim=(2, 3), keepdim=True))) < 1e-12


def test_grouped_identity_kernel_matches_reference_rule():
    from repzoo.reparam import identity_kernel

    ident = identity_kernel(8, groups=4, kernel_size=3)
    assert ident.shape == (8, 2, 3, 3) and ident.sum() == 8
    for i in range(8):
        assert ident[i, i % 2, 1, 1] == 1
