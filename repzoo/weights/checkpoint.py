"""Read checkpoints safely, unwrap them, and load them strictly — converting on the way in.

Formats: safetensors, torch zip files (stored or compressed) and legacy files, all read through
:mod:`repzoo.weights.safe_pickle`, which never runs code and bounds what a file can make the
loader allocate. Wrappers: a plain state dict, ``{'model': ...}``, ``{'state_dict': ...}``, the
EMA copies (``model_ema``, ``state_dict_ema``, ``ema``: picked with ``checkpoint_key=``), and the
``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) prefixes.

Loading decides a checkpoint's form from its keys first — the model's own form, the other form,
or neither — and then loads strictly; a train-time checkpoint for a deploy model is converted
without building the train-time model.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import warnings
import zipfile
from typing import Dict, Iterable, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import CheckpointError, IncompatibleCheckpointError, RepZooError, UnsafeCheckpointError
from ..reparam import convert_state_dict, is_deploy, model_signature
from . import safe_pickle
from .files import atomic_path

__all__ = ["read_state_dict", "unwrap_state_dict", "load_checkpoint", "save_state_dict", "validate_file", "misfit",
           "checkpoint_form", "state_bytes", "output_format", "FORMATS"]

_log = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
PathOrStateDict = Union[str, os.PathLike, Mapping[str, object]]

_MAIN_WRAPPERS = ("model", "state_dict", "net", "module", "network")  # DataParallel-style saves: "module"
_EMA_WRAPPERS = ("model_ema", "state_dict_ema", "ema")
_PREFIXES = ("module._orig_mod.", "_orig_mod.module.", "module.", "_orig_mod.")
_BUDGET_SLACK = 64 << 20   # what a file may allocate beyond its own size and the model's


# --------------------------------------------------------------------------- reading files


def _is_safetensors(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < os.path.getsize(path)


def _refuse_duplicate_keys(path: str) -> None:
    """A safetensors header that names a tensor twice has two meanings: refuse it (safetensors keeps one)."""
    import json

    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size > 100 << 20:  # safetensors' own limit on a header
            raise CheckpointError(f"Checkpoint {path!r} has a safetensors header of {size:,} bytes: it is damaged.")
        header = f.read(size)
    twice: list = []

    def pairs(items):  # called for each JSON object: a key twice in one object is two meanings
        counts = collections.Counter(key for key, _ in items)
        twice.extend(key for key, n in counts.items() if n > 1)
        return dict(items)

    try:
        json.loads(header, object_pairs_hook=pairs)
    except ValueError as err:
        raise CheckpointError(f"Checkpoint {path!r} has an unreadable safetensors header ({err}).") from None
    if twice:
        raise UnsafeCheckpointError(
            f"Refused {path}: its safetensors header names {_fmt(set(twice), 3)} twice, so the file has two "
            "meanings (each reader may take another). Re-save it from the state dict you trust.")


def _zip_needs_copy(path: str, limit: int) -> bool:
    """True for a zip with compressed members (read without mmap: mmap would read raw deflate bytes)."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    declared = sum(i.file_size for i in infos)
    if declared > limit:
        raise safe_pickle.OverBudget(f"its members declare {declared:,} bytes")
    return any(i.compress_type != zipfile.ZIP_STORED for i in infos)


def _torch_load(path: str, limit: int) -> object:
    with safe_pickle.budget(limit):
        mmap = zipfile.is_zipfile(path) and not _zip_needs_copy(path, limit)
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=safe_pickle)
        ignored = safe_pickle.replaced()
    if ignored:
        _log.info("%s: ignored pickled objects %s (kept the tensors only)", path, ", ".join(sorted(ignored)))
    return obj


def _read_file(path: str, max_bytes: Optional[int] = None) -> object:
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        raise CheckpointError(f"Checkpoint {path!r} {what}. Check the path, or use the released weights (pretrained=True).")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"Checkpoint {path!r} is empty (0 bytes): the download or copy did not finish. "
                              "Delete it and fetch it again.")
    limit = size + (max_bytes or 0) + _BUDGET_SLACK
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            _refuse_duplicate_keys(path)
            return load_file(path)
        return _torch_load(path, limit)
    except safe_pickle.UnsafeGlobalCall as err:
        raise UnsafeCheckpointError(
            f"Refused to load {path}: its pickle calls {err}, which would run code. Nothing was run. "
            "If you trust the file, re-save its tensors with torch.save(state_dict) or as safetensors "
            "and load that instead."
        ) from None
    except safe_pickle.OverBudget as err:
        raise UnsafeCheckpointError(
            f"Refused to load {path} ({size:,} bytes): {err}. A checkpoint cannot need more memory than its "
            "tensors; this file is damaged or crafted. Nothing was allocated."
        ) from None
    except safe_pickle.Unsupported as err:
        raise CheckpointError(f"Cannot load {path}: {err}. Re-save it with dense tensors (tensor.to_dense()).") from None
    except (UnsafeCheckpointError, CheckpointError):
        raise  # refused with its own reason
    except Exception as err:  # corrupt zip, truncated pickle, bad safetensors header, …
        raise CheckpointError(
            f"Could not read checkpoint {path!r} ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}). "
            "The file is truncated or corrupt: delete it and download it again."
        ) from err


def validate_file(path: Union[str, os.PathLike], max_bytes: Optional[int] = None) -> StateDict:
    """The tensors of ``path``; a :class:`CheckpointError` unless it is a complete, readable checkpoint.

    For a torch zip the CRC of every member is checked; safetensors and legacy files are read
    (``max_bytes`` as in :func:`read_state_dict`). Used before a file is trusted on first use.
    """
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, RuntimeError) as err:
            raise CheckpointError(f"{path!r} is a damaged zip ({err}).") from None
        if bad is not None:
            raise CheckpointError(f"{path!r} is damaged: its member {bad!r} fails its CRC check.")
    return read_state_dict(path, max_bytes=max_bytes)


def misfit(model: nn.Module, sd: Mapping[str, torch.Tensor], deploy: bool) -> Optional[str]:
    """Why ``sd`` is not a state dict of ``model``'s train (``deploy=False``) or deploy form (keys, then
    shapes); None when it is. Nothing is built or converted: the form's signature decides."""
    sig = model_signature(model, deploy)
    drop = tuple(getattr(model, "train_only_prefixes", ())) if not deploy and is_deploy(model) else ()
    if drop:  # what a deploy model cannot know: checked when the train-time file is converted
        sd = {k: v for k, v in sd.items() if not k.startswith(drop)}
    missing, unexpected, shapes = _diff(sig, sd, sorted(sd))
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's {len(sig)} tensors missing ({_fmt(missing, 3)})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors the model does not have ({_fmt(unexpected, 3)})")
    if shapes:
        parts.append(f"{len(shapes)} of other shapes ({shapes[0]}: {list(sd[shapes[0]].shape)} in the file, "
                     f"{list(sig[shapes[0]])} in the model)")
    return "; ".join(parts) or None


# --------------------------------------------------------------------------- unwrapping


def _strip_prefixes(tensors: StateDict) -> StateDict:
    for prefix in _PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            return {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _holds_tensors(value: object) -> bool:
    return isinstance(value, Mapping) and any(isinstance(v, torch.Tensor) for v in value.values())


def unwrap_state_dict(obj: Mapping[str, object], checkpoint_key: Optional[str] = None,
                      strict: bool = True) -> StateDict:
    """The tensors of a checkpoint: the wrapper ``checkpoint_key`` picks, else ``model`` / ``state_dict``,
    else an EMA copy; ``module.`` and ``_orig_mod.`` prefixes stripped. ``strict=False`` drops
    non-tensor entries instead of refusing them."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"A checkpoint must hold a dict of tensors, not {type(obj).__name__}.")
    nested = [k for k in _MAIN_WRAPPERS + _EMA_WRAPPERS if _holds_tensors(obj.get(k))]  # an empty one is no wrapper
    if checkpoint_key is not None:
        if not isinstance(obj.get(checkpoint_key), Mapping):
            raise CheckpointError(f"The checkpoint has no {checkpoint_key!r} entry; its entries: "
                                  f"{sorted(str(k) for k in obj)[:10]}.")
        obj = obj[checkpoint_key]
    elif nested:
        main = [k for k in nested if k in _MAIN_WRAPPERS]
        key = (main or nested)[0]
        others = [k for k in nested if k != key]
        if others:
            _log.info("checkpoint holds %s and %s; loading %r (checkpoint_key=%r picks another)",
                      key, others, key, others[0])
        obj = obj[key]
    bad_keys = [k for k in obj if not isinstance(k, str)]
    if bad_keys:
        raise CheckpointError(f"The checkpoint's keys must be strings, not {type(bad_keys[0]).__name__} "
                              f"({bad_keys[0]!r}); it is not a state dict.")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors or (strict and len(tensors) != len(obj)):
        other = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))[:5]
        holders = sorted(k for k, v in obj.items() if _holds_tensors(v))
        if holders and not tensors:
            raise CheckpointError(
                f"The checkpoint's tensors are under {', '.join(map(repr, holders))}, not a wrapper repzoo knows: "
                f"pass checkpoint_key={holders[0]!r} (create_model(..., checkpoint_key=...), "
                "read_state_dict(..., checkpoint_key=...), or --checkpoint-key on the command line).")
        raise CheckpointError(
            "The checkpoint holds no state dict of tensors"
            + (f" (non-tensor entries: {other})" if other else "")
            + ". Expected a state dict, {'model': state_dict}, {'state_dict': state_dict} or an EMA copy "
            "(checkpoint_key='model_ema' / 'state_dict_ema' / 'ema')."
        )
    return _strip_prefixes(tensors)


def state_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s state dict (meta tensors count by their shapes)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _independent(tensors: StateDict, limit: Optional[int]) -> StateDict:
    """Dense, contiguous tensors that share no memory, or a :class:`CheckpointError`."""
    out: StateDict = {}
    spans: Dict[Tuple[str, int], list] = {}
    spent = 0
    for key, t in tensors.items():
        if t.is_meta:
            raise CheckpointError(f"{key!r} is a meta tensor (shape only, no values): this file holds no weights. "
                                  "It was saved from a model on the meta device; save the real model.")
        if t.layout != torch.strided:
            raise CheckpointError(f"{key!r} is a {t.layout} tensor; re-save the checkpoint with dense tensors.")
        if t.requires_grad or t.grad_fn is not None or type(t) is not torch.Tensor or t.__dict__:
            t = t.detach()  # a plain tensor object: no parameter, no Python attributes from the file
        nbytes = t.numel() * t.element_size()
        if not t.is_contiguous():
            spent += nbytes
            if limit is not None and spent > limit:
                raise UnsafeCheckpointError(f"{key!r} expands to {nbytes:,} bytes, more than the model needs: the "
                                            "file is damaged or crafted.")
            t = t.contiguous()
        elif nbytes:
            storage = t.untyped_storage()
            start = t.storage_offset() * t.element_size()
            owner = (str(t.device), storage.data_ptr())
            if any(start < e and s < start + nbytes for s, e in spans.get(owner, ())):
                t = t.clone()  # shares memory with another entry (tied or aliased): give it its own
            else:
                spans.setdefault(owner, []).append((start, start + nbytes))
        out[key] = t
    return out


def read_state_dict(source: PathOrStateDict, *, checkpoint_key: Optional[str] = None,
                    max_bytes: Optional[int] = None, strict: bool = True) -> StateDict:
    """A state dict from a path (any supported format) or an in-memory checkpoint.

    ``max_bytes`` (the model's own state size) bounds, with the file's size, what reading may
    allocate; ``checkpoint_key`` and ``strict`` are ``unwrap_state_dict``'s.
    """
    obj = source if isinstance(source, Mapping) else _read_file(os.fspath(source), max_bytes)
    tensors = unwrap_state_dict(obj, checkpoint_key, strict)
    limit = None if max_bytes is None else 2 * max_bytes + _BUDGET_SLACK
    return _independent(tensors, limit)


#: What :func:`save_state_dict` writes, by the file name's extension.
FORMATS = {".safetensors": "safetensors", ".pth": "torch", ".pt": "torch", ".bin": "torch", ".ckpt": "torch"}


def output_format(path: Union[str, os.PathLike]) -> str:
    """``"safetensors"`` or ``"torch"``, from the extension; a :class:`RepZooError` naming the formats otherwise."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in FORMATS:
        raise RepZooError(
            f"Cannot write weights to {os.fspath(path)!r}: {ext or 'no extension'} is not a format repzoo writes. "
            "Name the file .safetensors (safetensors) or .pth / .pt / .bin / .ckpt (a torch.save file).")
    return FORMATS[ext]


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: Union[str, os.PathLike],
                    metadata: Optional[Dict[str, str]] = None) -> None:
    """Write a state dict as safetensors (``.safetensors``, with optional ``metadata``) or a plain
    ``torch.save`` file, atomically (:func:`repzoo.weights.files.atomic_path`)."""
    output_format(path)
    sd = {k: v.detach().contiguous() for k, v in state_dict.items()}
    what = f"the weights {os.path.basename(os.fspath(path))}"
    with atomic_path(path, what) as tmp:
        if output_format(path) == "safetensors":
            from safetensors.torch import save_file

            try:
                save_file(sd, str(tmp), metadata=metadata)
            except Exception as err:  # safetensors reports I/O errors as its own type, "... (os error 28)"
                code = re.search(r"os error (\d+)", str(err))
                if code is None:
                    raise
                raise OSError(int(code.group(1)), str(err)) from None
        else:
            torch.save(sd, tmp)


# --------------------------------------------------------------------------- loading into a model


def _fmt(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def checkpoint_form(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> str:
    """``"train"``, ``"deploy"`` or ``"neither"``: which form of ``model``'s architecture ``sd``'s keys are."""
    keys = set(sd)
    for deploy in (is_deploy(model), not is_deploy(model)):
        sig = model_signature(model, deploy)
        drop = tuple(getattr(model, "train_only_prefixes", ())) if not deploy and is_deploy(model) else ()
        if keys - {k for k in keys if drop and k.startswith(drop)} == set(sig):
            return "deploy" if deploy else "train"
    return "neither"


def _diff(sig: Mapping[str, tuple], sd: Mapping[str, torch.Tensor], order: Iterable[str]):
    missing = set(sig) - set(sd)
    unexpected = set(sd) - set(sig)
    shapes = [k for k in order if k in sig and k in sd and tuple(sd[k].shape) != tuple(sig[k])]
    return missing, unexpected, shapes


def _incompatible(model: nn.Module, form: str, sig, sd, missing, unexpected, shapes, head) -> IncompatibleCheckpointError:
    lines = []
    if missing:
        lines.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
    if shapes:
        more = f" … and {len(shapes) - 5} more" if len(shapes) > 5 else ""
        lines.append(f"mismatched shapes ({len(shapes)}): " + "; ".join(
            f"{k}: checkpoint {list(sd[k].shape)} vs model {list(sig[k])}" for k in shapes[:5]) + more)
    hint = ""
    if shapes and set(shapes) <= head and not missing and not unexpected:
        classes = next((sd[k].shape[0] for k in sorted(shapes) if sd[k].dim() == 2), "N")
        hint = (f" Only the classifier differs: the file's has {classes} classes. Build the model with "
                f"num_classes={classes} to load it (create_model takes the file's head when num_classes is not "
                "given), or with another num_classes to reset it.")
    name = getattr(model, "pretrained_cfg", {}).get("architecture", "this model")
    wrapped = [k for k in sd if k.split(".", 1)[0] in _MAIN_WRAPPERS + _EMA_WRAPPERS]
    if wrapped and len(wrapped) == len(sd):
        hint += " The keys start with a wrapper name: pass checkpoint_key=... to pick it."
    return IncompatibleCheckpointError(
        f"The checkpoint does not fit {type(model).__name__} ({name}) in its {form} form:\n  " + "\n  ".join(lines)
        + f"\nIs it a checkpoint of another model? Check the model name against the file.{hint}"
    )


def load_checkpoint(model: nn.Module, source: PathOrStateDict, *, allow_head_reset: bool = False,
                    assign: bool = False, checkpoint_key: Optional[str] = None) -> nn.Module:
    """Load a checkpoint into ``model`` strictly, converting a train-time checkpoint for a deploy model.

    The checkpoint's form is decided from its keys first: the model's own form loads as it is; a
    train-time checkpoint for a deploy model is checked against the train form (keys and shapes)
    and converted; a deploy checkpoint for a train-time model is refused; anything else is a
    readable diff against the model's form. ``allow_head_reset``: classifier tensors of another
    ``num_classes`` are skipped (the model keeps its fresh head, and a warning says so).
    ``assign``: adopt the checkpoint's tensors (for models built on the ``meta`` device).
    """
    model_sd = model.state_dict()
    sd = read_state_dict(source, checkpoint_key=checkpoint_key, max_bytes=state_bytes(model))
    deploy_model = is_deploy(model)
    own = {k: tuple(v.shape) for k, v in model_sd.items()}
    head = set(model.head_keys()) if hasattr(model, "head_keys") else set()
    reset: set = set()
    if set(sd) != set(own):
        other = checkpoint_form(model, sd)
        if other == "deploy" and not deploy_model:
            raise IncompatibleCheckpointError(
                "This is a deploy (converted) checkpoint, and a deploy checkpoint cannot become a train-time "
                "model: the branches it was fused from cannot be recovered. Build the model with deploy=True "
                "(`--deploy` on the command line) to load it, or use the train-time checkpoint to fine-tune."
            )
        if other == "neither" and deploy_model and _closer_to_train(model, sd):
            other = "train"  # a damaged train checkpoint: diff it against the train form
        if other == "train" and deploy_model:
            train_sig = model_signature(model, False)
            drop = tuple(getattr(model, "train_only_prefixes", ()))
            sd = {k: v for k, v in sd.items() if not (drop and k.startswith(drop))}
            missing, unexpected, shapes = _diff(train_sig, sd, sd)
            reset = _head_reset(model, sd, shapes, head, allow_head_reset, missing, unexpected)
            if missing or unexpected or set(shapes) - reset:
                raise _incompatible(model, "train-time", train_sig, sd, missing, unexpected, shapes, head)
            sd = convert_state_dict(model, {k: v for k, v in sd.items() if k not in reset})
            _log.info("converted a train-time checkpoint to the deploy form on load")
    missing, unexpected, shapes = _diff(own, sd, model_sd)
    missing -= reset
    if not reset:
        reset = _head_reset(model, sd, shapes, head, allow_head_reset, missing, unexpected)
    if missing or unexpected or set(shapes) - reset:
        raise _incompatible(model, "deploy" if deploy_model else "train-time", own, sd, missing, unexpected,
                            shapes, head)
    sd = {k: v for k, v in sd.items() if k not in reset}
    _refuse_lossy_casts(sd, model_sd)
    if assign:  # adopt the tensors, in the model's dtypes (a no-op when they match)
        sd = {k: v.to(model_sd[k].dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=not reset, assign=assign)
    return model


def _lossy(src: torch.dtype, dst: torch.dtype) -> bool:
    """Whether casting ``src`` values to ``dst`` loses more than rounding: the imaginary part, the fraction."""
    if src.is_complex:
        return not dst.is_complex
    if src.is_floating_point:
        return not (dst.is_floating_point or dst.is_complex)
    return dst == torch.bool and src != torch.bool


def _refuse_lossy_casts(sd: Mapping[str, torch.Tensor], model_sd: Mapping[str, torch.Tensor]) -> None:
    bad = [k for k, v in sd.items() if k in model_sd and _lossy(v.dtype, model_sd[k].dtype)]
    if bad:
        k = bad[0]
        raise IncompatibleCheckpointError(
            f"The checkpoint's {_fmt(bad, 3)} cannot be held by the model without loss ({k}: {sd[k].dtype} in the "
            f"file, {model_sd[k].dtype} in the model). Re-save the checkpoint with real floating-point weights "
            "(and integer counters), e.g. {k: v.real.float() for k, v in state_dict.items()} where that is meant.")


def _closer_to_train(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``sd`` shares more keys with the train form of a deploy ``model`` than with its deploy form."""
    keys = set(sd)
    return len(keys & set(model_signature(model, False))) > len(keys & set(model_signature(model, True)))


def _head_reset(model: nn.Module, sd, shapes, head: set, allowed: bool, missing, unexpected) -> set:
    """The classifier keys to skip (another ``num_classes``), warning once; empty unless allowed."""
    if not (allowed and shapes and set(shapes) <= head and not missing and not unexpected):
        return set()
    key = sorted(shapes)[0]
    warnings.warn(
        f"The checkpoint's classifier has {sd[key].shape[0]} classes and the model "
        f"{getattr(model, 'num_classes', '?')}: the classifier was reset and is untrained.",
        stacklevel=4,
    )
    return set(shapes)
