"""The integrity classes of the second adversarial review, each with several cases: pickled state on
tensors, ambiguous safetensors headers, lossy dtype casts, wrappers, Hub retries, the forms users try for
REPZOO_MIRROR and `repzoo convert`, and the Hub's published LFS sha256."""
from __future__ import annotations

import hashlib
import random
import struct
import sys
import types
from pathlib import Path

import pytest
import torch

import repzoo
from repzoo.cli import main
from repzoo.errors import ChecksumError, CheckpointError, IncompatibleCheckpointError, RepZooError
from repzoo.errors import UnsafeCheckpointError
from repzoo.weights import cache, files, http, hub, safe_pickle
from repzoo.weights.checkpoint import read_state_dict, save_state_dict
from repzoo.weights.manifest import Source

from httpserver import Response, Server, file_response


@pytest.fixture(scope="module")
def a0_sd():
    torch.manual_seed(0)
    return repzoo.create_model("RepVGG-A0").state_dict()


# =============================================================================== 1. state on tensors


def _unknown_class(tmp_module: str = "not_importable_at_load"):
    """A class pickled by reference to a module that does not exist when the file is read."""
    mod = types.ModuleType(tmp_module)
    cls = type("Payload", (), {"__module__": tmp_module})
    mod.Payload = cls
    return mod, cls


def _save_with_unknown_state(path: Path, make) -> None:
    mod, cls = _unknown_class()
    sys.modules[mod.__name__] = mod
    try:
        torch.save(make(cls()), path)
    finally:
        del sys.modules[mod.__name__]


def _no_stand_in(obj) -> bool:
    return not any(isinstance(v, safe_pickle._Inert) for v in vars(obj).values()) if hasattr(obj, "__dict__") else True


@pytest.mark.parametrize("case", ["tensor attribute", "parameter attribute", "nested in an attribute"])
def test_unknown_classes_never_reach_the_loaded_tensors(tmp_path, case):
    def make(payload):
        t = torch.arange(6.0).reshape(2, 3)
        if case == "parameter attribute":
            t = torch.nn.Parameter(t)
        t.extra = payload if case != "nested in an attribute" else {"deep": [payload]}
        return {"w": t, "b": torch.zeros(2)}

    path = tmp_path / "w.pth"
    _save_with_unknown_state(path, make)
    with safe_pickle.budget(1 << 30):  # the unpickler itself drops the state and says so
        raw = torch.load(path, weights_only=False, pickle_module=safe_pickle)
        assert "the Python attributes pickled on a tensor" in safe_pickle.replaced()
    assert not hasattr(raw["w"], "extra")
    sd = read_state_dict(path)  # and what the reader returns is a plain tensor, nothing on it
    assert type(sd["w"]) is torch.Tensor and not hasattr(sd["w"], "extra") and _no_stand_in(sd["w"])
    assert torch.equal(sd["w"], torch.arange(6.0).reshape(2, 3))


def test_the_reader_strips_attributes_the_unpickler_let_through(a0_sd):
    t = torch.ones(3)
    t.note = "set in memory"
    p = torch.nn.Parameter(torch.ones(2))
    sd = read_state_dict({"t": t, "p": p})
    assert type(sd["t"]) is torch.Tensor and not hasattr(sd["t"], "note")
    assert type(sd["p"]) is torch.Tensor and not sd["p"].requires_grad


# =============================================================================== 2. safetensors headers


def _safetensors(path: Path, header_text: str, payload: bytes) -> Path:
    raw = header_text.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)
    return path


@pytest.mark.parametrize("header", [
    '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
    '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
    '{"__metadata__":{"a":"1"},"__metadata__":{"a":"2"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
    '{"w":{"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]}}',
])
def test_a_header_that_names_a_key_twice_is_refused(tmp_path, header):
    path = _safetensors(tmp_path / "w.safetensors", header, struct.pack("<2f", 1.0, 2.0))
    with pytest.raises(UnsafeCheckpointError, match="twice"):
        read_state_dict(path)


def test_a_header_with_each_key_once_loads(tmp_path):
    header = '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"v":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    sd = read_state_dict(_safetensors(tmp_path / "w.safetensors", header, struct.pack("<2f", 1.0, 2.0)))
    assert sd["w"].item() == 1.0 and sd["v"].item() == 2.0


# =============================================================================== 3. lossy casts


@pytest.mark.parametrize("deploy", [False, True])
def test_complex_weights_are_refused_not_cast(a0_sd, deploy):
    sd = dict(a0_sd)
    sd["linear.weight"] = sd["linear.weight"].to(torch.complex64)
    with pytest.raises(IncompatibleCheckpointError, match="without loss"):
        repzoo.create_model("RepVGG-A0", checkpoint_path=sd, deploy=deploy)


def test_a_fractional_counter_is_refused_and_wider_floats_load(a0_sd):
    key = next(k for k in a0_sd if k.endswith("num_batches_tracked"))
    with pytest.raises(IncompatibleCheckpointError, match="num_batches_tracked"):
        repzoo.create_model("RepVGG-A0", checkpoint_path=dict(a0_sd, **{key: torch.tensor(2.5)}))
    wide = {k: v.double() if v.is_floating_point() else v for k, v in a0_sd.items()}
    model = repzoo.create_model("RepVGG-A0", checkpoint_path=wide)  # float64 → float32: rounding only
    assert model.linear.weight.dtype == torch.float32


# =============================================================================== 4. wrappers


@pytest.mark.parametrize("wrap", [lambda sd: {"net": sd}, lambda sd: {"module": sd},
                                  lambda sd: {"model": {}, "state_dict": sd, "epoch": 3},
                                  lambda sd: {"module": {f"module.{k}": v for k, v in sd.items()}}])
def test_wrappers_load(tmp_path, a0_sd, wrap):
    torch.save(wrap(a0_sd), tmp_path / "w.pth")
    model = repzoo.create_model("RepVGG-A0", checkpoint_path=tmp_path / "w.pth")
    assert torch.equal(model.state_dict()["linear.weight"], a0_sd["linear.weight"])


def test_an_unknown_wrapper_is_named_with_checkpoint_key(tmp_path, a0_sd):
    torch.save({"weights_of_run_7": a0_sd, "step": 10}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="checkpoint_key='weights_of_run_7'"):
        repzoo.create_model("RepVGG-A0", checkpoint_path=tmp_path / "w.pth")
    model = repzoo.create_model("RepVGG-A0", checkpoint_path=tmp_path / "w.pth", checkpoint_key="weights_of_run_7")
    assert torch.equal(model.state_dict()["linear.weight"], a0_sd["linear.weight"])


# =============================================================================== 5 and 7. the Hub

DATA = random.Random(3).randbytes(100_000)
SHA = hashlib.sha256(DATA).hexdigest()
REPO, COMMIT, NAME = "someone/repvgg-test", "0123456789abcdef0123456789abcdef01234567", "w.pth"
ROUTE = f"/{REPO}/resolve/main/{NAME}"


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("REPZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("REPZOO_PROGRESS", "0")
    for var in ("REPZOO_MIRROR", "REPZOO_OFFLINE", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    delays = []
    monkeypatch.setattr(http, "_sleep", delays.append)
    return delays


def _hub_file(etag: str = SHA, failures: int = 0, status: int = 500):
    """The Hub's resolve endpoint; the first ``failures`` downloads (GET) answer ``status``."""
    gets = []

    def resolve(req):
        if req.method == "GET":
            gets.append(req)
            if len(gets) <= failures:
                return Response(status, b"busy")
        return file_response(req, DATA, headers={"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'})
    return Server({ROUTE: resolve})


@pytest.mark.parametrize("status", [500, 502, 503])
def test_the_hub_path_retries_like_the_https_path(hub_env, monkeypatch, status):
    with _hub_file(failures=2, status=status) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        path = hub.fetch(NAME, sources=[Source("hf", REPO, filename=NAME)], sha256=SHA)
        assert srv.count(ROUTE, "GET") == 3
    assert path.read_bytes() == DATA
    assert hub_env == [http.retry_delay(2)]  # urllib3's schedule: the first retry at once, then 2 s × factor


def test_the_hub_path_gives_up_after_the_same_number_of_tries(hub_env, monkeypatch):
    with _hub_file(failures=100) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        with pytest.raises(RepZooError, match=f"gave up after {http._RETRIES + 1} tries"):
            hub.fetch(NAME, sources=[Source("hf", REPO, filename=NAME)], sha256=SHA)
    assert hub_env == [http.retry_delay(n) for n in range(2, http._RETRIES + 1)]


def test_a_hub_404_is_not_retried(hub_env, monkeypatch):
    with _hub_file(failures=100, status=404) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        with pytest.raises(RepZooError):
            hub.fetch(NAME, sources=[Source("hf", REPO, filename=NAME)], sha256=SHA)
        assert srv.count(ROUTE, "GET") == 1
    assert hub_env == []


def test_the_published_lfs_sha256_is_checked_and_recorded(hub_env, monkeypatch):
    with _hub_file() as srv:  # no sha256 in the manifest: the Hub's LFS sha256 (its ETag) stands for it
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        hub.fetch(NAME, sources=[Source("hf", REPO, filename=NAME)])
    assert cache.recorded_sha256(NAME) == SHA
    assert "LFS sha256" in files.known(NAME).source


def test_a_file_that_does_not_match_its_published_sha256_is_refused(hub_env, monkeypatch):
    other = hashlib.sha256(b"another file").hexdigest()
    with _hub_file(etag=other) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        with pytest.raises(ChecksumError, match="LFS sha256 the host publishes"):
            hub.fetch(NAME, sources=[Source("hf", REPO, filename=NAME)])
    assert cache.recorded_sha256(NAME) is None


def test_a_file_without_a_published_sha256_is_trusted_on_first_use(hub_env, monkeypatch):
    with _hub_file(etag="abc123") as srv:  # a non-LFS file: its ETag is no sha256
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        hub.fetch(NAME, sources=[Source("hf", REPO, filename=NAME)])
    assert cache.recorded_sha256(NAME) == SHA


# =============================================================================== 6. forms users try


def test_a_file_url_mirror_is_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("REPZOO_HOME", str(tmp_path / "home"))
    folder = tmp_path / "my mirror"
    folder.mkdir()
    (folder / NAME).write_bytes(DATA)
    for url in (folder.as_uri(), "file://localhost" + folder.as_uri()[len("file://"):]):
        monkeypatch.setenv("REPZOO_MIRROR", url)
        assert hub.fetch(NAME, sha256=SHA) == folder / NAME


@pytest.mark.parametrize("value, says", [("file://server/share", "names the host"), ("ftp://host/x", "ftp:// is not"),
                                         ("s3://bucket/weights", "s3:// is not")])
def test_mirror_forms_repzoo_cannot_use_are_explained(tmp_path, monkeypatch, value, says):
    monkeypatch.setenv("REPZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REPZOO_MIRROR", value)
    with pytest.raises(RepZooError, match=says):
        hub.fetch(NAME, sha256=SHA)


@pytest.mark.parametrize("ext", [".npz", ".onnx", ""])
def test_convert_to_an_unknown_extension_is_refused_naming_the_formats(tmp_path, a0_sd, capsys, ext):
    torch.save(a0_sd, tmp_path / "train.pth")
    out = tmp_path / f"deploy{ext}"
    assert main(["convert", "RepVGG-A0", str(tmp_path / "train.pth"), str(out)]) == 2
    err = capsys.readouterr().err
    assert ".safetensors" in err and ".pth" in err
    assert not out.exists()
    with pytest.raises(RepZooError, match="not a format repzoo writes"):
        save_state_dict(a0_sd, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.pth"]
