"""Registers :class:`~repzoo.integrations.openmmlab.RepZooBackbone` in mmsegmentation's ``MODELS``.

In a config::

    custom_imports = dict(imports=["repzoo.integrations.mmseg"], allow_failed_imports=False)
    model = dict(type="EncoderDecoder", backbone=dict(type="RepZooBackbone", model_name="RepVGG-A0"), ...)

On mmcv-lite the compiled ops mmseg imports are stood in for first (see
:func:`~repzoo.integrations.openmmlab.patch_mmcv_lite`); mmdetection need not be installed.
"""
from .openmmlab import RepZooBackbone, patch_mmcv_lite, stage_channels

patch_mmcv_lite()

from mmseg.registry import MODELS  # noqa: E402  (after the mmcv-lite layer)

MODELS.register_module(name="RepZooBackbone", module=RepZooBackbone, force=True)

__all__ = ["RepZooBackbone", "stage_channels", "MODELS"]
