"""Any repzoo model as an OpenMMLab backbone (mmdetection, mmsegmentation), and the mmcv-lite layer.

:class:`RepZooBackbone` is an ``mmengine`` ``BaseModule`` that holds
``repzoo.create_model(model_name, features_only=True, out_indices=...)`` and returns a tuple of stage
feature maps. :func:`register` puts it in mmdetection's or mmsegmentation's ``MODELS`` (what
:mod:`repzoo.integrations.mmdet` / :mod:`repzoo.integrations.mmseg` call). :func:`stage_channels`
gives the channels of those maps, for the neck's ``in_channels``.

Weights come either from the manifest (``pretrained=True``) or from a file
(``init_cfg=dict(type="Pretrained", checkpoint=path)``); both go through repzoo's own loader —
official formats and wrappers, strict keys and shapes, a train-time file converted for a
``deploy=True`` backbone — not through mmengine's non-strict one. A whole-detector (segmentor)
checkpoint loaded by mmengine (``tools/test.py CONFIG CKPT``, ``load_from``) passes through the
backbone's load hook: a train-form backbone is converted for a ``deploy=True`` one, and keys of
neither form are refused rather than left at random weights.

:func:`patch_mmcv_lite` lets mmdet / mmseg import and run on mmcv-lite (mmcv without its compiled
ops): it registers a stand-in ``mmcv._ext`` (a real module spec and loader, so that mmengine's
``mmcv_full_available()`` and ``importlib`` find it) whose ``nms`` is ``torchvision.ops.nms`` and
whose other ops raise ``NotImplementedError`` when called. It does nothing when a compiled mmcv is
installed, or when mmcv is not installed at all.

:func:`allow_mmengine_checkpoints` allow-lists, for ``torch.load(weights_only=True)``, exactly the
classes that mmengine's ``CheckpointHook`` pickles into a checkpoint's ``meta``, so ``--resume``,
``tools/test.py`` and ``torch.load("epoch_12.pth")`` read mmengine's own files with the check on.

mmdetection's ``tools/test.py`` imports ``mmcv.ops`` before it reads a config, so run the tools
through this module (``python -m repzoo.integrations.openmmlab mmdet test CONFIG CKPT``): it puts
the layer in place, then runs the installed package's own ``tools/<tool>.py``.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import pickle
import runpy
import sys
import types
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule
from torch import nn

from ..errors import IncompatibleCheckpointError, InvalidArgumentError
from ..factory import create_model
from ..models.base import feature_indices
from ..reparam import convert_state_dict
from ..registry import resolve_name
from ..weights.adapters import adapt_state_dict, detect_key_style
from ..weights.checkpoint import checkpoint_form, load_checkpoint, read_state_dict

__all__ = ["RepZooBackbone", "stage_channels", "patch_mmcv_lite", "allow_mmengine_checkpoints", "register",
           "tool_path", "main"]

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
        if hasattr(self.model, "set_grad_checkpointing"):
            self.model.set_grad_checkpointing(with_cp)
        elif with_cp:
            raise InvalidArgumentError(f"with_cp=True: {model_name}'s feature model has no activation checkpointing; "
                                       "pass with_cp=False")
        self._freeze_stages()
        self._register_load_state_dict_pre_hook(self._convert_on_load)

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

    def _convert_on_load(self, state_dict, prefix, *args) -> None:
        """Before ``load_state_dict`` (torch's or mmengine's non-strict one) reads this backbone's keys from a
        whole model's state dict: a train-form backbone is converted in place for a deploy backbone; keys that
        are of neither form are refused (mmengine would only warn, and evaluate random weights)."""
        mine = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not mine:
            return  # nothing of the backbone in this file (a neck-only file, a partial load): mmengine reports it
        local = {k[len(prefix):]: v for k, v in mine.items()}
        own = set(self.state_dict())
        if set(local) == own:
            return
        if self.deploy and checkpoint_form(self, local) == "train":
            converted = convert_state_dict(self, local)
            for k in mine:
                del state_dict[k]
            state_dict.update({prefix + k: v for k, v in converted.items()})
            return
        form = "deploy" if not self.deploy and checkpoint_form(self, local) == "deploy" else None
        missing, unexpected = sorted(own - set(local)), sorted(set(local) - own)
        what = (f"a deploy-form (converted) {self.model_name}: build the backbone with deploy=True "
                "(--cfg-options model.backbone.deploy=True)" if form else
                f"not {self.model_name} in either form ({len(missing)} missing, e.g. {missing[:3]}; "
                f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}): check model_name and out_indices")
        raise IncompatibleCheckpointError(f"The checkpoint's {prefix or 'backbone '}keys are {what}.")

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


class _LiteLoader(importlib.abc.Loader):
    """The loader of the stand-in ``mmcv._ext`` (so ``importlib.util.find_spec`` / ``pkgutil.find_loader``
    and ``importlib.reload`` treat it as the module it replaces)."""

    def create_module(self, spec):
        return _LiteExt(spec.name, "repzoo's stand-in for mmcv's compiled ops (mmcv-lite)")

    def exec_module(self, module) -> None:
        return None


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
    spec = importlib.machinery.ModuleSpec("mmcv._ext", _LiteLoader(), origin="repzoo.integrations.openmmlab")
    ext = importlib.util.module_from_spec(spec)
    sys.modules["mmcv._ext"] = ext
    mmcv._ext = ext
    return True


# --------------------------------------------------------------------------- mmengine's checkpoints


def _history_buffer_statistic(owner, name: str):
    """The one ``getattr`` an mmengine checkpoint pickles: a ``HistoryBuffer`` pickles its table of statistics
    (``min``, ``max``, ``mean``, ``current``) as ``getattr(HistoryBuffer, name)``. Allow-listed under the name
    ``builtins.getattr`` in place of the built-in, it gives those and refuses anything else (the built-in would
    reach any attribute of anything, which is how a pickle runs code)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    statistics = {"min", "max", "mean", "current", *HistoryBuffer._statistics_methods}  # (filled lazily)
    if owner is HistoryBuffer and isinstance(name, str) and name in statistics:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"refused: getattr({owner!r}, {name!r}) (an mmengine checkpoint only asks "
                                 "for HistoryBuffer's statistics)")


def _mmengine_checkpoint_globals() -> list:
    """What mmengine 0.10's ``CheckpointHook`` pickles besides tensors and plain containers (measured with
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` on mmdet's and mmseg's ``tools/train.py``
    checkpoints): the message hub's ``HistoryBuffer`` with its numpy arrays of logged scalars, and its
    statistics table (see :func:`_history_buffer_statistic`)."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray
    numpy_globals = []
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2's name and numpy 1's
        numpy_globals += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    # the dtypes of the logged arrays (float64 values, int64 counts) and of numpy scalars logged as they are
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return [HistoryBuffer, (_history_buffer_statistic, "builtins.getattr"), (np.ndarray, "numpy.ndarray"),
            (np.dtype, "numpy.dtype"), *dtypes, *numpy_globals]


def allow_mmengine_checkpoints() -> None:
    """Allow-list, for ``torch.load(weights_only=True)``, exactly the globals mmengine writes into its
    checkpoints (never turning the check off); idempotent."""
    torch.serialization.add_safe_globals(_mmengine_checkpoint_globals())


# --------------------------------------------------------------------------- registries and tools

_LIBRARIES = ("mmdet", "mmseg")


def register(library: str):
    """Put :class:`RepZooBackbone` in ``library``'s ``MODELS`` (``"mmdet"`` or ``"mmseg"``), after the mmcv-lite
    layer and the checkpoint allow-list; returns that registry."""
    if library not in _LIBRARIES:
        raise InvalidArgumentError(f"library={library!r}: one of {', '.join(_LIBRARIES)}")
    patch_mmcv_lite()
    allow_mmengine_checkpoints()
    models = importlib.import_module(f"{library}.registry").MODELS
    models.register_module(name="RepZooBackbone", module=RepZooBackbone, force=True)
    return models


def tool_path(library: str, tool: str) -> str:
    """The path of ``library``'s own ``tools/<tool>.py`` as the package installs it (``<mmdet>/.mim/tools``)."""
    if library not in _LIBRARIES:
        raise InvalidArgumentError(f"library={library!r}: one of {', '.join(_LIBRARIES)}")
    spec = importlib.util.find_spec(library)
    if spec is None or not spec.origin:
        raise InvalidArgumentError(f"{library} is not installed: pip install 'repzoo[mm-lite]' (or 'repzoo[mm]').")
    tools = os.path.join(os.path.dirname(spec.origin), ".mim", "tools")
    path = os.path.join(tools, tool if tool.endswith(".py") else tool + ".py")
    if not os.path.isfile(path):
        found = sorted(f[:-3] for f in os.listdir(tools) if f.endswith(".py")) if os.path.isdir(tools) else []
        raise InvalidArgumentError(f"{library} has no tools/{tool}.py (it has: {', '.join(found) or 'no tools'}); "
                                   "a sub-folder's tool is named as in analysis_tools/get_flops")
    return path


USAGE = """usage: python -m repzoo.integrations.openmmlab {mmdet,mmseg} TOOL [ARGS ...]

Runs the installed library's own tools/TOOL.py (train, test, analysis_tools/get_flops, ...) with ARGS,
after registering RepZooBackbone, the mmcv-lite layer and the allow-list of mmengine's checkpoint globals.
  python -m repzoo.integrations.openmmlab mmdet train configs/mmdet/retinanet_repvgg_a0_fpn_1x_coco.py
  python -m repzoo.integrations.openmmlab mmdet test CONFIG work_dirs/.../epoch_12.pth
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m repzoo.integrations.openmmlab LIBRARY TOOL ARGS...``: the tool runs as its own ``__main__``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] not in _LIBRARIES:
        sys.stderr.write(USAGE)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    library, tool, args = argv[0], argv[1], argv[2:]
    path = tool_path(library, tool)
    register(library)
    saved = sys.argv
    sys.argv = [path, *args]
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":  # the module as imported by name, so its classes are the ones the registries hold
    from repzoo.integrations.openmmlab import main as _main

    sys.exit(_main())
