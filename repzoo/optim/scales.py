"""RepOptimizer scale files: read, extract from a Hyper-Search model, write.

A scale file is a flat ``{hs-model key: 1-D tensor}`` dict, the scale parameters of a
trained Hyper-Search (``-hs``) model:

* RepOpt-VGG: ``<blk>.scale_conv.weight``, ``<blk>.scale_1x1.weight`` and, for blocks
  with an identity branch, ``<blk>.scale_identity.weight`` (``<blk>`` = ``stage0`` or
  ``stage{s}.{i}``);
* RepOpt-GhostNet: ``<mod>.cheap_operation.1.weight`` and ``<mod>.fusion_scale.weight``
  (``<mod>`` = ``blocks.{s}.{i}.ghost{1,2}``).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Mapping, Union

import torch
from torch import nn

from ..errors import CheckpointError, RepZooError, WeightsUnavailableError

__all__ = ["SCALE_SUFFIXES", "load_scales", "extract_scales", "save_scales", "is_scale_key"]

Scales = Dict[str, torch.Tensor]
ScaleSource = Union[str, os.PathLike, Mapping[str, object], nn.Module]

#: Key endings of the scale parameters of every hs family.
SCALE_SUFFIXES = (
    ".scale_conv.weight",
    ".scale_1x1.weight",
    ".scale_identity.weight",
    ".fusion_scale.weight",
    ".cheap_operation.1.weight",
)
_FILE_SUFFIXES = (".pth", ".pt", ".pth.tar", ".tar", ".bin", ".safetensors", ".ckpt")


def is_scale_key(key: str) -> bool:
    """True for the state-dict key of a Hyper-Search scale (see :data:`SCALE_SUFFIXES`)."""
    return key.endswith(SCALE_SUFFIXES)


def _select(state: Mapping[str, torch.Tensor], what: str) -> Scales:
    """The scale tensors of an hs state dict (the head ``linear.*`` and every weight dropped)."""
    bn_like = sorted(k[: -len(".weight")] for k in state
                     if k.endswith(".cheap_operation.1.weight")
                     and f"{k[: -len('.weight')]}.running_mean" in state)
    if bn_like:
        raise CheckpointError(
            f"{what} has a BatchNorm at {bn_like[0]} (a RepGhostNet 'rep' model), not the ScaleLayer of a "
            "Hyper-Search model: scales come from a RepOpt-GhostNet-*-hs model or a released scale file."
        )
    scales: Scales = OrderedDict()
    for key, value in state.items():
        if not is_scale_key(key) or key.startswith("linear."):
            continue
        if not isinstance(value, torch.Tensor) or value.dim() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{what}: scale {key!r} must be a 1-D tensor, got {shape}.")
        dtype = value.dtype if value.is_floating_point() else torch.float32  # float64 scales stay float64
        scales[key] = value.detach().to("cpu", dtype).clone()
    if not scales:
        raise CheckpointError(
            f"{what} holds no RepOptimizer scales (keys ending in {', '.join(SCALE_SUFFIXES)}). Pass a released "
            "scale file, a Hyper-Search checkpoint {'model': ...}, a trained hs model, or a model name."
        )
    return scales


def extract_scales(hs_model: nn.Module) -> Scales:
    """The scales of a (trained) Hyper-Search or CSLA model, as a scale-file dict (on the CPU).

    >>> scales = extract_scales(repzoo.create_model("RepOpt-VGG-B1-hs", num_classes=100))
    """
    if not isinstance(hs_model, nn.Module):
        raise TypeError(f"extract_scales takes an nn.Module, not {type(hs_model).__name__}")
    return _select(hs_model.state_dict(), type(hs_model).__name__)


def _looks_like_path(source: str) -> bool:
    return os.sep in source or "/" in source or source.lower().endswith(_FILE_SUFFIXES)


def load_scales(source: ScaleSource) -> Scales:
    """RepOptimizer scales from any source, as ``{hs key: 1-D tensor}`` on the CPU (float32 for the
    released files; a float64 source stays float64).

    ``source`` is one of:

    * a scale file (``RepOpt-VGG-B1-scales.pth``, or one written by :func:`save_scales`);
    * a Hyper-Search checkpoint (``{'model': state_dict, ...}`` as the authors' training
      script saves it; its 100-class head ``linear.*`` and every non-scale tensor are dropped);
    * an in-memory state dict or scale dict;
    * a trained hs model (:func:`extract_scales`);
    * a model or manifest name (``"RepOpt-VGG-B1"``): the released scale file, fetched and
      verified by :func:`repzoo.hub.fetch_scales`.
    """
    if isinstance(source, nn.Module):
        return extract_scales(source)
    if isinstance(source, Mapping):
        from ..checkpoint import unwrap_state_dict

        inner = source
        for wrapper in ("model", "state_dict"):
            if isinstance(source.get(wrapper), Mapping):
                inner = source[wrapper]
                break
        tensors = {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
        if len(tensors) == len(inner) and tensors:
            inner = unwrap_state_dict(tensors)  # strips a DDP ``module.`` prefix
        return _select(inner, "the scale dict")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load_scales takes a path, a name, a dict or an nn.Module, not {type(source).__name__}")
    path = os.fspath(source)
    if not os.path.isfile(path):
        if _looks_like_path(path):
            raise CheckpointError(f"Scale file {path!r} does not exist. Check the path, or pass a model name "
                                  "such as 'RepOpt-VGG-B1' to use the released scales.")
        path = os.fspath(_fetch(path))
    return _select(_read(path), f"scale file {path!r}")


def _read(path: str) -> Mapping[str, torch.Tensor]:
    from ..checkpoint import read_state_dict

    try:
        return read_state_dict(path)
    except CheckpointError as err:
        if "no state dict of tensors" not in str(err):
            raise
    # A training checkpoint may keep non-tensor entries beside the weights inside 'model'.
    from ..checkpoint import _read_file

    obj = _read_file(path)
    if isinstance(obj, Mapping):
        obj = obj.get("model", obj.get("state_dict", obj))
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path!r} holds no dict of tensors; it is not a scale file or an hs checkpoint.")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _fetch(name: str) -> Path:
    try:
        from ..hub import fetch_scales
    except ImportError:
        raise WeightsUnavailableError(
            f"{name!r} is not a file, and this build of repzoo cannot fetch released scale files by name. "
            "Download the scale file by hand and pass its path."
        ) from None
    return Path(fetch_scales(name))


def save_scales(scales: Union[Mapping[str, torch.Tensor], nn.Module], path: Union[str, os.PathLike]) -> Path:
    """Write a scale file (safetensors for ``.safetensors``, else ``torch.save``), atomically.

    ``scales`` is a scale dict or an hs model (its scales are extracted). The file loads
    with :func:`load_scales` and with ``torch.load(path, weights_only=True)``.
    """
    from ..checkpoint import save_state_dict

    data = extract_scales(scales) if isinstance(scales, nn.Module) else _select(scales, "the scale dict")
    if len(data) != len(scales) and not isinstance(scales, nn.Module):
        extra = sorted(set(scales) - set(data))[:5]
        raise RepZooError(f"save_scales got non-scale entries {extra}; pass only the scales (see load_scales).")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(data, path)
    return path
