"""Pretrained weights: manifest record → fetched, verified file → state dict (adapted, converted).

:func:`load_pretrained_state_dict` is what ``create_model(name, pretrained=True)`` calls. The
files of a tag are tried in the manifest's order (the authors' file first where it can be
had — from ``REPZOO_MIRROR`` or the cache — then the re-hosts); each file's ``key_style``
picks the key adapter that maps it to the official key names.

The deploy cache. With ``deploy=True`` a train-time file is converted once — the deploy
model is built on the ``meta`` device and :func:`repzoo.reparam.convert_state_dict` maps
the state dict; no train-time model is built — and the result is stored as safetensors in
``<cache>/deploy/<alias>.<tag>-<source sha256>-c<conversion version>.safetensors``. The source's
sha256 is the manifest's or the one recorded at the file name's first use, so a later load finds
the deploy file without the source at hand (a mirror that is gone, offline). The deploy file
carries the hash of its own tensors in its metadata and a verification record in the cache:
see :mod:`repzoo.weights.files` for what a warm load checks.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import warnings
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import (CheckpointError, ChecksumError, IncompatibleCheckpointError, RepZooError, StorageError,
                      WeightsUnavailableError)
from ..registry import get_model_entry, name_alias
from . import hub as _hub
from .adapters import adapt_state_dict
from .checkpoint import read_state_dict, save_state_dict, state_bytes, validate_file
from .files import (cache_subdir, fingerprint, forget_known, forget_verified, known, matches_record, remember_verified,
                    verified_sha256)
from . import manifest
from .manifest import FileRecord, WeightsRecord

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


def deploy_cache_dir(create: bool = True) -> pathlib.Path:
    return cache_subdir(_DEPLOY, create)


def _conversion_version() -> int:
    from .. import reparam

    return int(reparam.CONVERSION_VERSION)


def deploy_cache_path(name: str, tag: str, source_sha256: str) -> pathlib.Path:
    """``<cache>/deploy/<alias>.<tag>-<source sha256>-c<conversion version>.safetensors``."""
    if not (len(source_sha256) == 64 and all(c in "0123456789abcdef" for c in source_sha256)):
        raise RepZooError(f"{source_sha256!r} is not a sha256")
    return deploy_cache_dir(create=False) / (f"{name_alias(name)}.{name_alias(tag)}-{source_sha256}"
                                             f"-c{_conversion_version()}.safetensors")


def tensors_sha256(sd: StateDict) -> str:
    """A hash of a state dict's content: every key, dtype, shape and byte, in key order."""
    digest = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key].detach().contiguous().cpu()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


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


def _write_deploy(path: pathlib.Path, sd: StateDict, *, name: str, tag: str, source: FileRecord,
                  source_sha256: str) -> bool:
    """Write ``sd`` as safetensors, atomically; False (with a warning) when the cache cannot take it."""
    meta = {"model": name, "tag": tag, "source_file": source.file_name, "source_sha256": source_sha256,
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
    path = deploy_cache_dir(create=False) / file_name
    if path.is_file():
        _remove_deploy_file(path)
        return True
    return False


# --------------------------------------------------------------------------- fetching


def _source_sha256(rec: FileRecord) -> Optional[str]:
    """The file's hash without reading it: the manifest's, else the one recorded at its first use."""
    if rec.sha256:
        return rec.sha256.lower()
    first = known(rec.file_name)
    return first.sha256 if first else None


def _fetch_one(rec: FileRecord, progress: Optional[bool]) -> pathlib.Path:
    return _hub.fetch(rec.file_name, sources=rec.sources, sha256=rec.sha256, size=rec.size, progress=progress,
                           hint=rec.hint(), validate=validate_file)


def _fetch_any(weights: WeightsRecord, progress: Optional[bool]) -> Tuple[pathlib.Path, FileRecord]:
    """The first file of the tag that can be had, in the manifest's order; one error listing every attempt."""
    errors: List[Tuple[FileRecord, RepZooError]] = []
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


def _max_bytes(name: str) -> int:
    """The model's own size, which (with the file's) bounds what reading a file may allocate."""
    with torch.device("meta"):
        return state_bytes(get_model_entry(name).builder(deploy=True))


def _read(path: pathlib.Path, rec: FileRecord, name: str) -> StateDict:
    """Read a fetched file; one that proves unreadable is forgotten (and removed where repzoo owns it)."""
    try:
        sd = read_state_dict(path, max_bytes=_max_bytes(name))
    except CheckpointError as err:
        raise CheckpointError(f"{err}\n{_forget_bad_file(path, rec)}") from None
    return adapt_state_dict(sd, rec.key_style or "official", name)


def _forget_bad_file(path: pathlib.Path, rec: FileRecord) -> str:
    first = known(rec.file_name)
    if first is not None and not rec.sha256:
        forget_known(rec.file_name)  # a bad file's hash must not hold back a good one
    cached = _hub.cache_path(rec.file_name)
    if path == cached:
        _hub.remove_cached(rec.file_name)
        return f"repzoo removed it from the cache ({cached}): run again to download a fresh copy."
    if "huggingface" in str(path) or "models--" in str(path):
        _hub._drop_hf_copy(path)
        return "repzoo removed it from the Hugging Face cache: run again to download a fresh copy."
    forget_verified(path)
    return f"Replace {path} with a good copy (repzoo never changes files outside its cache)."


def _convert(name: str, sd: StateDict) -> StateDict:
    """Train-time state dict → deploy state dict, on a ``meta`` deploy model (nothing allocated)."""
    from ..reparam import convert_state_dict

    with torch.device("meta"):
        model = get_model_entry(name).builder(deploy=True)
    return convert_state_dict(model, sd)


def _resolve(name: str, tag: Optional[str]) -> WeightsRecord:
    return manifest.load_manifest().weights(get_model_entry(name).name, tag)


def _deploy_from_cache(weights: WeightsRecord) -> Optional[Tuple[StateDict, pathlib.Path]]:
    for rec in weights.files:
        sha = _source_sha256(rec)
        if rec.form == "train" and sha:
            path = deploy_cache_path(weights.name, weights.tag, sha)
            sd = _read_deploy(path, sha)
            if sd is not None:
                return sd, path
    return None


def _load(name: str, tag: Optional[str], deploy: bool, progress: Optional[bool]
          ) -> Tuple[StateDict, Optional[pathlib.Path]]:
    weights = _resolve(name, tag)
    if deploy:
        hit = _deploy_from_cache(weights)
        if hit is not None:
            return hit
    path, rec = _fetch_any(weights, progress)
    if rec.form == "deploy":
        if not deploy:
            raise IncompatibleCheckpointError(
                f"The released weights of {weights.name} ({weights.tag}) are in deploy form, and a deploy "
                "checkpoint cannot become a train-time model. Build it with deploy=True (`--deploy` on the command line)."
            )
        return _read(path, rec, weights.name), None
    if not deploy:
        return _read(path, rec, weights.name), None
    sha = _source_sha256(rec) or verified_sha256(path)  # recorded by the fetch, unless the cache is read-only
    target = deploy_cache_path(weights.name, weights.tag, sha)
    converted = _convert(weights.name, _read(path, rec, weights.name))
    written = _write_deploy(target, converted, name=weights.name, tag=weights.tag, source=rec, source_sha256=sha)
    _log.info("converted %s to the deploy form once%s", rec.file_name, f"; cached at {target}" if written else "")
    return converted, target if written else None


def load_pretrained_state_dict(name: str, tag: Optional[str] = None, deploy: bool = False,
                               progress: Optional[bool] = None) -> StateDict:
    """The released weights of ``name`` (``tag``: default the first) as an official-key state dict.

    ``deploy=True`` gives the converted (deploy) state dict, from the deploy cache when it is
    there. Raises [WeightsUnavailableError][repzoo.errors.WeightsUnavailableError] /
    [ChecksumError][repzoo.errors.ChecksumError] (with every source
    tried and how to get the file by hand) or a [RepZooError][repzoo.errors.RepZooError] for an unknown tag.
    """
    return _load(name, tag, deploy, progress)[0]


def download(name: str, tag: Optional[str] = None, deploy: bool = False,
             progress: Optional[bool] = None) -> pathlib.Path:
    """Fetch (and with ``deploy``, convert and cache) the weights of ``name``; the local path."""
    weights = _resolve(name, tag)
    if not deploy:
        return _fetch_any(weights, progress)[0]
    _, path = _load(name, tag, True, progress)
    if path is None:  # released in deploy form (the fetched file is the deploy file), or not cached
        return _fetch_any(weights, progress)[0]
    return path


def pretrained_cfg(name: str, tag: Optional[str] = None) -> Dict[str, object]:
    """The evaluation config of ``name``'s weights (the default tag's; for a model without released
    weights its family's, see :meth:`Manifest.family_eval`), for ``model.pretrained_cfg``."""
    entry = get_model_entry(name)
    canonical, known_weights = entry.name, manifest.load_manifest()
    if not known_weights.tags(canonical):
        if tag is not None:
            known_weights.weights(canonical, tag)  # raises: no weights
        return dict(known_weights.family_eval(entry.family).as_pretrained_cfg(), architecture=canonical)
    return dict(known_weights.weights(canonical, tag).pretrained_cfg(), architecture=canonical)
