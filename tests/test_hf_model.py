"""Sharing as timm users share: timm's ``save_for_hf`` folder (what ``push_to_hf_hub`` uploads) and
repzoo's one-line ``repzoo.save_for_hf``, loaded back with ``timm.create_model('local-dir:...')`` and
``repzoo.create_model('local-dir:...' / 'hf-hub:owner/name')`` in either form, over a folder and a Hub
endpoint on 127.0.0.1."""
import json
import os

import pytest
import torch

import repzoo
from conftest import randomize_bn, rel_diff
from httpserver import Response, Server, file_response

timm = pytest.importorskip("timm")
import repzoo.integrations.timm  # noqa: E402  (registers the models)

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def _fine_tuned():
    """A RepVGG-A0 with a 5-class head after one SGD step, as a user would have it."""
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("repzoo_repvgg_a0", num_classes=5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model.train()(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    return model.eval()


def test_timm_save_for_hf_folder_loads_in_timm_and_repzoo_in_both_forms(tmp_path, float64):
    from timm.models import save_for_hf

    model = _fine_tuned()
    model.pretrained_cfg = dict(model.pretrained_cfg, crop_pct=0.95)  # the fine-tuner's eval config
    save_for_hf(model, str(tmp_path / "share"), safe_serialization=True)
    config = json.loads((tmp_path / "share" / "config.json").read_text())
    assert config["architecture"] == "repzoo_repvgg_a0" and config["num_classes"] == 5
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        ref = model(x)
        back = timm.create_model(f"local-dir:{tmp_path / 'share'}", pretrained=True).eval()
        assert back.num_classes == 5 and rel_diff(back(x), ref) < 1e-12
        train = repzoo.create_model(f"local-dir:{tmp_path / 'share'}").eval()
        assert not train.deploy and rel_diff(train(x), ref) < 1e-12
        deploy = repzoo.create_model(f"local-dir:{tmp_path / 'share'}", deploy=True).eval()  # converted on load
        assert deploy.deploy and rel_diff(deploy(x), ref) < 1e-10
    for m in (back, train, deploy):
        assert m.pretrained_cfg["crop_pct"] == 0.95 and m.pretrained_cfg["num_classes"] == 5
    assert timm.data.resolve_data_config(model=deploy)["crop_pct"] == 0.95
    with pytest.raises(repzoo.InvalidArgumentError):
        repzoo.create_model(f"local-dir:{tmp_path / 'share'}", pretrained=True)


def test_repzoo_save_for_hf_writes_a_card_and_loads_from_a_hub_endpoint(tmp_path, monkeypatch, float64):
    import huggingface_hub.constants as constants

    model = _fine_tuned()
    repzoo.reparameterize(model)
    folder = repzoo.save_for_hf(model, tmp_path / "out", repo_id="someone/repvgg-a0-5cls")
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    card = (folder / "README.md").read_text()
    assert "library_name: timm" in card and "hf-hub:someone/repvgg-a0-5cls" in card and "deploy" in card
    config = json.loads((folder / "config.json").read_text())
    assert config["model_args"]["deploy"] is True and config["pretrained_cfg"]["first_conv"] == "stage0.rbr_reparam"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written left beside

    files = {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}

    def serve(data):
        return lambda req: file_response(req, data, headers={"X-Repo-Commit": COMMIT, "ETag": f'"{hash(data)}"'})

    routes = {f"/someone/repvgg-a0-5cls/resolve/main/{name}": serve(data) for name, data in files.items()}
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    x = torch.randn(1, 3, 32, 32)
    with Server(routes) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        with torch.no_grad():
            loaded = repzoo.create_model("hf-hub:someone/repvgg-a0-5cls").eval()
            assert loaded.deploy and loaded.num_classes == 5 and rel_diff(loaded(x), model(x)) < 1e-12
            timm_loaded = timm.create_model("hf-hub:someone/repvgg-a0-5cls", pretrained=True).eval()
            assert rel_diff(timm_loaded(x), model(x)) < 1e-12
        assert srv.count() > 0
        with pytest.raises(repzoo.IncompatibleCheckpointError, match="deploy"):
            repzoo.create_model("hf-hub:someone/repvgg-a0-5cls", deploy=False)  # a deploy file stays deploy
        assert loaded.pretrained_cfg["input_size"] == (3, 224, 224)


def test_bad_shared_folders_say_what_to_do(tmp_path):
    with pytest.raises(repzoo.WeightsUnavailableError, match="config.json"):
        repzoo.create_model(f"local-dir:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "repzoo_repvgg_a0"}))
    with pytest.raises(repzoo.WeightsUnavailableError, match="model.safetensors"):
        repzoo.create_model(f"local-dir:{tmp_path}")
    with pytest.raises(repzoo.InvalidArgumentError, match="not empty"):
        repzoo.save_for_hf(repzoo.create_model("RepVGG-A0", deploy=True), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json"]
    with Server({}) as srv, pytest.MonkeyPatch.context() as mp:
        import huggingface_hub.constants as constants

        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        mp.setenv("HF_ENDPOINT", srv.url)
        mp.setenv("HF_HOME", str(tmp_path / "hf"))
        with pytest.raises(repzoo.WeightsUnavailableError, match="someone/missing"):
            repzoo.create_model("hf-hub:someone/missing")
    assert Response  # the helpers' module is the shared one
