"""pretrained=True for the families beyond RepVGG: files the tests write in each release's format, served from
a mirror folder or a local HTTP mirror, through the manifest's records."""
import pytest
import torch

import repzoo

from conftest import randomize_bn
from httpserver import Server, file_response


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    folder = tmp_path / "mirror"
    folder.mkdir()
    monkeypatch.setenv("REPZOO_MIRROR", str(folder))
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    monkeypatch.setenv("REPZOO_PROGRESS", "0")
    return folder


def _random_state(name):
    torch.manual_seed(0)
    return {k: v.clone() for k, v in randomize_bn(repzoo.create_model(name)).state_dict().items()}


def test_repmlpnet_official_release_in_both_forms(mirror):
    """The authors' training save (``{'model': …}`` with ``module.`` keys) from the manifest's file name."""
    from repzoo.weights.manifest import load_manifest

    name = "RepMLPNet-T224"
    state = _random_state(name)
    record = load_manifest().weights(name)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 99}, mirror / record.files[0].file_name)
    train = repzoo.create_model(name, pretrained=True)
    assert all(torch.equal(train.state_dict()[k], v) for k, v in state.items())
    assert train.pretrained_cfg["top1"] == pytest.approx(76.62) and train.pretrained_cfg["crop_pct"] == 1.0
    deploy = repzoo.create_model(name, pretrained=True, deploy=True).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = train.eval()(x)
        assert ((deploy(x) - ref).norm() / ref.norm()) < 1e-5  # float32


def test_repmlpnet_mmpretrain_rehost_over_http(tmp_path, monkeypatch):
    """mmpretrain's converted B224 (``{'meta', 'state_dict'}``, ``backbone.`` keys), its own eval transform."""
    from timm.data import create_transform, resolve_data_config

    from repzoo.weights.manifest import load_manifest

    name = "RepMLPNet-B224"
    state = _random_state(name)
    record = load_manifest().weights(name, "mmpretrain_in1k")
    buf = tmp_path / "f.pth"
    torch.save({"meta": {"epoch": 0}, "state_dict": {_to_mmpretrain(k): v for k, v in state.items()}}, buf)
    data = buf.read_bytes()
    monkeypatch.setenv("REPZOO_PROGRESS", "0")
    with Server({f"/zoo/{record.files[0].file_name}": lambda req: file_response(req, data)}) as srv:
        monkeypatch.setenv("REPZOO_MIRROR", srv.url + "/zoo")  # a mirror URL is tried before the public source
        model = repzoo.create_model(name, pretrained=True, tag="mmpretrain_in1k")
        assert srv.count() == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    cfg = resolve_data_config(model=model)
    assert cfg["crop_mode"] == "squash" and cfg["crop_pct"] == 0.875
    assert "Resize(size=(256, 256)" in repr(create_transform(**cfg))  # both sides, aspect not kept


def _to_mmpretrain(key: str) -> str:
    """mmpretrain's name of an official RepMLPNet key (the renaming of the reference study, §11)."""
    for a, b in (("conv_embedding.conv.", "backbone.patch_embed.projection."),
                 ("conv_embedding.bn.", "backbone.patch_embed.norm."), ("head_norm.", "backbone.final_norm."),
                 ("head.", "head.fc."), ("embeds.", "backbone.downsample_layers.")):
        if key.startswith(a):
            return b + key[len(a):]
    key = key.replace(".gp.fc1.", ".gp.conv1.conv.").replace(".gp.fc2.", ".gp.conv2.conv.")
    return "backbone." + key.replace(".prebn1.", ".norm1.").replace(".prebn2.", ".norm2.")
