"""The weights manifest: schema, packaged copy, names, scale files, and who reads it."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

import repzoo
from repzoo.errors import RepZooError
from repzoo.weights.manifest import Manifest, load_manifest

from conftest import REPO_ROOT, SCALES_DIR, SCALES_MODEL, SCALES_SHA256

PACKAGED = REPO_ROOT / "repzoo" / "weights" / "weights_manifest.json"
SCHEMA = REPO_ROOT / "docs" / "weights_manifest.schema.json"

#: Every model with released weights (the READMEs of DingXiaoH/RepVGG @ eae7c52, DingXiaoH/RepOptimizers @ 2e45ff5,
#: JUGGHM/OREPA_CVPR2022 @ 3ed037b, DingXiaoH/RepMLP @ 3eff13f): RepVGG x15, RepOpt-VGG x4, the GhostNets,
#: OREPA x9, RepMLPNet x6, and RepGhostNet at the 8 widths timm 1.0.31 re-hosts (timm/models/repghost.py).
EXPECTED_MODELS = (
    [f"RepVGG-{v}" for v in ("A0 A1 A2 B0 B1 B1g2 B1g4 B2 B2g2 B2g4 B3 B3g2 B3g4 D2se".split())]
    + ["RepVGGplus-L2pse"]
    + [f"RepOpt-VGG-{v}" for v in ("B1", "B2", "L1", "L2")]
    + [f"RepGhostNet-{w}" for w in ("0.5x", "0.58x", "0.8x", "1.0x", "1.11x", "1.3x", "1.5x", "2.0x")]
    + ["RepOpt-GhostNet-0.5x"]
    + [f"OREPA-{a}" for a in ("ResNet-18", "ResNet-34", "ResNet-50", "ResNet-101", "RepVGG-A0", "RepVGG-A1",
                              "RepVGG-A2", "ResNet-18-2x", "ResNeXt-50")]
    + [f"RepMLPNet-{v}" for v in ("T224", "B224", "T256", "B256", "D256", "L256")]
)


#: The five released scale files and their sha256 (conftest.SCALES_SHA256, with their source).
SCALES = {model: (file_name, SCALES_SHA256[file_name]) for model, file_name in SCALES_MODEL.items()}

#: timm 1.0.31 re-hosts 11 of the 15 RepVGGs (its timm/models/byobnet.py pretrained cfgs `repvgg_*.rvgg_in1k`).
TIMM_REPVGG = "A0 A1 A2 B0 B1 B1g4 B2 B2g4 B3 B3g4 D2se".split()


@pytest.fixture(scope="module")
def data():
    return json.loads(PACKAGED.read_text(encoding="utf-8"))


def test_manifest_validates_against_schema(data):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(data)


def test_schema_rejects_bad_entries(data):
    """The schema is not vacuous: an escaping file name, a bad hash, an unknown form are refused."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    for path, value in [(("file_name",), "../evil.pth"), (("file_name",), "/etc/passwd"),
                        (("sha256",), "abc"), (("form",), "both"), (("sources",), [{"kind": "ftp", "location": "x"}])]:
        bad = json.loads(json.dumps(data))
        bad["models"]["RepVGG-A0"]["weights"][0]["files"][0][path[0]] = value
        assert not validator.is_valid(bad), (path, value)


def test_the_manifest_exists_once():
    """One file, in the package (it ships in the wheel): no copy elsewhere that could be edited instead."""
    from repzoo.weights.manifest import MANIFEST_PATH

    assert MANIFEST_PATH.resolve() == PACKAGED.resolve()
    skip = {".git", "site", "build", "dist", ".venv", "node_modules"}
    copies = [p.relative_to(REPO_ROOT).as_posix() for top in REPO_ROOT.iterdir() if top.name not in skip
              for p in ([top] if top.is_file() else top.rglob("*"))
              if p.name == "weights_manifest.json" and not p.is_symlink()]
    assert copies == ["repzoo/weights/weights_manifest.json"]
    root = REPO_ROOT / "weights_manifest.json"  # the name at the repository root points at the one file
    assert root.is_symlink() and root.resolve() == PACKAGED.resolve()


def test_every_release_is_described(data):
    assert sorted(data["models"]) == sorted(EXPECTED_MODELS)
    assert len(EXPECTED_MODELS) == 43


def test_every_name_is_registered(data):
    assert set(data["models"]) <= set(repzoo.list_models())


def test_file_names_are_unique_and_plain(data):
    names = [f["file_name"] for m in data["models"].values() for t in m["weights"] for f in t["files"]]
    names += [s["file_name"] for s in data["scales"].values()]
    assert len(names) == len(set(names))
    assert all("/" not in n and "\\" not in n and not n.startswith(".") for n in names)


def test_scale_files_have_the_sources_md_hashes_and_real_sizes(data):
    assert sorted(data["scales"]) == sorted(SCALES)
    m = load_manifest()
    for name, (file_name, sha) in SCALES.items():
        real = SCALES_DIR / file_name
        rec = m.scales(name)
        assert rec.file_name == file_name
        assert rec.sha256 == sha
        assert rec.size == real.stat().st_size
        assert hashlib.sha256(real.read_bytes()).hexdigest() == sha  # the packaged test data are the released bytes
        assert [(s.kind, s.location) for s in rec.sources] == [
            ("url", f"https://github.com/DingXiaoH/RepOptimizers/raw/main/{file_name}")]


def test_repvgg_official_file_first_then_timm_rehost():
    m = load_manifest()
    for v in "A0 A1 A2 B0 B1 B1g2 B1g4 B2 B2g2 B2g4 B3 B3g2 B3g4 D2se".split():
        rec = m.weights(f"RepVGG-{v}")
        assert rec.tag == "in1k" and rec.files[0].key_style == "official" and rec.files[0].form == "train"
        links = {link.url for link in rec.files[0].manual}
        assert "https://drive.google.com/drive/folders/1Avome4KvNp0Lqh2QwhXO6L5URQjzCjUq" in links
        assert any(link.access_code == "rvgg" for link in rec.files[0].manual)
        if v in TIMM_REPVGG:
            timm_file = rec.files[1]
            assert timm_file.key_style == "timm"
            src = timm_file.sources[0]
            assert (src.kind, src.location, src.filename) == ("hf", f"timm/repvgg_{v.lower()}.rvgg_in1k",
                                                                "model.safetensors")
        else:
            assert len(rec.files) == 1


def test_top1_and_eval_configs_from_the_papers():
    m = load_manifest()
    # the top-1 the authors report: DingXiaoH/RepVGG @ eae7c52 README.md, DingXiaoH/RepOptimizers @ 2e45ff5
    # README.md, JUGGHM/OREPA_CVPR2022 @ 3ed037b README.md, DingXiaoH/RepMLP @ 3eff13f README.md
    expected = {"RepVGG-A0": 72.41, "RepVGG-B1": 78.37, "RepVGG-B3": 80.52, "RepVGG-D2se": 83.55,
                "RepVGGplus-L2pse": 84.06, "RepOpt-VGG-L2": 80.47, "RepGhostNet-0.5x": 66.51,
                "RepOpt-GhostNet-0.5x": 66.50, "OREPA-ResNet-50": 77.31, "RepMLPNet-L256": 81.68}
    for name, top1 in expected.items():
        assert m.weights(name).top1 == pytest.approx(top1)
    d2se = m.weights("RepVGG-D2se").eval
    assert (d2se.input_size, d2se.crop_pct, d2se.interpolation) == ((3, 320, 320), 1.0, "bilinear")
    ghost = m.weights("RepGhostNet-2.0x").eval
    assert (ghost.interpolation, ghost.crop_pct) == ("bicubic", 0.875)
    assert m.weights("RepMLPNet-B256").eval.input_size == (3, 256, 256)
    assert m.weights("RepOpt-VGG-B1").eval.crop_pct == 1.0
    assert m.weights("RepVGG-A0").eval.mean == (0.485, 0.456, 0.406)


def test_repghostnet_tags():
    m = load_manifest()
    assert m.tags("RepGhostNet-0.5x") == ["in1k", "repghost_in1k"]
    rec = m.weights("RepGhostNet-0.5x", "repghost_in1k")
    assert rec.files[0].sources[0].location == "timm/repghostnet_050.in1k"
    assert rec.files[0].key_style == "timm"
    assert m.weights("RepGhostNet-1.11x").files[0].sources[0].location == "timm/repghostnet_111.in1k"
    assert m.weights("RepGhostNet-0.5x").files[0].sources[0].kind == "gdrive"


def test_lookups_and_errors():
    m = load_manifest()
    assert m.tags("repvgg_a0") == ["in1k"]           # any spelling
    assert m.tags("OREPA-ResNet-18") == ["in1k"]     # a family that may not be built yet
    assert m.tags("no-such-model") == []
    assert m.weights("RepVGG-B1g4", "in1k").name == "RepVGG-B1g4"
    with pytest.raises(RepZooError, match="in1k"):   # lists the tags that exist
        m.weights("RepVGG-A0", "in22k")
    with pytest.raises(RepZooError, match="RepVGG-A0"):
        m.weights("no-such-model")
    with pytest.raises(RepZooError, match="RepOpt-VGG-B1"):
        m.scales("RepVGG-A0")
    assert m.scales("repopt_vgg_b1").file_name == "RepOpt-VGG-B1-scales.pth"


def test_records_are_frozen():
    rec = load_manifest().weights("RepVGG-A0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.tag = "x"  # type: ignore[misc]
    assert isinstance(rec.files, tuple) and isinstance(rec.files[0].sources, tuple)


def test_list_models_and_model_info_read_the_manifest(monkeypatch, data):
    assert "RepVGG-A0" in repzoo.list_models(pretrained=True)
    assert repzoo.model_info("RepVGG-A0")["pretrained_tags"] == ["in1k"]
    # Take RepVGG-A0 out of a copy of the manifest: the registry must follow it.
    reduced = json.loads(json.dumps(data))
    del reduced["models"]["RepVGG-A0"]
    reduced["models"]["RepVGG-B0"]["weights"].append(
        dict(reduced["models"]["RepVGG-B0"]["weights"][0], tag="extra_tag", files=[
            dict(reduced["models"]["RepVGG-B0"]["weights"][0]["files"][0], file_name="extra.pth")]))
    fake = Manifest(reduced)
    monkeypatch.setattr("repzoo.weights.manifest.load_manifest", lambda: fake)
    assert "RepVGG-A0" not in repzoo.list_models(pretrained=True)
    assert "RepVGG-A0" in repzoo.list_models()
    assert repzoo.model_info("RepVGG-A0")["pretrained_tags"] == []
    assert repzoo.model_info("RepVGG-B0")["pretrained_tags"] == ["in1k", "extra_tag"]


def test_packaged_scales_equal_the_released_files_tensor_for_tensor(monkeypatch):
    """The package's safetensors copies hold exactly the released .pth tensors, and are used offline."""
    from repzoo.weights.scales import released_scales

    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    m = load_manifest()
    for name, (file_name, _) in SCALES.items():
        path = released_scales(name)
        assert path.suffix == ".safetensors" and path.parent.name == "data"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == m.scales(name).packaged.sha256
        packaged = load_file(str(path))
        released = torch.load(SCALES_DIR / file_name, weights_only=True)
        assert list(packaged) == list(released) or set(packaged) == set(released)
        for key, value in released.items():
            assert packaged[key].dtype == value.dtype and torch.equal(packaged[key], value), key


def test_a_damaged_packaged_copy_is_refused(tmp_path, monkeypatch):
    import shutil

    import repzoo.weights.scales as scales
    from repzoo.errors import ChecksumError

    data = tmp_path / "data"
    shutil.copytree(scales.DATA_DIR, data)
    target = data / load_manifest().scales("RepOpt-VGG-B1").packaged.file
    raw = bytearray(target.read_bytes())
    raw[-10] ^= 0x01
    target.write_bytes(bytes(raw))
    monkeypatch.setattr(scales, "DATA_DIR", data)
    with pytest.raises(ChecksumError, match="Reinstall"):
        scales.released_scales("RepOpt-VGG-B1")


def test_without_a_packaged_copy_the_released_file_is_fetched_and_verified(tmp_path, monkeypatch):
    """The .pth from a mirror folder passes the manifest's sha256 and size; a flipped byte fails."""
    import repzoo.weights.scales as scales
    from repzoo.errors import ChecksumError

    monkeypatch.setattr(scales, "DATA_DIR", tmp_path / "empty")
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    monkeypatch.setenv("REPZOO_MIRROR", str(SCALES_DIR))
    for name, (file_name, _) in SCALES.items():
        assert scales.released_scales(name) == SCALES_DIR / file_name
    bad = tmp_path / "mirror"
    bad.mkdir()
    data = bytearray((SCALES_DIR / "RepOpt-VGG-B1-scales.pth").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "RepOpt-VGG-B1-scales.pth").write_bytes(bytes(data))
    monkeypatch.setenv("REPZOO_MIRROR", str(bad))
    with pytest.raises(ChecksumError):
        scales.released_scales("RepOpt-VGG-B1")
