"""Fetch a released file: mirror, cache, Hugging Face Hub, HTTPS, Google Drive — verified and atomic.

:func:`fetch` returns the local path of a file whose sha256 has been checked. It looks, in order:

1. ``REPZOO_MIRROR`` when it is a **folder**: ``$REPZOO_MIRROR/<file_name>`` (used in place);
2. the repzoo cache: ``$REPZOO_HOME/files/<file_name>`` (``$REPZOO_HOME`` defaults to
   ``~/.cache/repzoo``);
3. ``REPZOO_MIRROR`` when it is a **base URL**: ``<base>/<file_name>``, downloaded into the cache;
4. each :class:`Source` in the order given: the Hugging Face Hub (through ``huggingface_hub``,
   in its own cache), a plain HTTPS URL, a Google Drive file id.

A mirror URL comes after the cache so that a file downloaded from it once is not downloaded again.

Downloads stream into ``<file_name>.part`` beside the cache entry with a progress bar
(``progress=False`` or ``REPZOO_PROGRESS=0`` silences it), resume with ``Range`` after a dropped
connection, retry with exponential back-off on transient errors only (connection errors, timeouts,
429, 5xx — never 403/404), and are renamed into place only once verified. A per-file
``filelock.FileLock`` serializes processes: the second one waits, then finds the file in the cache.

Verification: against the ``sha256`` given (the manifest's) and ``size`` where known. Where no
sha256 is known, the first download's hash is recorded in ``<file_name>.sha256`` beside the cache
entry (``sha256sum`` format) and every later read is checked against it. A cache entry older than
its record is trusted without re-hashing (the record is written after the file, so a file copied or
edited later is hashed again).

Offline: ``REPZOO_OFFLINE=1`` never touches the network — a mirror folder, the repzoo cache and the
Hugging Face cache (``local_files_only``) are still used. When ``REPZOO_OFFLINE`` is unset,
``HF_HUB_OFFLINE=1`` means offline for repzoo too (one switch for air-gapped machines);
``REPZOO_OFFLINE=0`` overrides it. The Hub source always honours ``HF_HUB_OFFLINE`` and
``HF_ENDPOINT``/``HF_HUB_CACHE``/``HF_HOME`` as they are when :func:`fetch` is called.

This module imports ``requests``, ``tqdm``, ``filelock`` and ``huggingface_hub`` lazily.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import re
import time
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .errors import ChecksumError, RepZooError, WeightsUnavailableError

__all__ = [
    "Source",
    "cache_dir",
    "cache_path",
    "is_offline",
    "fetch",
    "cached_file",
    "recorded_sha256",
    "cache_entries",
    "remove_cached",
    "fetch_scales",
    "sha256_file",
]

_log = logging.getLogger(__name__)

#: Google Drive's download endpoint; ``REPZOO_GDRIVE_URL`` replaces it (tests, proxies).
GDRIVE_URL = "https://drive.google.com/uc"
HF_ENDPOINT = "https://huggingface.co"

_FILES = "files"  # cache subfolder of the fetched files; ``deploy/`` is the deploy cache's
_LOCKS = ".locks"
_RECORD = ".sha256"
_PART = ".part"
_RESERVED_SUFFIXES = (_RECORD, _PART, ".lock")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-=@,()]*")
_SHA_RE = re.compile(r"[0-9a-f]{64}")

_MAX_TRIES = 5          # attempts per URL before a transient error is final
_BASE_DELAY = 1.0       # seconds; doubled after each failed attempt
_MAX_DELAY = 30.0
_TIMEOUT = (15, 60)     # requests' (connect, read) timeouts in seconds
_CHUNK = 1 << 20
_sleep = time.sleep     # tests replace it: back-off never waits on real time there

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


# --------------------------------------------------------------------------- sources and paths


@dataclass(frozen=True)
class Source:
    """One place a file can be downloaded from.

    Attributes:
        kind: ``"hf"`` (Hugging Face Hub), ``"url"`` (HTTP(S)) or ``"gdrive"`` (Google Drive).
        location: ``"owner/repo"`` for hf, the full URL for url, the file id for gdrive.
        filename: hf only: the path of the file in the repository.
        revision: hf only: branch, tag or commit (default ``main``).
    """

    kind: str
    location: str
    filename: Optional[str] = None
    revision: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in ("hf", "url", "gdrive"):
            raise RepZooError(f"Unknown source kind {self.kind!r}: use 'hf', 'url' or 'gdrive'.")
        if self.kind == "hf" and not self.filename:
            raise RepZooError(f"Hugging Face source {self.location!r} needs filename= (the file's path in the repo).")

    def describe(self) -> str:
        """A one-line human description (used in error messages)."""
        if self.kind == "hf":
            rev = f"@{self.revision}" if self.revision else ""
            return f"Hugging Face Hub {self.location}{rev} / {self.filename}"
        if self.kind == "gdrive":
            return f"Google Drive file {self.location}"
        return self.location

    def manual_link(self) -> str:
        """Where a person can download the file with a web browser."""
        if self.kind == "hf":
            return f"https://huggingface.co/{self.location}/blob/{self.revision or 'main'}/{self.filename}"
        if self.kind == "gdrive":
            return f"https://drive.google.com/file/d/{self.location}"
        return self.location


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


def is_offline() -> bool:
    """``REPZOO_OFFLINE`` when set (1/0); otherwise ``HF_HUB_OFFLINE``; otherwise online."""
    flag = _env_flag("REPZOO_OFFLINE")
    if flag is None:
        flag = _env_flag("HF_HUB_OFFLINE")
    return bool(flag)


def _hf_offline() -> bool:
    return is_offline() or bool(_env_flag("HF_HUB_OFFLINE"))


def cache_dir() -> pathlib.Path:
    """The repzoo cache: ``$REPZOO_HOME`` or ``~/.cache/repzoo`` (created on demand)."""
    home = os.environ.get("REPZOO_HOME")
    path = pathlib.Path(home).expanduser() if home else pathlib.Path.home() / ".cache" / "repzoo"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_name(file_name: str) -> str:
    """Refuse a file name that is not one plain path component (``../x``, ``/abs``, ``a/b``, ``.x``)."""
    if not isinstance(file_name, str) or not file_name:
        raise RepZooError(f"Invalid weights file name {file_name!r}: expected a non-empty string.")
    if (len(file_name) > 255 or not _NAME_RE.fullmatch(file_name) or os.path.isabs(file_name)
            or file_name.endswith(_RESERVED_SUFFIXES)):
        raise RepZooError(
            f"Refused the file name {file_name!r}: a weights file name must be one plain file name "
            "(letters, digits and . _ - + = @ , ( ), starting with a letter or digit, not ending in "
            f"{', '.join(_RESERVED_SUFFIXES)}) so that it cannot point outside the cache or mirror folder. "
            "Fix the manifest entry or the name you passed."
        )
    return file_name


def _check_sha(sha256: Optional[str]) -> Optional[str]:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA_RE.fullmatch(value):
        raise RepZooError(f"{sha256!r} is not a sha256 (64 hexadecimal digits): fix the manifest entry.")
    return value


def _files_dir() -> pathlib.Path:
    path = cache_dir() / _FILES
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_path(file_name: str) -> pathlib.Path:
    """Where ``file_name`` lives in the cache (whether or not it is there)."""
    _check_name(file_name)
    return _files_dir() / file_name


def _record_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + _RECORD)


def _part_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + _PART)


@contextlib.contextmanager
def _locked(file_name: str) -> Iterator[None]:
    """Hold the per-file inter-process lock; log when another process holds it."""
    from filelock import FileLock, Timeout

    locks = cache_dir() / _LOCKS
    lock = FileLock(str(locks / (file_name + ".lock")))
    try:
        locks.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        _log.info("waiting for another process that is fetching %s (lock %s)", file_name, lock.lock_file)
        lock.acquire()
    except OSError as err:  # a read-only cache: nothing will be written to it, so nothing to guard
        _log.debug("no lock for %s (%s)", file_name, err)
        yield
        return
    try:
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------- hashes and records


def sha256_file(path: "os.PathLike[str] | str") -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_record(path: pathlib.Path) -> Optional[Tuple[str, int]]:
    """(sha256, mtime_ns of the record) of the record beside ``path``, or None."""
    record = _record_path(path)
    try:
        text = record.read_text().split()
        mtime = record.stat().st_mtime_ns
    except OSError:
        return None
    if text and _SHA_RE.fullmatch(text[0].lower()):
        return text[0].lower(), mtime
    return None


def _write_record(path: pathlib.Path, sha256: str) -> None:
    record = _record_path(path)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{sha256}  {path.name}\n")
    os.replace(tmp, record)


def recorded_sha256(file_name: str) -> Optional[str]:
    """The sha256 recorded when ``file_name`` was first fetched (None if never)."""
    rec = _read_record(cache_path(file_name))
    return rec[0] if rec else None


def _cache_ok(path: pathlib.Path, expected: Optional[str], size: Optional[int]) -> Tuple[bool, str]:
    """Check a cache entry; returns (ok, reason). Records the hash of an entry that has none."""
    st = path.stat()
    if size is not None and st.st_size != size:
        return False, f"has {st.st_size} bytes, expected {size}"
    rec = _read_record(path)
    if expected is None and rec is not None:
        expected = rec[0]
    if rec is not None and rec[0] == expected and st.st_mtime_ns < rec[1]:
        return True, ""  # verified when the record was written, untouched since
    got = sha256_file(path)
    if expected is not None and got != expected:
        return False, f"sha256 is {got}, expected {expected}"
    try:
        _write_record(path, got)
    except OSError:  # a read-only cache: verified all the same
        pass
    return True, ""


def cached_file(file_name: str) -> Optional[pathlib.Path]:
    """The cache entry of ``file_name`` if it is there and matches its recorded sha256, else None."""
    path = cache_path(file_name)
    if not path.is_file():
        return None
    ok, reason = _cache_ok(path, None, None)
    if not ok:
        _log.warning("cache entry %s is damaged (%s)", path, reason)
        return None
    return path


def cache_entries() -> List[Dict[str, object]]:
    """Every cached file: ``[{file_name, path, size, sha256}]`` (sha256 as recorded; None if not)."""
    out: List[Dict[str, object]] = []
    for path in sorted(_files_dir().iterdir()):
        name = path.name
        if name.startswith(".") or name.endswith(_RESERVED_SUFFIXES) or not path.is_file():
            continue
        rec = _read_record(path)
        out.append({"file_name": name, "path": path, "size": path.stat().st_size,
                    "sha256": rec[0] if rec else None})
    return out


def remove_cached(file_name: str) -> bool:
    """Delete a cache entry with its record and any partial download; True if anything was removed."""
    path = cache_path(file_name)
    removed = False
    with _locked(file_name):
        for p in (path, _record_path(path), _part_path(path)):
            try:
                p.unlink()
                removed = True
            except FileNotFoundError:
                pass
    return removed


# --------------------------------------------------------------------------- fetch


class _Failed(Exception):
    """One source did not deliver; ``mismatch`` when it delivered the wrong bytes."""

    def __init__(self, reason: str, mismatch: bool = False):
        super().__init__(reason)
        self.mismatch = mismatch


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


def _verify(path: pathlib.Path, sha256: Optional[str], size: Optional[int], recorded: Optional[str]) -> str:
    """Hash ``path`` and compare; returns the hash or raises :class:`_Failed` (mismatch)."""
    if size is not None:
        actual = path.stat().st_size
        if actual != size:
            raise _Failed(f"size is {actual} bytes, expected {size}", mismatch=True)
    got = sha256_file(path)
    if sha256 is not None and got != sha256:
        raise _Failed(f"sha256 is {got}, expected {sha256}", mismatch=True)
    if sha256 is None and recorded is not None and got != recorded:
        raise _Failed(f"sha256 is {got}, but {recorded} was recorded at the first download", mismatch=True)
    return got


def fetch(
    file_name: str,
    *,
    sources: Sequence[Source] = (),
    sha256: Optional[str] = None,
    size: Optional[int] = None,
    progress: Optional[bool] = None,
    hint: Optional[str] = None,
) -> pathlib.Path:
    """Return the local path of ``file_name``, verified; download it if needed.

    Args:
        file_name: the file's name in the cache and in a mirror (one plain file name).
        sources: where to download it from, tried in order after the mirror and the cache.
        sha256: the expected hash (None: record the first download's and check later reads).
        size: the expected size in bytes, if known.
        progress: show a progress bar (default: on unless ``REPZOO_PROGRESS=0``).
        hint: extra text for the error message when nothing works (e.g. a Baidu link and code).

    Raises:
        ChecksumError: every source failed and at least one delivered the wrong bytes.
        WeightsUnavailableError: no source could deliver the file; the message lists each one.
        RepZooError: ``file_name`` is not a plain file name.
    """
    _check_name(file_name)
    sha256 = _check_sha(sha256)
    sources = tuple(sources)
    offline = is_offline()
    show = _show_progress(progress)
    tried: List[Tuple[str, str]] = []
    mismatch = False
    mirror_dir, mirror_url = _mirror()

    if mirror_dir is not None:
        candidate = mirror_dir / file_name
        where = f"mirror folder REPZOO_MIRROR={mirror_dir}"
        if candidate.is_file():
            try:
                _verify(candidate, sha256, size, None)
                return candidate
            except _Failed as err:
                mismatch = True
                tried.append((where, f"{candidate}: {err}"))
                _log.warning("%s: %s (ignored)", candidate, err)
        else:
            tried.append((where, f"no file {candidate}"))

    target = cache_path(file_name)
    with _locked(file_name):
        if target.is_file():
            ok, reason = _cache_ok(target, sha256, size)
            if ok:
                return target
            _log.warning("cache entry %s is damaged (%s): removed it, fetching again", target, reason)
            target.unlink()
            if sha256 is not None:
                _record_path(target).unlink(missing_ok=True)
            tried.append((f"cache {target}", f"damaged ({reason}); removed"))
        else:
            tried.append((f"cache {target}", "not there"))
        rec = _read_record(target)
        recorded = rec[0] if rec and sha256 is None else None

        attempts: List[Tuple[str, Source]] = []
        if mirror_url is not None:
            url = f"{mirror_url}/{urllib.parse.quote(file_name)}"
            attempts.append((f"mirror URL REPZOO_MIRROR={mirror_url}", Source("url", url)))
        attempts.extend((src.describe(), src) for src in sources)
        for where, src in attempts:
            if offline and src.kind != "hf":
                tried.append((where, "not tried: offline (REPZOO_OFFLINE / HF_HUB_OFFLINE)"))
                continue
            try:
                if src.kind == "hf":
                    path = _fetch_hf(src, show)
                    got = _verify(path, sha256, size, recorded)
                    if sha256 is None and recorded is None:
                        _write_record(target, got)
                    return path
                _download(src, target, sha256=sha256, size=size, recorded=recorded, show=show)
                return target
            except _Failed as err:
                mismatch = mismatch or err.mismatch
                tried.append((where, str(err)))
                _log.warning("%s: %s", where, err)
            except OSError as err:  # the cache cannot be written (read-only, disk full, ...)
                tried.append((where, f"{type(err).__name__}: {err}"))
                _log.warning("%s: %s", where, err)

    raise _unavailable(file_name, target, sources, tried, mismatch, offline, hint)


def _unavailable(file_name, target, sources, tried, mismatch, offline, hint) -> RepZooError:
    lines = [f"Could not get a verified copy of {file_name}."]
    if offline:
        lines[0] += " Offline mode is on (REPZOO_OFFLINE=1 or HF_HUB_OFFLINE=1): the network was not used."
    lines.append("Tried:")
    if not os.environ.get("REPZOO_MIRROR", "").strip():
        lines.append("  - mirror: REPZOO_MIRROR is not set")
    lines.extend(f"  - {where}: {why}" for where, why in tried)
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
    if mismatch:
        lines.append(
            "A source delivered a file with the wrong checksum (see above); it was not used, and nothing of "
            "it was kept in the cache. Try again later; if it persists the file upstream has changed: "
            "report it, and if you trust the new file "
            f"run `repzoo cache rm {file_name}` to forget a recorded hash."
        )
        return ChecksumError("\n".join(lines))
    return WeightsUnavailableError("\n".join(lines))


# --------------------------------------------------------------------------- Hugging Face Hub


def _fetch_hf(src: Source, show: bool) -> pathlib.Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a declared dependency
        raise _Failed("huggingface_hub is not installed (pip install huggingface_hub)") from None
    kwargs: Dict[str, object] = {"revision": src.revision, "local_files_only": _hf_offline()}
    endpoint = os.environ.get("HF_ENDPOINT", "").strip()
    if endpoint:  # read now, not at huggingface_hub's import time
        kwargs["endpoint"] = endpoint.rstrip("/")
    hub_cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not hub_cache and os.environ.get("HF_HOME"):
        hub_cache = os.path.join(os.environ["HF_HOME"], "hub")
    if hub_cache:
        kwargs["cache_dir"] = os.path.expanduser(hub_cache)
    if not show:
        kwargs["tqdm_class"] = _silent_tqdm()
    try:
        path = hf_hub_download(src.location, src.filename, **kwargs)
    except Exception as err:  # noqa: BLE001 - every Hub failure becomes one line of the final error
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise _Failed(f"{type(err).__name__}: {first}"[:300]) from None
    return pathlib.Path(path)


def _silent_tqdm():
    from tqdm.auto import tqdm

    class _Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Silent


# --------------------------------------------------------------------------- HTTP(S) and Google Drive


class _Transient(Exception):
    """A failure worth retrying (connection, timeout, 429, 5xx); ``retry_after`` from the server."""

    def __init__(self, reason: str, retry_after: Optional[float] = None):
        super().__init__(reason)
        self.retry_after = retry_after


def _gdrive_request(file_id: str) -> Tuple[str, Dict[str, str]]:
    base = os.environ.get("REPZOO_GDRIVE_URL", GDRIVE_URL).strip()
    return base, {"export": "download", "id": file_id}


def _download(src: Source, target: pathlib.Path, *, sha256, size, recorded, show) -> None:
    """Download ``src`` into ``target`` (via ``target.part``), verify, rename; raise :class:`_Failed`."""
    import requests

    part = _part_path(target)
    if src.kind == "gdrive":
        url, params = _gdrive_request(src.location)
    else:
        url, params = src.location, {}
    session = requests.Session()
    session.headers["User-Agent"] = _user_agent()
    session.headers["Accept-Encoding"] = "identity"  # byte ranges must count the file's own bytes
    mismatch = False
    try:
        for _hop in range(4):  # a Google Drive confirmation page sends us on at most a few times
            page = _stream(session, url, params, part, target.name, size=size, show=show)
            if page is None:
                break
            if src.kind != "gdrive":
                raise _Failed(f"{page[1]} answered with a web page (text/html), not the file")
            url, params = _gdrive_confirm(page, url, params)
        else:
            raise _Failed("Google Drive kept answering with web pages instead of the file")
        got = _verify(part, sha256, size, recorded)
        os.replace(part, target)
        _write_record(target, got)
    except _Failed as err:
        mismatch = err.mismatch
        raise
    finally:
        session.close()
        # A partial download (a dropped connection, Ctrl-C) is kept for a later resume only where a
        # known sha256 will check the result; wrong bytes never stay.
        if sha256 is None or mismatch:
            part.unlink(missing_ok=True)


def _user_agent() -> str:
    from . import __version__

    return f"repzoo/{__version__}"


def _retry_after(response) -> Optional[float]:
    value = response.headers.get("Retry-After", "")
    try:
        return min(float(value), _MAX_DELAY)
    except ValueError:
        return None


def _stream(session, url: str, params: Dict[str, str], part: pathlib.Path, label: str, *,
            size: Optional[int], show: bool) -> Optional[Tuple[str, str]]:
    """GET ``url`` into ``part``, resuming and retrying; returns ``(html, final_url)`` for a web page.

    ``part`` may hold the first bytes already (a dropped connection): they are kept and the rest is
    asked for with ``Range``. Transient errors are retried ``_MAX_TRIES`` times with exponential
    back-off (the count restarts whenever the download gets further than before).
    """
    import requests

    failures = 0
    high_water = part.stat().st_size if part.exists() else 0
    while True:
        try:
            page = _stream_once(session, url, params, part, label, size=size, show=show)
            return page
        except _Transient as err:
            have = part.stat().st_size if part.exists() else 0
            if have > high_water:
                high_water, failures = have, 0
            failures += 1
            if failures >= _MAX_TRIES:
                raise _Failed(f"{err} (gave up after {_MAX_TRIES} tries)") from None
            delay = err.retry_after
            if delay is None:
                delay = min(_BASE_DELAY * 2 ** (failures - 1), _MAX_DELAY)
            _log.info("%s: %s; retrying in %.0f s", url, err, delay)
            _sleep(delay)
        except requests.RequestException as err:  # invalid URL, too many redirects, ...
            raise _Failed(f"{type(err).__name__}: {err}") from None


def _stream_once(session, url, params, part: pathlib.Path, label: str, *, size, show):
    import requests
    import urllib3

    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = session.get(url, params=params, headers=headers, stream=True, timeout=_TIMEOUT)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _Transient(f"{type(err).__name__}: {_short(err)}") from None
    with response:
        status = response.status_code
        if status == 416 and offset:  # the partial file is no prefix of this file: start over
            part.unlink()
            raise _Transient("HTTP 416 for the resumed range; starting over", retry_after=0)
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}", retry_after=_retry_after(response))
        if status >= 400:
            raise _Failed(f"HTTP {status} {response.reason or ''}".strip() + f" for {response.url}")
        ctype = response.headers.get("Content-Type", "").lower()
        if "text/html" in ctype:  # a web page (Google Drive's confirmation, a login page), not a file
            return response.text, response.url
        mode = "ab"
        if status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Transient(f"server resumed at byte {start}, not {offset}; starting over", retry_after=0)
        else:
            mode, offset = "wb", 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else size
        from tqdm.auto import tqdm

        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=label, disable=not show, leave=False) as bar:
            try:
                # raw.read without decoding keeps every byte that arrived before a drop (iter_content and
                # decode_content=True lose the last chunk); decode only what a server compressed anyway
                decode = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
                for chunk in iter(lambda: response.raw.read(_CHUNK, decode_content=decode), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
                    offset += len(chunk)
                    if size is not None and offset > size:
                        raise _Failed(f"server sent more than the expected {size} bytes", mismatch=True)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
                raise _Transient(f"connection lost after {offset} bytes ({type(err).__name__})") from None
        if total is not None and offset < total:
            raise _Transient(f"connection closed after {offset} of {total} bytes")
    return None


def _short(err: BaseException) -> str:
    text = str(err)
    return text if len(text) < 200 else text[:200] + "…"


def _content_range_start(value: str) -> Optional[int]:
    m = re.match(r"bytes\s+(\d+)-", value.strip())
    return int(m.group(1)) if m else None


class _PageParser(HTMLParser):
    """Collects the forms (action, method, inputs) and the links of a web page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: List[Dict[str, object]] = []
        self.links: List[str] = []
        self._form: Optional[Dict[str, object]] = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._form = {"action": a.get("action", ""), "method": a.get("method", "get").lower(),
                          "id": a.get("id", ""), "inputs": {}}
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name"):
            self._form["inputs"][a["name"]] = a.get("value", "")  # type: ignore[index]
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None


def _gdrive_confirm(page: Tuple[str, str], url: str, params: Dict[str, str]) -> Tuple[str, Dict[str, str]]:
    """From Google Drive's "can't scan this file for viruses" page, the request that gets the file.

    The page is a form (``id="download-form"``, action ``…/download``, hidden inputs ``id``,
    ``export``, ``confirm``, ``uuid``) to submit with GET; older pages carry a link with
    ``confirm=<token>`` instead.
    """
    html, page_url = page
    parser = _PageParser()
    parser.feed(html)
    forms = [f for f in parser.forms if f["inputs"] and f["method"] == "get"]
    forms.sort(key=lambda f: (f["id"] != "download-form", "confirm" not in f["inputs"]))  # type: ignore[operator]
    if forms and ("confirm" in forms[0]["inputs"] or forms[0]["id"] == "download-form"):  # type: ignore[operator]
        form = forms[0]
        action = urllib.parse.urljoin(page_url, str(form["action"]) or page_url)
        return action, dict(form["inputs"])  # type: ignore[arg-type]
    for href in parser.links:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(href).query)
        if "confirm" in query:
            target = urllib.parse.urljoin(page_url, href)
            return target, {}
    m = re.search(r"confirm=([0-9A-Za-z_-]+)", html)
    if m:
        return url, {**params, "confirm": m.group(1)}
    lowered = html.lower()
    if "quota" in lowered or "too many users" in lowered:
        raise _Failed("Google Drive refused: the file's download quota is exceeded; try again in a day "
                      "or download it by hand")
    raise _Failed("Google Drive answered with a web page and no download link (the file may be private "
                  "or removed)")


# --------------------------------------------------------------------------- RepOpt scales


def fetch_scales(name: str) -> pathlib.Path:
    """The verified local path of the RepOptimizer scale file of model ``name`` (e.g. ``RepOpt-VGG-B1``)."""
    from .manifest import load_manifest

    rec = load_manifest().scales(name)
    hint = rec.hint() if callable(getattr(rec, "hint", None)) else None
    return fetch(rec.file_name, sources=tuple(rec.sources), sha256=rec.sha256, size=rec.size, hint=hint)
