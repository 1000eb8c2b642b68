"""RepOptimizer scale files: the released ones (shipped in the package), read, extract, write, load into a model.

A scale file is a flat ``{hs-model key: 1-D tensor}`` dict, the scale parameters of a
trained Hyper-Search (``-hs``) model:

* RepOpt-VGG: ``<blk>.scale_conv.weight``, ``<blk>.scale_1x1.weight`` and, for blocks
  with an identity branch, ``<blk>.scale_identity.weight`` (``<blk>`` = ``stage0`` or
  ``stage{s}.{i}``);
* RepOpt-GhostNet: ``<mod>.cheap_operation.1.weight`` and ``<mod>.fusion_scale.weight``
  (``<mod>`` = ``blocks.{s}.{i}.ghost{1,2}``).

The five released scale files (DingXiaoH/RepOptimizers, MIT) ship inside the package as
safetensors (``repzoo/weights/data/``), each verified against the manifest's sha256 of the
packaged copy before use; the manifest keeps the released ``.pth`` files' URLs and sha256 too,
and :func:`released_scales` falls back to fetching those when a packaged copy is missing.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Mapping, Union

import torch
from torch import nn

from ..errors import ChecksumError, CheckpointError, IncompatibleCheckpointError, RepZooError
from ..layers.scale import ScaleLayer
from .checkpoint import read_state_dict, save_state_dict, unwrap_state_dict
from .files import verified_sha256
from . import manifest

__all__ = ["SCALE_SUFFIXES", "DATA_DIR", "load_scales", "extract_scales", "save_scales", "is_scale_key",
           "released_scales", "load_scales_into", "scale_keys"]

#: Where the packaged copies of the released scale files live.
DATA_DIR = Path(__file__).with_name("data")

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

    * a scale file (``RepOpt-VGG-B1-scales.pth``, or one written by [save_scales][repzoo.optim.save_scales]);
    * a Hyper-Search checkpoint (``{'model': state_dict, ...}`` as the authors' training
      script saves it; its 100-class head ``linear.*`` and every non-scale tensor are dropped);
    * an in-memory state dict or scale dict;
    * a trained hs model ([extract_scales][repzoo.optim.extract_scales]);
    * a model name (``"RepOpt-VGG-B1"``): the released scale file (``released_scales``).
    """
    if isinstance(source, nn.Module):
        return extract_scales(source)
    if isinstance(source, Mapping):
        return _select(unwrap_state_dict(source, strict=False), "the scale dict")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load_scales takes a path, a name, a dict or an nn.Module, not {type(source).__name__}")
    path = os.fspath(source)
    if not os.path.isfile(path):
        if _looks_like_path(path):
            raise CheckpointError(f"Scale file {path!r} does not exist. Check the path, or pass a model name "
                                  "such as 'RepOpt-VGG-B1' to use the released scales.")
        path = os.fspath(released_scales(path))
    return _select(read_state_dict(path, strict=False), f"scale file {path!r}")


def released_scales(name: str) -> Path:
    """The verified released scale file of RepOpt model ``name`` (``RepOpt-VGG-B1`` …): the packaged
    copy, or where it is missing the released ``.pth``, fetched (see :func:`repzoo.weights.hub.fetch`)."""
    rec = manifest.load_manifest().scales(name)
    if rec.packaged is not None:
        path = DATA_DIR / rec.packaged.file
        if path.is_file():
            got = verified_sha256(path)
            if got != rec.packaged.sha256:
                raise ChecksumError(f"The packaged scale file {path} has sha256 {got}, not {rec.packaged.sha256}: "
                                    "the installation is damaged. Reinstall repzoo.")
            return path
    from .hub import fetch

    return fetch(rec.file_name, sources=rec.sources, sha256=rec.sha256, size=rec.size, hint=rec.hint())


def save_scales(scales: Union[Mapping[str, torch.Tensor], nn.Module], path: Union[str, os.PathLike]) -> Path:
    """Write a scale file (safetensors for ``.safetensors``, else ``torch.save``), atomically.

    ``scales`` is a scale dict or an hs model (its scales are extracted). The file loads
    with [load_scales][repzoo.optim.load_scales] and with ``torch.load(path, weights_only=True)``.
    """
    data = extract_scales(scales) if isinstance(scales, nn.Module) else _select(scales, "the scale dict")
    if not isinstance(scales, nn.Module) and len(data) != len(scales):
        extra = sorted(set(scales) - set(data))[:5]
        raise RepZooError(f"save_scales got non-scale entries {extra}; pass only the scales (see load_scales).")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(data, path)
    return path


def scale_keys(model: nn.Module) -> Dict[str, ScaleLayer]:
    """``{state-dict key: ScaleLayer}`` for every scale layer in ``model`` (``…scale_conv.weight`` …)."""
    return {f"{name}.weight" if name else "weight": m for name, m in model.named_modules() if isinstance(m, ScaleLayer)}


@torch.no_grad()
def load_scales_into(model: nn.Module, source: ScaleSource) -> nn.Module:
    """Copy the scales of ``source`` into ``model``'s scale layers, matched by hs key name.

    Every scale layer of ``model`` must find its key (shape included); other keys of the
    source (the conv kernels and the 100-class head of a full hs checkpoint) are ignored.
    ``requires_grad`` of each scale is left as the model set it (csla freezing).
    """
    scales = load_scales(source)
    targets = scale_keys(model)
    missing = sorted(k for k in targets if k not in scales)
    wrong = sorted(k for k in targets if k in scales and tuple(scales[k].shape) != tuple(targets[k].weight.shape))
    if missing or wrong:
        lines = []
        if missing:
            more = f" … and {len(missing) - 6} more" if len(missing) > 6 else ""
            lines.append(f"missing scales ({len(missing)}): {', '.join(missing[:6])}{more}")
        if wrong:
            lines.append("mismatched shapes: " + "; ".join(
                f"{k}: scales {list(scales[k].shape)} vs model {list(targets[k].weight.shape)}" for k in wrong[:5]))
        raise IncompatibleCheckpointError(
            "The scales do not fit this model:\n  " + "\n  ".join(lines)
            + "\nPass the scale file of this very architecture (the hs model's scale parameters)."
        )
    for key, layer in targets.items():
        layer.weight.copy_(scales[key].to(layer.weight.dtype))
    return model
