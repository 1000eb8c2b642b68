"""A file whose keys do not fit the model (another model's checkpoint under this model's file name) is
refused before it is trusted on first use — on every path: ``repzoo download``, ``pretrained=True``, the
deploy cache — with a message that says so, and its hash is never recorded as the file name's."""
from __future__ import annotations

import hashlib

import pytest
import torch

import repzoo
from repzoo.cli import main
from repzoo.errors import RepZooError
from repzoo.weights import cache
from httpserver import Server, file_response

GHOST_FILE = "RepGhostNet-0.5x-acc66.51.pth"  # the first file of RepGhostNet-0.5x's in1k tag in the manifest


@pytest.fixture(scope="module")
def states():
    torch.manual_seed(0)
    a0 = repzoo.create_model("RepVGG-A0").state_dict()
    ghost = repzoo.create_model("RepGhostNet-0.5x").state_dict()
    return a0, ghost


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("REPZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REPZOO_PROGRESS", "0")
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    for var in ("REPZOO_MIRROR", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv("REPZOO_MIRROR", str(mirror))
    return tmp_path / "home", mirror


def _refused(text: str) -> None:
    assert "another model's checkpoint" in text and "RepGhostNet-0.5x" in text, text


def test_every_path_refuses_another_models_file_and_records_nothing(env, states, capsys):
    home, mirror = env
    a0, ghost = states
    torch.save(a0, mirror / GHOST_FILE)  # RepVGG-A0's weights under RepGhostNet-0.5x's name
    assert main(["download", "RepGhostNet-0.5x", "--quiet"]) != 0
    _refused(capsys.readouterr().err)
    for deploy in (False, True):
        with pytest.raises(RepZooError) as info:
            repzoo.create_model("RepGhostNet-0.5x", pretrained=True, deploy=deploy)
        _refused(str(info.value))
    assert main(["download", "RepGhostNet-0.5x", "--deploy", "--quiet"]) != 0
    _refused(capsys.readouterr().err)
    assert cache.recorded_sha256(GHOST_FILE) is None  # not the expected hash of that name
    assert cache.deploy_cache_entries() == []
    # the right file is then taken at once: nothing of the wrong one holds it back (no `cache rm` needed)
    torch.save(ghost, mirror / GHOST_FILE)
    model = repzoo.create_model("RepGhostNet-0.5x", pretrained=True, deploy=True)
    assert model.deploy
    assert cache.recorded_sha256(GHOST_FILE) == hashlib.sha256((mirror / GHOST_FILE).read_bytes()).hexdigest()


def test_a_downloaded_file_of_another_model_is_not_kept(env, states, monkeypatch):
    home, mirror = env
    a0, ghost = states
    (mirror / "payload").mkdir()
    torch.save({"model": {k: v[:1] if v.ndim else v for k, v in ghost.items()}}, mirror / "payload" / "x.pth")
    data = (mirror / "payload" / "x.pth").read_bytes()  # RepGhostNet-0.5x's keys, every shape wrong
    monkeypatch.setenv("REPZOO_OFFLINE", "0")
    with Server({"/" + GHOST_FILE: lambda req: file_response(req, data)}) as srv:
        monkeypatch.setenv("REPZOO_MIRROR", srv.url)
        with pytest.raises(RepZooError) as info:
            repzoo.create_model("RepGhostNet-0.5x", pretrained=True)
    _refused(str(info.value))
    assert "other shapes" in str(info.value)
    assert not (home / "files" / GHOST_FILE).exists() and not (home / "files" / (GHOST_FILE + ".part")).exists()
    assert cache.recorded_sha256(GHOST_FILE) is None
