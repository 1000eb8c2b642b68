"""Pretrained weights: manifest record → fetched, verified file → state dict (adapted, converted).

:func:`load_pretrained_state_dict` is what ``create_model(name, pretrained=True)`` calls. The
files of a tag are tried in the manifest's order (the authors' file first where it can be
had — from ``REPZOO_MIRROR`` or the cache — then the re-hosts); each file's ``key_style``
picks the key adapter that maps it to the official key names.

The deploy cache. With ``deploy=True`` a train-time file is converted once — the deploy
model is built on the ``meta`` device and :func:`repzoo.reparam.convert_state_dict` maps
the state dict; no train-time model is built — and the result is stored as safetensors in
``<cache>/deploy/``, keyed by the source file's sha256 (the manifest's, or the one recorded
at its first download) and :data:`repzoo.reparam.CONVERSION_VERSION`. Later loads read that
file (memory-mapped, ``safetensors.torch.load_file``) without fetching or converting.
"""
from __future__ import annotations

import logging
import os
import pathlib
from typing import Dict, List, Optional, Tuple

import torch

from . import manifest as _manifest
from .errors import ChecksumError, IncompatibleCheckpointError, RepZooError, WeightsUnavailableError

__all__ = [
    "load_pretrained_state_dict",
    "download",
    "pretrained_cfg",
    "deploy_cache_dir",
    "deploy_cache_path",
    "deploy_cache_entries",
    "remove_deploy_cached",
]

_log = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]

_DEPLOY = "deploy"


# --------------------------------------------------------------------------- the deploy cache


def deploy_cache_dir() -> pathlib.Path:
    from .hub import cache_dir

    path = cache_dir() / _DEPLOY
    path.mkdir(parents=True, exist_ok=True)
    return path


def _conversion_version() -> int:
    from .reparam import CONVERSION_VERSION

    return int(CONVERSION_VERSION)


def deploy_cache_path(name: str, tag: str, source_sha256: str) -> pathlib.Path:
    """``<cache>/deploy/<alias>.<tag>-<source sha256>-c<conversion version>.safetensors``."""
    from .registry import name_alias

    if not (len(source_sha256) == 64 and all(c in "0123456789abcdef" for c in source_sha256)):
        raise RepZooError(f"{source_sha256!r} is not a sha256")
    alias, tag = name_alias(name), name_alias(tag)
    return deploy_cache_dir() / f"{alias}.{tag}-{source_sha256}-c{_conversion_version()}.safetensors"


def _read_deploy(path: pathlib.Path, source_sha256: str) -> Optional[StateDict]:
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
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - a bad cache entry is rebuilt, never trusted
        _log.warning("deploy cache entry %s is unusable (%s): removing it", path, err)
        path.unlink(missing_ok=True)
        return None


def _write_deploy(path: pathlib.Path, sd: StateDict, *, name: str, tag: str, source: "_manifest.FileRecord",
                  source_sha256: str) -> None:
    """Write ``sd`` as safetensors, atomically, with what it was converted from as metadata."""
    from .checkpoint import save_state_dict

    meta = {"model": name, "tag": tag, "source_file": source.file_name, "source_sha256": source_sha256,
            "conversion_version": str(_conversion_version()), "format": "pt"}
    save_state_dict(sd, path, metadata=meta)


def deploy_cache_entries() -> List[Dict[str, object]]:
    """Every deploy-cache file: ``[{file_name, path, size, model, tag, source_file, source_sha256}]``."""
    from safetensors import safe_open

    out: List[Dict[str, object]] = []
    for path in sorted(deploy_cache_dir().glob("*.safetensors")):
        if path.name.startswith("."):
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception:  # noqa: BLE001
            meta = {}
        out.append({"file_name": path.name, "path": path, "size": path.stat().st_size,
                    "model": meta.get("model"), "tag": meta.get("tag"), "source_file": meta.get("source_file"),
                    "source_sha256": meta.get("source_sha256")})
    return out


def remove_deploy_cached(file_name: str) -> bool:
    """Delete one deploy-cache file by its file name; True if it existed."""
    if os.path.basename(file_name) != file_name or file_name.startswith("."):
        raise RepZooError(f"Refused {file_name!r}: give a file name from `repzoo cache ls`, not a path.")
    path = deploy_cache_dir() / file_name
    if path.is_file():
        path.unlink()
        return True
    return False


# --------------------------------------------------------------------------- fetching


def _known_sha256(rec: "_manifest.FileRecord") -> Optional[str]:
    """The file's hash without reading it: the manifest's, else the one recorded at its first download."""
    if rec.sha256:
        return rec.sha256.lower()
    from .hub import recorded_sha256

    return recorded_sha256(rec.file_name)


def _fetch_one(rec: "_manifest.FileRecord", progress: Optional[bool]) -> pathlib.Path:
    from .hub import fetch

    return fetch(rec.file_name, sources=rec.sources, sha256=rec.sha256, size=rec.size, progress=progress,
                 hint=rec.hint())


def _fetch_any(weights: "_manifest.WeightsRecord", progress: Optional[bool]
               ) -> Tuple[pathlib.Path, "_manifest.FileRecord"]:
    """The first file of the tag that can be had, in the manifest's order; one error listing every attempt."""
    errors: List[Tuple[_manifest.FileRecord, RepZooError]] = []
    for rec in weights.files:
        try:
            return _fetch_one(rec, progress), rec
        except (WeightsUnavailableError, ChecksumError) as err:
            errors.append((rec, err))
    if len(errors) == 1:
        raise errors[0][1]
    text = "\n\n".join(f"[{i}] {rec.file_name} ({rec.key_style} keys, {rec.form} form):\n{err}"
                       for i, (rec, err) in enumerate(errors, 1))
    cls = ChecksumError if any(isinstance(e, ChecksumError) for _, e in errors) else WeightsUnavailableError
    raise cls(
        f"No file of {weights.name} ({weights.tag}) could be had; any one of these {len(errors)} files "
        f"holds the weights, tried in this order:\n\n{text}"
    )


def _source_sha256(rec: "_manifest.FileRecord", path: pathlib.Path) -> str:
    known = _known_sha256(rec)
    if known:
        return known
    from .hub import sha256_file

    return sha256_file(path)


def _read(path: pathlib.Path, rec: "_manifest.FileRecord", name: str) -> StateDict:
    from .adapters import adapt_state_dict
    from .checkpoint import read_state_dict

    return adapt_state_dict(read_state_dict(path), rec.key_style or "official", name)


def _convert(name: str, sd: StateDict) -> StateDict:
    """Train-time state dict → deploy state dict, on a ``meta`` deploy model (nothing allocated)."""
    from .reparam import convert_state_dict
    from .registry import get_model_entry

    with torch.device("meta"):
        model = get_model_entry(name).builder(deploy=True)
    return convert_state_dict(model, sd)


def _resolve(name: str, tag: Optional[str]) -> "_manifest.WeightsRecord":
    from .registry import get_model_entry

    canonical = get_model_entry(name).name
    return _manifest.load_manifest().weights(canonical, tag)


def _deploy_from_cache(weights: "_manifest.WeightsRecord") -> Optional[StateDict]:
    for rec in weights.files:
        sha = _known_sha256(rec)
        if rec.form == "train" and sha:
            sd = _read_deploy(deploy_cache_path(weights.name, weights.tag, sha), sha)
            if sd is not None:
                return sd
    return None


def _load(name: str, tag: Optional[str], deploy: bool, progress: Optional[bool]
          ) -> Tuple[StateDict, Optional[pathlib.Path]]:
    weights = _resolve(name, tag)
    if deploy:
        sd = _deploy_from_cache(weights)
        if sd is not None:
            return sd, None
    path, rec = _fetch_any(weights, progress)
    if rec.form == "deploy":
        if not deploy:
            raise IncompatibleCheckpointError(
                f"The released weights of {weights.name} ({weights.tag}) are in deploy form, and a deploy "
                "checkpoint cannot become a train-time model. Use deploy=True."
            )
        return _read(path, rec, weights.name), None
    if not deploy:
        return _read(path, rec, weights.name), None
    sha = _source_sha256(rec, path)  # hashes the file only where no hash is known or recorded
    target = deploy_cache_path(weights.name, weights.tag, sha)
    cached = _read_deploy(target, sha)
    if cached is not None:
        return cached, target
    sd = _read(path, rec, weights.name)
    converted = _convert(weights.name, sd)
    del sd
    _write_deploy(target, converted, name=weights.name, tag=weights.tag, source=rec, source_sha256=sha)
    _log.info("converted %s to the deploy form once; cached at %s", rec.file_name, target)
    return converted, target


def load_pretrained_state_dict(name: str, tag: Optional[str] = None, deploy: bool = False,
                               progress: Optional[bool] = None) -> StateDict:
    """The released weights of ``name`` (``tag``: default the first) as an official-key state dict.

    ``deploy=True`` gives the converted (deploy) state dict, from the deploy cache when it is
    there. Raises :class:`WeightsUnavailableError` / :class:`ChecksumError` (with every source
    tried and how to get the file by hand) or a :class:`RepZooError` for an unknown tag.
    """
    return _load(name, tag, deploy, progress)[0]


def download(name: str, tag: Optional[str] = None, deploy: bool = False,
             progress: Optional[bool] = None) -> pathlib.Path:
    """Fetch (and with ``deploy``, convert and cache) the weights of ``name``; the local path."""
    weights = _resolve(name, tag)
    if not deploy:
        return _fetch_any(weights, progress)[0]
    for rec in weights.files:
        sha = _known_sha256(rec)
        if rec.form == "train" and sha:
            path = deploy_cache_path(weights.name, weights.tag, sha)
            if _read_deploy(path, sha) is not None:
                return path
    sd, path = _load(name, tag, True, progress)
    if path is None:  # released in deploy form: the fetched file is the deploy file
        return _fetch_any(weights, progress)[0]
    return path


def pretrained_cfg(name: str, tag: Optional[str] = None) -> Dict[str, object]:
    """The manifest's evaluation config of ``name``'s weights, for ``model.pretrained_cfg``."""
    return _resolve(name, tag).pretrained_cfg()
