"""Shared by the mmdetection / mmsegmentation tests: the libraries (required in CI), configs, tiny batches."""
from __future__ import annotations

import contextlib
import logging
import os

import pytest
import torch

from conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"
SIZE = 64  # every test image is SIZE x SIZE


def require(module: str):
    """Import ``module``; skipped where it is not installed, except in CI (``.ci/run`` installs the
    ``test`` extra, which brings the whole OpenMMLab stack: a missing library there is a failure)."""
    if os.environ.get("CI"):
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)


def load_config(relative: str):
    """A config of ``configs/`` (its ``custom_imports`` register the backbone), with the mmengine
    logger quietened (it logs every parameter's initialization at INFO)."""
    from mmengine.config import Config
    from mmengine.logging import MMLogger

    MMLogger.get_current_instance().setLevel(logging.WARNING)
    return Config.fromfile(str(CONFIGS / relative))


@contextlib.contextmanager
def scope(name: str):
    """mmengine's default scope (what a Runner sets from ``default_scope``), for the duration."""
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope(name):
        yield


def build(cfg, library: str):
    """Build ``cfg.model`` with the library's registry and initialize it (heads' priors, weights)."""
    registry = __import__(f"{library}.registry", fromlist=["MODELS"]).MODELS
    model = registry.build(cfg.model)
    model.init_weights()
    return model


def _images(n: int, generator: torch.Generator):
    return [torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=generator) for _ in range(n)]


def det_batch(n: int = 2, seed: int = 0) -> dict:
    """A batch as mmdet's data pipeline gives it: uint8 images and ``DetDataSample`` s with boxes."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        s = DetDataSample(metainfo=dict(img_id=i, img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE),
                                        scale_factor=(1.0, 1.0)))
        x1y1 = torch.rand(2, 2, generator=g) * SIZE / 2
        wh = 12 + torch.rand(2, 2, generator=g) * SIZE / 3
        s.gt_instances = InstanceData(bboxes=torch.cat([x1y1, x1y1 + wh], 1), labels=torch.tensor([0, 2]))
        samples.append(s)
    return dict(inputs=_images(n, g), data_samples=samples)


def seg_batch(n: int = 2, seed: int = 0, num_classes: int = 4) -> dict:
    """A batch as mmseg's data pipeline gives it: uint8 images and ``SegDataSample`` s with label maps."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        s = SegDataSample(metainfo=dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, SIZE, SIZE), generator=g))
        samples.append(s)
    return dict(inputs=_images(n, g), data_samples=samples)


def optim_wrapper(model, cfg):
    from mmengine.optim import build_optim_wrapper

    return build_optim_wrapper(model, cfg.optim_wrapper)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def flat_outputs(out) -> list:
    """The tensors of a tensor-mode output (nested tuples / lists of tensors), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in flat_outputs(o)]
