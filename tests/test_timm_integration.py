"""repzoo models native in timm: its registry, create_model, data config, loaders and scripts."""
import subprocess
import sys
import textwrap

import pytest
import torch

import repzoo

from conftest import randomize_bn, rel_diff

timm = pytest.importorskip("timm")
import repzoo.integrations.timm as rz_timm  # noqa: E402  (registers the models)


def test_every_model_is_registered_under_the_prefix_without_clobbering_timm():
    names = set(timm.list_models("repzoo_*"))
    assert names == {rz_timm.timm_name(n) for n in repzoo.list_models()}
    assert "repvgg_a0" in timm.list_models("repvgg_*")  # timm's own stays timm's
    assert timm.models.get_pretrained_cfg("repvgg_a0").hf_hub_id == "timm/repvgg_a0.rvgg_in1k"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # timm warns when a name is registered twice
        assert set(rz_timm.register_all()) == names  # again: nothing new
    assert set(timm.list_models("repzoo_*")) == names


def test_timm_create_model_passes_keywords_through():
    model = timm.create_model("repzoo_repopt_vgg_b1", num_classes=7, in_chans=1, drop_rate=0.1)
    assert isinstance(model, repzoo.models.RepOptVGG)
    assert (model.num_classes, model.in_chans, model.drop_rate) == (7, 1, 0.1)
    feats = timm.create_model("repzoo_repghostnet_1_0x", features_only=True, out_indices=(2, 4))
    assert feats.feature_info.reduction() == [8, 32]
    assert timm.create_model("repzoo_repvgg_a0", global_pool="max").global_pool.pool_type == "max"
    with pytest.raises(repzoo.InvalidArgumentError, match="global_pool"):
        timm.create_model("repzoo_repvgg_a0", global_pool="token")


def test_data_config_and_transform_come_from_the_manifest():
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config(model=timm.create_model("repzoo_repvgg_d2se"))
    assert cfg["input_size"] == (3, 320, 320) and cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bilinear"
    ghost = resolve_data_config(model=timm.create_model("repzoo_repopt_ghostnet_0_5x_hs"))
    assert ghost["interpolation"] == "bicubic" and ghost["crop_pct"] == 0.875  # the family's eval config
    transform = create_transform(**cfg)
    assert "Resize(size=320" in repr(transform) and "CenterCrop(size=(320, 320))" in repr(transform)
    assert timm.models.get_pretrained_cfg("repzoo_repghostnet_0_5x.repghost_in1k").interpolation == "bicubic"


def test_pretrained_and_tags_through_timm(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ref = randomize_bn(repzoo.create_model("RepVGG-A0")).eval()
    (tmp_path / "m").mkdir()
    torch.save({"model": ref.state_dict()}, tmp_path / "m" / "RepVGG-A0-train.pth")
    monkeypatch.setenv("REPZOO_MIRROR", str(tmp_path / "m"))
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    model = timm.create_model("repzoo_repvgg_a0.in1k", pretrained=True).eval()
    assert model.pretrained_cfg["tag"] == "in1k"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert rel_diff(model(x), ref(x)) < 1e-6


_VALIDATE = textwrap.dedent(
    """
    # what timm's validate.py / train.py do with --model, written with timm's own functions
    import argparse, torch, timm
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.optim import create_optimizer_v2
    from timm.utils import AverageMeter, accuracy

    p = argparse.ArgumentParser()
    p.add_argument("data"); p.add_argument("--model"); p.add_argument("--num-classes", type=int)
    args = p.parse_args()
    model = timm.create_model(args.model, num_classes=args.num_classes)
    config = resolve_data_config(vars(args), model=model)
    config["input_size"] = (3, 64, 64)
    loader = create_loader(create_dataset("", root=args.data, split="train"), batch_size=4, is_training=True,
                           use_prefetcher=False, device=torch.device("cpu"),
                           **{k: config[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")})
    opt = create_optimizer_v2(model, opt="sgd", lr=0.01, momentum=0.9)
    model.train()
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    top1 = AverageMeter()
    with torch.no_grad():
        for x, y in loader:
            top1.update(accuracy(model(x), y, topk=(1,))[0].item(), x.size(0))
    print(f"model={type(model).__name__} classes={model.num_classes} top1={top1.avg:.1f} steps={len(loader)}")
    """
)


@pytest.mark.parametrize("model, cls", [("repzoo_repghostnet_0_5x", "RepGhostNet"),
                                        pytest.param("repzoo_repvggplus_l2pse", "RepVGGplus", marks=pytest.mark.heavy)])
def test_a_timm_script_runs_with_a_repzoo_model(tmp_path, model, cls):
    """RepVGGplus too: its training-mode forward returns the logits (aux heads are opt-in), so a timm
    loop's plain loss works."""
    from PIL import Image

    for c in range(2):
        folder = tmp_path / "data" / "train" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (80, 72), color=(60 * c + 10 * i, 90, 120)).save(folder / f"{i}.png")
    script = tmp_path / "validate.py"
    script.write_text(_VALIDATE)
    out = subprocess.run([sys.executable, "-m", "repzoo.integrations.timm", str(script), str(tmp_path / "data"),
                          "--model", model, "--num-classes", "2"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"model={cls} classes=2" in out.stdout and "steps=2" in out.stdout


def test_timm_pretrained_goes_through_repzoos_verified_fetch_from_a_mirror(tmp_path, monkeypatch):
    """``timm.create_model('repzoo_repvgg_a0.in1k', pretrained=True)``: the file comes from a mirror URL on
    127.0.0.1, is checked against the manifest's sha256 (a wrong byte is refused), then loads."""
    import hashlib
    import io

    from conftest import patch_manifest
    from httpserver import Server, file_response

    torch.manual_seed(0)
    ref = randomize_bn(repzoo.create_model("RepVGG-A0")).eval()
    buf = io.BytesIO()
    torch.save({"model": ref.state_dict()}, buf)
    data = buf.getvalue()
    patch_manifest(monkeypatch, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    served = {"data": data[:-1] + bytes([data[-1] ^ 1])}  # first a damaged copy
    with Server({"/RepVGG-A0-train.pth": lambda req: file_response(req, served["data"])}) as srv:
        monkeypatch.setenv("REPZOO_MIRROR", srv.url)
        with pytest.raises(repzoo.RepZooError, match="sha256|checksum"):
            timm.create_model("repzoo_repvgg_a0.in1k", pretrained=True)
        served["data"] = data
        model = timm.create_model("repzoo_repvgg_a0.in1k", pretrained=True).eval()
        assert srv.count("/RepVGG-A0-train.pth", "GET") >= 2
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    assert model.pretrained_cfg["tag"] == "in1k" and model.pretrained_cfg["architecture"] == "repzoo_repvgg_a0"
