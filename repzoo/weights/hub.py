"""Fetch a released file: mirror, cache, Hugging Face Hub, HTTPS, Google Drive — verified and atomic.

:func:`fetch` returns the local path of a file whose sha256 has been checked. It looks, in order:

1. ``REPZOO_MIRROR`` when it is a **folder**: ``$REPZOO_MIRROR/<file_name>`` (used in place);
2. the repzoo cache: ``$REPZOO_HOME/files/<file_name>`` (``$REPZOO_HOME`` defaults to
   ``~/.cache/repzoo``);
3. ``REPZOO_MIRROR`` when it is a **base URL**: ``<base>/<file_name>``, downloaded into the cache;
4. each :class:`~repzoo.weights.manifest.Source` in the order given: the Hugging Face Hub (through
   ``huggingface_hub``, in its own cache), a plain HTTPS URL, a Google Drive file id.

**What is checked** (see ``docs/pretrained.md``, "Integrity"): the manifest's sha256 and size where
known; otherwise the sha256 the file name had the first time repzoo used it (from any source, a
mirror folder included), and before that first use the ``validate`` callback (a complete,
readable checkpoint). A file that is already verified costs a ``stat``, a sample hash of a few
hundred KiB and nothing else; anything about it that changed (size, mtime, ctime, inode) means a
full hash again (:func:`repzoo.weights.files.verified_sha256`).

**Downloads** stream into ``<file_name>.part`` with a progress bar (``progress=False`` or
``REPZOO_PROGRESS=0`` silences it). urllib3's ``Retry`` retries connection drops before the
response, 429 and 5xx with exponential back-off and ``Retry-After`` (never 403/404, and never a
refused connection: with no network the error comes at once). A connection lost mid-file resumes
with ``Range`` — only where the server gave a validator (``ETag`` / ``Last-Modified``, kept in
``<file_name>.part.json``) and confirms it with ``If-Range``; otherwise the download starts over.
A ``.part`` that is a link or not a plain file is never followed. ``REPZOO_STALL_TIMEOUT``
(seconds without a byte, default 60) and ``REPZOO_DOWNLOAD_TIMEOUT`` (per file, default 7200; 0:
none) bound the time. A full or read-only disk is a :class:`~repzoo.errors.StorageError` at once,
with nothing left behind. A per-file ``filelock.FileLock`` serializes processes: the second one
waits, then finds the file in the cache.

**Offline**: ``REPZOO_OFFLINE=1`` never touches the network — a mirror folder, the repzoo cache
and the Hugging Face cache are still used. When ``REPZOO_OFFLINE`` is unset, ``HF_HUB_OFFLINE=1``
means offline for repzoo too; ``REPZOO_OFFLINE=0`` overrides it.

This module imports ``requests``, ``urllib3``, ``tqdm``, ``filelock`` and ``huggingface_hub`` lazily.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import re
import socket
import stat
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import ChecksumError, RepZooError, StorageError, UnsafeCheckpointError, WeightsUnavailableError
from ..version import __version__
from . import gdrive
from .files import (cache_dir, cache_subdir, check_file_name, fingerprint, forget_known, forget_verified, known,
                    remember_known, remember_verified, storage_error, umask, verified_sha256)
from .manifest import Source

__all__ = [
    "Source",
    "is_offline",
    "fetch",
    "cache_path",
    "cached_file",
    "recorded_sha256",
    "cache_entries",
    "remove_cached",
]

_log = logging.getLogger(__name__)

_FILES = "files"  # cache subfolder of the fetched files; ``deploy/`` is the deploy cache's
_LOCKS = ".locks"
_PART = ".part"
_SHA_RE = re.compile(r"[0-9a-f]{64}")

_RETRIES = 4            # urllib3 retries after the first attempt (429, 5xx, read errors before a response)
_BACKOFF = 1.0          # urllib3's backoff_factor
_MAX_DELAY = 30.0
_CONNECT_TIMEOUT = 15.0
_STALL_TIMEOUT = 60.0   # REPZOO_STALL_TIMEOUT
_DEADLINE = 7200.0      # REPZOO_DOWNLOAD_TIMEOUT (0: none)
_RESUMES = 5            # mid-file drops in a row without progress before giving up
_PROBE_TIMEOUT = 3.0
_CHUNK = 1 << 20
_sleep = time.sleep     # tests replace it: back-off never waits on real time there

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

Validator = Callable[[pathlib.Path], None]


# --------------------------------------------------------------------------- settings


def _env_flag(name: str) -> Optional[bool]:
    value = os.environ.get(name)
    if value is None:
        return None
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise RepZooError(f"{name}={os.environ[name]!r} is not understood: set it to 1 or 0.")


def _env_seconds(name: str, default: float) -> Optional[float]:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise RepZooError(f"{name}={value!r} is not a number of seconds.") from None
    return None if seconds <= 0 else seconds


def is_offline() -> bool:
    """``REPZOO_OFFLINE`` when set (1/0); otherwise ``HF_HUB_OFFLINE``; otherwise online."""
    flag = _env_flag("REPZOO_OFFLINE")
    if flag is None:
        flag = _env_flag("HF_HUB_OFFLINE")
    return bool(flag)


def _show_progress(progress: Optional[bool]) -> bool:
    if progress is not None:
        return progress
    flag = _env_flag("REPZOO_PROGRESS")
    return True if flag is None else flag


def _mirror() -> Tuple[Optional[pathlib.Path], Optional[str]]:
    value = os.environ.get("REPZOO_MIRROR", "").strip()
    if not value:
        return None, None
    if re.match(r"https?://", value, re.IGNORECASE):
        return None, value.rstrip("/")
    return pathlib.Path(value).expanduser(), None


def _check_sha(sha256: Optional[str]) -> Optional[str]:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA_RE.fullmatch(value):
        raise RepZooError(f"{sha256!r} is not a sha256 (64 hexadecimal digits): fix the manifest entry.")
    return value


# --------------------------------------------------------------------------- the cache


def _files_dir(create: bool = True) -> pathlib.Path:
    return cache_subdir(_FILES, create)


def cache_path(file_name: str) -> pathlib.Path:
    """Where ``file_name`` lives in the cache (whether or not it is there; the folder is made if it can be)."""
    check_file_name(file_name)
    try:
        return _files_dir() / file_name
    except StorageError:
        return _files_dir(create=False) / file_name


def _part_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + _PART)


def _part_meta(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + _PART + ".json")


def cached_file(file_name: str) -> Optional[pathlib.Path]:
    """The cache entry of ``file_name`` if it is there and matches what the name is known to be, else None."""
    path = cache_path(file_name)
    if not path.is_file():
        return None
    rec = known(file_name)
    if rec is not None and verified_sha256(path) != rec.sha256:
        _log.warning("cache entry %s does not match its record", path)
        return None
    return path


def recorded_sha256(file_name: str) -> Optional[str]:
    """The sha256 ``file_name`` had when repzoo first used it (None if never)."""
    rec = known(file_name)
    return rec.sha256 if rec else None


def cache_entries() -> List[Dict[str, object]]:
    """Every cached file: ``[{file_name, path, size, sha256}]`` (sha256 as recorded at first use; None if not)."""
    folder = _files_dir(create=False)
    if not folder.is_dir():
        return []
    out: List[Dict[str, object]] = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith(".") or name.endswith((_PART, ".json")) or not path.is_file():
            continue
        rec = known(name)
        out.append({"file_name": name, "path": path, "size": path.stat().st_size,
                    "sha256": rec.sha256 if rec else None})
    return out


def remove_cached(file_name: str) -> bool:
    """Delete a cache entry with its records and any partial download; True if anything was removed."""
    path = cache_path(file_name)
    removed = False
    with _locked(file_name):
        for p in (path, _part_path(path), _part_meta(path)):
            try:
                p.unlink()
                removed = True
            except FileNotFoundError:
                pass
        forget_verified(path)
        removed = forget_known(file_name) or removed
    return removed


@contextlib.contextmanager
def _locked(file_name: str) -> Iterator[None]:
    """Hold the per-file inter-process lock; log when another process holds it."""
    from filelock import FileLock, Timeout

    try:
        locks = cache_dir() / _LOCKS
        locks.mkdir(exist_ok=True)
        lock = FileLock(str(locks / (file_name + ".lock")))
        lock.acquire(timeout=0)
    except Timeout:
        _log.info("waiting for another process that is fetching %s (lock %s)", file_name, lock.lock_file)
        lock.acquire()
    except (OSError, StorageError) as err:  # a read-only cache: nothing will be written to it, so nothing to guard
        _log.debug("no lock for %s (%s)", file_name, err)
        yield
        return
    try:
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------- fetch


class _Failed(Exception):
    """One source did not deliver; ``mismatch`` when it delivered the wrong bytes."""

    def __init__(self, reason: str, mismatch: bool = False):
        super().__init__(reason)
        self.mismatch = mismatch


class _NoNetwork(_Failed):
    """The first connection was refused or the name did not resolve: skip the other network sources."""


@dataclass
class _Fetch:
    """One call of :func:`fetch`: what the file must be, and every attempt made."""

    file_name: str
    sha256: Optional[str]
    size: Optional[int]
    validate: Optional[Validator]
    tried: List[Tuple[str, str]] = field(default_factory=list)
    mismatch: bool = False
    tofu_mismatch: bool = False

    def check(self, path: pathlib.Path, where: str, *, digest: Optional[str] = None) -> str:
        """Verify ``path``; raise :class:`_Failed` (mismatch) or return its sha256 (recording first use)."""
        actual = path.stat().st_size
        if self.size is not None and actual != self.size:
            raise _Failed(f"has {actual} bytes, expected {self.size}", mismatch=True)
        got = digest or verified_sha256(path)
        rec = known(self.file_name)
        if self.sha256 is not None:
            if got != self.sha256:
                raise _Failed(f"sha256 is {got}, expected {self.sha256} (the manifest's)", mismatch=True)
            if rec is None or rec.sha256 != got:
                remember_known(self.file_name, got, actual, where)
            return got
        if rec is not None:
            if got != rec.sha256:
                self.tofu_mismatch = True
                raise _Failed(f"sha256 is {got}, but {rec.sha256} was recorded when repzoo first used this "
                              f"file name (from {rec.source})", mismatch=True)
            return got
        if self.validate is not None:
            try:
                self.validate(path)
            except UnsafeCheckpointError:
                raise  # not a damaged download: a file that must not be loaded at all
            except RepZooError as err:
                raise _Failed(f"not a complete, readable checkpoint ({str(err).splitlines()[0][:200]})",
                              mismatch=True) from None
        remember_known(self.file_name, got, actual, where)
        return got

    def note(self, where: str, why: str) -> None:
        self.tried.append((where, why))


def fetch(
    file_name: str,
    *,
    sources: Sequence[Source] = (),
    sha256: Optional[str] = None,
    size: Optional[int] = None,
    progress: Optional[bool] = None,
    hint: Optional[str] = None,
    validate: Optional[Validator] = None,
) -> pathlib.Path:
    """Return the local path of ``file_name``, verified; download it if needed.

    Args:
        file_name: the file's name in the cache and in a mirror (one plain file name).
        sources: where to download it from, tried in order after the mirror and the cache.
        sha256: the expected hash (None: the hash recorded at the file name's first use, if any).
        size: the expected size in bytes, if known.
        progress: show a progress bar (default: on unless ``REPZOO_PROGRESS=0``).
        hint: extra text for the error message when nothing works (e.g. a Baidu link and code).
        validate: called on a file about to be trusted on first use (no hash known yet); raises a
            [RepZooError][repzoo.errors.RepZooError] to refuse it.

    Raises:
        ChecksumError: every source failed and at least one delivered the wrong bytes.
        WeightsUnavailableError: no source could deliver the file; the message lists each one.
        StorageError: the cache cannot be written (full, read-only, not a folder).
        RepZooError: ``file_name`` is not a plain file name.
    """
    check_file_name(file_name)
    job = _Fetch(file_name, _check_sha(sha256), size, validate)
    sources = tuple(sources)
    offline = is_offline()
    show = _show_progress(progress)
    mirror_dir, mirror_url = _mirror()

    if mirror_dir is not None:
        candidate = mirror_dir / file_name
        where = f"mirror folder REPZOO_MIRROR={mirror_dir}"
        if candidate.is_file():
            try:
                job.check(candidate, str(candidate))
                return candidate
            except _Failed as err:
                job.mismatch = True
                job.note(where, f"{candidate}: {err}; not used (repzoo never changes your mirror: replace that file)")
                _log.warning("%s: %s (ignored)", candidate, err)
        else:
            job.note(where, f"no file {candidate}")

    target = _files_dir() / file_name
    with _locked(file_name):
        if target.is_file():
            try:
                job.check(target, f"cache {target}")
                return target
            except _Failed as err:
                _log.warning("cache entry %s is damaged (%s): removed it, fetching again", target, err)
                target.unlink()
                forget_verified(target)
                job.mismatch = True
                job.note(f"cache {target}", f"damaged ({err}); removed")
        else:
            job.note(f"cache {target}", "not there")

        attempts: List[Tuple[str, Source]] = []
        if mirror_url is not None:
            url = f"{mirror_url}/{urllib.parse.quote(file_name)}"
            attempts.append((f"mirror URL REPZOO_MIRROR={mirror_url}", Source("url", url)))
        attempts.extend((src.describe(), src) for src in sources)
        no_network: Optional[str] = None
        for where, src in attempts:
            if offline and src.kind != "hf":
                job.note(where, "not tried: offline (REPZOO_OFFLINE / HF_HUB_OFFLINE)")
                continue
            if no_network and not (src.kind == "hf" and _hf_cached(src)):
                job.note(where, f"not tried: no network ({no_network})")
                continue
            try:
                if src.kind == "hf":
                    return _fetch_hf(src, job, show, offline)
                _download(src, target, job, show)
                return target
            except _NoNetwork as err:
                no_network = str(err)
                job.note(where, str(err))
                _log.warning("%s: %s", where, err)
            except _Failed as err:
                job.mismatch = job.mismatch or err.mismatch
                job.note(where, str(err))
                _log.warning("%s: %s", where, err)

    raise _unavailable(job, target, sources, offline, hint)


def _unavailable(job: _Fetch, target: pathlib.Path, sources, offline: bool, hint: Optional[str]) -> RepZooError:
    name = job.file_name
    lines = [f"Could not get a verified copy of {name}."]
    if offline:
        lines[0] += " Offline mode is on (REPZOO_OFFLINE=1 or HF_HUB_OFFLINE=1): the network was not used."
    lines.append("Tried:")
    if not os.environ.get("REPZOO_MIRROR", "").strip():
        lines.append("  - mirror: REPZOO_MIRROR is not set")
    lines.extend(f"  - {where}: {why}" for where, why in job.tried)
    if not sources:
        lines.append("  - no download source is known for this file")
    links = [src.manual_link() for src in sources]
    if links:
        lines.append("To get it by hand, download it from " + (links[0] if len(links) == 1 else "one of:"))
        if len(links) > 1:
            lines.extend(f"  {link}" for link in links)
    if hint:
        lines.append(hint)
    lines.append(
        f"{'Then put' if links or hint else 'Put'} it at {target} (the cache), or into a folder and set "
        "REPZOO_MIRROR to that folder (REPZOO_MIRROR may also be a base URL that serves the file by name)."
    )
    if job.mismatch:
        lines.append("A source delivered a file that is not the expected one (see above); it was not used, and "
                     "nothing of it was kept in the cache.")
        if job.tofu_mismatch:
            lines.append(f"If the file upstream has changed and you trust the new one, run `repzoo cache rm {name}` "
                         "to forget the recorded hash, then try again.")
        else:
            lines.append("Try again later; if it persists, the file upstream has changed: report it.")
        return ChecksumError("\n".join(lines))
    return WeightsUnavailableError("\n".join(lines))


# --------------------------------------------------------------------------- Hugging Face Hub


def _hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co").rstrip("/")


def _hf_kwargs(src: Source, show: bool) -> Dict[str, object]:
    kwargs: Dict[str, object] = {"revision": src.revision, "endpoint": _hf_endpoint()}
    hub_cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not hub_cache and os.environ.get("HF_HOME"):
        hub_cache = os.path.join(os.environ["HF_HOME"], "hub")
    if hub_cache:
        kwargs["cache_dir"] = os.path.expanduser(hub_cache)
    if not show:
        kwargs["tqdm_class"] = _silent_tqdm()
    return kwargs


def _hf_cached(src: Source) -> Optional[pathlib.Path]:
    """The file in the Hugging Face cache, without any network call (None if it is not there)."""
    from huggingface_hub import hf_hub_download

    try:
        return pathlib.Path(hf_hub_download(src.location, src.filename, local_files_only=True,
                                            **_hf_kwargs(src, False)))
    except Exception:  # noqa: BLE001 - not cached (or an unreadable cache): go online
        return None


def _probe(url: str) -> None:
    """Fail fast with :class:`_NoNetwork` when ``url``'s host cannot be reached at all."""
    import requests

    if requests.utils.get_environ_proxies(url):
        return  # only the proxy knows: let the request find out
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=_PROBE_TIMEOUT).close()
    except OSError as err:
        raise _NoNetwork(f"cannot reach {parts.hostname}:{port} ({err.strerror or err}); "
                         "set REPZOO_OFFLINE=1 to skip the network") from None


def _fetch_hf(src: Source, job: _Fetch, show: bool, offline: bool) -> pathlib.Path:
    from huggingface_hub import hf_hub_download

    path = _hf_cached(src)
    if path is None:
        if offline:
            raise _Failed("not in the Hugging Face cache (offline)")
        _probe(_hf_endpoint())
        try:
            path = pathlib.Path(hf_hub_download(src.location, src.filename, **_hf_kwargs(src, show)))
        except Exception as err:  # noqa: BLE001 - every Hub failure becomes one line of the final error
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise _Failed(f"{type(err).__name__}: {first}"[:300]) from None
    try:
        job.check(path, src.describe())
    except _Failed:
        _drop_hf_copy(path)  # a wrong blob would fail every later fetch
        raise
    return path


def _drop_hf_copy(path: pathlib.Path) -> None:
    """Remove a Hugging Face cache entry (the snapshot link and its blob)."""
    blob = pathlib.Path(os.path.realpath(path))
    for p in (path, blob):
        with contextlib.suppress(OSError):
            p.unlink()
    forget_verified(blob)


def _silent_tqdm():
    from tqdm.auto import tqdm

    class _Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Silent


# --------------------------------------------------------------------------- HTTP(S) and Google Drive


def _retry():
    """urllib3's ``Retry`` for repzoo's downloads, sleeping through :data:`_sleep`."""
    from urllib3.util.retry import Retry

    class _Retry(Retry):
        def sleep(self, response=None):  # the back-off urllib3 computes, slept where tests can see it
            delay = self.get_retry_after(response) if response is not None else None
            if delay is None:
                delay = self.get_backoff_time()
            if delay > 0:
                _sleep(min(delay, self.backoff_max))

    return _Retry(total=_RETRIES, connect=0, read=_RETRIES, status=_RETRIES, other=0, backoff_factor=_BACKOFF,
                  backoff_max=_MAX_DELAY, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=frozenset({"GET", "HEAD"}), respect_retry_after_header=True,
                  raise_on_status=False)


def _session():
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(max_retries=_retry())
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"repzoo/{__version__}"
    session.headers["Accept-Encoding"] = "identity"  # byte ranges must count the file's own bytes
    return session


@dataclass
class _Resume:
    """What a ``.part`` is a prefix of: the URL, the server's validator and the total size."""

    url: str
    validator: str
    total: Optional[int]

    @staticmethod
    def of(response, url: str) -> Optional["_Resume"]:
        etag = response.headers.get("ETag", "")
        validator = etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified", "")
        length = response.headers.get("Content-Length", "")
        if not validator or response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity"):
            return None
        return _Resume(url, validator, int(length) if length.isdigit() else None)


def _clear_part(part: pathlib.Path) -> None:
    for p in (part, part.with_name(part.name + ".json")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _resumable(part: pathlib.Path) -> Tuple[int, Optional[_Resume]]:
    """``(bytes, resume record)`` of a ``.part`` that can be resumed; anything else is removed."""
    meta = part.with_name(part.name + ".json")
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        _clear_part(part)
        return 0, None
    if not stat.S_ISREG(st.st_mode):  # a link (or a device, a folder): never follow, never write through
        if stat.S_ISDIR(st.st_mode):
            raise StorageError(f"{part} is a folder; remove it and try again.")
        part.unlink()
        _clear_part(part)
        return 0, None
    try:
        rec = _Resume(**json.loads(meta.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        _clear_part(part)
        return 0, None
    if rec.total is not None and st.st_size > rec.total:
        _clear_part(part)
        return 0, None
    return st.st_size, rec


def _download(src: Source, target: pathlib.Path, job: _Fetch, show: bool) -> None:
    """Download ``src`` into ``target`` (via ``target.part``), verify, rename; raise :class:`_Failed`."""
    part = _part_path(target)
    url, params = gdrive.download_request(src.location) if src.kind == "gdrive" else (src.location, {})
    stall = _env_seconds("REPZOO_STALL_TIMEOUT", _STALL_TIMEOUT)
    budget = _env_seconds("REPZOO_DOWNLOAD_TIMEOUT", _DEADLINE)
    deadline = None if budget is None else time.monotonic() + budget
    session = _session()
    try:
        for _hop in range(4):  # a Google Drive confirmation page sends us on at most a few times
            page = _stream(session, url, params, part, target.name, job, show=show, stall=stall, deadline=deadline)
            if page is None:
                break
            if src.kind != "gdrive":
                raise _Failed(f"{page[1]} answered with a web page (text/html), not the file")
            try:
                url, params = gdrive.confirm_request(page, url, params)
            except gdrive.GDriveRefused as err:
                raise _Failed(str(err)) from None
        else:
            raise _Failed("Google Drive kept answering with web pages instead of the file")
        fp = fingerprint(part)
        job.check(part, src.describe(), digest=fp.sha256)
        try:
            os.chmod(part, 0o666 & ~umask())
            os.replace(part, target)
        except OSError as err:
            raise storage_error(err, target.parent, target.name) from None
        _clear_part(part)  # the resume record
        remember_verified(fingerprint(target, fp.sha256))
    except _Failed as err:
        # A .part is kept for a later resume only with its resume record, and never with wrong bytes.
        if err.mismatch or not part.with_name(part.name + ".json").exists():
            _clear_part(part)
        raise
    finally:
        session.close()


def _stream(session, url: str, params: Dict[str, str], part: pathlib.Path, label: str, job: _Fetch, *,
            show: bool, stall: Optional[float], deadline: Optional[float]) -> Optional[Tuple[str, str]]:
    """GET ``url`` into ``part``, resuming after drops mid-file; returns ``(html, final_url)`` for a web page."""
    import requests

    failures, high_water = 0, 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise _Failed("gave up: the download took longer than REPZOO_DOWNLOAD_TIMEOUT")
        try:
            return _stream_once(session, url, params, part, label, job, show=show, stall=stall, deadline=deadline)
        except _Dropped as err:
            have = part.stat().st_size if part.exists() else 0
            if have > high_water:
                high_water, failures = have, 0
            failures += 1
            if failures >= _RESUMES:
                raise _Failed(f"{err} (gave up after {_RESUMES} tries)") from None
            if failures > 1:
                _sleep(min(_BACKOFF * 2 ** (failures - 2), _MAX_DELAY))
            _log.info("%s: %s; resuming", url, err)
        except requests.exceptions.ConnectionError as err:
            if _refused(err):
                raise _NoNetwork(f"no connection ({_short(err)}); set REPZOO_OFFLINE=1 to skip the network") from None
            raise _Failed(f"{type(err).__name__}: {_short(err)}") from None
        except requests.RequestException as err:  # invalid URL, too many redirects, timeouts after retries
            raise _Failed(f"{type(err).__name__}: {_short(err)}") from None


class _Dropped(Exception):
    """The connection was lost mid-file (worth resuming)."""


def _refused(err: BaseException) -> bool:
    """A refused connection, an unreachable network or a name that does not resolve."""
    import urllib3

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.NameResolutionError,
                            ConnectionRefusedError, socket.gaierror)):
            return True
        reason = getattr(err, "reason", None)
        err = reason if isinstance(reason, BaseException) else (err.args[0] if err.args and
                                                                 isinstance(err.args[0], BaseException) else None)
    return False


def _stream_once(session, url, params, part: pathlib.Path, label: str, job: _Fetch, *, show, stall, deadline):
    import requests
    import urllib3

    request_url = requests.Request("GET", url, params=params).prepare().url
    offset, resume = _resumable(part)
    headers = {}
    if offset and resume is not None and resume.url == request_url:
        headers = {"Range": f"bytes={offset}-", "If-Range": resume.validator}
    timeout = (_CONNECT_TIMEOUT, stall)
    response = session.get(url, params=params, headers=headers, stream=True, timeout=timeout)
    with response:
        status = response.status_code
        if status == 416 and offset:  # the partial file is no prefix of this file: start over
            _clear_part(part)
            raise _Dropped("HTTP 416 for the resumed range; starting over")
        if status == 429 or status >= 500:
            raise _Failed(f"HTTP {status} (gave up after {_RETRIES + 1} tries)")
        if status >= 400:
            raise _Failed(f"HTTP {status} {response.reason or ''}".strip() + f" for {response.url}")
        ctype = response.headers.get("Content-Type", "").lower()
        if "text/html" in ctype:  # a web page (Google Drive's confirmation, a login page), not a file
            return response.text, response.url
        encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        length = response.headers.get("Content-Length", "")
        if status == 206 and not encoded:
            start, total = _content_range(response.headers.get("Content-Range", ""))
            if start != offset or (resume and resume.total is not None and total != resume.total):
                _clear_part(part)
                raise _Dropped(f"server resumed at byte {start} of {total}, not {offset}; starting over")
            mode, expect_total = "ab", total
        else:
            _clear_part(part)
            offset, mode = 0, "wb"
            expect_total = None if encoded or not length.isdigit() else int(length)
            record = _Resume.of(response, request_url)
            if record is not None:
                _write_part_meta(part, record)
        if job.size is not None and expect_total is not None and expect_total != job.size:
            raise _Failed(f"the server announces {expect_total} bytes, expected {job.size}", mismatch=True)
        from tqdm.auto import tqdm

        try:
            f = open(part, mode)
        except OSError as err:
            raise storage_error(err, part.parent, part.name) from None
        with f, tqdm(total=expect_total or job.size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=label, disable=not show, leave=False) as bar:
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    raise _Failed("gave up: the download took longer than REPZOO_DOWNLOAD_TIMEOUT")
                try:  # read1: what has arrived, so that a drop or a stall loses nothing already received
                    chunk = response.raw.read(_CHUNK, decode_content=True) if encoded else response.raw.read1(_CHUNK)
                except (urllib3.exceptions.HTTPError, OSError) as err:
                    if encoded:
                        _clear_part(part)  # decoded bytes cannot be resumed by byte range
                    raise _Dropped(f"connection lost after {offset} bytes ({type(err).__name__})") from None
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as err:
                    f.close()
                    _clear_part(part)
                    raise storage_error(err, part.parent, part.name) from None
                bar.update(len(chunk))
                offset += len(chunk)
                if job.size is not None and offset > job.size:
                    raise _Failed(f"server sent more than the expected {job.size} bytes", mismatch=True)
        if expect_total is not None and offset < expect_total:
            raise _Dropped(f"connection closed after {offset} of {expect_total} bytes")
    return None


def _write_part_meta(part: pathlib.Path, record: _Resume) -> None:
    meta = part.with_name(part.name + ".json")
    try:
        meta.write_text(json.dumps(record.__dict__), encoding="utf-8")
    except OSError as err:
        raise storage_error(err, part.parent, meta.name) from None


def _short(err: BaseException) -> str:
    text = str(err)
    return text if len(text) < 200 else text[:200] + "…"


def _content_range(value: str) -> Tuple[Optional[int], Optional[int]]:
    m = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", value.strip())
    if not m:
        return None, None
    return int(m.group(1)), (int(m.group(2)) if m.group(2).isdigit() else None)
