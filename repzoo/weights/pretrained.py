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

import logging
import pathlib
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..errors import (CheckpointError, ChecksumError, IncompatibleCheckpointError, RepZooError,
                      WeightsUnavailableError)
from ..registry import get_model_entry
from . import cache, hub as _hub
from . import manifest
from .adapters import adapt_state_dict
from .cache import (deploy_cache_dir, deploy_cache_entries, deploy_cache_path, remove_deploy_cached)
from .checkpoint import misfit, read_state_dict, state_bytes, validate_file
from .files import forget_known, forget_verified, known, verified_sha256
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

# --------------------------------------------------------------------------- fetching


def _source_sha256(rec: FileRecord) -> Optional[str]:
    """The file's hash without reading it: the manifest's, else the one recorded at its first use."""
    if rec.sha256:
        return rec.sha256.lower()
    first = known(rec.file_name)
    return first.sha256 if first else None


def fits_model(name: str, rec: FileRecord) -> Callable[[pathlib.Path], None]:
    """The check before ``rec``'s file is trusted on first use: a complete, readable checkpoint whose keys
    and shapes (in ``rec``'s key style) are those of ``name`` in ``rec``'s form, else "another model's"."""
    def validate(path: pathlib.Path) -> None:
        sd = validate_file(path, max_bytes=_max_bytes(name))
        try:
            sd = adapt_state_dict(sd, rec.key_style or "official", name)
            with torch.device("meta"):  # the deploy model knows both forms' keys and shapes
                model = get_model_entry(name).builder(deploy=True)
            why = misfit(model, sd, deploy=rec.form == "deploy")
        except (IncompatibleCheckpointError, KeyError, ValueError) as err:
            why = f"its keys do not map to {name}'s ({str(err).splitlines()[0][:160]})"
        if why:
            raise IncompatibleCheckpointError(
                f"this is another model's checkpoint, not {name}'s in its {rec.form} form: {why}")

    return validate


def _fetch_one(name: str, rec: FileRecord, progress: Optional[bool]) -> pathlib.Path:
    return _hub.fetch(rec.file_name, sources=rec.sources, sha256=rec.sha256, size=rec.size, progress=progress,
                      hint=rec.hint(), validate=fits_model(name, rec))


def _fetch_any(weights: WeightsRecord, progress: Optional[bool]) -> Tuple[pathlib.Path, FileRecord]:
    """The first file of the tag that can be had, in the manifest's order; one error listing every attempt."""
    errors: List[Tuple[FileRecord, RepZooError]] = []
    for rec in weights.files:
        try:
            return _fetch_one(weights.name, rec, progress), rec
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
    cached = cache.cache_path(rec.file_name)
    if path == cached:
        cache.remove_cached(rec.file_name)
        return f"repzoo removed it from the cache ({cached}): run again to download a fresh copy."
    if "huggingface" in str(path) or "models--" in str(path):
        _hub.drop_hf_copy(path)
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
            sd = cache.read_deploy(path, sha)
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
    written = cache.write_deploy(target, converted, name=weights.name, tag=weights.tag, source_file=rec.file_name,
                                 source_sha256=sha)
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
