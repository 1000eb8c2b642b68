"""The resumable HTTP(S) client behind :func:`repzoo.weights.hub.fetch`: one GET streamed into a ``.part``.

urllib3's ``Retry`` retries connection drops before the response, 429 and 5xx with exponential
back-off and ``Retry-After`` (never 403/404, and never a refused connection: with no network the
error comes at once). A connection lost mid-file resumes with ``Range`` — only where the server gave
a validator (``ETag`` / ``Last-Modified``, kept in the part's resume record
:func:`~repzoo.weights.files.part_record_path`) and confirms it with ``If-Range``; otherwise the
download starts over. A ``.part`` that is a link or not a plain file is never followed.
``REPZOO_STALL_TIMEOUT`` (seconds without a byte, default 60) and ``REPZOO_DOWNLOAD_TIMEOUT`` (per
file, default 7200; 0: none) bound the time. Google Drive's confirmation pages are followed
(:mod:`repzoo.weights.gdrive`). A full or read-only disk is a :class:`~repzoo.errors.StorageError`.

This module knows nothing of hashes, the manifest or the cache's layout: :mod:`repzoo.weights.hub`
verifies what it delivers. ``requests``, ``urllib3`` and ``tqdm`` are imported lazily.
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
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

from ..errors import RepZooError, StorageError
from ..version import __version__
from . import gdrive
from .files import part_record_path, storage_error, write_json

__all__ = ["Failed", "NoNetwork", "download_part", "clear_part", "probe", "retry_delay", "env_seconds"]

_log = logging.getLogger(__name__)

_RETRIES = 4            # retries after the first attempt (429, 5xx, read errors before a response)
_BACKOFF = 1.0          # urllib3's backoff_factor
_MAX_DELAY = 30.0
_CONNECT_TIMEOUT = 15.0
_STALL_TIMEOUT = 60.0   # REPZOO_STALL_TIMEOUT
_DEADLINE = 7200.0      # REPZOO_DOWNLOAD_TIMEOUT (0: none)
_RESUMES = 5            # mid-file drops in a row without progress before giving up
_PROBE_TIMEOUT = 3.0
_CHUNK = 1 << 20
_RETRY_STATUS = (429, 500, 502, 503, 504)
_sleep = time.sleep     # tests replace it: back-off never waits on real time there


class Failed(Exception):
    """One source did not deliver; ``mismatch`` when it delivered the wrong bytes."""

    def __init__(self, reason: str, mismatch: bool = False):
        super().__init__(reason)
        self.mismatch = mismatch


class NoNetwork(Failed):
    """The first connection was refused or the name did not resolve: skip the other network sources."""


def env_seconds(name: str, default: float) -> Optional[float]:
    """A number of seconds from the environment (``default`` when unset; None for 0 or less: no limit)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise RepZooError(f"{name}={value!r} is not a number of seconds.") from None
    return None if seconds <= 0 else seconds


def retry_delay(retry: int) -> float:
    """The back-off before retry number ``retry`` (1, 2, ...): urllib3's, 0 then 2, 4, 8 s × the factor."""
    return 0.0 if retry <= 1 else min(_BACKOFF * 2 ** (retry - 1), _MAX_DELAY)


def backoff(delay: Optional[float]) -> None:
    """Sleep ``delay`` seconds (bounded), through :data:`_sleep`."""
    if delay and delay > 0:
        _sleep(min(delay, _MAX_DELAY))


def probe(url: str) -> None:
    """Fail fast with :class:`NoNetwork` when ``url``'s host cannot be reached at all."""
    import requests

    if requests.utils.get_environ_proxies(url):
        return  # only the proxy knows: let the request find out
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=_PROBE_TIMEOUT).close()
    except OSError as err:
        raise NoNetwork(f"cannot reach {parts.hostname}:{port} ({err.strerror or err}); "
                        "set REPZOO_OFFLINE=1 to skip the network") from None


def _retry():
    """urllib3's ``Retry`` for repzoo's downloads, sleeping through :func:`backoff`."""
    from urllib3.util.retry import Retry

    class _Retry(Retry):
        def sleep(self, response=None):  # the back-off urllib3 computes, slept where tests can see it
            delay = self.get_retry_after(response) if response is not None else None
            backoff(self.get_backoff_time() if delay is None else delay)

    return _Retry(total=_RETRIES, connect=0, read=_RETRIES, status=_RETRIES, other=0, backoff_factor=_BACKOFF,
                  backoff_max=_MAX_DELAY, status_forcelist=_RETRY_STATUS,
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


def clear_part(part: pathlib.Path) -> None:
    """Remove a ``.part`` and its resume record."""
    for p in (part, part_record_path(part)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _resumable(part: pathlib.Path) -> Tuple[int, Optional[_Resume]]:
    """``(bytes, resume record)`` of a ``.part`` that can be resumed; anything else is removed."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        clear_part(part)
        return 0, None
    if not stat.S_ISREG(st.st_mode):  # a link (or a device, a folder): never follow, never write through
        if stat.S_ISDIR(st.st_mode):
            raise StorageError(f"{part} is a folder; remove it and try again.")
        part.unlink()
        clear_part(part)
        return 0, None
    try:
        rec = _Resume(**json.loads(part_record_path(part).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        clear_part(part)
        return 0, None
    if rec.total is not None and st.st_size > rec.total:
        clear_part(part)
        return 0, None
    return st.st_size, rec


def download_part(kind: str, location: str, part: pathlib.Path, label: str, *, size: Optional[int],
                  show: bool) -> None:
    """Stream a ``url`` (or ``gdrive`` file id) into ``part``, resuming what a resume record allows.

    Raises :class:`Failed` (``mismatch`` when the server sends other bytes than ``size`` allows) or
    :class:`NoNetwork`. On failure a ``.part`` stays only with its resume record and right bytes.
    """
    url, params = gdrive.download_request(location) if kind == "gdrive" else (location, {})
    stall = env_seconds("REPZOO_STALL_TIMEOUT", _STALL_TIMEOUT)
    budget = env_seconds("REPZOO_DOWNLOAD_TIMEOUT", _DEADLINE)
    deadline = None if budget is None else time.monotonic() + budget
    session = _session()
    try:
        for _hop in range(4):  # a Google Drive confirmation page sends us on at most a few times
            page = _stream(session, url, params, part, label, size, show=show, stall=stall, deadline=deadline)
            if page is None:
                return
            if kind != "gdrive":
                raise Failed(f"{page[1]} answered with a web page (text/html), not the file")
            try:
                url, params = gdrive.confirm_request(page, url, params)
            except gdrive.GDriveRefused as err:
                raise Failed(str(err)) from None
        raise Failed("Google Drive kept answering with web pages instead of the file")
    except Failed as err:
        if err.mismatch or not part_record_path(part).exists():
            clear_part(part)
        raise
    finally:
        session.close()


def _stream(session, url: str, params: Dict[str, str], part: pathlib.Path, label: str, size: Optional[int], *,
            show: bool, stall: Optional[float], deadline: Optional[float]) -> Optional[Tuple[str, str]]:
    """GET ``url`` into ``part``, resuming after drops mid-file; returns ``(html, final_url)`` for a web page."""
    import requests

    failures, high_water = 0, 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise Failed("gave up: the download took longer than REPZOO_DOWNLOAD_TIMEOUT")
        try:
            return _stream_once(session, url, params, part, label, size, show=show, stall=stall, deadline=deadline)
        except _Dropped as err:
            have = part.stat().st_size if part.exists() else 0
            if have > high_water:
                high_water, failures = have, 0
            failures += 1
            if failures >= _RESUMES:
                raise Failed(f"{err} (gave up after {_RESUMES} tries)") from None
            backoff(_BACKOFF * 2 ** (failures - 2) if failures > 1 else 0)
            _log.info("%s: %s; resuming", url, err)
        except requests.exceptions.ConnectionError as err:
            if _refused(err):
                raise NoNetwork(f"no connection ({_short(err)}); set REPZOO_OFFLINE=1 to skip the network") from None
            raise Failed(f"{type(err).__name__}: {_short(err)}") from None
        except requests.RequestException as err:  # invalid URL, too many redirects, timeouts after retries
            raise Failed(f"{type(err).__name__}: {_short(err)}") from None


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


def _stream_once(session, url, params, part: pathlib.Path, label: str, size: Optional[int], *, show, stall,
                 deadline):
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
            clear_part(part)
            raise _Dropped("HTTP 416 for the resumed range; starting over")
        if status in _RETRY_STATUS or status >= 500:
            raise Failed(f"HTTP {status} (gave up after {_RETRIES + 1} tries)")
        if status >= 400:
            raise Failed(f"HTTP {status} {response.reason or ''}".strip() + f" for {response.url}")
        ctype = response.headers.get("Content-Type", "").lower()
        if "text/html" in ctype:  # a web page (Google Drive's confirmation, a login page), not a file
            return response.text, response.url
        encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        length = response.headers.get("Content-Length", "")
        if status == 206 and not encoded:
            start, total = _content_range(response.headers.get("Content-Range", ""))
            if start != offset or (resume and resume.total is not None and total != resume.total):
                clear_part(part)
                raise _Dropped(f"server resumed at byte {start} of {total}, not {offset}; starting over")
            mode, expect_total = "ab", total
        else:
            clear_part(part)
            offset, mode = 0, "wb"
            expect_total = None if encoded or not length.isdigit() else int(length)
            record = _Resume.of(response, request_url)
            if record is not None:
                write_json(part_record_path(part), asdict(record), "a download's resume record")
        if size is not None and expect_total is not None and expect_total != size:
            raise Failed(f"the server announces {expect_total} bytes, expected {size}", mismatch=True)
        from tqdm.auto import tqdm

        try:
            f = open(part, mode)
        except OSError as err:
            raise storage_error(err, part.parent, part.name) from None
        with f, tqdm(total=expect_total or size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=label, disable=not show, leave=False) as bar:
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    raise Failed("gave up: the download took longer than REPZOO_DOWNLOAD_TIMEOUT")
                try:  # read1: what has arrived, so that a drop or a stall loses nothing already received
                    chunk = response.raw.read(_CHUNK, decode_content=True) if encoded else response.raw.read1(_CHUNK)
                except (urllib3.exceptions.HTTPError, OSError) as err:
                    if encoded:
                        clear_part(part)  # decoded bytes cannot be resumed by byte range
                    raise _Dropped(f"connection lost after {offset} bytes ({type(err).__name__})") from None
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as err:
                    f.close()
                    clear_part(part)
                    raise storage_error(err, part.parent, part.name) from None
                bar.update(len(chunk))
                offset += len(chunk)
                if size is not None and offset > size:
                    raise Failed(f"server sent more than the expected {size} bytes", mismatch=True)
        if expect_total is not None and offset < expect_total:
            raise _Dropped(f"connection closed after {offset} of {expect_total} bytes")
    return None


def _short(err: BaseException) -> str:
    text = str(err)
    return text if len(text) < 200 else text[:200] + "…"


def _content_range(value: str) -> Tuple[Optional[int], Optional[int]]:
    m = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", value.strip())
    if not m:
        return None, None
    return int(m.group(1)), (int(m.group(2)) if m.group(2).isdigit() else None)
