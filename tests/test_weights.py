"""create_model(pretrained=True) end to end from a mirror folder, the deploy cache, unsafe files."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

import repzoo
import repzoo.weights.manifest
import repzoo.registry
from repzoo.errors import (ChecksumError, IncompatibleCheckpointError, RepZooError, UnsafeCheckpointError,
                           WeightsUnavailableError)
from repzoo.weights.manifest import Manifest

from conftest import REPO_ROOT, patch_manifest, randomize_bn, rel_diff

PACKAGED = REPO_ROOT / "repzoo" / "weights" / "weights_manifest.json"
A0_FILE = "RepVGG-A0-train.pth"
TIMM_A0_FILE = "repvgg_a0.rvgg_in1k.safetensors"


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def official_checkpoint(path, seed: int = 0) -> dict:
    """An official-format RepVGG-A0 training file: {'model': sd, 'config': yacs CfgNode, 'epoch': 3}."""
    from yacs.config import CfgNode

    torch.manual_seed(seed)
    model = randomize_bn(repzoo.create_model("RepVGG-A0"), torch.Generator().manual_seed(seed))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = CfgNode()
    cfg.MODEL = CfgNode()
    cfg.MODEL.ARCH = "RepVGG-A0"
    cfg.DATA = CfgNode()
    cfg.DATA.IMG_SIZE = 224
    torch.save({"model": sd, "config": cfg, "epoch": 3}, path)
    return sd


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    folder = tmp_path / "mirror"
    folder.mkdir()
    monkeypatch.setenv("REPZOO_MIRROR", str(folder))
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    monkeypatch.setenv("REPZOO_PROGRESS", "0")
    return folder


@pytest.fixture
def counters(monkeypatch):
    """Count conversions, fetches and model builds (with their deploy flag)."""
    import repzoo.weights.hub
    import repzoo.reparam

    counts = {"convert": 0, "fetch": 0, "builds": []}
    real_convert, real_fetch = repzoo.reparam.convert_state_dict, repzoo.weights.hub.fetch

    def convert(*a, **k):
        counts["convert"] += 1
        return real_convert(*a, **k)

    def fetch(*a, **k):
        counts["fetch"] += 1
        return real_fetch(*a, **k)

    monkeypatch.setattr(repzoo.reparam, "convert_state_dict", convert)
    monkeypatch.setattr(repzoo.weights.hub, "fetch", fetch)
    entry = repzoo.get_model_entry("RepVGG-A0")

    def builder(**kwargs):
        counts["builds"].append(bool(kwargs.get("deploy", False)))
        return entry.builder(**kwargs)

    monkeypatch.setitem(repzoo.registry._ENTRIES, "RepVGG-A0", dataclasses.replace(entry, builder=builder))
    return counts


def test_pretrained_from_mirror_folder_with_manifest_hash(mirror, monkeypatch):
    sd = official_checkpoint(mirror / A0_FILE)
    patch_manifest(monkeypatch, sha256=_sha256(mirror / A0_FILE), size=(mirror / A0_FILE).stat().st_size)
    model = repzoo.create_model("RepVGG-A0", pretrained=True)
    got = model.state_dict()
    assert set(got) == set(sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    cfg = model.pretrained_cfg
    assert cfg["tag"] == "in1k" and cfg["top1"] == pytest.approx(72.41)
    assert (tuple(cfg["input_size"]), cfg["crop_pct"], cfg["interpolation"]) == ((3, 224, 224), 0.875, "bilinear")


def test_pretrained_cfg_follows_the_manifest(mirror, monkeypatch):
    """The eval config comes from the record (here a changed one), not from the registry default."""
    official_checkpoint(mirror / A0_FILE)
    data = json.loads(PACKAGED.read_text(encoding="utf-8"))
    data["models"]["RepVGG-A0"]["weights"][0]["eval"].update(crop_pct=0.95, interpolation="bicubic",
                                                             input_size=[3, 256, 256])
    fake = Manifest(data)
    monkeypatch.setattr(repzoo.weights.manifest, "load_manifest", lambda: fake)
    cfg = repzoo.create_model("RepVGG-A0", pretrained=True).pretrained_cfg
    assert (tuple(cfg["input_size"]), cfg["crop_pct"], cfg["interpolation"]) == ((3, 256, 256), 0.95, "bicubic")
    assert cfg["num_classes"] == 1000 and cfg["architecture"] == "RepVGG-A0"


def test_wrong_hash_in_manifest_is_refused(mirror, monkeypatch):
    official_checkpoint(mirror / A0_FILE)
    patch_manifest(monkeypatch, sha256="0" * 64)
    with pytest.raises(ChecksumError):
        repzoo.create_model("RepVGG-A0", pretrained=True)


def test_deploy_converts_once_then_reads_the_deploy_cache(mirror, counters, float64):
    sd = official_checkpoint(mirror / A0_FILE)  # float64 tensors: the conversion runs in float64
    assert sd["linear.weight"].dtype == torch.float64
    counters["builds"].clear()

    first = repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True).eval()
    assert counters["convert"] == 1 and counters["fetch"] == 1
    assert counters["builds"] and all(counters["builds"])  # deploy models only (the meta one included)
    from repzoo.weights.hub import recorded_sha256
    from repzoo.weights.files import cache_dir
    from repzoo.reparam import CONVERSION_VERSION

    sha = _sha256(mirror / A0_FILE)
    cached = sorted((cache_dir() / "deploy").glob("*.safetensors"))
    assert [p.name for p in cached] == [f"repvgg_a0.in1k-{sha}-c{CONVERSION_VERSION}.safetensors"]
    assert recorded_sha256(A0_FILE) in (None, sha)

    counters["builds"].clear()
    second = repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True).eval()
    assert counters["convert"] == 1, "the second deploy load converted again"
    assert counters["builds"] == [True], "the second deploy load built more than the one deploy model"
    assert second.deploy and second.pretrained_cfg["tag"] == "in1k"

    train = repzoo.create_model("RepVGG-A0", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        ref = train(x)
        assert rel_diff(first(x), ref) < 1e-10
        assert rel_diff(second(x), ref) < 1e-10


def test_deploy_cache_hit_skips_fetching(mirror, monkeypatch, counters):
    """With the source's hash known (manifest), a cached deploy file is used without touching the source."""
    official_checkpoint(mirror / A0_FILE)
    patch_manifest(monkeypatch, sha256=_sha256(mirror / A0_FILE))
    repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    assert (counters["fetch"], counters["convert"]) == (1, 1)
    (mirror / A0_FILE).unlink()  # the source is gone: only the deploy cache can answer
    model = repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    assert (counters["fetch"], counters["convert"]) == (1, 1)
    assert model.deploy
    with pytest.raises(WeightsUnavailableError):  # the train form still needs the source
        repzoo.create_model("RepVGG-A0", pretrained=True)


def test_deploy_cache_is_keyed_by_conversion_version_and_rebuilt_when_damaged(mirror, monkeypatch, counters):
    import repzoo.reparam
    from repzoo.weights.files import cache_dir

    official_checkpoint(mirror / A0_FILE)
    repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    assert counters["convert"] == 1
    monkeypatch.setattr(repzoo.reparam, "CONVERSION_VERSION", repzoo.reparam.CONVERSION_VERSION + 1)
    repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    assert counters["convert"] == 2
    files = sorted((cache_dir() / "deploy").glob("*.safetensors"))
    assert len(files) == 2
    new = [p for p in files if p.name.endswith(f"-c{repzoo.reparam.CONVERSION_VERSION}.safetensors")]
    assert len(new) == 1
    new[0].write_bytes(new[0].read_bytes()[:1000])  # truncated: must not be trusted
    model = repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    assert counters["convert"] == 3 and model.deploy
    assert not list((cache_dir() / "deploy").glob(".*"))  # no temporary file left behind


def test_download_returns_paths(mirror):
    from repzoo.weights.pretrained import download

    official_checkpoint(mirror / A0_FILE)
    assert download("repvgg_a0") == mirror / A0_FILE
    path = download("RepVGG-A0", deploy=True)
    assert path.parent.name == "deploy" and path.suffix == ".safetensors"
    from safetensors.torch import load_file

    assert "stage0.rbr_reparam.weight" in load_file(str(path))


def test_unsafe_pickle_is_refused_and_runs_nothing(mirror, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    sd = repzoo.create_model("RepVGG-A0").state_dict()
    with open(mirror / A0_FILE, "wb") as f:
        torch.save({"model": sd, "evil": Evil()}, f)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match="Nothing was run"):
        repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    assert not marker.exists()
    from repzoo.weights.files import cache_dir

    assert not list((cache_dir() / "deploy").glob("*"))


def test_nothing_available_offline_lists_every_file_and_how_to_get_them(mirror):
    with pytest.raises(WeightsUnavailableError) as info:
        repzoo.create_model("RepVGG-A0", pretrained=True)
    text = str(info.value)
    assert A0_FILE in text and TIMM_A0_FILE in text
    assert "1Avome4KvNp0Lqh2QwhXO6L5URQjzCjUq" in text and "rvgg" in text  # Drive folder, Baidu code
    assert "REPZOO_MIRROR" in text


def test_timm_rehost_loads_through_the_key_adapter(mirror, float64):
    """The official file is absent; the second file (timm's keys, safetensors) is used and adapted."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(1)
    ref = randomize_bn(timm.create_model("repvgg_a0", pretrained=False)).eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(mirror / TIMM_A0_FILE))
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected = ref(x)
        for deploy in (False, True):
            model = repzoo.create_model("RepVGG-A0", pretrained=True, deploy=deploy).eval()
            assert rel_diff(model(x), expected) < 1e-10


def test_unknown_tag_and_unreleased_model(monkeypatch):
    with pytest.raises(RepZooError, match="in1k"):
        repzoo.create_model("RepVGG-A0", pretrained=True, tag="in22k")
    data = json.loads(PACKAGED.read_text(encoding="utf-8"))
    del data["models"]["RepVGG-B0"]
    fake = Manifest(data)
    monkeypatch.setattr(repzoo.weights.manifest, "load_manifest", lambda: fake)
    with pytest.raises(RepZooError, match="No released weights"):
        repzoo.create_model("RepVGG-B0", pretrained=True)


def test_deploy_form_release_cannot_become_a_train_model(mirror, monkeypatch):
    train = randomize_bn(repzoo.create_model("RepVGG-A0")).eval()
    deploy_sd = repzoo.reparameterize(train).state_dict()
    torch.save(deploy_sd, mirror / A0_FILE)
    patch_manifest(monkeypatch, form="deploy")
    model = repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in deploy_sd.items())
    with pytest.raises(IncompatibleCheckpointError, match="deploy"):
        repzoo.create_model("RepVGG-A0", pretrained=True)


@pytest.mark.parametrize("name, tag, timm_name", [("RepGhostNet-1.0x", None, "repghostnet_100"),
                                                   ("RepGhostNet-0.5x", "repghost_in1k", "repghostnet_050")])
def test_repghostnet_timm_rehost_from_the_manifest(mirror, float64, name, tag, timm_name):
    """The manifest's RepGhostNet re-host entries load timm-keyed files (adapter by the RepGhostNet family)."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(2)
    ref = randomize_bn(timm.create_model(timm_name, pretrained=False)).eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(mirror / f"{timm_name}.in1k.safetensors"))
    model = repzoo.create_model(name, pretrained=True, tag=tag).eval()
    assert model.pretrained_cfg["interpolation"] == "bicubic" and model.pretrained_cfg["tag"] == "repghost_in1k"
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert rel_diff(model(x), ref(x)) < 1e-10


def test_warm_deploy_load_reads_no_source_and_works_with_the_mirror_gone(mirror, counters, monkeypatch):
    """No manifest hash (the authors' files have none): the first use records it; later loads find the deploy
    copy from the name, the tag and that record — without hashing anything, and without the mirror."""
    import repzoo.weights.files as files

    official_checkpoint(mirror / A0_FILE)
    first = repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    assert (counters["fetch"], counters["convert"]) == (1, 1)
    hashed = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p: hashed.append(p) or real(p))
    second = repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    assert hashed == [] and (counters["fetch"], counters["convert"]) == (1, 1)
    for p in mirror.iterdir():
        p.unlink()
    mirror.rmdir()
    third = repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    assert hashed == [] and (counters["fetch"], counters["convert"]) == (1, 1)
    for model in (second, third):
        assert all(torch.equal(model.state_dict()[k], v) for k, v in first.state_dict().items())
