"""The OREPA family (29 models) against the authors' code (JUGGHM/OREPA_CVPR2022 @ 3ed037b): key signatures and order, parameter
and buffer counts (measured on JUGGHM/OREPA_CVPR2022 @ 3ed037b's models, below), exact conversion, the released file format, and the model contract."""
import math

import pytest
import torch

import repzoo
from repzoo.errors import IncompatibleCheckpointError

from conftest import meta_model, n_params, randomize_bn, rel_diff, signature

RESNETS = ["ResNet-18", "ResNet-34", "ResNet-50", "ResNet-101", "ResNet-18-1.5x", "ResNet-18-2x", "ResNeXt-50"]
VGGS = ["A0", "A1", "A2", "B1"]
NAMES = ([f"{t}{a}" for a in RESNETS for t in ("OREPA-", "DBB-", "")]
         + [f"{t}-RepVGG-{v}" for v in VGGS for t in ("OREPA", "Plain")])

#: measured on JUGGHM/OREPA_CVPR2022 @ 3ed037b (models/resnet.py, resnext.py, repvgg.py): train params, deploy params, constant buffers (count, numbers) — 1000 classes, BN statistics excluded.
TABLE = {
    "ResNet-18": (11_689_512, 11_684_712, 0, 0),
    "DBB-ResNet-18": (26_288_296, 11_684_712, 0, 0),
    "OREPA-ResNet-18": (37_756_041, 11_684_712, 57, 1_179_252),
    "ResNet-34": (21_797_672, 21_789_160, 0, 0),
    "DBB-ResNet-34": (49_901_224, 21_789_160, 0, 0),
    "OREPA-ResNet-34": (71_722_121, 21_789_160, 105, 2_335_108),
    "ResNet-50": (25_557_032, 25_530_472, 0, 0),
    "DBB-ResNet-50": (40_684_456, 25_530_472, 0, 0),
    "OREPA-ResNet-50": (68_579_977, 25_530_472, 57, 1_301_556),
    "ResNet-101": (44_549_160, 44_496_488, 0, 0),
    "DBB-ResNet-101": (73_089_448, 44_496_488, 0, 0),
    "OREPA-ResNet-101": (122_492_553, 44_496_488, 108, 2_454_989),
    "ResNet-18-1.5x": (25_901_896, 25_894_696, 0, 0),
    "DBB-ResNet-18-1.5x": (58_721_032, 25_894_696, 0, 0),
    "OREPA-ResNet-18-1.5x": (84_345_961, 25_894_696, 57, 2_625_876),
    "ResNet-18-2x": (45_693_032, 45_683_432, 0, 0),
    "DBB-ResNet-18-2x": (104_013_160, 45_683_432, 0, 0),
    "OREPA-ResNet-18-2x": (149_410_889, 45_683_432, 57, 4_643_892),
    "ResNeXt-50": (25_028_904, 24_994_792, 0, 0),
    "DBB-ResNeXt-50": (26_990_632, 24_994_792, 0, 0),
    "OREPA-ResNeXt-50": (63_711_625, 24_994_792, 57, 392_436),
    "Plain-RepVGG-A0": (8_313_880, 8_309_384, 0, 0),
    "OREPA-RepVGG-A0": (24_754_137, 8_309_384, 66, 600_543),
    "Plain-RepVGG-A1": (12_795_432, 12_789_864, 0, 0),
    "OREPA-RepVGG-A1": (39_712_905, 12_789_864, 66, 1_045_647),
    "Plain-RepVGG-A2": (25_507_752, 25_499_944, 0, 0),
    "OREPA-RepVGG-A2": (81_792_873, 25_499_944, 66, 2_304_847),
    "Plain-RepVGG-B1": (51_841_832, 51_829_480, 0, 0),
    "OREPA-RepVGG-B1": (167_951_433, 51_829_480, 84, 4_768_581),
}
CONSTANTS = ("weight_orepa_avg_avg", "weight_orepa_prior", "id_tensor", "weight_rbr_avg_avg", "weight_rbr_prior")


def shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def constant_buffers(model):
    return [b for n, b in model.named_buffers() if n.endswith(CONSTANTS)]


def test_the_29_models_are_registered_in_one_family():
    assert sorted(NAMES) == sorted(TABLE) and len(NAMES) == 29
    assert sorted(repzoo.list_models("*ResNet-*") + repzoo.list_models("*ResNeXt-*")
                  + repzoo.list_models("*-RepVGG-*")) == sorted(NAMES)
    assert {repzoo.get_model_entry(n).family for n in NAMES} == {"OREPA"}
    assert repzoo.get_model_entry("orepa_resnet_18_2x").name == "OREPA-ResNet-18-2x"
    assert repzoo.get_model_entry("DBB-ResNeXt-50").config["block_type"] == "DBB"


@pytest.mark.parametrize("name", NAMES)
def test_signature_key_order_and_counts(name):
    """Train, deploy and converted-in-place forms on the meta device, against the signature files and the counts above."""
    sig = signature(name)
    train, deploy = meta_model(name), meta_model(name, deploy=True)
    assert list(shapes(train).items()) == list(sig["signature_train"].items())  # keys, shapes and their order
    assert list(shapes(deploy).items()) == list(sig["signature_deploy"].items())
    assert repzoo.reparam.model_signature(train, True) == {k: tuple(v) for k, v in sig["signature_deploy"].items()}
    buffers = constant_buffers(train)
    assert (n_params(train), n_params(deploy), len(buffers), sum(b.numel() for b in buffers)) == TABLE[name]
    converted = repzoo.reparameterize(train)
    assert list(shapes(converted).items()) == list(sig["signature_deploy"].items())
    assert [i["reduction"] for i in train.feature_info] == [4, 8, 16, 32]
    assert [i["module"] for i in train.feature_info] == ["stage1", "stage2", "stage3", "stage4"]


# ----------------------------------------------------------------------------- exact conversion

@torch.no_grad()
def random_model(name: str, seed: int = 0):
    """``name`` in float64 (10 classes), every parameter and constant buffer random — ``vector`` rows,
    the zero-initialised identity convs, the averaging and prior buffers — and every BN non-trivial."""
    with torch.device("meta"):
        model = repzoo.create_model(name, num_classes=10)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    for n, p in model.named_parameters():
        p.uniform_(-1, 1, generator=g)
        if p.dim() == 4 or n.endswith("linear.weight"):
            p.mul_(math.sqrt(3.0 / p[0].numel()))
    for b in model.buffers():
        b.uniform_(-1, 1, generator=g) if b.is_floating_point() else b.zero_()
    return randomize_bn(model, g).eval()


#: A real float64 forward for every model of at most 80M train-time parameters. The six larger ones
#: (OREPA-ResNet-101, OREPA-ResNet-18-1.5x, OREPA-/DBB-ResNet-18-2x, OREPA-RepVGG-A2/B1) are the
#: layer classes of OREPA-ResNet-50, -18 and -RepVGG-A0/A1 at other depths and widths: their structure
#: is checked on the meta device above, and a float64 forward of them adds minutes, not coverage.
EXACT = [n for n in NAMES if TABLE[n][0] <= 80_000_000]
INPUTS = [(2, 3, 32, 32), (1, 3, 40, 56)]  # one square, one not


def freeze_online_kernels(model):
    """Each OREPA layer's online kernel, computed once (the train-form reference outputs at the second
    input size then reuse it: eval mode, no gradients, so it is exactly what each forward computes)."""
    for m in model.modules():
        gen = getattr(m, "weight_gen", None)
        if callable(gen):
            kernel = gen()
            m.weight_gen = lambda kernel=kernel: kernel


@pytest.mark.parametrize("name", EXACT)
def test_train_reparameterized_and_converted_on_load_agree_in_float64(name, float64):
    model = random_model(name)
    train_sd = dict(model.state_dict())
    torch.manual_seed(1)
    xs = [torch.randn(*s) for s in INPUTS]
    with torch.no_grad():
        ref = [model(xs[0])]
        freeze_online_kernels(model)
        ref.append(model(xs[1]))
        for m in model.modules():
            m.__dict__.pop("weight_gen", None)
        repzoo.reparameterize(model)
        assert model.deploy and list(shapes(model)) == list(signature(name)["signature_deploy"])
        loaded = repzoo.create_model(name, num_classes=10, deploy=True, checkpoint_path=train_sd).eval()
        for x, y in zip(xs, ref):
            assert y.abs().max() > 0 and torch.isfinite(y).all()
            assert rel_diff(model(x), y) < 1e-10
            assert rel_diff(loaded(x), y) < 1e-10


def test_converting_twice_is_a_no_op():
    with torch.device("meta"):
        model = repzoo.reparameterize(repzoo.create_model("OREPA-ResNet-50"))
        keys = list(model.state_dict())
        assert list(repzoo.reparameterize(model).state_dict()) == keys


# ----------------------------------------------------------------------------- the released format

def official_file(tmp_path, model, name):
    """What train.py saves: DDP's ``module.`` prefixes inside ``{'state_dict': …}`` with the run's state."""
    path = tmp_path / f"{name}.pth.tar"
    torch.save({"epoch": 120, "arch": name.split("-", 1)[1], "best_acc1": torch.tensor(72.13),
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0, 1]}]},
                "scheduler": {"last_epoch": 5}}, path)
    return path


def test_a_released_style_file_loads_strictly_with_its_own_constants(tmp_path):
    """A float32 train.py file: loaded as it is, converted on load, and — in a float64 model — used with
    its float32-rounded constants (1/9 = 0.1111111119389534), exactly, in both forms."""
    name = "OREPA-ResNet-18"
    torch.manual_seed(0)
    ref = randomize_bn(repzoo.create_model(name)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))  # vector rows and the zero-initialised idconv1 included
        for n, b in ref.named_buffers():
            if n.endswith(("weight_orepa_prior", "id_tensor")):
                b.add_(0.01 * torch.randn_like(b))  # a file's constants are what the model must use
    path = official_file(tmp_path, ref, name)
    model = repzoo.create_model(name, checkpoint_path=path).eval()
    sd = model.state_dict()
    assert sd.keys() == ref.state_dict().keys() and all(torch.equal(sd[k], v) for k, v in ref.state_dict().items())
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        y = ref(x)
        assert torch.equal(model(x), y)
        deploy = repzoo.create_model(name, deploy=True, checkpoint_path=path).eval()  # converted on load
        assert deploy.deploy and rel_diff(deploy(x), y) < 1e-5

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = repzoo.create_model(name, checkpoint_path=path).eval()
        deploy = repzoo.create_model(name, deploy=True, checkpoint_path=path).eval()
    finally:
        torch.set_default_dtype(old)
    avg = model.stage1[0].conv1.weight_orepa_avg_avg
    assert avg.dtype == torch.float64 and avg[0, 0].item() == 0.1111111119389534  # the file's, not 1/9
    assert torch.equal(model.stage1[0].conv1.weight_orepa_prior, ref.stage1[0].conv1.weight_orepa_prior.double())
    with torch.no_grad():
        y64 = model(x.double())
        assert rel_diff(y64, y.double()) < 1e-5
        assert rel_diff(deploy(x.double()), y64) < 1e-10  # converted in float64 from the float32 file


def test_a_file_without_its_constant_buffers_is_refused(tmp_path):
    with torch.device("meta"):
        model = repzoo.create_model("OREPA-ResNet-18")
    sd = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()
          if not k.endswith("stage2.0.conv1.id_tensor")}
    with pytest.raises(IncompatibleCheckpointError, match="stage2.0.conv1.id_tensor"):
        repzoo.create_model("OREPA-ResNet-18", checkpoint_path={"state_dict": sd})
    with pytest.raises(IncompatibleCheckpointError):
        repzoo.create_model("OREPA-ResNet-18", deploy=True, checkpoint_path={"state_dict": sd})


# ----------------------------------------------------------------------------- the contract

def test_block_type_is_a_constructor_argument():
    from repzoo.models.orepa import OREPAResNet, RESNETS

    with torch.device("meta"):
        kinds = {bt: OREPAResNet(**RESNETS["ResNet-18"], block_type=bt) for bt in ("OREPA", "DBB", "plain")}
    assert [type(m.stage1[0].conv1).__name__ for m in kinds.values()] == ["OREPA", "DiverseBranchBlock", "ConvBnBlock"]
    assert type(kinds["OREPA"].stage0.conv1).__name__ == "OREPALargeConv"
    with pytest.raises(ValueError, match="block_type"):
        OREPAResNet(block_type="RepVGG")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_features_only_and_torchscript_of_a_deploy_model():
    torch.manual_seed(0)
    feats = repzoo.create_model("OREPA-ResNet-18", features_only=True, out_indices=(0, 3)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outs = feats(x)
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 16, 24), (512, 2, 3)]
    deploy = repzoo.reparameterize(repzoo.create_model("OREPA-ResNet-18", num_classes=4)).eval()
    scripted = torch.jit.script(deploy)
    with torch.no_grad():
        assert torch.allclose(scripted(x), deploy(x), rtol=1e-5, atol=1e-5)
        _, inter = deploy.forward_intermediates(x)
    assert [t.shape[-1] for t in inter] == [24, 12, 6, 3]


def test_demo_runs(monkeypatch, capsys):
    import repzoo.bench
    from repzoo.cli import main

    monkeypatch.setattr(repzoo.bench, "interleaved_images_per_second", lambda models, x: [1.0] * len(models))  # the timing is not under test
    assert main(["demo", "OREPA-ResNet-18", "--image-size", "32", "--batch-size", "1"]) == 0
    out = capsys.readouterr().out
    assert "(equal)" in out and "37,756,041" in out and "11,684,712" in out
