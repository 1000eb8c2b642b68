"""The ``repzoo`` command: list, info, convert, demo (in-process, plus the installed console script)."""
import shutil
import subprocess
import sys

import pytest
import torch

import repzoo
from repzoo.cli import main

from conftest import randomize_bn, rel_diff


def test_list(capsys):
    assert main(["list", "RepVGG-B2*"]) == 0
    assert capsys.readouterr().out.split() == ["RepVGG-B2", "RepVGG-B2g2", "RepVGG-B2g4"]


def test_info(capsys):
    assert main(["info", "repvgg_a2"]) == 0
    out = capsys.readouterr().out
    assert "RepVGG-A2" in out and "28,210,600" in out and "25,499,944" in out


def test_unknown_name_is_a_clear_error(capsys):
    assert main(["info", "RepVGG-Z9"]) == 2
    assert "Unknown model 'RepVGG-Z9'" in capsys.readouterr().err


@pytest.mark.parametrize("ext", ["safetensors", "pth"])
def test_convert_writes_verified_deploy_weights(tmp_path, capsys, ext):
    torch.manual_seed(0)
    model = randomize_bn(repzoo.create_model("RepVGG-A0")).eval()
    train_path, out_path = tmp_path / "train.pth", tmp_path / f"deploy.{ext}"
    torch.save({"model": model.state_dict()}, train_path)
    assert main(["convert", "RepVGG-A0", str(train_path), str(out_path)]) == 0
    assert "verified" in capsys.readouterr().out
    sd = repzoo.read_state_dict(out_path)
    assert set(sd) == set(repzoo.create_model("RepVGG-A0", deploy=True).state_dict())
    deploy = repzoo.create_model("RepVGG-A0", deploy=True, checkpoint_path=out_path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert rel_diff(deploy(x), model(x)) < 1e-5  # float32 weights


def test_convert_refuses_a_checkpoint_of_another_model(tmp_path, capsys):
    path = tmp_path / "a1.pth"
    torch.save(repzoo.create_model("RepVGG-A1").state_dict(), path)
    assert main(["convert", "RepVGG-A0", str(path), str(tmp_path / "out.pth")]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()


def test_demo(capsys):
    assert main(["demo", "RepVGG-A0", "--image-size", "64", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "(equal)" in out and "speed-up" in out and "9,108,968" in out and "8,309,384" in out


def test_console_script_is_installed():
    exe = shutil.which("repzoo")
    cmd = [exe] if exe else [sys.executable, "-m", "repzoo.cli"]
    out = subprocess.run(cmd + ["list", "RepVGG-A0*"], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["RepVGG-A0"]


@pytest.mark.heavy  # a large variant (RepOpt-VGG-B1-hs), converted twice
def test_convert_takes_the_head_size_from_the_checkpoint(tmp_path, capsys):
    """A Hyper-Search model has 100 classes: no option needed, the file says so."""
    torch.manual_seed(0)
    hs = randomize_bn(repzoo.create_model("RepOpt-VGG-B1-hs", num_classes=100)).eval()
    train_path, out_path = tmp_path / "hs.pth", tmp_path / "hs_deploy.safetensors"
    torch.save({"model": hs.state_dict(), "epoch": 239}, train_path)
    assert main(["convert", "RepOpt-VGG-B1-hs", str(train_path), str(out_path)]) == 0
    sd = repzoo.read_state_dict(out_path)
    assert sd["linear.weight"].shape == (100, 2048) and "stage1.0.conv.bias" in sd
    with pytest.warns(UserWarning, match="classifier was reset"):  # asked for another head: reset, and said so
        assert main(["convert", "RepOpt-VGG-B1-hs", str(train_path), str(tmp_path / "x.pth"), "--num-classes", "10"]) == 0
    assert repzoo.read_state_dict(tmp_path / "x.pth")["linear.weight"].shape == (10, 2048)


@pytest.mark.heavy  # a training run (the demo's RepOptimizer trajectory)
def test_demo_of_a_repopt_model_shows_gr_equals_csla_on_the_released_scales(capsys, monkeypatch):
    monkeypatch.setenv("REPZOO_OFFLINE", "1")  # the released scales ship with repzoo
    assert main(["demo", "RepOpt-GhostNet-0.5x", "--image-size", "32", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "(equal)" in out and "RepOptimizer (target model) vs SGD (CSLA model of the released scales)" in out
    assert "the same trajectory" in out and "step 3" in out
