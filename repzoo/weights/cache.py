"""The cache's inventory: where each file lives, what is there, and how it is removed.

Two kinds of entry live under ``$REPZOO_HOME`` (default ``~/.cache/repzoo``):

* ``files/<file name>`` — released files fetched by :func:`repzoo.weights.hub.fetch` (a download
  in progress is ``<file name>.part`` with its resume record ``<file name>.part.json``);
* ``deploy/<alias>.<tag>-<source sha256>-c<conversion version>.safetensors`` — the deploy cache: a
  train-time file converted once (see :mod:`repzoo.weights.pretrained`). The file carries its model,
  tag, source file, source sha256 and the hash of its own tensors in its safetensors metadata.

Files from the Hugging Face Hub stay in huggingface_hub's own cache; :func:`file_state` reports them.
:func:`inventory` is the one list that ``repzoo cache ls`` prints and :func:`remove` is what
``repzoo cache rm`` does. Hash and verification records are :mod:`repzoo.weights.files`'.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import warnings
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional

from ..errors import RepZooError, StorageError
from ..registry import name_alias
from .files import (cache_dir, cache_subdir, check_file_name, fingerprint, forget_known, forget_verified, known,
                    matches_record, part_path, part_record_path, remember_verified, verified_sha256)

__all__ = [
    "cache_path",
    "cached_file",
    "recorded_sha256",
    "cache_entries",
    "remove_cached",
    "locked",
    "deploy_cache_dir",
    "deploy_cache_path",
    "deploy_cache_entries",
    "remove_deploy_cached",
    "read_deploy",
    "write_deploy",
    "tensors_sha256",
    "inventory",
    "file_state",
    "remove",
]

_log = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch is imported where tensors are handled: fetching a file does not need it
    import torch

StateDict = Dict[str, "torch.Tensor"]

_FILES = "files"    # the fetched files
_DEPLOY = "deploy"  # the deploy cache
_LOCKS = ".locks"


# --------------------------------------------------------------------------- fetched files


def files_dir(create: bool = True) -> pathlib.Path:
    """``<cache>/files``, made when ``create``."""
    return cache_subdir(_FILES, create)


def cache_path(file_name: str) -> pathlib.Path:
    """Where ``file_name`` lives in the cache (whether or not it is there; the folder is made if it can be)."""
    check_file_name(file_name)
    try:
        return files_dir() / file_name
    except StorageError:
        return files_dir(create=False) / file_name


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
    folder = files_dir(create=False)
    if not folder.is_dir():
        return []
    out: List[Dict[str, object]] = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith(".") or name.endswith((".part", ".json")) or not path.is_file():
            continue
        out.append({"file_name": name, "path": path, "size": path.stat().st_size, "sha256": recorded_sha256(name)})
    return out


def remove_cached(file_name: str) -> bool:
    """Delete a cache entry with its records and any partial download; True if anything was removed."""
    path = cache_path(file_name)
    removed = False
    with locked(file_name):
        for p in (path, part_path(path), part_record_path(part_path(path))):
            try:
                p.unlink()
                removed = True
            except FileNotFoundError:
                pass
        forget_verified(path)
        removed = forget_known(file_name) or removed
    return removed


@contextlib.contextmanager
def locked(file_name: str) -> Iterator[None]:
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


# --------------------------------------------------------------------------- the deploy cache


def deploy_cache_dir(create: bool = True) -> pathlib.Path:
    """``<cache>/deploy``, made when ``create``."""
    return cache_subdir(_DEPLOY, create)


def _conversion_version() -> int:
    from .. import reparam

    return int(reparam.CONVERSION_VERSION)


def _deploy_prefix(name: str, tag: str) -> str:
    return f"{name_alias(name)}.{name_alias(tag)}-"


def deploy_cache_path(name: str, tag: str, source_sha256: str) -> pathlib.Path:
    """``<cache>/deploy/<alias>.<tag>-<source sha256>-c<conversion version>.safetensors``."""
    if not (len(source_sha256) == 64 and all(c in "0123456789abcdef" for c in source_sha256)):
        raise RepZooError(f"{source_sha256!r} is not a sha256")
    return deploy_cache_dir(create=False) / (f"{_deploy_prefix(name, tag)}{source_sha256}"
                                             f"-c{_conversion_version()}.safetensors")


def tensors_sha256(sd: StateDict) -> str:
    """A hash of a state dict's content: every key, dtype, shape and byte, in key order."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key].detach().contiguous().cpu()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def read_deploy(path: pathlib.Path, source_sha256: str) -> Optional[StateDict]:
    """The cached deploy weights, or None when absent, stale or damaged (a damaged file is removed)."""
    if not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("source_sha256") != source_sha256 or meta.get("conversion_version") != str(_conversion_version()):
            raise ValueError(f"metadata {meta} does not match")
        verdict = matches_record(path)
        if verdict is False:
            raise ValueError("its bytes changed since it was written")
        sd = load_file(str(path))
        if verdict is None:  # no record (a copied cache): its own content hash decides, once
            if tensors_sha256(sd) != meta.get("content_sha256"):
                raise ValueError("its tensors do not match the hash it carries")
            remember_verified(fingerprint(path))
        return sd
    except Exception as err:  # noqa: BLE001 - a bad cache entry is rebuilt, never trusted
        _log.warning("deploy cache entry %s is unusable (%s): removing it", path, err)
        _remove_deploy_file(path)
        return None


def _remove_deploy_file(path: pathlib.Path) -> None:
    forget_verified(path)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        _log.warning("could not remove %s (%s)", path, err)


def write_deploy(path: pathlib.Path, sd: StateDict, *, name: str, tag: str, source_file: str,
                 source_sha256: str) -> bool:
    """Write ``sd`` as safetensors, atomically; False (with a warning) when the cache cannot take it."""
    from .checkpoint import save_state_dict

    meta = {"model": name, "tag": tag, "source_file": source_file, "source_sha256": source_sha256,
            "conversion_version": str(_conversion_version()), "content_sha256": tensors_sha256(sd), "format": "pt"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_state_dict(sd, path, metadata=meta)
    except (StorageError, OSError) as err:
        warnings.warn(f"The converted weights of {name} could not be cached ({err}); the model is fine, but the "
                      "next deploy load will convert again.", UserWarning, stacklevel=4)
        return False
    remember_verified(fingerprint(path))
    return True


def deploy_cache_entries() -> List[Dict[str, object]]:
    """Every deploy-cache file: ``[{file_name, path, size, model, tag, source_file, source_sha256}]``."""
    from safetensors import safe_open

    folder = deploy_cache_dir(create=False)
    if not folder.is_dir():
        return []
    out: List[Dict[str, object]] = []
    for path in sorted(folder.glob("*.safetensors")):
        if path.name.startswith("."):
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception:  # noqa: BLE001 - an unreadable entry is still listed (and removable)
            meta = {}
        out.append({"file_name": path.name, "path": path, "size": path.stat().st_size,
                    "model": meta.get("model"), "tag": meta.get("tag"), "source_file": meta.get("source_file"),
                    "source_sha256": meta.get("source_sha256")})
    return out


def remove_deploy_cached(file_name: str) -> bool:
    """Delete one deploy-cache file by its file name; True if it existed."""
    if os.path.basename(file_name) != file_name or file_name.startswith("."):
        raise RepZooError(f"Refused {file_name!r}: give a file name from `repzoo cache ls`, not a path.")
    path = deploy_cache_dir(create=False) / file_name
    if path.is_file():
        _remove_deploy_file(path)
        return True
    return False


# --------------------------------------------------------------------------- the one inventory


def inventory() -> List[Dict[str, object]]:
    """Everything in the cache, fetched files then deploy files: each entry as in :func:`cache_entries` /
    :func:`deploy_cache_entries` with ``kind`` (``"file"`` / ``"deploy"``) and ``name`` (what
    ``repzoo cache rm`` takes: the file name, ``deploy/<file name>`` for a deploy file)."""
    return ([dict(e, kind="file", name=e["file_name"]) for e in cache_entries()]
            + [dict(e, kind="deploy", name=f"deploy/{e['file_name']}") for e in deploy_cache_entries()])


def _hf_cached(source) -> Optional[str]:
    """Where huggingface_hub's cache holds a ``hf`` source's file, without any network call."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source.location, source.filename, revision=source.revision)
    except Exception:  # noqa: BLE001 - informational only: an unreadable Hub cache holds nothing
        return None
    return found if isinstance(found, str) else None


def file_state(rec) -> Dict[str, Optional[str]]:
    """Where a manifest file record stands: ``{cached, recorded_sha256, hf_cache}`` (each None when not)."""
    path = cache_path(rec.file_name)
    hf = [found for s in rec.sources if s.kind == "hf" for found in [_hf_cached(s)] if found]
    return {"cached": str(path) if path.is_file() else None, "recorded_sha256": recorded_sha256(rec.file_name),
            "hf_cache": hf[-1] if hf else None}


def deploy_files(name: str, tag: str) -> List[pathlib.Path]:
    """The deploy-cache files of ``name``'s ``tag``."""
    prefix = _deploy_prefix(name, tag)
    return [pathlib.Path(e["path"]) for e in deploy_cache_entries() if str(e["file_name"]).startswith(prefix)]


def remove(target: str) -> List[str]:
    """``repzoo cache rm``: remove a model's files (every tag, and its deploy files), one file, or one
    deploy file (``deploy/<file name>`` or its bare name); the names removed (empty: nothing was there)."""
    from .manifest import load_manifest

    manifest, removed = load_manifest(), []
    if manifest.tags(target):
        model = manifest.model(target)
        removed += [f.file_name for w in model.weights for f in w.files if remove_cached(f.file_name)]
        removed += [str(e["file_name"]) for e in deploy_cache_entries()
                    if e["model"] == model.name and remove_deploy_cached(str(e["file_name"]))]
    elif target.startswith("deploy/") or any(e["file_name"] == target for e in deploy_cache_entries()):
        name = target[len("deploy/"):] if target.startswith("deploy/") else target
        removed += [name] if remove_deploy_cached(name) else []
    elif remove_cached(target):
        removed.append(target)
    return removed
