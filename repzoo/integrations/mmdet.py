"""Registers :class:`~repzoo.integrations.openmmlab.RepZooBackbone` in mmdetection's ``MODELS``.

In a config::

    custom_imports = dict(imports=["repzoo.integrations.mmdet"], allow_failed_imports=False)

(the model fragments of ``configs/mmdet/_base_/models`` carry it). :func:`~repzoo.integrations.openmmlab.register`
puts the mmcv-lite layer and the checkpoint allow-list in place first; mmsegmentation need not be installed.
"""
from .openmmlab import RepZooBackbone, register, stage_channels

MODELS = register("mmdet")

__all__ = ["RepZooBackbone", "stage_channels", "MODELS"]
