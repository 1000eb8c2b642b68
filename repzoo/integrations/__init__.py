"""Integrations with other libraries; nothing here is imported by ``import repzoo``.

* :mod:`repzoo.integrations.mmdet` — registers ``RepZooBackbone`` in mmdetection's ``MODELS``;
* :mod:`repzoo.integrations.mmseg` — the same for mmsegmentation;
* :mod:`repzoo.integrations.openmmlab` — the backbone itself (independent of which registry),
  :func:`~repzoo.integrations.openmmlab.stage_channels` for a neck's ``in_channels``, and the
  mmcv-lite compatibility layer.

In a config: ``custom_imports = dict(imports=["repzoo.integrations.mmdet"])`` (or ``...mmseg``).
"""
