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
