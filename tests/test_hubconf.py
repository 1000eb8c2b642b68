"""torch.hub entrypoints, generated from the registry."""
import importlib.util

import torch

import repzoo

from conftest import REPO_ROOT


def _hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", REPO_ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_model_has_a_hub_entry_with_a_docstring():
    hub = _hubconf()
    # what torch.hub.list reports: the public callables of hubconf.py
    entries = [n for n in dir(hub) if callable(getattr(hub, n)) and not n.startswith("_")]
    assert sorted(entries) == sorted(repzoo.get_model_entry(n).alias for n in repzoo.list_models())
    doc = hub.repvgg_d2se.__doc__
    assert "RepVGG-D2se" in doc and "deploy" in doc and "pretrained" in doc
    assert set(hub.dependencies) >= {"torch", "timm"}


def test_torch_hub_load_passes_create_model_keywords_through():
    model = torch.hub.load(str(REPO_ROOT), "repvgg_b1g4", source="local", deploy=True, num_classes=10)
    assert model.deploy and model.num_classes == 10
    assert model.pretrained_cfg["architecture"] == "RepVGG-B1g4"


def test_torch_hub_help_shows_the_docstring():
    """torch.hub.help reads GitHub repositories only; it returns the entry's __doc__ as torch finds the entry."""
    doc = torch.hub._load_entry_from_hubconf(_hubconf(), "repopt_vgg_b1_csla").__doc__
    assert "RepOpt-VGG-B1-csla" in doc and "pretrained" in doc and "features_only" in doc


def test_torch_hub_load_features_only_and_pretrained(tmp_path, monkeypatch):
    feats = torch.hub.load(str(REPO_ROOT), "repghostnet_0_5x", source="local", features_only=True, out_indices=(1, 4))
    assert feats.feature_info.reduction() == [4, 32]
    torch.manual_seed(0)
    ref = repzoo.create_model("RepVGG-A0").eval()
    (tmp_path / "m").mkdir()
    torch.save({"model": ref.state_dict()}, tmp_path / "m" / "RepVGG-A0-train.pth")
    monkeypatch.setenv("REPZOO_MIRROR", str(tmp_path / "m"))
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    model = torch.hub.load(str(REPO_ROOT), "repvgg_a0", source="local", pretrained=True, deploy=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert ((model(x) - ref(x)).norm() / ref(x).norm()) < 1e-5


def test_every_hub_entry_carries_its_builders_docstring():
    """What torch.hub.help shows is the model's own description, not only the shared template."""
    hub = _hubconf()
    for name in repzoo.list_models():
        entry = repzoo.get_model_entry(name)
        summary = (entry.builder.__doc__ or "").strip().splitlines()
        assert summary, f"{name}'s builder has no docstring"
        assert summary[0] in getattr(hub, entry.alias).__doc__, name
