"""Integrations with other libraries; nothing here is imported by ``import repzoo``.

* :mod:`repzoo.integrations.timm` — repzoo models in timm's registry (``repzoo_`` prefix);
* :mod:`repzoo.integrations.export` — ONNX / TorchScript / ``torch.export`` of deploy models, checked;
* :mod:`repzoo.integrations.quantize` — post-training int8 of deploy models (``torch.ao`` FX graph mode, x86),
  the fp32 → int8 output drift, and the kernel and activation ranges that decide it;
* :mod:`repzoo.integrations.mmdet` — registers ``RepZooBackbone`` in mmdetection's ``MODELS``;
* :mod:`repzoo.integrations.mmseg` — the same for mmsegmentation;
* :mod:`repzoo.integrations.openmmlab` — the backbone itself (independent of which registry),
  :func:`~repzoo.integrations.openmmlab.stage_channels` for a neck's ``in_channels``, the
  mmcv-lite compatibility layer, the allow-list of mmengine's checkpoint globals, and the runner of the
  libraries' own tools (``python -m repzoo.integrations.openmmlab mmdet train CONFIG``).

In an OpenMMLab config: ``custom_imports = dict(imports=["repzoo.integrations.mmdet"])`` (or ``...mmseg``).
"""
