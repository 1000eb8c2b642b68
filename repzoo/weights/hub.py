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
``REPZOO_PROGRESS=0`` silences it), retried with back-off and resumed after a drop: see
:mod:`repzoo.weights.http`. The Hugging Face path retries 429 and 5xx the same way. A per-file
``filelock.FileLock`` serializes processes: the second one waits, then finds the file in the cache.
Where the files live and how they are listed and removed: :mod:`repzoo.weights.cache`.

**Offline**: ``REPZOO_OFFLINE=1`` never touches the network — a mirror folder, the repzoo cache
and the Hugging Face cache are still used. When ``REPZOO_OFFLINE`` is unset, ``HF_HUB_OFFLINE=1``
means offline for repzoo too; ``REPZOO_OFFLINE=0`` overrides it.

This module imports ``requests``, ``urllib3``, ``tqdm``, ``filelock`` and ``huggingface_hub`` lazily.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import (ChecksumError, IncompatibleCheckpointError, RepZooError, UnsafeCheckpointError,
                      WeightsUnavailableError)
from . import http
from .cache import (cache_entries, cache_path, cached_file, files_dir, locked, recorded_sha256,
                    remove_cached)
from .files import (check_file_name, fingerprint, forget_verified, known, part_path, remember_known,
                    remember_verified, storage_error, umask, verified_sha256)
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

_SHA_RE = re.compile(r"[0-9a-f]{64}")

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
    """``REPZOO_MIRROR`` as ``(folder, None)`` (a path or a ``file://`` URL) or ``(None, base URL)``."""
    value = os.environ.get("REPZOO_MIRROR", "").strip()
    if not value:
        return None, None
    if re.match(r"https?://", value, re.IGNORECASE):
        return None, value.rstrip("/")
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", value)
    if scheme and scheme.group(1).lower() == "file":
        parts = urllib.parse.urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            raise RepZooError(f"REPZOO_MIRROR={value!r} names the host {parts.netloc!r}: a file:// mirror is a folder "
                              "on this machine (file:///path/to/folder), or use an http(s):// base URL.")
        return pathlib.Path(urllib.request.url2pathname(parts.path)), None
    if scheme:
        raise RepZooError(f"REPZOO_MIRROR={value!r}: {scheme.group(1)}:// is not supported. Set it to a folder "
                          "(a path or file:///path) or to an http(s):// base URL that serves the files by name.")
    return pathlib.Path(value).expanduser(), None


def _check_sha(sha256: Optional[str]) -> Optional[str]:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA_RE.fullmatch(value):
        raise RepZooError(f"{sha256!r} is not a sha256 (64 hexadecimal digits): fix the manifest entry.")
    return value


# --------------------------------------------------------------------------- fetch


_Failed, _NoNetwork = http.Failed, http.NoNetwork


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

    def check(self, path: pathlib.Path, where: str, *, digest: Optional[str] = None,
              published: Optional[str] = None) -> str:
        """Verify ``path``; raise :class:`_Failed` (mismatch) or return its sha256 (recording first use).

        ``published``: the sha256 the host publishes for the file (a Hugging Face LFS file's ETag), which
        stands where the manifest has none.
        """
        actual = path.stat().st_size
        if self.size is not None and actual != self.size:
            raise _Failed(f"has {actual} bytes, expected {self.size}", mismatch=True)
        got = digest or verified_sha256(path)
        rec = known(self.file_name)
        expected = self.sha256 or published
        if expected is not None:
            whose = "the manifest's" if self.sha256 else "the LFS sha256 the host publishes"
            if got != expected:
                raise _Failed(f"sha256 is {got}, expected {expected} ({whose})", mismatch=True)
            if rec is None or rec.sha256 != got:
                remember_known(self.file_name, got, actual, where if self.sha256 else f"{where} ({whose})")
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
            except IncompatibleCheckpointError as err:  # readable, but another model's: never its expected hash
                raise _Failed(str(err).splitlines()[0][:400], mismatch=True) from None
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

    target = files_dir() / file_name
    with locked(file_name):
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


def _fetch_hf(src: Source, job: _Fetch, show: bool, offline: bool) -> pathlib.Path:
    from huggingface_hub import hf_hub_download

    path = _hf_cached(src)
    if path is None:
        if offline:
            raise _Failed("not in the Hugging Face cache (offline)")
        http.probe(_hf_endpoint())
        for retry in range(http._RETRIES + 1):  # 429 and 5xx are retried as on the HTTPS path
            try:
                path = pathlib.Path(hf_hub_download(src.location, src.filename, **_hf_kwargs(src, show)))
                break
            except Exception as err:  # noqa: BLE001 - every Hub failure becomes one line of the final error
                response = getattr(err, "response", None)
                status = getattr(response, "status_code", None)
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                if status in http._RETRY_STATUS and retry < http._RETRIES:
                    _log.info("%s: HTTP %s; retrying", src.describe(), status)
                    http.backoff(_retry_after(response) or http.retry_delay(retry + 1))
                    continue
                tries = f" (gave up after {retry + 1} tries)" if status in http._RETRY_STATUS else ""
                raise _Failed(f"{type(err).__name__}: {first}"[:300] + tries) from None
    try:
        job.check(path, src.describe(), published=_lfs_sha256(path))
    except _Failed:
        drop_hf_copy(path)  # a wrong blob would fail every later fetch
        raise
    return path


def _retry_after(response) -> Optional[float]:
    value = str(getattr(response, "headers", {}).get("Retry-After", "") or "").strip()
    return float(value) if value.replace(".", "", 1).isdigit() else None


def _lfs_sha256(path: pathlib.Path) -> Optional[str]:
    """The sha256 the Hub publishes for an LFS file: its ETag, which names the blob in huggingface_hub's cache."""
    blob = pathlib.Path(os.path.realpath(path)).name
    return blob if _SHA_RE.fullmatch(blob) else None


def drop_hf_copy(path: pathlib.Path) -> None:
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


def _download(src: Source, target: pathlib.Path, job: _Fetch, show: bool) -> None:
    """Download ``src`` into ``target`` (via ``target.part``), verify, rename; raise :class:`_Failed`."""
    part = part_path(target)
    http.download_part(src.kind, src.location, part, target.name, size=job.size, show=show)
    try:
        fp = fingerprint(part)
        job.check(part, src.describe(), digest=fp.sha256)
        try:
            os.chmod(part, 0o666 & ~umask())
            os.replace(part, target)
        except OSError as err:
            raise storage_error(err, target.parent, target.name) from None
    except BaseException:
        http.clear_part(part)  # never keep wrong (or refused) bytes for a later resume
        raise
    http.clear_part(part)  # the resume record
    remember_verified(fingerprint(target, fp.sha256))
