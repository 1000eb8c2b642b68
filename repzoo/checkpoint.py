"""Read checkpoints safely, unwrap them, and load them strictly — converting on the way in.

Formats: safetensors, torch zip and legacy files (``weights_only=True``), and the
authors' training files whose pickles hold a yacs config (read with
:mod:`repzoo._safe_pickle`, which never runs code). Wrappers: a plain state dict,
``{'model': ...}``, ``{'state_dict': ...}``, ``module.`` prefixes.
"""
from __future__ import annotations

import logging
import os
import pickle
import warnings
import zipfile
from typing import Dict, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from .errors import CheckpointError, IncompatibleCheckpointError, UnsafeCheckpointError
from .reparam import convert_state_dict

__all__ = ["read_state_dict", "unwrap_state_dict", "load_checkpoint", "save_state_dict"]

_log = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
PathOrStateDict = Union[str, os.PathLike, Mapping[str, object]]

_WRAPPERS = ("model", "state_dict")


def _is_safetensors(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0


def _torch_load(path: str) -> object:
    """``torch.load(weights_only=True)``; files with other pickled objects go through the safe unpickler."""
    from . import _safe_pickle

    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise
    _safe_pickle.Unpickler.replaced = set()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=_safe_pickle)
    except _safe_pickle.UnsafeGlobalCall as err:
        raise UnsafeCheckpointError(
            f"Refused to load {path}: its pickle calls {err}, which would run code. Nothing was run. "
            "If you trust the file, re-save its tensors with torch.save(state_dict) or as safetensors "
            "and load that instead."
        ) from None
    if _safe_pickle.Unpickler.replaced:
        _log.info("%s: ignored pickled objects %s (kept the tensors only)", path,
                  ", ".join(sorted(_safe_pickle.Unpickler.replaced)))
    return obj


def _read_file(path: str) -> object:
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint {path!r} does not exist. Check the path, or use pretrained=True.")
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            return load_file(path)
        return _torch_load(path)
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # corrupt zip, truncated pickle, bad safetensors header, …
        raise CheckpointError(
            f"Could not read checkpoint {path!r} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "The file is truncated or corrupt: delete it and download it again."
        ) from err


def unwrap_state_dict(obj: Mapping[str, object]) -> StateDict:
    """Take the tensors out of ``{'model': ...}`` / ``{'state_dict': ...}`` and strip ``module.``."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"A checkpoint must hold a dict of tensors, not {type(obj).__name__}.")
    for key in _WRAPPERS:
        inner = obj.get(key) if isinstance(obj.get(key), Mapping) else None
        if inner is not None:
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors or len(tensors) != len(obj):
        other = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))[:5]
        raise CheckpointError(
            "The checkpoint holds no state dict of tensors"
            + (f" (non-tensor entries: {other})" if other else "")
            + ". Expected a state dict, {'model': state_dict} or {'state_dict': state_dict}."
        )
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def read_state_dict(source: PathOrStateDict) -> StateDict:
    """A state dict from a path (any supported format) or an in-memory checkpoint."""
    obj = source if isinstance(source, Mapping) else _read_file(os.fspath(source))
    return unwrap_state_dict(obj)


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: Union[str, os.PathLike],
                    metadata: Optional[Dict[str, str]] = None) -> None:
    """Write a state dict as safetensors (``.safetensors``, with optional ``metadata``) or a plain
    ``torch.save`` file, atomically: to a temporary name beside it, renamed once complete."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    sd = {k: v.detach().contiguous() for k, v in state_dict.items()}
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file(sd, tmp, metadata=metadata)
        else:
            torch.save(sd, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fmt(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _mismatch(model_sd: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]):
    missing = set(model_sd) - set(sd)
    unexpected = set(sd) - set(model_sd)
    shapes = {k for k in set(model_sd) & set(sd) if model_sd[k].shape != sd[k].shape}
    return missing, unexpected, shapes


def _deploy_keys(model: nn.Module) -> set:
    """The state-dict keys ``model`` would have after conversion (computed on ``meta`` tensors)."""
    meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in model.state_dict().items()}
    return set(convert_state_dict(model, meta))


def _to_model_form(model: nn.Module, model_sd: Mapping[str, torch.Tensor], sd: StateDict) -> StateDict:
    """Convert a train-time checkpoint for a deploy model; refuse a deploy checkpoint for a train-time one."""
    from .reparam import reparam_blocks

    if set(sd) == set(model_sd):
        return sd
    if any(block.deploy for _, block in reparam_blocks(model)):
        converted = convert_state_dict(model, sd)
        if set(converted) == set(model_sd):
            _log.info("converted a train-time checkpoint to the deploy form on load")
            return converted
    elif set(sd) == _deploy_keys(model):
        raise IncompatibleCheckpointError(
            "This is a deploy (converted) checkpoint, and a deploy checkpoint cannot become a train-time "
            "model: the branches it was fused from cannot be recovered. Build the model with deploy=True "
            "to load it, or use the train-time checkpoint to fine-tune."
        )
    return sd


def _incompatible(model: nn.Module, model_sd, sd, missing: set, unexpected: set, shapes: set,
                  head: set) -> IncompatibleCheckpointError:
    lines = []
    if missing:
        lines.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
    if shapes:
        in_order = [k for k in model_sd if k in shapes]  # the model's order: stem first
        more = f" … and {len(in_order) - 5} more" if len(in_order) > 5 else ""
        lines.append(f"mismatched shapes ({len(in_order)}): " + "; ".join(
            f"{k}: checkpoint {list(sd[k].shape)} vs model {list(model_sd[k].shape)}" for k in in_order[:5]) + more)
    hint = " Only the classifier differs: pass num_classes=N to create_model to reset it." if shapes and shapes <= head else ""
    name = getattr(model, "pretrained_cfg", {}).get("architecture", "this model")
    return IncompatibleCheckpointError(
        f"The checkpoint does not fit {type(model).__name__} ({name}):\n  " + "\n  ".join(lines)
        + f"\nIs it a checkpoint of another model? Check the model name against the file.{hint}"
    )


def load_checkpoint(model: nn.Module, source: PathOrStateDict, *, allow_head_reset: bool = False,
                    assign: bool = False) -> nn.Module:
    """Load a checkpoint into ``model`` strictly, converting a train-time checkpoint for a deploy model.

    ``allow_head_reset``: classifier tensors of another ``num_classes`` are skipped (the
    model keeps its fresh head, and a warning says so). ``assign``: adopt the checkpoint's
    tensors instead of copying them (for models built on the ``meta`` device).
    """
    model_sd = model.state_dict()
    sd = _to_model_form(model, model_sd, read_state_dict(source))
    missing, unexpected, shapes = _mismatch(model_sd, sd)
    head = set(model.head_keys()) if hasattr(model, "head_keys") else set()
    reset = set()
    if allow_head_reset and shapes and shapes <= head:
        warnings.warn(
            f"The checkpoint's classifier has {sd[sorted(shapes)[0]].shape[0]} classes and the model "
            f"{getattr(model, 'num_classes', '?')}: the classifier was reset and is untrained.",
            stacklevel=3,
        )
        reset, shapes = shapes, set()
        sd = {k: v for k, v in sd.items() if k not in reset}
    if missing or unexpected or shapes:
        raise _incompatible(model, model_sd, sd, missing, unexpected, shapes, head)
    if assign:  # adopt the tensors, in the model's dtypes (a no-op when they match)
        sd = {k: v.to(model_sd[k].dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=not reset, assign=assign)
    return model
