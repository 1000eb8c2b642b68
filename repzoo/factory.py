"""``create_model``: name → registry entry → build → load weights → adapt head → deploy → features."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .checkpoint import load_checkpoint, read_state_dict
from .errors import RepZooError, WeightsUnavailableError
from .registry import get_model_entry

__all__ = ["create_model"]


def create_model(
    name: str,
    pretrained: bool = False,
    *,
    deploy: bool = False,
    checkpoint_path: Optional[Union[str, os.PathLike]] = None,
    num_classes: Optional[int] = None,
    features_only: bool = False,
    out_indices: Optional[Sequence[int]] = None,
    tag: Optional[str] = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model, optionally with weights, in its train-time or deploy form.

    Args:
        name: any spelling of a registered name (``"RepVGG-A0"``, ``"repvgg_a0"``).
        pretrained: load the released weights (see the weights manifest); ``tag`` picks one.
        deploy: build the converted (plain) form; a train-time checkpoint is converted on load.
        checkpoint_path: a local checkpoint (train or deploy form, any supported wrapper).
        num_classes: a head of this size; if the weights have another, the head is reset
            (with a warning) and the rest is loaded.
        features_only: return the stage feature maps (timm's ``FeatureListNet``);
            ``out_indices`` picks the stages (default: all).
        **kwargs: passed to the model (``in_chans``, ``drop_rate``, …).
    """
    entry = get_model_entry(name)
    if pretrained and checkpoint_path is not None:
        raise RepZooError("Pass either pretrained=True or checkpoint_path, not both.")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    state = None
    if checkpoint_path is not None:
        state = read_state_dict(checkpoint_path)
    elif pretrained:
        state = _pretrained_state_dict(entry.name, tag, deploy)
    if state is None:
        model = entry.builder(deploy=deploy, **kwargs)
    else:
        # Build without allocating or initializing what the weights overwrite, then adopt them.
        with torch.device("meta"):
            model = entry.builder(deploy=deploy, **kwargs)
        load_checkpoint(model, state, allow_head_reset=num_classes is not None, assign=True)
        materialize(model)
        if pretrained:
            _apply_pretrained_cfg(model, entry.name, tag)
    if features_only:
        model = features(model, out_indices)
    return model


def _pretrained_state_dict(name: str, tag: Optional[str], deploy: bool):
    try:
        from .weights import load_pretrained_state_dict
    except ImportError:
        raise WeightsUnavailableError(
            f"Pretrained weights for {name} are not available in this build of repzoo. Download the "
            "authors' file by hand and pass checkpoint_path=... instead."
        ) from None
    return load_pretrained_state_dict(name, tag=tag, deploy=deploy)


def _apply_pretrained_cfg(model: nn.Module, name: str, tag: Optional[str]) -> None:
    """The manifest's evaluation config (input size, crop_pct, interpolation, mean, std, tag) for these weights."""
    from .weights import pretrained_cfg

    cfg = dict(getattr(model, "pretrained_cfg", {}))
    cfg.update(pretrained_cfg(name, tag), num_classes=getattr(model, "num_classes", cfg.get("num_classes")))
    model.pretrained_cfg = cfg


def materialize(model: nn.Module, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Allocate and initialize (``reset_parameters``) every module still on the ``meta`` device."""
    for module in model.modules():
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if not any(t.is_meta for t in own):
            continue
        if not hasattr(module, "reset_parameters"):
            raise RepZooError(f"{type(module).__name__} was not loaded from the weights and cannot be initialized")
        module.to_empty(device=device, recurse=False)
        module.reset_parameters()
    return model


def features(model: nn.Module, out_indices: Optional[Sequence[int]] = None) -> nn.Module:
    """Wrap ``model`` so that it returns the feature maps of the stages in ``out_indices``."""
    from timm.models import FeatureListNet

    n = len(model.feature_info)
    indices = tuple(range(n)) if out_indices is None else tuple(i % n for i in out_indices)
    # Families whose stages sit one level down (GhostNet's ``blocks.N``) ask timm to flatten.
    flatten = getattr(model, "feature_flatten_sequential", False)
    return FeatureListNet(model, out_indices=indices, flatten_sequential=flatten)
