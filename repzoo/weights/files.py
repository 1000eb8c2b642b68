"""Files on disk: the cache folder, the one atomic writer, hashes, and the records behind verification.

Two kinds of record live in the cache (``$REPZOO_HOME``, default ``~/.cache/repzoo``):

* ``known/<file name>.json`` — *what a file is*: the sha256 (and size) a released file name had
  the first time repzoo used it, from any source (trust on first use, for files the manifest
  has no hash for). Later copies of that name must match it, and the deploy cache is found by
  it — with or without the source file at hand.
* ``stat/<hash of the path>.json`` — *what was verified where*: the full sha256 of one file at one
  path together with its size, mtime, ctime, inode and a sample hash of its content. A warm load
  checks the size, the stat fields and the sample hash (a few hundred KiB read); the full hash
  is computed again whenever anything about the file changed.

Everything repzoo writes goes through :func:`atomic_path`: a temporary name beside the target,
renamed into place only when complete, removed on any failure, with the permissions the umask
gives (never 0600).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pathlib
import re
import tempfile
from dataclasses import asdict, dataclass
from typing import Iterator, Optional, Union

from ..errors import RepZooError, StorageError

__all__ = [
    "cache_dir",
    "cache_subdir",
    "atomic_path",
    "sha256_file",
    "sample_hash",
    "Fingerprint",
    "fingerprint",
    "verified_sha256",
    "matches_record",
    "remember_verified",
    "forget_verified",
    "Known",
    "known",
    "remember_known",
    "forget_known",
    "check_file_name",
    "part_path",
    "part_record_path",
    "write_json",
    "read_json",
    "storage_error",
    "umask",
]

PathLike = Union[str, "os.PathLike[str]"]

_CHUNK = 1 << 20
_SAMPLE_EDGE = 64 << 10     # bytes hashed at each end of a file
_SAMPLE_BLOCKS = 32         # evenly spaced blocks between them
_SAMPLE_BLOCK = 4 << 10
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-=@,()]*")
_RESERVED_SUFFIXES = (".part", ".json", ".lock", ".tmp")


def umask() -> int:
    """The process's umask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def storage_error(err: OSError, where: PathLike, what: str) -> StorageError:
    """A :class:`StorageError` for an ``OSError`` met while writing ``what`` under ``where``."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        cause = "the disk is full"
        todo = "Free some space there, or set REPZOO_HOME to a folder on a disk with room."
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        cause = "it is read-only for this user"
        todo = "Set REPZOO_HOME to a writable folder (or fix the folder's permissions)."
    else:
        cause = f"{type(err).__name__}: {err.strerror or err}"
        todo = "Check the folder, or set REPZOO_HOME to another one."
    return StorageError(f"Could not write {what} in {where}: {cause}. Nothing was left there. {todo}")


def cache_dir(create: bool = True) -> pathlib.Path:
    """The repzoo cache: ``$REPZOO_HOME`` or ``~/.cache/repzoo``."""
    home = os.environ.get("REPZOO_HOME", "").strip()
    path = pathlib.Path(home).expanduser() if home else pathlib.Path.home() / ".cache" / "repzoo"
    if path.exists() and not path.is_dir():
        raise StorageError(f"REPZOO_HOME={path} is a file, not a folder. Point REPZOO_HOME at a folder "
                           "(it is created if missing), or remove that file.")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise storage_error(err, path, "the cache folder") from None
    return path


def cache_subdir(name: str, create: bool = True) -> pathlib.Path:
    """``<cache>/<name>``, made when ``create`` (a :class:`StorageError` when it cannot be)."""
    path = cache_dir(create) / name
    if create:
        try:
            path.mkdir(exist_ok=True)
        except OSError as err:
            raise storage_error(err, path, "the cache folder") from None
    return path


def check_file_name(file_name: str) -> str:
    """Refuse a file name that is not one plain path component (``../x``, ``/abs``, ``a/b``, ``.x``)."""
    if not isinstance(file_name, str) or not file_name:
        raise RepZooError(f"Invalid weights file name {file_name!r}: expected a non-empty string.")
    if len(file_name) > 200 or not _NAME_RE.fullmatch(file_name) or file_name.endswith(_RESERVED_SUFFIXES):
        raise RepZooError(
            f"Refused the file name {file_name!r}: a weights file name must be one plain file name "
            "(letters, digits and . _ - + = @ , ( ), starting with a letter or digit, not ending in "
            f"{', '.join(_RESERVED_SUFFIXES)}) so that it cannot point outside the cache or mirror folder. "
            "Fix the manifest entry or the name you passed."
        )
    return file_name


@contextlib.contextmanager
def atomic_path(path: PathLike, what: str = "a file") -> Iterator[pathlib.Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed.

    The file gets the permissions the umask gives a new file (``0o666 & ~umask``). An ``OSError``
    while writing (a full disk, a read-only folder) becomes a :class:`StorageError`.
    """
    path = pathlib.Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise storage_error(err, path.parent, what) from None
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except OSError as err:
        raise storage_error(err, path.parent, what) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def part_path(target: PathLike) -> pathlib.Path:
    """Where a download of ``target`` streams to: ``<target>.part`` beside it."""
    target = pathlib.Path(target)
    return target.with_name(target.name + ".part")


def part_record_path(part: PathLike) -> pathlib.Path:
    """The resume record of a ``.part`` file: ``<target>.part.json`` beside it."""
    part = pathlib.Path(part)
    return part.with_name(part.name + ".json")


def write_json(path: pathlib.Path, data: dict, what: str) -> None:
    """Write ``data`` as JSON through :func:`atomic_path` (a :class:`StorageError` when it cannot)."""
    with atomic_path(path, what) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: pathlib.Path) -> Optional[dict]:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- hashes


def sha256_file(path: PathLike) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sample_hash(path: PathLike, size: int) -> str:
    """A cheap content check: the sha256 of the first and last 64 KiB and 32 evenly spaced 4 KiB blocks."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= 2 * _SAMPLE_EDGE + _SAMPLE_BLOCKS * _SAMPLE_BLOCK:
            digest.update(f.read())
            return digest.hexdigest()
        digest.update(f.read(_SAMPLE_EDGE))
        span = size - 2 * _SAMPLE_EDGE - _SAMPLE_BLOCK
        for i in range(_SAMPLE_BLOCKS):
            f.seek(_SAMPLE_EDGE + span * i // (_SAMPLE_BLOCKS - 1))
            digest.update(f.read(_SAMPLE_BLOCK))
        f.seek(size - _SAMPLE_EDGE)
        digest.update(f.read(_SAMPLE_EDGE))
    return digest.hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """A file's full hash together with what identifies its current bytes cheaply."""

    path: str
    sha256: str
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    sample: str

    def same_stat(self, st: os.stat_result) -> bool:
        return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev) == (
            self.size, self.mtime_ns, self.ctime_ns, self.ino, self.dev)


def fingerprint(path: PathLike, sha256: Optional[str] = None) -> Fingerprint:
    """The fingerprint of ``path`` now (hashing it unless ``sha256`` is given)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    sha = sha256 or sha256_file(real)
    return Fingerprint(real, sha, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev,
                       sample_hash(real, st.st_size))


def _stat_record(real: str, create: bool) -> pathlib.Path:
    key = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:40]
    return cache_subdir("stat", create) / f"{key}.json"


def remember_verified(fp: Fingerprint) -> None:
    """Record that ``fp.path`` was verified (best effort: a read-only cache records nothing)."""
    try:
        write_json(_stat_record(fp.path, True), asdict(fp), "a verification record")
    except RepZooError:
        pass


def forget_verified(path: PathLike) -> None:
    with contextlib.suppress(OSError, RepZooError):
        _stat_record(os.path.realpath(path), False).unlink()


def _recorded(real: str) -> Optional[Fingerprint]:
    rec = read_json(_stat_record(real, False)) if cache_dir(False).is_dir() else None
    if rec is None:
        return None
    try:
        fp = Fingerprint(**rec)
    except TypeError:
        return None
    return fp if fp.path == real and _SHA_RE.fullmatch(str(fp.sha256)) else None


def _unchanged(fp: Fingerprint, real: str, st: os.stat_result) -> bool:
    return fp.same_stat(st) and sample_hash(real, st.st_size) == fp.sample


def matches_record(path: PathLike) -> Optional[bool]:
    """Whether ``path`` still holds the bytes recorded for it: None when there is no record.

    Cheap when nothing about the file changed; otherwise a full hash against the recorded one
    (a file that was only touched is then recorded anew).
    """
    real = os.path.realpath(path)
    fp = _recorded(real)
    if fp is None:
        return None
    st = os.stat(real)
    if _unchanged(fp, real, st):
        return True
    if st.st_size != fp.size or sha256_file(real) != fp.sha256:
        return False
    remember_verified(fingerprint(real, fp.sha256))
    return True


def verified_sha256(path: PathLike) -> str:
    """The sha256 of ``path``, cheaply when nothing about the file changed since it was last verified.

    Size, mtime, ctime, inode and device must equal the record and the sample hash must match;
    otherwise the file is hashed in full and the record renewed.
    """
    real = os.path.realpath(path)
    fp = _recorded(real)
    if fp is not None and _unchanged(fp, real, os.stat(real)):
        return fp.sha256
    fp = fingerprint(real)
    remember_verified(fp)
    return fp.sha256


# --------------------------------------------------------------------------- what a file name is


@dataclass(frozen=True)
class Known:
    """The sha256 and size a file name had when repzoo first used it, and where it came from."""

    file_name: str
    sha256: str
    size: int
    source: str


def _known_path(file_name: str, create: bool) -> pathlib.Path:
    return cache_subdir("known", create) / f"{check_file_name(file_name)}.json"


def known(file_name: str) -> Optional[Known]:
    """The first-use record of ``file_name``, or None."""
    if not cache_dir(False).is_dir():
        check_file_name(file_name)
        return None
    rec = read_json(_known_path(file_name, False))
    if rec is None:
        return None
    try:
        k = Known(**rec)
    except TypeError:
        return None
    return k if _SHA_RE.fullmatch(str(k.sha256)) and k.file_name == file_name else None


def remember_known(file_name: str, sha256: str, size: int, source: str) -> None:
    """Record what ``file_name`` is (best effort: a read-only cache records nothing)."""
    try:
        write_json(_known_path(file_name, True), asdict(Known(file_name, sha256, size, source)), "a hash record")
    except StorageError:
        pass


def forget_known(file_name: str) -> bool:
    try:
        _known_path(file_name, False).unlink()
        return True
    except (OSError, StorageError):
        return False
