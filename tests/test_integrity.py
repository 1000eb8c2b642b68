"""Integrity: the cache never hands back wrong bytes, and every load path fails clearly.

One section per class of defect; each case checks the error type, that the message says what to do,
and what is left in the cache afterwards (:func:`cache_listing`). Disk-full and read-only cases run
on small tmpfs mounts (skipped, with the reason, where the machine does not allow mounting).
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

import repzoo
from repzoo.errors import (CheckpointError, ChecksumError, IncompatibleCheckpointError, RepZooError, StorageError,
                           UnsafeCheckpointError, WeightsUnavailableError)
from repzoo.weights import http, hub
from repzoo.weights.checkpoint import validate_file
from repzoo.weights.manifest import Source

from conftest import patch_manifest, randomize_bn
from httpserver import Response, Server, file_response

A0_FILE = "RepVGG-A0-train.pth"
DATA = random.Random(1).randbytes(200_000)
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "w.pth"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_listing(home: Path):
    """Every payload file under the cache (files/, deploy/, partial downloads), without locks and records."""
    if not home.exists():
        return []
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")
                  if p.is_file() and p.suffix != ".lock" and p.parent.name not in ("known", "stat"))


def _flip_keep_times(path: Path, at: int) -> None:
    """Change one byte and restore the mtime (what cp -p, rsync -t or a restored backup can leave)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def env(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("REPZOO_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("REPZOO_PROGRESS", "0")
    for var in ("REPZOO_MIRROR", "REPZOO_OFFLINE", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(http, "_sleep", lambda s: None)
    return home


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    folder = tmp_path / "mirror"
    folder.mkdir()
    monkeypatch.setenv("REPZOO_MIRROR", str(folder))
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    return folder


@pytest.fixture(scope="module")
def a0_state():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in randomize_bn(repzoo.create_model("RepVGG-A0")).state_dict().items()}


def _serve(data: bytes = DATA, **kw):
    return Server({"/" + NAME: lambda req: file_response(req, data, **kw)})


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot mount a tmpfs here ({err}); the disk-full and read-only cases need one")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# =============================================================================== 1. trusted by mtime


def test_a_changed_cache_file_with_its_old_mtime_is_not_returned(env):
    with _serve() as srv:
        src = [Source("url", srv.url + "/" + NAME)]
        path = hub.fetch(NAME, sources=src, sha256=SHA)
        _flip_keep_times(path, 100_000)
        assert hub.fetch(NAME, sources=src, sha256=SHA).read_bytes() == DATA  # re-downloaded
        assert srv.count() == 2
    _flip_keep_times(path, 5)
    with pytest.raises(ChecksumError, match="REPZOO_MIRROR"):
        hub.fetch(NAME, sha256=SHA)  # no source left: refused, and the damaged copy is gone
    assert cache_listing(env) == []


def test_a_changed_first_use_file_with_its_old_mtime_is_not_returned(env):
    with _serve() as srv:
        src = [Source("url", srv.url + "/" + NAME)]
        path = hub.fetch(NAME, sources=src)  # no known hash: recorded at first use
        _flip_keep_times(path, 7)
        assert hub.cached_file(NAME) is None
        assert hub.fetch(NAME, sources=src).read_bytes() == DATA
    assert cache_listing(env) == ["files/w.pth"]


def test_a_changed_mirror_file_with_its_old_mtime_is_refused_and_left_alone(env, tmp_path, monkeypatch):
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / NAME).write_bytes(DATA)
    monkeypatch.setenv("REPZOO_MIRROR", str(folder))
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    assert hub.fetch(NAME) == folder / NAME  # trusted on first use, recorded
    _flip_keep_times(folder / NAME, 150_000)
    with pytest.raises(ChecksumError) as info:
        hub.fetch(NAME)
    assert "repzoo cache rm w.pth" in str(info.value) and "replace that file" in str(info.value)
    assert (folder / NAME).read_bytes() != DATA  # the user's file is not touched
    assert cache_listing(env) == []


def test_a_sampled_byte_is_caught_even_when_the_stat_record_claims_the_file(env):
    """Bit rot: the metadata says nothing changed; the sample hash of every warm load still sees it."""
    from repzoo.weights import files

    with _serve() as srv:
        path = hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA)
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01  # inside the first 64 KiB, which every warm load hashes
    path.write_bytes(bytes(data))
    record = next((env / "stat").glob("*.json"))
    fp = json.loads(record.read_text())
    st = path.stat()
    fp.update(size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino, dev=st.st_dev)
    record.write_text(json.dumps(fp))  # forged: the record matches the new metadata
    assert files.verified_sha256(path) != SHA
    with pytest.raises(ChecksumError):
        hub.fetch(NAME, sha256=SHA)
    assert cache_listing(env) == []


def test_a_changed_deploy_cache_file_is_rebuilt_not_used(env, mirror, a0_state, monkeypatch):
    import repzoo.reparam

    torch.save({"model": a0_state}, mirror / A0_FILE)
    conversions = []
    real = repzoo.reparam.convert_state_dict
    monkeypatch.setattr(repzoo.reparam, "convert_state_dict", lambda *a, **k: conversions.append(1) or real(*a, **k))
    first = repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    deploy_file = next((env / "deploy").glob("*.safetensors"))
    _flip_keep_times(deploy_file, deploy_file.stat().st_size - 1000)  # one byte of one weight
    second = repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    assert len(conversions) == 2  # the damaged copy was not used: converted again
    assert all(torch.equal(second.state_dict()[k], v) for k, v in first.state_dict().items())
    assert cache_listing(env) == [f"deploy/{deploy_file.name}"]


def test_a_deploy_file_without_its_record_checks_its_own_hash(env, mirror, a0_state, monkeypatch):
    """A copied cache (no verification records): the hash the deploy file carries decides."""
    import repzoo.reparam

    torch.save({"model": a0_state}, mirror / A0_FILE)
    patch_manifest(monkeypatch, sha256=_sha((mirror / A0_FILE).read_bytes()))
    repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    conversions = []
    real = repzoo.reparam.convert_state_dict
    monkeypatch.setattr(repzoo.reparam, "convert_state_dict", lambda *a, **k: conversions.append(1) or real(*a, **k))
    shutil.rmtree(env / "stat")
    repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    assert conversions == []  # intact: used
    deploy_file = next((env / "deploy").glob("*.safetensors"))
    shutil.rmtree(env / "stat")
    _flip_keep_times(deploy_file, deploy_file.stat().st_size - 50)
    repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
    assert conversions == [1]  # damaged: rebuilt
    assert cache_listing(env) == [f"deploy/{deploy_file.name}"]


# =============================================================================== 2. downloads


def test_a_download_with_no_known_hash_must_be_a_complete_checkpoint(env, a0_state):
    with _serve(b"<not a checkpoint>" * 100) as srv:
        with pytest.raises(ChecksumError, match="not a complete, readable checkpoint"):
            hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], validate=validate_file)
    assert cache_listing(env) == [] and hub.recorded_sha256(NAME) is None
    buf = io.BytesIO()
    torch.save(a0_state, buf)
    truncated = buf.getvalue()[:-5000]
    with _serve(truncated) as srv:
        with pytest.raises(ChecksumError):
            hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], validate=validate_file)
    assert cache_listing(env) == [] and hub.recorded_sha256(NAME) is None
    with _serve(buf.getvalue()) as srv:
        path = hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], validate=validate_file)
    assert hub.recorded_sha256(NAME) == _sha(buf.getvalue()) and path.read_bytes() == buf.getvalue()


@pytest.mark.parametrize("stale", ["no_record", "other_version", "other_url"])
def test_a_stale_part_is_never_spliced_onto_a_new_download(env, stale):
    files_dir = env / "files"
    files_dir.mkdir(parents=True)
    old = random.Random(9).randbytes(50_000)  # the head of another file
    (files_dir / (NAME + ".part")).write_bytes(old)
    with _serve() as srv:
        url = srv.url + "/" + NAME
        if stale != "no_record":
            record = {"url": url if stale == "other_version" else srv.url + "/elsewhere",
                      "validator": '"an-old-etag"' if stale == "other_version" else f'"{hashlib.sha1(DATA).hexdigest()}"',
                      "total": len(DATA)}
            (files_dir / (NAME + ".part.json")).write_text(json.dumps(record))
        path = hub.fetch(NAME, sources=[Source("url", url)])  # no hash known: nothing would catch a splice
        reqs = srv.of("/" + NAME)
    assert path.read_bytes() == DATA and hub.recorded_sha256(NAME) == SHA
    if stale == "other_version":  # asked to resume, but only if unchanged: the server sent the whole file
        assert reqs[0].headers["if-range"] == '"an-old-etag"' and len(reqs) == 1
    else:  # nothing proves the .part is a prefix of this file: not even asked to resume
        assert "range" not in reqs[0].headers
    assert cache_listing(env) == ["files/w.pth"]


def test_a_symlinked_part_is_not_followed(env, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_bytes(b"keep me")
    files_dir = env / "files"
    files_dir.mkdir(parents=True)
    (files_dir / (NAME + ".part")).symlink_to(victim)
    with _serve() as srv:
        path = hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA)
    assert victim.read_bytes() == b"keep me" and path.read_bytes() == DATA and not path.is_symlink()
    assert cache_listing(env) == ["files/w.pth"]


def test_a_content_length_shorter_than_the_file_gives_no_wrong_file(env, a0_state):
    buf = io.BytesIO()
    torch.save(a0_state, buf)
    data = buf.getvalue()

    def short(req):
        return Response(200, data, {"Content-Length": str(len(data) - 4096), "ETag": '"v1"'}, content_length=False)

    with Server({"/" + NAME: short}) as srv:
        with pytest.raises(ChecksumError):
            hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], validate=validate_file)
        with pytest.raises(ChecksumError):
            hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=_sha(data))
    assert cache_listing(env) == [] and hub.recorded_sha256(NAME) is None


def test_content_encoding_is_decoded_or_refused_never_kept_wrong(env):
    packed = gzip.compress(DATA)

    def encoded(req):
        return Response(200, packed, {"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"})

    def lying(req):  # says gzip, sends the raw bytes
        return Response(200, DATA, {"Content-Encoding": "gzip"})

    with Server({"/" + NAME: encoded, "/lie": lying}) as srv:
        assert hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA).read_bytes() == DATA
        with pytest.raises(WeightsUnavailableError):
            hub.fetch("other.pth", sources=[Source("url", srv.url + "/lie")], sha256=SHA)
    assert cache_listing(env) == ["files/w.pth"]


def test_a_stalled_download_resumes_and_the_stall_timeout_is_the_users(env, monkeypatch):
    import threading

    monkeypatch.setenv("REPZOO_STALL_TIMEOUT", "0.3")
    release = threading.Event()

    def handler(req):
        if req.index == 0:  # half the file, then silence until the test ends
            return Response(200, DATA, {"ETag": f'"{hashlib.sha1(DATA).hexdigest()}"'}, drop_after=len(DATA) // 2,
                            before_rest=lambda: release.wait(30))
        return file_response(req, DATA)

    with Server({"/" + NAME: handler}) as srv:
        try:
            path = hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA)
        finally:
            release.set()
        reqs = srv.of("/" + NAME)
    assert path.read_bytes() == DATA
    assert len(reqs) == 2 and reqs[1].headers["range"] == f"bytes={len(DATA) // 2}-"


def test_the_overall_deadline_is_the_users(env, monkeypatch):
    monkeypatch.setenv("REPZOO_DOWNLOAD_TIMEOUT", "5")
    clock = iter(range(0, 10_000, 10))  # every look at the clock: 10 s later
    monkeypatch.setattr(http.time, "monotonic", lambda: next(clock))
    with _serve() as srv:
        with pytest.raises(WeightsUnavailableError, match="REPZOO_DOWNLOAD_TIMEOUT"):
            hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA)
    assert cache_listing(env) == []
    monkeypatch.setenv("REPZOO_DOWNLOAD_TIMEOUT", "later")
    with pytest.raises(RepZooError, match="seconds"):
        hub.fetch(NAME, sources=[Source("url", "http://127.0.0.1:9/x")], sha256=SHA)


# =============================================================================== 3. deploy-form loading


@pytest.fixture(scope="module")
def a0_deploy_state(a0_state):
    return repzoo.create_model("RepVGG-A0", deploy=True, checkpoint_path=a0_state).state_dict()


def test_a_wrong_shaped_train_tensor_is_not_fused_in(a0_state):
    bad = dict(a0_state)
    bad["stage1.0.rbr_1x1.conv.weight"] = torch.randn(48, 48, 3, 3)  # a 3x3 where a 1x1 belongs
    with pytest.raises(IncompatibleCheckpointError) as info:
        repzoo.create_model("RepVGG-A0", deploy=True, checkpoint_path=bad)
    assert "train-time form" in str(info.value) and "stage1.0.rbr_1x1.conv.weight" in str(info.value)


@pytest.mark.parametrize("change", ["extra", "missing", "shape"])
def test_a_deploy_checkpoint_off_by_one_key_gets_a_readable_diff(a0_deploy_state, change):
    sd = dict(a0_deploy_state)
    if change == "extra":
        sd["stage1.0.rbr_reparam.scale"] = torch.ones(1)
    elif change == "missing":
        del sd["stage2.3.rbr_reparam.bias"]
    else:
        sd["stage2.3.rbr_reparam.bias"] = torch.zeros(7)
    with pytest.raises(IncompatibleCheckpointError) as info:
        repzoo.create_model("RepVGG-A0", deploy=True, checkpoint_path=sd)
    text = str(info.value)
    assert {"extra": "unexpected keys", "missing": "missing keys", "shape": "mismatched shapes"}[change] in text
    assert "deploy form" in text and "another model" in text


@pytest.mark.parametrize("other", ["RepVGG-A1", "RepOpt-VGG-B1"])
def test_another_models_checkpoint_into_a_deploy_model_is_a_readable_error(other):
    with torch.device("meta"):
        sd = repzoo.create_model(other).state_dict()
    sd = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in sd.items()}
    with pytest.raises(IncompatibleCheckpointError, match="does not fit"):
        repzoo.create_model("RepVGG-A0", deploy=True, checkpoint_path=sd)


def test_a_train_checkpoint_missing_a_branch_tensor_is_a_readable_error(a0_state):
    sd = dict(a0_state)
    del sd["stage3.5.rbr_identity.running_var"]
    with pytest.raises(IncompatibleCheckpointError, match="missing keys") as info:
        repzoo.create_model("RepVGG-A0", deploy=True, checkpoint_path=sd)
    assert "stage3.5.rbr_identity.running_var" in str(info.value)


# =============================================================================== 4. raw exceptions


def test_an_empty_file_says_it_is_empty(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        repzoo.create_model("RepVGG-A0", checkpoint_path=tmp_path / "empty.pth")


def test_integer_keys_are_not_a_state_dict(tmp_path):
    torch.save({0: torch.zeros(1), 1: torch.ones(1)}, tmp_path / "ints.pth")
    with pytest.raises(CheckpointError, match="keys must be strings"):
        repzoo.create_model("RepVGG-A0", checkpoint_path=tmp_path / "ints.pth")


def test_repzoo_home_being_a_file(tmp_path, monkeypatch, capsys):
    from repzoo.cli import main

    (tmp_path / "home").write_text("not a folder")
    monkeypatch.setenv("REPZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    with pytest.raises(StorageError, match="is a file"):
        repzoo.create_model("RepVGG-A0", pretrained=True)
    assert main(["cache", "ls"]) == 2 and "REPZOO_HOME" in capsys.readouterr().err


def test_a_cache_that_cannot_take_the_deploy_copy_still_gives_the_model(tmp_path, monkeypatch, a0_state):
    home = tmp_path / "home"
    folder = tmp_path / "mirror"
    folder.mkdir()
    torch.save({"model": a0_state}, folder / A0_FILE)
    monkeypatch.setenv("REPZOO_MIRROR", str(folder))
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    monkeypatch.setenv("REPZOO_HOME", str(home))
    with tmpfs(home, "200k", read_only=False):
        with pytest.warns(UserWarning, match="could not be cached"):
            model = repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)  # 33 MB do not fit in 200 KB
        assert model.deploy and not any(p.is_meta for p in model.parameters())
        assert cache_listing(home) == []  # no half-written deploy file
    with tmpfs(home, "1m", read_only=True):
        with pytest.warns(UserWarning, match="could not be cached"):
            model = repzoo.create_model("RepVGG-A0", pretrained=True, deploy=True)
        assert model.deploy


def test_a_full_disk_is_reported_as_such_once_and_leaves_no_part(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("REPZOO_HOME", str(home))
    monkeypatch.setenv("REPZOO_PROGRESS", "0")
    big = random.Random(3).randbytes(600_000)
    with tmpfs(home, "256k"):
        with Server({"/" + NAME: lambda req: file_response(req, big)}) as srv:
            with pytest.raises(StorageError, match="disk is full") as info:
                hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=_sha(big))
            assert srv.count() == 1  # not taken for a lost connection, not retried
        assert "REPZOO_HOME" in str(info.value)
        assert cache_listing(home) == []


def test_convert_to_a_folder_that_does_not_exist(tmp_path, capsys, a0_state):
    from repzoo.cli import main

    torch.save(a0_state, tmp_path / "a0.pth")
    assert main(["convert", "RepVGG-A0", str(tmp_path / "a0.pth"), str(tmp_path / "no" / "such" / "out.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_predict_refuses_a_decompression_bomb_and_a_bad_top_k(tmp_path, mirror, capsys, a0_state):
    from PIL import Image

    from repzoo.cli import main

    torch.save(a0_state, mirror / A0_FILE)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)  # 400 Mpixel in a few KB
    assert bomb.stat().st_size < 200_000
    assert main(["predict", str(bomb), "--model", "RepVGG-A0"]) == 2
    assert "Refused image" in capsys.readouterr().err
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    assert main(["predict", str(small), "--model", "RepVGG-A0", "--top-k", "-3"]) == 2
    assert "--top-k" in capsys.readouterr().err


# =============================================================================== 5. not what they claim


def test_a_checkpoint_of_meta_tensors_is_refused(tmp_path):
    with torch.device("meta"):
        sd = repzoo.create_model("RepVGG-A0").state_dict()
    torch.save(sd, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="meta tensor"):
        repzoo.create_model("RepVGG-A0", checkpoint_path=tmp_path / "meta.pth")


def test_a_deflated_torch_zip_is_read_with_the_right_values(tmp_path, a0_state):
    torch.save(a0_state, tmp_path / "stored.pth")
    with zipfile.ZipFile(tmp_path / "stored.pth") as zin, \
            zipfile.ZipFile(tmp_path / "deflated.pth", "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    model = repzoo.create_model("RepVGG-A0", checkpoint_path=tmp_path / "deflated.pth")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in a0_state.items())


def test_aliased_expanded_and_grad_tensors_load_independent_and_dense(a0_state):
    sd = dict(a0_state)
    sd["linear.bias"] = torch.zeros(()).expand(1000)  # stride 0
    sd["stage1.0.rbr_dense.bn.weight"] = sd["stage1.0.rbr_1x1.bn.weight"]  # the same storage twice
    sd["stage0.rbr_dense.bn.running_mean"] = sd["stage0.rbr_dense.bn.running_mean"].clone().requires_grad_()
    model = repzoo.create_model("RepVGG-A0", checkpoint_path=sd)
    msd = model.state_dict()
    assert msd["linear.bias"].is_contiguous() and msd["linear.bias"].stride() == (1,)
    a, b = model.stage1[0].rbr_dense.bn.weight, model.stage1[0].rbr_1x1.bn.weight
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    with torch.no_grad():
        a.add_(1.0)
    assert not torch.equal(a, b)
    assert not model.stage0.rbr_dense.bn.running_mean.requires_grad


@pytest.mark.parametrize("make, kind", [(lambda t: t.to_sparse(), "sparse tensor"),
                                        (lambda t: t.to_sparse_csr(), "sparse tensor")])
def test_the_unpickler_itself_refuses_sparse_tensors(make, kind):
    """At the unpickler's own level: a later dense-only check must not be what catches them."""
    import io

    from repzoo.weights import safe_pickle

    buf = io.BytesIO()
    torch.save({"w": make(torch.ones(2, 3))}, buf, _use_new_zipfile_serialization=False)
    buf.seek(0)
    with pytest.raises(safe_pickle.Unsupported, match=kind):
        torch.load(buf, pickle_module=safe_pickle, weights_only=False)


def test_a_sparse_tensor_is_refused_clearly(tmp_path, a0_state):
    sd = dict(a0_state)
    sd["linear.weight"] = sd["linear.weight"].to_sparse()
    torch.save(sd, tmp_path / "sparse.pth")
    with pytest.raises(CheckpointError, match="sparse|dense"):
        repzoo.create_model("RepVGG-A0", checkpoint_path=tmp_path / "sparse.pth")


# =============================================================================== 6. memory amplification


class _Call:
    """Pickles as ``fn(*args)``: what a crafted file contains."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_a_small_file_cannot_make_the_loader_allocate_a_gigabyte(tmp_path):
    path = tmp_path / "bytearray.pth"
    torch.save({"w": torch.zeros(2), "pad": _Call(bytearray, 1 << 30)}, path)
    assert path.stat().st_size < 2000
    with pytest.raises(UnsafeCheckpointError, match="more than the file can hold"):
        repzoo.read_state_dict(path)


def test_a_legacy_file_declaring_a_huge_storage_is_refused(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    # the storage's element count (4, pickled as BININT1) follows its location string 'cpu'
    i = raw.index(b"cpuq")
    j = raw.index(b"K\x04", i)
    crafted = raw[:j] + b"J\x00\x00\x00\x40" + raw[j + 2:]  # 2**30 floats = 4 GiB declared
    path.write_bytes(crafted)
    with pytest.raises(UnsafeCheckpointError):
        repzoo.read_state_dict(path)


def test_a_deflate_bomb_in_the_pickle_is_refused(tmp_path):
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb/data.pkl", b"\x80\x02" + b"N" * (300 << 20) + b".")
        zf.writestr("bomb/version", "3\n")
    assert path.stat().st_size < 2 << 20
    with pytest.raises(UnsafeCheckpointError, match="declare"):
        repzoo.read_state_dict(path)


def test_a_legacy_tensor_constructor_is_not_called(tmp_path):
    path = tmp_path / "ctor.pth"
    torch.save({"w": torch.zeros(2), "big": _Call(torch.FloatTensor, 1 << 28)}, path)
    with pytest.raises(UnsafeCheckpointError, match="FloatTensor"):
        repzoo.read_state_dict(path)


# =============================================================================== 7. recovering


def test_a_wrong_hugging_face_blob_is_dropped_so_the_next_fetch_recovers(env, monkeypatch, tmp_path):
    repo, commit = "someone/w", "0123456789abcdef0123456789abcdef01234567"
    hub_cache = tmp_path / "hf" / "hub"
    repo_dir = hub_cache / ("models--" + repo.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True)
    wrong = random.Random(5).randbytes(1000)
    (repo_dir / "blobs" / _sha(wrong)).write_bytes(wrong)
    (repo_dir / "snapshots" / commit).mkdir(parents=True)
    (repo_dir / "snapshots" / commit / NAME).symlink_to(Path("../../blobs") / _sha(wrong))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = [Source("hf", repo, filename=NAME)]
    with pytest.raises(ChecksumError):
        hub.fetch(NAME, sources=src, sha256=SHA)
    assert not (repo_dir / "blobs" / _sha(wrong)).exists()  # the wrong blob is gone
    monkeypatch.delenv("HF_HUB_OFFLINE")
    route = f"/{repo}/resolve/main/{NAME}"
    with Server({route: lambda req: file_response(req, DATA, headers={"X-Repo-Commit": commit,
                                                                      "ETag": f'"{SHA}"'})}) as srv:
        import huggingface_hub.constants as constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        assert hub.fetch(NAME, sources=src, sha256=SHA).read_bytes() == DATA


def test_following_the_message_about_a_recorded_hash_recovers(env, capsys):
    from repzoo.cli import main

    first, second = DATA, random.Random(2).randbytes(len(DATA))
    served = {"data": first}
    with Server({"/" + NAME: lambda req: file_response(req, served["data"])}) as srv:
        src = [Source("url", srv.url + "/" + NAME)]
        hub.fetch(NAME, sources=src)
        hub.cache_path(NAME).unlink()  # the user deletes the cached file by hand
        served["data"] = second  # … and upstream has changed
        with pytest.raises(ChecksumError) as info:
            hub.fetch(NAME, sources=src)
        advice = f"repzoo cache rm {NAME}"
        assert advice in str(info.value)
        assert main(advice.split()[1:]) == 0  # what the message says
        assert hub.fetch(NAME, sources=src).read_bytes() == second
    assert cache_listing(env) == ["files/w.pth"]


def test_a_corrupt_cached_checkpoint_is_forgotten_so_a_good_one_can_follow(env, mirror, monkeypatch, a0_state):
    """A truncated file that was recorded on first use (by an older repzoo, say) must not block its fix."""
    from repzoo.weights.files import remember_known

    cached = hub.cache_path(A0_FILE)
    buf = io.BytesIO()
    torch.save(a0_state, buf)
    cached.write_bytes(buf.getvalue()[:-100_000])
    remember_known(A0_FILE, _sha(cached.read_bytes()), cached.stat().st_size, "an old download")
    with pytest.raises(CheckpointError) as info:
        repzoo.create_model("RepVGG-A0", pretrained=True)
    assert "removed it from the cache" in str(info.value) and "run again" in str(info.value)
    assert cache_listing(env) == [] and hub.recorded_sha256(A0_FILE) is None
    torch.save(a0_state, mirror / A0_FILE)  # the good file
    model = repzoo.create_model("RepVGG-A0", pretrained=True)
    assert torch.equal(model.state_dict()["linear.weight"], a0_state["linear.weight"])


def test_convert_refuses_to_overwrite_its_input(tmp_path, capsys, a0_state):
    from repzoo.cli import main

    path = tmp_path / "a0.pth"
    torch.save(a0_state, path)
    before = path.read_bytes()
    assert main(["convert", "RepVGG-A0", str(path), str(path)]) == 2
    assert "is the input checkpoint" in capsys.readouterr().err
    assert path.read_bytes() == before


# =============================================================================== 8. wrappers


@pytest.mark.parametrize("wrap", ["_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_torch_compile_prefixes(a0_state, wrap):
    model = repzoo.create_model("RepVGG-A0", checkpoint_path={f"{wrap}{k}": v for k, v in a0_state.items()})
    assert torch.equal(model.state_dict()["linear.weight"], a0_state["linear.weight"])


def test_ema_wrappers(a0_state, tmp_path):
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in a0_state.items()}
    only_ema = repzoo.create_model("RepVGG-A0", checkpoint_path={"model_ema": ema})
    assert torch.equal(only_ema.linear.weight, ema["linear.weight"])
    both = {"state_dict": a0_state, "state_dict_ema": {f"module.{k}": v for k, v in ema.items()}, "epoch": 3}
    torch.save(both, tmp_path / "timm_train.pth.tar")
    main = repzoo.create_model("RepVGG-A0", checkpoint_path=tmp_path / "timm_train.pth.tar")
    assert torch.equal(main.linear.weight, a0_state["linear.weight"])
    picked = repzoo.create_model("RepVGG-A0", checkpoint_path=tmp_path / "timm_train.pth.tar",
                                 checkpoint_key="state_dict_ema")
    assert torch.equal(picked.linear.weight, ema["linear.weight"])
    with pytest.raises(CheckpointError, match="no 'ema' entry"):
        repzoo.create_model("RepVGG-A0", checkpoint_path=tmp_path / "timm_train.pth.tar", checkpoint_key="ema")


def test_a_wrapper_name_in_the_keys_is_named_in_the_error(a0_state):
    nested = {f"model.{k}": v for k, v in a0_state.items()}  # saved as a flattened {'model': …}
    with pytest.raises(IncompatibleCheckpointError, match="checkpoint_key"):
        repzoo.create_model("RepVGG-A0", checkpoint_path=nested)


def test_pickled_objects_beside_the_weights_are_reported_not_run(tmp_path, a0_state):
    import argparse

    path = tmp_path / "args.pth"
    torch.save({"model": a0_state, "args": argparse.Namespace(lr=0.1)}, path)
    model = repzoo.create_model("RepVGG-A0", checkpoint_path=path)
    assert torch.equal(model.linear.weight, a0_state["linear.weight"])
