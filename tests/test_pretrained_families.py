"""pretrained=True for the families beyond RepVGG: files the tests write in each release's format, served from
a mirror folder or a local HTTP mirror, through the manifest's records."""
import pytest
import torch

import repzoo
from repzoo.registry import get_model_entry

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
    """mmpretrain's name of an official RepMLPNet key (open-mmlab/mmpretrain ``mmpretrain/models/backbones/repmlp.py``'s key names)."""
    for a, b in (("conv_embedding.conv.", "backbone.patch_embed.projection."),
                 ("conv_embedding.bn.", "backbone.patch_embed.norm."), ("head_norm.", "backbone.final_norm."),
                 ("head.", "head.fc."), ("embeds.", "backbone.downsample_layers.")):
        if key.startswith(a):
            return b + key[len(a):]
    key = key.replace(".gp.fc1.", ".gp.conv1.conv.").replace(".gp.fc2.", ".gp.conv2.conv.")
    return "backbone." + key.replace(".prebn1.", ".norm1.").replace(".prebn2.", ".norm2.")


def test_orepa_release_over_http_in_both_forms(tmp_path, monkeypatch):
    """OREPA's train.py save (``{'epoch', 'arch', 'state_dict': {'module.…'}, 'best_acc1', 'optimizer'}``), no
    published hash: recorded at first use, checked at the next; the constant buffers come from the file."""
    from repzoo.weights.manifest import load_manifest

    name = "OREPA-RepVGG-A0"
    torch.manual_seed(0)
    model = randomize_bn(repzoo.create_model(name))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # every branch weight and ``vector`` off its initial value
    state = {k: v.clone() for k, v in model.state_dict().items()}
    record = load_manifest().weights(name)
    assert record.files[0].sha256 is None and record.files[0].sources[0].kind == "gdrive"
    buf = tmp_path / "f.pth.tar"
    torch.save({"epoch": 120, "arch": "RepVGG-A0", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "best_acc1": torch.tensor(73.04), "optimizer": {"state": {}, "param_groups": []}}, buf)
    data = buf.read_bytes()
    monkeypatch.setenv("REPZOO_PROGRESS", "0")
    with Server({f"/zoo/{record.files[0].file_name}": lambda req: file_response(req, data)}) as srv:
        monkeypatch.setenv("REPZOO_MIRROR", srv.url + "/zoo")
        train = repzoo.create_model(name, pretrained=True)
        deploy = repzoo.create_model(name, pretrained=True, deploy=True).eval()
        assert srv.count() == 1  # the second load is the cached file, checked against its first-use record
    assert all(torch.equal(train.state_dict()[k], v) for k, v in state.items())
    assert train.pretrained_cfg["top1"] == pytest.approx(73.04)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        ref = train.eval()(x)
        assert ((deploy(x) - ref).norm() / ref.norm()) < 1e-5  # float32


def test_orepa_reported_results_in_model_info():
    """The OREPA README's table (JUGGHM/OREPA_CVPR2022 @ 3ed037b, README.md): top-1, training GPU memory and time per batch."""
    expected = {"OREPA-ResNet-18": (72.13, 5.2, 0.120), "DBB-ResNet-18": (71.77, 7.5, 0.241),
                "ResNet-18": (71.21, 4.2, 0.086), "OREPA-ResNeXt-50": (77.66, 13.0, 0.343),
                "OREPA-ResNet-18-2x": (75.61, 10.4, 0.229), "OREPA-RepVGG-A2": (76.72, 7.4, 0.210)}
    for name, (top1, memory, seconds) in expected.items():
        reported = repzoo.model_info(name)["reported"]
        assert (reported["top1"], reported["train_gpu_memory_gb"], reported["train_time_per_batch_s"]) == \
            (top1, memory, seconds), name
        assert "V100" in reported["setting"]
    with_reports = [n for n in repzoo.list_models() if get_model_entry(n).reported]
    assert len(with_reports) == 21  # the first table's 18 filled cells, the second's 3 OREPA RepVGGs
    assert not repzoo.model_info("Plain-RepVGG-A0")["reported"]  # the paper's baseline is RepVGG's block
    for name in with_reports:  # a released model's manifest top-1 is the reported one
        tags = repzoo.model_info(name)["pretrained_tags"]
        if tags:
            assert repzoo.model_info(name)["pretrained_cfg"]["top1"] == repzoo.model_info(name)["reported"]["top1"]
