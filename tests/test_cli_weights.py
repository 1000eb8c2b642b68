"""`repzoo predict`, `download`, `cache ls|rm` and `info` (weights part), end to end offline."""
from __future__ import annotations

import hashlib
import json
import re
import shutil

import pytest
import torch

import repzoo

from conftest import randomize_bn
from repzoo.cli import main

A0_FILE = "RepVGG-A0-train.pth"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    monkeypatch.setenv("REPZOO_PROGRESS", "0")
    return tmp_path


@pytest.fixture
def mirror(offline, monkeypatch):
    folder = offline / "mirror"
    folder.mkdir()
    monkeypatch.setenv("REPZOO_MIRROR", str(folder))
    return folder


def _reference_transform():
    """The authors' eval transform for RepVGG-A0 from the manifest's facts: Resize(224/0.875) + CenterCrop(224)."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(224),
                      T.ToTensor(), T.Normalize(MEAN, STD)])


def _image(path, seed=0):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(60, 80, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return path


def _checkpoint_for(image_path, out_path):
    """A RepVGG-A0 training file whose head gives a spread-out distribution on this image, and the
    probabilities its train-time form gives with torchvision's transform built from the paper's facts."""
    from PIL import Image

    torch.manual_seed(0)
    model = randomize_bn(repzoo.create_model("RepVGG-A0")).eval()
    x = _reference_transform()(Image.open(image_path).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        feat = model.forward_head(model.forward_features(x), pre_logits=True)
        model.linear.weight.copy_(torch.randn(1000, feat.shape[1]) * 2.5 / feat.norm())
        model.linear.bias.zero_()
        probs = model.linear(feat).softmax(-1)[0]
    torch.save({"model": model.state_dict(), "epoch": 3}, out_path)
    return probs


def test_predict_prints_top5_imagenet_names(mirror, capsys):
    from timm.data import ImageNetInfo

    img = _image(mirror.parent / "cat.png")
    # Independent expectation: the train-time model, torchvision's transform built from the paper's facts.
    top = _checkpoint_for(img, mirror / A0_FILE).topk(5)
    assert top.values[0] < 0.9  # a spread-out distribution, so the order below means something

    assert main(["predict", str(img), "--model", "repvgg_a0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{img}:"
    rows = [re.match(r"\s+(\d)\. (\d\.\d{4})  (.+)  \[(\d+)\]$", line) for line in out[1:]]
    assert len(rows) == 5 and all(rows)
    info = ImageNetInfo()
    for row, p, i in zip(rows, top.values.tolist(), top.indices.tolist()):
        assert int(row.group(4)) == i
        assert float(row.group(2)) == pytest.approx(p, abs=2e-4)
        assert row.group(3) == info.index_to_description(i)


def test_predict_unreadable_image_is_a_clear_error(mirror, capsys):
    bad = mirror.parent / "not_an_image.png"
    bad.write_text("hello")
    torch.save(repzoo.create_model("RepVGG-A0").state_dict(), mirror / A0_FILE)
    assert main(["predict", str(bad), "--model", "RepVGG-A0"]) == 2
    assert "Cannot read image" in capsys.readouterr().err


def test_download_info_and_cache_commands(offline, monkeypatch, capsys):
    from repzoo.weights.hub import cache_path

    # A file fetched by hand and put into the cache (no mirror): its hash is recorded on first use.
    src = offline / A0_FILE
    torch.save({"model": repzoo.create_model("RepVGG-A0").state_dict()}, src)
    shutil.copy(src, cache_path(A0_FILE))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()

    assert main(["download", "RepVGG-A0"]) == 0
    assert capsys.readouterr().out.strip() == str(cache_path(A0_FILE))
    assert main(["download", "RepVGG-A0", "--deploy"]) == 0
    deploy_path = capsys.readouterr().out.strip()
    assert f"{sha}-c" in deploy_path and deploy_path.endswith(".safetensors")

    assert main(["info", "RepVGG-A0"]) == 0
    text = capsys.readouterr().out
    assert f"cached at {cache_path(A0_FILE)}" in text
    assert f"recorded  sha256 {sha}" in text
    assert "Hugging Face Hub timm/repvgg_a0.rvgg_in1k / model.safetensors" in text
    assert "access code rvgg" in text and f"deploy cache: {deploy_path}" in text

    assert main(["info", "RepVGG-A0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["weights"][0]["files"][0]["recorded_sha256"] == sha
    assert data["weights"][0]["top1"] == pytest.approx(72.41)

    assert main(["cache", "ls"]) == 0
    text = capsys.readouterr().out
    assert f"{A0_FILE}" in text and sha in text and "deploy form of RepVGG-A0 in1k" in text

    assert main(["cache", "rm", "repvgg_a0"]) == 0  # a model name: its files and deploy files
    text = capsys.readouterr().out
    assert f"removed {A0_FILE}" in text
    assert not cache_path(A0_FILE).exists()
    import pathlib

    assert not pathlib.Path(deploy_path).exists()
    assert main(["cache", "rm", A0_FILE]) == 1
    assert "nothing cached" in capsys.readouterr().err
    assert main(["cache", "rm", "../../etc/passwd"]) == 2
    assert "Refused" in capsys.readouterr().err


def test_cache_rm_single_file(offline, capsys):
    from repzoo.weights.hub import cache_path, recorded_sha256

    path = cache_path("RepOpt-VGG-B1-scales.pth")
    path.write_bytes(b"x" * 10)
    assert main(["cache", "rm", "RepOpt-VGG-B1-scales.pth"]) == 0
    assert not path.exists() and recorded_sha256("RepOpt-VGG-B1-scales.pth") is None


def test_download_offline_without_a_copy_says_what_to_do(offline, capsys):
    assert main(["download", "RepVGG-B1g2"]) == 2
    err = capsys.readouterr().err
    assert "RepVGG-B1g2-train.pth" in err and "REPZOO_MIRROR" in err and "rvgg" in err
