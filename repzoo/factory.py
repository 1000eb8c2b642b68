"""``create_model``: name → registry entry → build → load weights (or scales) → adapt head → deploy → features."""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .errors import InvalidArgumentError, RepZooError, WeightsUnavailableError
from .models.base import feature_indices
from .registry import ModelEntry, normalize_name, resolve_name
from .weights.adapters import adapt_state_dict, detect_key_style
from .weights.checkpoint import load_checkpoint, read_state_dict
from .weights import manifest
from .weights.pretrained import load_pretrained_state_dict, pretrained_cfg
from .weights.scales import ScaleSource, load_scales_into

__all__ = ["create_model", "materialize", "features", "resolve_tag", "head_size"]


def create_model(
    name: str,
    pretrained: bool = False,
    *,
    deploy: Optional[bool] = None,
    checkpoint_path: Optional[Union[str, os.PathLike, Mapping[str, Any]]] = None,
    checkpoint_key: Optional[str] = None,
    num_classes: Optional[int] = None,
    features_only: bool = False,
    out_indices: Optional[Sequence[int]] = None,
    tag: Optional[str] = None,
    scales: Optional[ScaleSource] = None,
    pretrained_cfg_overlay: Optional[Mapping[str, Any]] = None,
    global_pool: Optional[str] = None,
    feature_cls: Optional[str] = None,
    feature_cfg: Optional[Mapping[str, Any]] = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally with weights, in its train-time or deploy form.

    Args:
        name: any spelling of a registered name (``"RepVGG-A0"``, ``"repvgg_a0"``), optionally with
            a timm-style tag (``"RepVGG-A0.in1k"``); or a model shared the way timm shares them,
            ``"hf-hub:owner/name[@revision]"`` / ``"local-dir:PATH"`` (a ``config.json`` and its weights,
            as `repzoo.save_for_hf` and timm's ``save_for_hf`` write them), which loads those weights.
        pretrained: load the released weights (see the weights manifest); ``tag`` picks one.
        deploy: build the converted (plain) form; a train-time checkpoint is converted on load
            (default: the train form; for a shared ``hf-hub:`` / ``local-dir:`` model, the form it was saved in).
        checkpoint_path: a local checkpoint (train or deploy form, any supported wrapper and key
            style) or an in-memory state dict; ``checkpoint_key`` picks a wrapper (``"model_ema"`` …).
        num_classes: a head of this size (0: the model returns pooled features); if the weights
            have another, the head is reset (with a warning) and the rest is loaded. Default: the
            head of ``checkpoint_path`` (a 100-class file gives a 100-class model), else the model's.
        features_only: return the stage feature maps (timm's ``FeatureListNet``);
            ``out_indices`` picks the stages (default: all; negative counts from the end);
            ``feature_cls`` (``"list"`` or ``"getter"``, timm's) picks the wrapper and ``feature_cfg``
            (timm's dict, e.g. ``{"feature_cls": "getter", "out_indices": (1, 2)}``) passes both at once.
        global_pool: timm's ``'avg'`` (default), ``'max'``, or ``''``: with ``num_classes=0`` the model then
            returns the unpooled feature map.
        scales: the constant scales of a ``-csla`` model (anything [load_scales][repzoo.optim.load_scales]
            takes; default: the released scales of its architecture).
        pretrained_cfg_overlay: entries that replace those of ``model.pretrained_cfg``.
        **kwargs: passed to the model (``in_chans``, ``drop_rate``, …).
    """
    if isinstance(name, str) and name.startswith(("hf-hub:", "local-dir:")):
        if pretrained or checkpoint_path is not None or tag is not None:
            raise InvalidArgumentError(f"{name!r} names its own weights: pass neither pretrained, tag nor "
                                       "checkpoint_path")
        return _create_shared(name, deploy=deploy, num_classes=num_classes, features_only=features_only,
                              out_indices=out_indices, global_pool=global_pool, feature_cls=feature_cls,
                              feature_cfg=feature_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)
    deploy = bool(deploy)
    entry, name_tag = resolve_name(name)
    if tag is not None and name_tag is not None and tag != name_tag:
        raise InvalidArgumentError(f"{name!r} names the tag {name_tag!r} but tag={tag!r} was passed: pass one.")
    tag = resolve_tag(entry.name, tag or name_tag, given=name if name_tag else None)
    if pretrained and checkpoint_path is not None:
        raise InvalidArgumentError("Pass either pretrained=True or checkpoint_path, not both.")
    if scales is not None and entry.scales is None:
        raise InvalidArgumentError(f"scales= is for the constant-scale (-csla) models, not {entry.name}.")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    state = None
    if checkpoint_path is not None:
        state = read_state_dict(checkpoint_path, checkpoint_key=checkpoint_key)
        state = adapt_state_dict(state, detect_key_style(state, entry.name), entry.name)
        if num_classes is None and "num_classes" not in kwargs:
            inferred = head_size(entry.name, state, deploy=deploy)
            if inferred is not None:
                kwargs["num_classes"] = inferred
    elif pretrained:
        state = load_pretrained_state_dict(entry.name, tag=tag, deploy=deploy)
    if state is None:
        model = entry.builder(deploy=deploy, **kwargs)
        if entry.scales is not None and not deploy:
            load_scales_into(model, _default_scales(entry) if scales is None else scales)
    else:
        if scales is not None:
            raise InvalidArgumentError("The checkpoint holds the model's scales: pass scales= or a checkpoint, not both.")
        # Build without allocating or initializing what the weights overwrite, then adopt them.
        with torch.device("meta"):
            model = entry.builder(deploy=deploy, **kwargs)
        state = _without_absent_train_only(model, state)
        load_checkpoint(model, state, allow_head_reset=num_classes is not None, assign=True)
        materialize(model)
    if global_pool is not None:
        model.set_global_pool(global_pool)
    cfg = pretrained_cfg(entry.name, tag if pretrained else None)
    cfg.update(model_cfg_fields(model, cfg["input_size"]))
    cfg.update(pretrained_cfg_overlay or {}, num_classes=getattr(model, "num_classes", cfg.get("num_classes")))
    model.pretrained_cfg = cfg
    if features_only:
        feature_cfg = dict(feature_cfg or {})
        out_indices = feature_cfg.pop("out_indices", out_indices)
        feature_cls = feature_cfg.pop("feature_cls", feature_cls)
        if feature_cfg:
            raise InvalidArgumentError(f"feature_cfg takes 'feature_cls' and 'out_indices', not {sorted(feature_cfg)}")
        model = features(model, out_indices, feature_cls)
    elif feature_cls is not None or feature_cfg:
        raise InvalidArgumentError("feature_cls / feature_cfg go with features_only=True.")
    return model


def resolve_tag(name: str, tag: Optional[str], given: Optional[str] = None) -> Optional[str]:
    """The manifest's tag for ``tag`` of the canonical ``name``: the tag whose file the Hub hosts under the
    ``given`` name (timm's ``repghostnet_050.in1k`` is ``repghost_in1k``), the tag itself, or the tag whose
    file is hosted under that tag (``rvgg_in1k`` of ``repvgg_a0.rvgg_in1k`` is ``in1k``). Another tag is an
    error that lists the model's tags, whether or not weights are asked for."""
    if tag is None:
        return None
    known = manifest.load_manifest()
    tags = known.tags(name)
    hosted = [(rec.tag, s.location.rsplit("/", 1)[-1]) for rec in (known.model(name).weights if tags else [])
              for f in rec.files for s in f.sources if s.kind == "hf"]
    key = normalize_name(given or "")
    for rec_tag, repo in hosted:
        if given and normalize_name(repo) == key:
            return rec_tag
    if tag in tags:
        return tag
    for rec_tag, repo in hosted:
        if repo.endswith(f".{tag}"):
            return rec_tag
    released = f"its tags are {', '.join(tags)}" if tags else "it has no released weights, so no tag"
    raise InvalidArgumentError(f"{name} has no pretrained tag {tag!r}: {released} (see `repzoo info {name}`).")


def head_size(name: str, state: Mapping[str, torch.Tensor], deploy: bool = False) -> Optional[int]:
    """The number of classes of the classifier in ``state`` (official keys of ``name``), or None when it has
    no classifier of this model's kind (the model is built on the ``meta`` device, in the form ``deploy``)."""
    with torch.device("meta"):
        model = resolve_name(name)[0].builder(deploy=deploy)
    weight = getattr(model, "head_keys", lambda: [])()[:1]
    if weight and weight[0] in state and state[weight[0]].dim() == 2:
        return int(state[weight[0]].shape[0])
    return None


def _create_shared(name: str, *, num_classes: Optional[int], pretrained_cfg_overlay: Optional[Mapping[str, Any]],
                   **kwargs) -> nn.Module:
    """A model shared as timm shares them (``hf-hub:owner/name[@rev]``, ``local-dir:PATH``): its architecture,
    classes and eval config from ``config.json``, its weights loaded (converted when ``deploy=True`` and
    the folder holds the train form)."""
    from .weights.hf_model import resolve

    shared = resolve(name)
    if kwargs.get("deploy") is None:
        kwargs["deploy"] = shared.deploy  # the form it was saved in
    saved_args = shared.config.get("model_args", {})
    for key in ("in_chans", "aux_logits"):
        if key in saved_args:
            kwargs.setdefault(key, saved_args[key])
    overlay = dict(shared.eval_cfg(), **(pretrained_cfg_overlay or {}))
    return create_model(shared.name, checkpoint_path=str(shared.weights),
                        num_classes=shared.num_classes if num_classes is None else num_classes,
                        pretrained_cfg_overlay=overlay, **kwargs)


def model_cfg_fields(model: nn.Module, input_size: Sequence[int]) -> dict:
    """The pretrained-cfg fields timm derives from the model (see `RepClassifier.cfg_fields`)."""
    return model.cfg_fields(input_size)


def _without_absent_train_only(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """A train-time model built without its train-only modules (RepVGGplus without ``aux_logits``)
    takes a checkpoint that has them: those keys are left out."""
    prefixes = tuple(getattr(model, "train_only_prefixes", ()))
    if not prefixes or getattr(model, "deploy", False):
        return state
    own = model.state_dict()
    absent = tuple(p for p in prefixes if not any(k.startswith(p) for k in own))
    if not absent:
        return state
    return {k: v for k, v in state.items() if not k.startswith(absent)}


def _default_scales(entry: ModelEntry) -> str:
    """The name of the released scale set of a csla model, or an error that says what to pass instead."""
    released = manifest.load_manifest().scale_names()
    if entry.scales not in released:
        raise WeightsUnavailableError(
            f"No scale file was released for {entry.scales} (only for {', '.join(released)}). Run Hyper-Search "
            f"({entry.scales}-hs) and pass its scales: create_model('{entry.name}', scales=...) takes a scale "
            "file, an hs checkpoint or the trained hs model."
        )
    return entry.scales


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


def features(model: nn.Module, out_indices: Optional[Sequence[int]] = None,
             feature_cls: Optional[str] = None) -> nn.Module:
    """Wrap ``model`` so that it returns the feature maps of the stages in ``out_indices``: timm's
    ``FeatureListNet`` or, with ``feature_cls="getter"`` (and for models whose stages are not
    registered in the order they run), ``FeatureGetterNet``. The wrapper carries the model's
    ``pretrained_cfg`` / ``default_cfg``, as timm's do."""
    cfg = getattr(model, "pretrained_cfg", None)
    wrapper = _wrap(model, out_indices, feature_cls)
    if cfg is not None:
        cfg = {k: v for k, v in cfg.items() if k not in ("num_classes", "classifier", "pool_size")}
        wrapper.pretrained_cfg = cfg
        wrapper.default_cfg = cfg
    return wrapper


def _wrap(model: nn.Module, out_indices: Optional[Sequence[int]], feature_cls: Optional[str]) -> nn.Module:
    from timm.models import FeatureListNet
    from timm.models._features import FeatureGetterNet

    indices = tuple(feature_indices(out_indices, len(model.feature_info)))
    kind = (feature_cls or getattr(model, "feature_cls", "list")).lower()
    if kind not in ("list", "getter"):
        raise InvalidArgumentError(f"feature_cls={feature_cls!r}: repzoo models take 'list' or 'getter'")
    if getattr(model, "feature_cls", "list") == "getter":  # stages not registered in the order they run
        kind = "getter"
    if kind == "getter":
        return FeatureGetterNet(model, out_indices=indices)
    # Families whose stages sit one level down (GhostNet's ``blocks.N``) ask timm to flatten.
    flatten = getattr(model, "feature_flatten_sequential", False)
    wrapper = FeatureListNet(model, out_indices=indices, flatten_sequential=flatten)
    # The wrapper adopts the model's children, not the model: keep its declared conv-BN pairs
    # (GhostNet's stem) so that ``reparameterize`` and the signatures still see them.
    children = dict(wrapper.named_children())
    pairs = tuple((c, b) for c, b in getattr(model, "conv_bn_pairs", ()) if c in children and b in children)
    if pairs:
        wrapper.conv_bn_pairs = pairs
    return wrapper
