"""repzoo.hub: mirror, cache, HTTPS, Google Drive and Hub fetching — all against a server on 127.0.0.1.

Expected hashes come from hashlib in the test (or, for the real scale files, the sha256 in conftest.SCALES_SHA256), never
from repzoo. The back-off sleep is replaced by a recorder, so no test waits on real time.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import SCALES_DIR, SCALES_MODEL, SCALES_SHA256
from httpserver import Response, Server, file_response, html_response
from repzoo.weights import http, hub
from repzoo.errors import ChecksumError, RepZooError, WeightsUnavailableError
from repzoo.weights.manifest import Source

DATA = random.Random(0).randbytes(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
ETAG = f'"{hashlib.sha1(DATA).hexdigest()}"'  # what file_response sends for DATA
NAME = "w.pth"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _flip(data: bytes, at: int = 1000) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def _leftovers(home: Path):
    """Every file under the cache except the (empty) lock files and the verification records."""
    if not home.exists():
        return []
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")
                  if p.is_file() and p.suffix != ".lock" and p.parent.name not in ("known", "stat"))


def _records(home: Path):
    """The first-use records (``known/``) in the cache."""
    return sorted(p.name for p in (home / "known").glob("*.json")) if (home / "known").is_dir() else []


@pytest.fixture
def env(tmp_path, monkeypatch):
    home = tmp_path / "repzoo_home"
    monkeypatch.setenv("REPZOO_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("REPZOO_PROGRESS", "0")
    for var in ("REPZOO_MIRROR", "REPZOO_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT",
                "REPZOO_GDRIVE_URL", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    delays = []
    monkeypatch.setattr(http, "_sleep", delays.append)
    return SimpleNamespace(home=home, tmp=tmp_path, delays=delays, files=home / "files")


def _serve(data: bytes = DATA, path: str = "/" + NAME):
    return Server({path: lambda req: file_response(req, data)})


# --------------------------------------------------------------------------- plain HTTPS


def test_download_is_verified_cached_and_recorded(env):
    with _serve() as srv:
        path = hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA, size=len(DATA))
        assert path == env.files / NAME
        assert path.read_bytes() == DATA
        again = hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA)
        assert again == path
        assert srv.count() == 1  # the second call was a cache hit
    assert hub.cached_file(NAME) == path
    assert hub.recorded_sha256(NAME) == SHA
    assert json.loads((env.home / "known" / (NAME + ".json")).read_text())["sha256"] == SHA
    assert hub.cache_entries() == [{"file_name": NAME, "path": path, "size": len(DATA), "sha256": SHA}]
    assert _leftovers(env.home) == ["files/w.pth"]
    assert hub.remove_cached(NAME) is True
    assert hub.remove_cached(NAME) is False
    assert _records(env.home) == [] and hub.recorded_sha256(NAME) is None
    assert hub.cached_file(NAME) is None and hub.cache_entries() == []


def test_resume_after_dropped_connection(env):
    cut = 123_457

    def handler(req):
        if req.index == 0:
            return Response(200, DATA, {"Accept-Ranges": "bytes", "ETag": ETAG}, drop_after=cut)
        return file_response(req, DATA)

    with Server({"/" + NAME: handler}) as srv:
        path = hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA)
        reqs = srv.of("/" + NAME)
    assert len(reqs) == 2
    assert "range" not in reqs[0].headers
    assert reqs[1].headers["range"] == f"bytes={cut}-"
    assert _sha(path.read_bytes()) == SHA
    assert _leftovers(env.home) == ["files/w.pth"]


def test_partial_file_is_resumed_by_a_later_call_when_sha256_is_known(env):
    cut = 50_000
    healthy = threading.Event()

    def handler(req):
        if healthy.is_set():
            return file_response(req, DATA)
        if req.index == 0:
            return Response(200, DATA, {"ETag": ETAG}, drop_after=cut)
        return Response(503, b"busy")

    with Server({"/" + NAME: handler}) as srv:
        src = [Source("url", srv.url + "/" + NAME)]
        with pytest.raises(WeightsUnavailableError, match="HTTP 503"):
            hub.fetch(NAME, sources=src, sha256=SHA)
        assert srv.count() == 1 + http._RETRIES + 1  # the dropped download, then the resume and its retries
        assert (env.files / (NAME + ".part")).stat().st_size == cut
        healthy.set()
        path = hub.fetch(NAME, sources=src, sha256=SHA)
        assert srv.of("/" + NAME)[-1].headers["range"] == f"bytes={cut}-"
    assert path.read_bytes() == DATA
    assert not (env.files / (NAME + ".part")).exists()


def test_500_is_retried_with_backoff(env):
    def handler(req):
        return Response(500, b"oops") if req.index < 2 else file_response(req, DATA)

    with Server({"/" + NAME: handler}) as srv:
        path = hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA)
        assert srv.count() == 3
    assert path.read_bytes() == DATA
    # urllib3's schedule: the first retry at once, then backoff_factor * 2 ** (n - 1)
    assert env.delays == [http._BACKOFF * 2]


def test_transient_errors_back_off_exponentially_then_give_up(env):
    with Server({"/" + NAME: lambda req: Response(503, b"down")}) as srv:
        with pytest.raises(WeightsUnavailableError) as info:
            hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA)
        assert srv.count() == http._RETRIES + 1
    assert env.delays == [http._BACKOFF * 2 ** i for i in range(1, http._RETRIES)]
    assert "503" in str(info.value)
    assert _leftovers(env.home) == []


def test_429_honours_retry_after(env):
    def handler(req):
        return Response(429, b"slow down", {"Retry-After": "7"}) if req.index == 0 else file_response(req, DATA)

    with Server({"/" + NAME: handler}) as srv:
        hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA)
        assert srv.count() == 2
    assert env.delays == [7.0]


@pytest.mark.parametrize("status", [404, 403])
def test_client_errors_are_not_retried(env, status):
    with Server({"/" + NAME: lambda req: Response(status, b"no")}) as srv:
        url = srv.url + "/" + NAME
        with pytest.raises(WeightsUnavailableError) as info:
            hub.fetch(NAME, sources=[Source("url", url)], sha256=SHA)
        assert srv.count() == 1
    assert env.delays == []
    msg = str(info.value)
    assert f"HTTP {status}" in msg and url in msg
    assert _leftovers(env.home) == []


def test_checksum_mismatch_leaves_nothing_behind(env):
    wrong = _flip(DATA)
    with _serve(wrong) as srv:
        url = srv.url + "/" + NAME
        with pytest.raises(ChecksumError) as info:
            hub.fetch(NAME, sources=[Source("url", url)], sha256=SHA)
    msg = str(info.value)
    assert SHA in msg and _sha(wrong) in msg and url in msg
    assert "REPZOO_MIRROR" in msg
    assert _leftovers(env.home) == []
    assert hub.cache_entries() == []


def test_size_mismatch_is_refused(env):
    with _serve() as srv:
        with pytest.raises(ChecksumError, match="expected 299999"):
            hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA, size=len(DATA) - 1)
    assert _leftovers(env.home) == []


def test_unknown_sha256_is_recorded_and_checked_later(env):
    changed = _flip(DATA, 5)
    served = {"data": DATA}
    with Server({"/" + NAME: lambda req: file_response(req, served["data"])}) as srv:
        src = [Source("url", srv.url + "/" + NAME)]
        path = hub.fetch(NAME, sources=src)
        assert hub.recorded_sha256(NAME) == SHA
        # a damaged cache entry is not returned; fetch downloads it again and checks the record
        path.write_bytes(changed)
        assert hub.cached_file(NAME) is None
        assert hub.fetch(NAME, sources=src).read_bytes() == DATA
        assert srv.count() == 2
        # upstream changed since the first download: refused, and nothing is left
        served["data"] = changed
        path.unlink()
        with pytest.raises(ChecksumError, match="recorded"):
            hub.fetch(NAME, sources=src)
    assert not path.exists() and not (env.files / (NAME + ".part")).exists()
    assert hub.recorded_sha256(NAME) == SHA


def test_a_file_copied_into_the_cache_by_hand_is_verified(env):
    env.files.mkdir(parents=True)
    (env.files / NAME).write_bytes(_flip(DATA))
    with _serve() as srv:
        path = hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA)
        assert srv.count() == 1  # the wrong file was replaced by a good download
    assert path.read_bytes() == DATA


def test_progress_bar_and_silencing(env, capsys):
    with _serve() as srv:
        hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA)
        assert capsys.readouterr().err == ""  # REPZOO_PROGRESS=0 from the fixture
        hub.remove_cached(NAME)
        hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA, progress=True)
        assert NAME in capsys.readouterr().err


# --------------------------------------------------------------------------- two processes

_CHILD = r"""
import importlib.util, logging, sys, types, urllib.request

# import repzoo.weights.hub without the package __init__ files (which import torch: seconds per process)
root = list(importlib.util.find_spec("repzoo").submodule_search_locations)[0]
for name, folder in (("repzoo", root), ("repzoo.weights", root + "/weights")):
    pkg = types.ModuleType(name)
    pkg.__path__ = [folder]
    sys.modules[name] = pkg
from repzoo.weights import hub

base, sha = sys.argv[1], sys.argv[2]

class Signal(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("waiting for another process"):
            urllib.request.urlopen(base + "/waiting").read()

log = logging.getLogger("repzoo.weights.cache")
log.setLevel(logging.INFO)
log.addHandler(Signal())
path = hub.fetch("w.pth", sources=[hub.Source("url", base + "/w.pth")], sha256=sha, progress=False)
print(path)
"""


def test_two_processes_fetch_one_file_once(env):
    waiting = threading.Event()

    def file_handler(req):
        # hold the download half-way until the other process reports that it waits on the lock
        return Response(200, DATA, drop_after=len(DATA) // 2, before_rest=lambda: waiting.wait(20))

    def waiting_handler(req):
        waiting.set()
        return Response(200, b"ok")

    with Server({"/w.pth": file_handler, "/waiting": waiting_handler}) as srv:
        procs = [subprocess.Popen([sys.executable, "-c", _CHILD, srv.url, SHA], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=dict(os.environ)) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err
        assert srv.count("/w.pth") == 1
        assert srv.count("/waiting") == 1
    paths = {out.strip() for out, _ in outs}
    assert paths == {str(env.files / NAME)}
    assert _sha((env.files / NAME).read_bytes()) == SHA


# --------------------------------------------------------------------------- offline


def test_offline_uses_the_cache_and_no_network(env, monkeypatch):
    with _serve() as srv:
        src = [Source("url", srv.url + "/" + NAME)]
        path = hub.fetch(NAME, sources=src, sha256=SHA)
        monkeypatch.setenv("REPZOO_OFFLINE", "1")
        assert hub.fetch(NAME, sources=src, sha256=SHA) == path
        assert srv.count() == 1


def test_offline_without_the_file_says_where_to_put_it(env, monkeypatch):
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    with _serve() as srv:
        url = srv.url + "/" + NAME
        src = [Source("url", url), Source("gdrive", "1kBDue-19AG0Rm2NaS5h6aTl-ZHvdPe5K")]
        with pytest.raises(WeightsUnavailableError) as info:
            hub.fetch(NAME, sources=src, sha256=SHA, hint="Baidu: pan.baidu.com/s/xyz (code rvgg)")
        assert srv.count() == 0
    msg = str(info.value)
    assert "REPZOO_MIRROR" in msg
    assert str(env.files / NAME) in msg
    assert "https://drive.google.com/file/d/1kBDue-19AG0Rm2NaS5h6aTl-ZHvdPe5K" in msg
    assert url in msg
    assert "pan.baidu.com/s/xyz" in msg
    assert "offline" in msg.lower()


@pytest.mark.parametrize("repzoo, hf, expected", [
    (None, None, False), ("1", None, True), ("0", None, False), (None, "1", True),
    ("0", "1", False), ("true", "0", True), (None, "0", False),
])
def test_is_offline(monkeypatch, repzoo, hf, expected):
    for var, value in (("REPZOO_OFFLINE", repzoo), ("HF_HUB_OFFLINE", hf)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    assert hub.is_offline() is expected


def test_bad_offline_value_is_an_error(monkeypatch):
    monkeypatch.setenv("REPZOO_OFFLINE", "maybe")
    with pytest.raises(RepZooError, match="REPZOO_OFFLINE"):
        hub.is_offline()


# --------------------------------------------------------------------------- mirror


def test_mirror_folder_is_used_first_and_in_place(env, monkeypatch):
    mirror = env.tmp / "mirror"
    mirror.mkdir()
    (mirror / NAME).write_bytes(DATA)
    monkeypatch.setenv("REPZOO_MIRROR", str(mirror))
    monkeypatch.setenv("REPZOO_OFFLINE", "1")  # a mirror folder works offline
    with _serve() as srv:
        assert hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA) == mirror / NAME
        assert srv.count() == 0
    assert _leftovers(env.home) == [] and _records(env.home) == [NAME + ".json"]  # nothing copied; its hash known


def test_a_bad_mirror_file_is_skipped(env, monkeypatch):
    mirror = env.tmp / "mirror"
    mirror.mkdir()
    (mirror / NAME).write_bytes(_flip(DATA))
    monkeypatch.setenv("REPZOO_MIRROR", str(mirror))
    with _serve() as srv:
        path = hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA)
        assert srv.count() == 1
    assert path == env.files / NAME and path.read_bytes() == DATA
    assert (mirror / NAME).read_bytes() == _flip(DATA)  # the user's file is left alone


def test_mirror_url_by_file_name(env, monkeypatch):
    name = "RepVGG-A0 (train).pth"  # needs quoting in a URL
    with Server({"/m/" + name: lambda req: file_response(req, DATA)}) as srv:
        monkeypatch.setenv("REPZOO_MIRROR", srv.url + "/m/")
        with pytest.raises(RepZooError):  # spaces are not allowed in a file name
            hub.fetch(name, sha256=SHA)
        name = "RepVGG-A0(train).pth"
    with Server({"/m/" + name: lambda req: file_response(req, DATA)}) as srv:
        monkeypatch.setenv("REPZOO_MIRROR", srv.url + "/m/")
        path = hub.fetch(name, sources=[Source("url", srv.url + "/elsewhere")], sha256=SHA)
        assert path == env.files / name and path.read_bytes() == DATA
        assert hub.fetch(name, sha256=SHA) == path  # cached now: no second download
        assert srv.count("/m/" + name) == 1 and srv.count("/elsewhere") == 0


# --------------------------------------------------------------------------- Google Drive

FILE_ID = "1Z0cfmxLLWD2xjgUXpE2Y_4vxS4ij16Sx"

_FORM_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="/download" method="get">
<input type="submit" id="uc-download-link" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="8f2e-11">
</form></body></html>"""

_LINK_PAGE = """<html><body><a id="uc-download-link" href="/uc?export=download&amp;confirm=AbC_9&amp;id={id}">
Download anyway</a></body></html>"""


@pytest.mark.parametrize("style", ["form", "link"])
def test_google_drive_confirmation_page(env, monkeypatch, style):
    def uc(req):
        assert req.query.get("id") == FILE_ID and req.query.get("export") == "download"
        if style == "link" and req.query.get("confirm") == "AbC_9":
            return file_response(req, DATA)
        page = _FORM_PAGE if style == "form" else _LINK_PAGE
        return html_response(page.format(id=FILE_ID))

    def download(req):
        if req.query != {"id": FILE_ID, "export": "download", "confirm": "t", "uuid": "8f2e-11"}:
            return Response(400, b"bad form")
        return file_response(req, DATA)

    with Server({"/uc": uc, "/download": download}) as srv:
        monkeypatch.setenv("REPZOO_GDRIVE_URL", srv.url + "/uc")
        path = hub.fetch(NAME, sources=[Source("gdrive", FILE_ID)], sha256=SHA)
        assert [r.path for r in srv.requests] == (["/uc", "/download"] if style == "form" else ["/uc", "/uc"])
    assert path.read_bytes() == DATA


def test_google_drive_small_file_and_quota_page(env, monkeypatch):
    state = {"quota": False}

    def uc(req):
        if state["quota"]:
            return html_response("<html><body>Too many users have viewed or downloaded this file recently."
                                 "</body></html>")
        return file_response(req, DATA)

    with Server({"/uc": uc}) as srv:
        monkeypatch.setenv("REPZOO_GDRIVE_URL", srv.url + "/uc")
        assert hub.fetch(NAME, sources=[Source("gdrive", FILE_ID)], sha256=SHA).read_bytes() == DATA
        assert srv.count() == 1
        state["quota"] = True
        with pytest.raises(WeightsUnavailableError, match="quota"):
            hub.fetch("other.pth", sources=[Source("gdrive", FILE_ID)], sha256=SHA)
    assert not (env.files / "other.pth").exists()


# --------------------------------------------------------------------------- Hugging Face Hub

REPO = "someone/repvgg-test"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_online(monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read at import time from the real environment


def test_hub_through_a_local_endpoint_then_offline(env, monkeypatch, hf_online):
    route = f"/{REPO}/resolve/main/weights/{NAME}"

    def resolve(req):
        return file_response(req, DATA, headers={"X-Repo-Commit": COMMIT, "ETag": f'"{SHA}"'})

    with Server({route: resolve}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        src = [Source("hf", REPO, filename=f"weights/{NAME}")]
        path = hub.fetch(NAME, sources=src, sha256=SHA)
        assert srv.count(route, "HEAD") == 1 and srv.count(route, "GET") == 1
        assert path.read_bytes() == DATA
        assert Path(os.environ["HF_HOME"]) / "hub" in path.parents  # huggingface_hub's own cache
        assert hub.cached_file(NAME) is None  # not copied into repzoo's cache
        n = srv.count()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert hub.fetch(NAME, sources=src, sha256=SHA) == path
        assert srv.count() == n
        with pytest.raises(ChecksumError):
            hub.fetch(NAME, sources=src, sha256=_sha(b"other"))


def test_hub_records_sha256_when_unknown(env, monkeypatch, hf_online):
    route = f"/{REPO}/resolve/v1.0/{NAME}"
    with Server({route: lambda req: file_response(req, DATA, headers={"X-Repo-Commit": COMMIT,
                                                                      "ETag": '"abc"'})}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url + "/")
        hub.fetch(NAME, sources=[Source("hf", REPO, filename=NAME, revision="v1.0")])
    assert hub.recorded_sha256(NAME) == SHA


def test_hub_404_falls_through_to_the_next_source(env, monkeypatch, hf_online):
    with Server({"/" + NAME: lambda req: file_response(req, DATA)}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        path = hub.fetch(NAME, sources=[Source("hf", REPO, filename=NAME), Source("url", srv.url + "/" + NAME)],
                         sha256=SHA)
        assert srv.count(f"/{REPO}/resolve/main/{NAME}") == 1
    assert path == env.files / NAME


def test_hub_prefilled_cache_offline(env, monkeypatch):
    hub_cache = env.tmp / "hub_cache"
    repo_dir = hub_cache / ("models--" + REPO.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "blobs" / SHA).write_bytes(DATA)
    (repo_dir / "snapshots" / COMMIT).mkdir(parents=True)
    (repo_dir / "snapshots" / COMMIT / NAME).symlink_to(Path("../../blobs") / SHA)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # would fail if it were used
    path = hub.fetch(NAME, sources=[Source("hf", REPO, filename=NAME)], sha256=SHA)
    assert path == repo_dir / "snapshots" / COMMIT / NAME
    assert path.read_bytes() == DATA
    with pytest.raises(WeightsUnavailableError, match="REPZOO_MIRROR"):
        hub.fetch("missing.pth", sources=[Source("hf", REPO, filename="missing.pth")], sha256=SHA)


# --------------------------------------------------------------------------- unsafe names


BAD_NAMES = ["../x.pth", "../../etc/passwd", "/etc/passwd", "a/b.pth", "a\\b.pth", "..", ".", ".hidden",
             "", "x.pth.part", "x.pth.json", "x\x00.pth", "C:x.pth"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_that_escape_the_cache_are_refused(env, name):
    with pytest.raises(RepZooError, match="file name"):
        hub.fetch(name, sources=[Source("url", "http://127.0.0.1:9/x")], sha256=SHA)
    for fn in (hub.cached_file, hub.recorded_sha256, hub.remove_cached, hub.cache_path):
        with pytest.raises(RepZooError):
            fn(name)
    assert not env.home.exists()  # refused before any filesystem use


def test_escaping_names_are_refused_for_mirrors(env, monkeypatch):
    (env.tmp / "secret.pth").write_bytes(DATA)
    mirror = env.tmp / "mirror"
    mirror.mkdir()
    monkeypatch.setenv("REPZOO_MIRROR", str(mirror))
    with pytest.raises(RepZooError, match="file name"):
        hub.fetch("../secret.pth", sha256=SHA)
    with Server(lambda req: file_response(req, DATA)) as srv:
        monkeypatch.setenv("REPZOO_MIRROR", srv.url + "/m")
        for name in ("../secret.pth", "..%2Fsecret.pth", "/secret.pth"):
            with pytest.raises(RepZooError, match="file name"):
                hub.fetch(name, sha256=SHA)
        assert srv.count() == 0


# --------------------------------------------------------------------------- the real scale files


def _scales_server():
    return Server(lambda req: file_response(req, (SCALES_DIR / req.path.rsplit("/", 1)[-1]).read_bytes())
                  if (SCALES_DIR / req.path.rsplit("/", 1)[-1]).is_file() else Response(404))


def test_real_scale_files_verify_and_a_flipped_byte_is_refused(env):
    with _scales_server() as srv:
        for name, sha in SCALES_SHA256.items():
            path = hub.fetch(name, sources=[Source("url", f"{srv.url}/raw/{name}")], sha256=sha,
                             size=(SCALES_DIR / name).stat().st_size)
            assert path.read_bytes() == (SCALES_DIR / name).read_bytes()
    name = "RepOpt-VGG-B1-scales.pth"
    flipped = _flip((SCALES_DIR / name).read_bytes(), 4321)
    hub.remove_cached(name)
    with Server(lambda req: file_response(req, flipped)) as srv:
        with pytest.raises(ChecksumError, match=SCALES_SHA256[name]):
            hub.fetch(name, sources=[Source("url", f"{srv.url}/raw/{name}")], sha256=SCALES_SHA256[name])
    assert hub.cached_file(name) is None
    assert not (env.files / (name + ".part")).exists()


@pytest.fixture
def no_packaged_scales(tmp_path, monkeypatch):
    """As if the package shipped no copies: the released .pth files are fetched."""
    import repzoo.weights.scales as scales

    monkeypatch.setattr(scales, "DATA_DIR", tmp_path / "no_packaged_copies")
    return scales


@pytest.mark.parametrize("model", sorted(SCALES_MODEL))
def test_released_scales_are_fetched_against_the_manifest(env, monkeypatch, no_packaged_scales, model):
    name = SCALES_MODEL[model]
    with _scales_server() as srv:
        monkeypatch.setenv("REPZOO_MIRROR", srv.url + "/mirror")
        path = no_packaged_scales.released_scales(model)
        assert srv.count("/mirror/" + name) == 1
    assert _sha(path.read_bytes()) == SCALES_SHA256[name]


def test_released_scales_refuse_a_flipped_byte(env, monkeypatch, no_packaged_scales):
    from repzoo.weights.manifest import load_manifest

    name = SCALES_MODEL["RepOpt-GhostNet-0.5x"]
    flipped = _flip((SCALES_DIR / name).read_bytes(), 99)
    with Server(lambda req: file_response(req, flipped)) as srv:
        monkeypatch.setenv("REPZOO_MIRROR", srv.url)
        rec = load_manifest().scales("RepOpt-GhostNet-0.5x")
        assert rec.sha256 == SCALES_SHA256[name]
        # the manifest's own source is a public URL: keep the test on 127.0.0.1
        monkeypatch.setattr(hub, "fetch", _local_sources(hub.fetch, srv.url))
        with pytest.raises(ChecksumError):
            no_packaged_scales.released_scales("RepOpt-GhostNet-0.5x")
        assert srv.count("/" + name) == 1 and srv.count("/gone/" + name) == 1
    assert _leftovers(env.home) == []


def _local_sources(fetch, base):
    """Wrap fetch so that the manifest's public URLs are replaced by a local URL."""
    def wrapped(file_name, *, sources=(), **kw):
        return fetch(file_name, sources=[Source("url", base + "/gone/" + file_name)], **kw)
    return wrapped


def test_a_web_page_is_not_taken_for_the_file(env):
    with Server({"/" + NAME: lambda req: html_response("<html><body>Sign in to continue</body></html>")}) as srv:
        with pytest.raises(WeightsUnavailableError, match="web page"):
            hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)])
    assert hub.recorded_sha256(NAME) is None
    assert _leftovers(env.home) == []


def test_a_read_only_cache_still_serves_its_files(env, monkeypatch):
    import filelock

    with _serve() as srv:
        path = hub.fetch(NAME, sources=[Source("url", srv.url + "/" + NAME)], sha256=SHA)
    import shutil

    import repzoo.weights.files as files

    shutil.rmtree(env.home / "stat")  # force a full check, which cannot write its record

    def refuse(*args, **kwargs):  # what a read-only folder answers (chmod does not stop root)
        raise PermissionError(13, "Read-only file system")

    def refuse_record(path, *args, **kwargs):
        raise files.storage_error(PermissionError(30, "Read-only file system"), path, "a record")

    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)
    monkeypatch.setattr(files, "write_json", refuse_record)
    assert hub.fetch(NAME, sha256=SHA) == path
    assert hub.cached_file(NAME) == path
    assert not list((env.home / "stat").glob("*.json"))
