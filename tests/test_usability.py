"""What a timm user tries: names, tags, feature levels, scripting, key styles, errors and files."""
import os
import stat
import subprocess
import sys
import warnings

import pytest
import torch

import repzoo
from repzoo.errors import InvalidArgumentError, UnknownModelError, WeightsUnavailableError

from conftest import randomize_bn, rel_diff

GHOST_ORDER = ["0.5x", "0.58x", "0.8x", "1.0x", "1.11x", "1.3x", "1.5x", "2.0x"]


# --------------------------------------------------------------------------- names and order


def test_widths_sort_as_numbers():
    assert repzoo.list_models("RepGhostNet-*") == [f"RepGhostNet-{w}" for w in GHOST_ORDER]
    targets = [n for n in repzoo.list_models("RepOpt-GhostNet-*") if n.count("-") == 2]
    assert targets == [f"RepOpt-GhostNet-{w}" for w in GHOST_ORDER]
    vgg = repzoo.list_models("RepVGG-*")
    assert vgg.index("RepVGG-A0") < vgg.index("RepVGG-A1") < vgg.index("RepVGG-B1") < vgg.index("RepVGG-B1g2") \
        < vgg.index("RepVGG-B1g4") < vgg.index("RepVGG-B2")


def test_timm_name_dot_tag():
    model = repzoo.create_model("RepVGG-A0.in1k")  # no weights asked for: the name resolves, nothing is fetched
    assert model.pretrained_cfg["architecture"] == "RepVGG-A0"
    assert repzoo.get_model_entry("RepGhostNet-0.5x.repghost_in1k").name == "RepGhostNet-0.5x"
    with pytest.raises(InvalidArgumentError, match="pass one"):
        repzoo.create_model("RepVGG-A0.in1k", tag="other")
    with pytest.raises(UnknownModelError):
        repzoo.create_model("RepVGG-Z0.in1k")


@pytest.mark.parametrize("timm_name, name", [("repghostnet_100", "RepGhostNet-1.0x"),
                                              ("repghostnet_050", "RepGhostNet-0.5x"),
                                              ("repghostnet_111", "RepGhostNet-1.11x")])
def test_timm_names_of_shared_variants_resolve_with_a_note(timm_name, name):
    with pytest.warns(UserWarning, match=f"another project's name for {name}"):
        assert repzoo.get_model_entry(timm_name).name == name


def test_default_cfg_and_pretrained_cfg_overlay():
    model = repzoo.create_model("RepVGG-A0", pretrained_cfg_overlay=dict(crop_pct=0.95, input_size=(3, 256, 256)))
    assert model.default_cfg is model.pretrained_cfg
    assert model.pretrained_cfg["crop_pct"] == 0.95 and model.pretrained_cfg["input_size"] == (3, 256, 256)
    assert model.pretrained_cfg["interpolation"] == "bilinear"  # the rest is the manifest's


# --------------------------------------------------------------------------- feature levels


def test_out_indices_out_of_range_is_an_error():
    with pytest.raises(InvalidArgumentError, match="5 feature levels"):
        repzoo.create_model("RepVGG-A0", features_only=True, out_indices=(5,))
    with pytest.raises(InvalidArgumentError):
        repzoo.create_model("RepVGG-A0", features_only=True, out_indices=(-6,))
    feats = repzoo.create_model("RepVGG-A0", features_only=True, out_indices=(-1,))
    assert feats.feature_info.channels() == [1280]


@pytest.mark.parametrize("name", ["RepVGG-A0", "RepGhostNet-0.5x"])
def test_forward_intermediates_matches_features_only(name):
    torch.manual_seed(0)
    import copy

    from repzoo.factory import features

    model = repzoo.create_model(name, num_classes=3).eval()
    stages = features(copy.deepcopy(model))  # what features_only=True builds, with the same weights
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x))
        for a, b in zip(inter, stages.eval()(x)):
            assert torch.equal(a, b)
        assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
        last_two = model.forward_intermediates(x, indices=[-2, -1], intermediates_only=True)
        assert [t.shape for t in last_two] == [t.shape for t in inter[-2:]]


@pytest.mark.parametrize("name", ["RepVGGplus-L2pse", "RepOpt-VGG-B1-hs"])
def test_forward_intermediates_shapes_follow_feature_info(name):
    """Families whose feature modules do not chain (RepVGGplus's split stage3) step through them right."""
    with torch.device("meta"):
        model = repzoo.create_model(name).eval()
        final, inter = model.forward_intermediates(torch.empty(1, 3, 64, 96))
    assert [t.shape[1] for t in inter] == [i["num_chs"] for i in model.feature_info]
    assert [64 // t.shape[2] for t in inter] == [i["reduction"] for i in model.feature_info]
    assert final.shape == inter[-1].shape


# --------------------------------------------------------------------------- TorchScript, tracing, compile


@pytest.mark.parametrize("name", repzoo.list_models())
def test_every_deploy_model_scripts(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        with torch.device("meta"):
            scripted = torch.jit.script(repzoo.create_model(name, deploy=True).eval())
    assert "forward" in scripted.code


@pytest.mark.parametrize("name", ["RepVGG-A0", "RepGhostNet-0.5x", "RepOpt-GhostNet-0.5x-hs"])
def test_scripted_and_traced_deploy_models_compute_the_same(name):
    torch.manual_seed(0)
    model = randomize_bn(repzoo.create_model(name, num_classes=8)).eval()
    repzoo.reparameterize(model)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = model(x)
        assert rel_diff(torch.jit.script(model)(x), ref) < 1e-6
        assert rel_diff(torch.jit.trace(model, x)(x), ref) < 1e-6


@pytest.mark.heavy  # torch.compile
@pytest.mark.parametrize("name", ["RepVGG-A0", "RepGhostNet-0.5x"])
def test_deploy_model_runs_under_torch_compile(name):
    torch.manual_seed(0)
    model = repzoo.create_model(name, deploy=True, num_classes=8).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        compiled = torch.compile(model, backend="eager" if not _has_compiler() else "inductor")
        assert rel_diff(compiled(x), model(x)) < 1e-5


def _has_compiler() -> bool:
    import shutil

    return shutil.which(os.environ.get("CXX", "c++")) is not None or shutil.which("gcc") is not None


# --------------------------------------------------------------------------- key styles of a user's file


def test_a_timm_keyed_file_loads_through_checkpoint_path(tmp_path, float64):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(1)
    ref = randomize_bn(timm.create_model("repvgg_a0", pretrained=False)).eval()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected = ref(x)
        for deploy in (False, True):
            model = repzoo.create_model("RepVGG-A0", checkpoint_path=path, deploy=deploy).eval()
            assert rel_diff(model(x), expected) < 1e-10


def test_a_timm_keyed_repghostnet_loads_through_checkpoint_path(tmp_path, float64):
    timm = pytest.importorskip("timm")

    torch.manual_seed(2)
    ref = randomize_bn(timm.create_model("repghostnet_050", pretrained=False)).eval()
    model = repzoo.create_model("RepGhostNet-0.5x", checkpoint_path=ref.state_dict()).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert rel_diff(model(x), ref(x)) < 1e-10


# --------------------------------------------------------------------------- errors and help


def test_no_weights_error_lists_only_registered_models():
    with pytest.raises(WeightsUnavailableError) as info:
        repzoo.create_model("RepOpt-VGG-B1-hs", pretrained=True)
    text = str(info.value)
    listed = text.split("Models with released weights:")[1]
    names = [n.strip().rstrip(".") for n in listed.split(",")]
    assert names and set(names) <= set(repzoo.list_models())
    assert "RepVGG-A0" in names and "RepOpt-VGG-B1-hs" not in names


def test_no_network_fails_fast_without_hub_retries(monkeypatch):
    """Connections refused (no network): the Hub is not asked online, so no retries and back-offs happen."""
    import huggingface_hub

    from repzoo.weights import hub
    from repzoo.weights.manifest import Source

    calls = []
    real = huggingface_hub.hf_hub_download

    def spy(*args, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("REPZOO_PROGRESS", "0")
    with pytest.raises(WeightsUnavailableError) as info:
        hub.fetch("x.safetensors", sources=[Source("url", "http://127.0.0.1:9/x.safetensors"),
                                            Source("hf", "timm/x", filename="model.safetensors")])
    assert calls == [True]  # the Hugging Face cache was looked at, the network never
    assert "no network" in str(info.value) and "REPZOO_OFFLINE=1" in str(info.value)


def test_list_into_a_closed_pipe_prints_no_traceback():
    exe = [sys.executable, "-c", "import sys; from repzoo.cli import main; sys.exit(main(sys.argv[1:]))", "list"]
    proc = subprocess.run(" ".join(f"'{a}'" for a in exe) + " | head -1", shell=True, capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == repzoo.list_models()[0]
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_files_repzoo_writes_follow_the_umask(tmp_path):
    from repzoo.cli import main

    old = os.umask(0o022)
    try:
        train = tmp_path / "train.pth"
        torch.save(repzoo.create_model("RepVGG-A0").state_dict(), train)
        for ext in ("safetensors", "pth"):
            out = tmp_path / f"deploy.{ext}"
            assert main(["convert", "RepVGG-A0", str(train), str(out)]) == 0
            assert stat.S_IMODE(out.stat().st_mode) == 0o644
    finally:
        os.umask(old)
