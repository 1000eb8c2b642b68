"""Any repzoo model as an OpenMMLab backbone (mmdetection, mmsegmentation), and the mmcv-lite layer.

:class:`RepZooBackbone` is an ``mmengine`` ``BaseModule`` that holds
``repzoo.create_model(model_name, features_only=True, out_indices=...)`` and returns a tuple of stage
feature maps. It is registered by :mod:`repzoo.integrations.mmdet` and :mod:`repzoo.integrations.mmseg`
(this module knows no registry). :func:`stage_channels` gives the channels of those maps, for the
neck's ``in_channels``.

Weights come either from the manifest (``pretrained=True``) or from a file
(``init_cfg=dict(type="Pretrained", checkpoint=path)``); both go through repzoo's own loader —
official formats and wrappers, strict keys and shapes, a train-time file converted for a
``deploy=True`` backbone — not through mmengine's non-strict one.

:func:`patch_mmcv_lite` lets mmdet / mmseg import and run on mmcv-lite (mmcv without its compiled
ops): it registers a stand-in ``mmcv._ext`` whose ``nms`` is ``torchvision.ops.nms`` and whose
other ops raise ``NotImplementedError`` when called. It does nothing when a compiled mmcv is
installed, or when mmcv is not installed at all.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule
from torch import nn

from ..errors import InvalidArgumentError
from ..factory import create_model
from ..models.base import feature_indices
from ..registry import resolve_name
from ..weights.adapters import adapt_state_dict, detect_key_style
from ..weights.checkpoint import checkpoint_form, load_checkpoint, read_state_dict

__all__ = ["RepZooBackbone", "stage_channels", "patch_mmcv_lite"]

DEFAULT_OUT_INDICES = (1, 2, 3, 4)


# --------------------------------------------------------------------------- channels for configs


def stage_channels(model_name: str, out_indices: Sequence[int] = DEFAULT_OUT_INDICES, **kwargs) -> List[int]:
    """The channels of the feature maps ``RepZooBackbone(model_name, out_indices)`` returns (for a
    neck's ``in_channels``). Built on the ``meta`` device: nothing is allocated or initialized."""
    entry, _ = resolve_name(model_name)
    with torch.device("meta"):
        model = entry.builder(**kwargs)
    return [model.feature_info[i]["num_chs"] for i in feature_indices(out_indices, len(model.feature_info))]


# --------------------------------------------------------------------------- the backbone


class RepZooBackbone(BaseModule):
    """A repzoo model as a backbone: ``forward(x)`` returns the feature maps of ``out_indices``.

    Args:
        model_name: any registered name (``"RepVGG-A0"``, ``"repghostnet_1_0x"``, ``"RepOpt-VGG-B1"`` …).
        out_indices: feature levels to return (level 0 is the stem at stride 2; 1..4 are the
            stages at strides 4..32; negative counts from the end).
        frozen_stages: ``-1`` freezes nothing, ``0`` the stem (level 0), ``n`` the stem and the
            stages 1..n — no gradients, and kept in eval mode by :meth:`train`.
        norm_eval: keep every BatchNorm of the backbone in eval mode while training (statistics and
            affine parameters fixed by the pretrained weights; the usual choice for small batches).
        deploy: build the converted (plain) form; a train-time checkpoint is converted on load.
        pretrained: load the released weights of ``model_name`` (the weights manifest; a
            ``"Name.tag"`` picks a tag); not together with a ``Pretrained`` ``init_cfg``.
        with_cp: activation checkpointing (less memory, more compute).
        init_cfg: mmengine's; ``dict(type="Pretrained", checkpoint=path)`` (optional ``prefix`` to
            take a sub-tree, e.g. ``"backbone."`` of a detector checkpoint, and ``checkpoint_key``
            for a wrapper such as ``"model_ema"``) is loaded by :meth:`init_weights` through
            repzoo's strict loader. The file may be a classifier checkpoint of ``model_name`` in
            any form repzoo reads, or a state dict of this backbone.
        **kwargs: passed to the model (``in_chans`` …).
    """

    def __init__(self, model_name: str, out_indices: Sequence[int] = DEFAULT_OUT_INDICES, frozen_stages: int = -1,
                 norm_eval: bool = False, deploy: bool = False, pretrained: bool = False, with_cp: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None, **kwargs):
        if not isinstance(pretrained, bool):
            raise InvalidArgumentError(
                f"pretrained={pretrained!r}: pass pretrained=True for the released weights, or "
                "init_cfg=dict(type='Pretrained', checkpoint=PATH) for a file."
            )
        if pretrained and _pretrained_cfg(init_cfg) is not None:
            raise InvalidArgumentError("Pass either pretrained=True or a Pretrained init_cfg, not both.")
        super().__init__(init_cfg=init_cfg)
        self.model_name = model_name
        self.deploy = deploy
        self.model_kwargs = dict(kwargs)
        self.model = create_model(model_name, pretrained=pretrained, deploy=deploy, features_only=True,
                                  out_indices=out_indices, **kwargs)
        info = self.model.feature_info
        self.out_indices = tuple(info.out_indices)
        self.out_channels = tuple(info.channels())
        self.out_strides = tuple(info.reduction())
        self._groups = _stage_groups(self.model, [info.module_name(i) for i in range(len(info))])
        if not -1 <= frozen_stages < len(info):
            raise InvalidArgumentError(f"frozen_stages={frozen_stages}: {model_name} has the stem (0) and stages "
                                       f"1..{len(info) - 1} (-1 freezes nothing)")
        if frozen_stages > self.out_indices[-1]:
            raise InvalidArgumentError(f"frozen_stages={frozen_stages} freezes past the last level returned "
                                       f"({self.out_indices[-1]}): the backbone would have nothing to train")
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.model.set_grad_checkpointing(with_cp)
        self._freeze_stages()

    # -- structure

    def frozen_modules(self) -> List[nn.Module]:
        """The modules that ``frozen_stages`` freezes (the stem and the first stages)."""
        return [m for group in self._groups[: self.frozen_stages + 1] for m in group]

    def _freeze_stages(self) -> None:
        for module in self.frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "RepZooBackbone":
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.model(x))

    # -- weights

    def init_weights(self) -> None:
        """mmengine's initialization for every ``init_cfg`` but ``Pretrained``, which is loaded with
        :meth:`load_weights` (strict, converting) afterwards."""
        if self.is_init:
            super().init_weights()  # mmengine says it was called twice
            return
        pretrained = _pretrained_cfg(self.init_cfg)
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg] if self.init_cfg else []
        others = [c for c in cfgs if c is not pretrained]
        saved, self.init_cfg = self.init_cfg, others or None
        try:
            super().init_weights()
        finally:
            self.init_cfg = saved
        if pretrained is not None:
            extra = set(pretrained) - {"type", "checkpoint", "prefix", "checkpoint_key", "map_location"}
            if extra or "checkpoint" not in pretrained:
                raise InvalidArgumentError(f"init_cfg={dict(pretrained)}: a Pretrained init_cfg takes checkpoint= "
                                           "(and optionally prefix=, checkpoint_key=); unknown: "
                                           f"{sorted(extra) or 'checkpoint is missing'}")
            self.load_weights(pretrained["checkpoint"], prefix=pretrained.get("prefix"),
                              checkpoint_key=pretrained.get("checkpoint_key"))

    def load_weights(self, checkpoint: Union[str, Mapping[str, torch.Tensor]], prefix: Optional[str] = None,
                     checkpoint_key: Optional[str] = None) -> "RepZooBackbone":
        """Load a checkpoint strictly, in place (the parameters stay the same tensors).

        ``checkpoint`` (a path or a state dict) is either a classifier checkpoint of ``model_name``
        (any format, wrapper, key style or form repzoo reads; its classifier is ignored) or a state dict
        of this backbone (``model.*`` keys, or the feature model's own); ``prefix`` takes the keys under
        it (``"backbone."`` of a detector checkpoint). A train-time file is converted for a deploy backbone.
        """
        state = read_state_dict(checkpoint, checkpoint_key=checkpoint_key)
        if prefix:
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not state:
                raise InvalidArgumentError(f"The checkpoint has no keys under the prefix {prefix!r}.")
        if state and all(k.startswith("model.") for k in state):
            state = {k[len("model."):]: v for k, v in state.items()}
        if checkpoint_form(self.model, state) != "neither":
            load_checkpoint(self.model, state)
            return self
        # A classifier checkpoint: built by the factory (key styles, conversion, strict), then copied in.
        entry, _ = resolve_name(self.model_name)
        state = adapt_state_dict(state, detect_key_style(state, entry.name), entry.name)
        loaded = create_model(entry.name, deploy=self.deploy, checkpoint_path=state,
                              num_classes=_head_size(entry, state, self.model_kwargs), features_only=True,
                              out_indices=self.out_indices, **self.model_kwargs)
        with torch.no_grad():
            self.model.load_state_dict(loaded.state_dict(), strict=True)
        return self


def _pretrained_cfg(init_cfg) -> Optional[Mapping[str, Any]]:
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg] if init_cfg else []
    found = [c for c in cfgs if c.get("type") == "Pretrained"]
    if len(found) > 1:
        raise InvalidArgumentError("init_cfg holds more than one Pretrained entry: pass one.")
    return found[0] if found else None


def _head_size(entry, state: Mapping[str, torch.Tensor], kwargs: Mapping[str, Any]) -> int:
    """The classifier size of a classifier checkpoint (0 when it has none), so that any head loads."""
    with torch.device("meta"):
        model = entry.builder(**kwargs)
    keys = model.head_keys() if hasattr(model, "head_keys") else []
    weight = state.get(keys[0]) if keys else None
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else 0


def _stage_groups(features: nn.Module, level_modules: Sequence[str]) -> List[List[nn.Module]]:
    """The feature model's children grouped by feature level: group 0 is everything up to and including
    level 0 (the stem), group i the modules after level i-1 up to level i. (timm's wrapper names a
    flattened ``blocks.2`` ``blocks_2``.)"""
    ends = set(level_modules) | {name.replace(".", "_") for name in level_modules}
    groups: List[List[nn.Module]] = [[]]
    for name, child in features.named_children():
        groups[-1].append(child)
        if name in ends:
            groups.append([])
    return groups[:-1] if not groups[-1] else groups


# --------------------------------------------------------------------------- mmcv-lite


class _LiteExt(types.ModuleType):
    """A stand-in for mmcv's compiled ``_ext``: ``nms`` on torchvision, every other op raises when called."""

    @staticmethod
    def nms(bboxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
        from torchvision.ops import nms

        if offset:  # mmcv's legacy box size (x2 - x1 + 1): shift the far corners
            bboxes = torch.cat([bboxes[:, :2], bboxes[:, 2:] + offset], dim=1)
        return nms(bboxes, scores, float(iou_threshold))

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise NotImplementedError(
                f"mmcv.ops needs the compiled op {name!r}, and mmcv-lite has no compiled ops. Install a compiled "
                "mmcv (`pip install repzoo[mm]` next to your own mmcv build) for models that use it."
            )

        unavailable.__name__ = name
        return unavailable


def patch_mmcv_lite() -> bool:
    """Let mmcv-lite stand in for mmcv: True when the stand-in ``mmcv._ext`` is (or already was) in place.

    Does nothing (False) when mmcv is not installed or a compiled ``mmcv._ext`` exists.
    """
    if isinstance(sys.modules.get("mmcv._ext"), _LiteExt):
        return True
    if importlib.util.find_spec("mmcv") is None:
        return False
    import mmcv

    if "mmcv._ext" in sys.modules or importlib.util.find_spec("mmcv._ext") is not None:
        return False  # compiled mmcv: leave it alone
    ext = _LiteExt("mmcv._ext", "repzoo's stand-in for mmcv's compiled ops (mmcv-lite)")
    sys.modules["mmcv._ext"] = ext
    mmcv._ext = ext
    return True
