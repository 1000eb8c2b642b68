"""Registers :class:`~repzoo.integrations.openmmlab.RepZooBackbone` in mmdetection's ``MODELS``.

In a config::

    custom_imports = dict(imports=["repzoo.integrations.mmdet"], allow_failed_imports=False)
    model = dict(type="RetinaNet", backbone=dict(type="RepZooBackbone", model_name="RepVGG-A0"), ...)

On mmcv-lite the compiled ops mmdet imports are stood in for first (see
:func:`~repzoo.integrations.openmmlab.patch_mmcv_lite`); mmsegmentation need not be installed.
"""
from .openmmlab import RepZooBackbone, patch_mmcv_lite, stage_channels

patch_mmcv_lite()

from mmdet.registry import MODELS  # noqa: E402  (after the mmcv-lite layer)

MODELS.register_module(name="RepZooBackbone", module=RepZooBackbone, force=True)

__all__ = ["RepZooBackbone", "stage_channels", "MODELS"]
