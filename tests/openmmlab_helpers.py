"""Shared by the mmdetection / mmsegmentation tests: the libraries (required in CI), configs, tiny batches."""
from __future__ import annotations

import contextlib
import subprocess
import sys
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


# --------------------------------------------------------------------------- the real tools on tiny data sets

TOOL = [sys.executable, "-m", "repzoo.integrations.openmmlab"]  # what docs/detection_segmentation.md runs
COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]


def write_coco(root, n_train: int = 6, n_val: int = 2, size: int = SIZE) -> None:
    """A COCO-format detection set: coloured boxes of 3 classes on noise, ``images/`` + ``train.json`` /
    ``val.json`` (mmdet's CocoDataset layout)."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    cats = [dict(id=i + 1, name=name) for i, name in enumerate(("a", "b", "c"))]
    ann_id = 0
    for split, count, offset in (("train", n_train, 0), ("val", n_val, n_train)):
        images, anns = [], []
        for i in range(offset, offset + count):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            for j in range(2):
                c = int(rng.integers(0, 3))
                w, h = (int(v) for v in rng.integers(14, 28, 2))
                x, y = (int(v) for v in rng.integers(0, size - 28, 2))
                img[y:y + h, x:x + w] = COLORS[c]
                ann_id += 1
                anns.append(dict(id=ann_id, image_id=i, category_id=c + 1, bbox=[x, y, w, h], area=w * h, iscrowd=0))
            Image.fromarray(img).save(root / "images" / f"{i}.jpg", quality=95)
            images.append(dict(id=i, file_name=f"{i}.jpg", width=size, height=size))
        (root / f"{split}.json").write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))


ADE_CLASSES = ("wall", "building", "sky", "floor")  # ADE20K's first four classes, kept through `metainfo`


def write_ade(root, n_train: int = 4, n_val: int = 2, size: int = SIZE) -> None:
    """A segmentation set in mmseg's ADE20K layout (``images/{training,validation}/*.jpg``,
    ``annotations/.../*.png``, 0 = unlabelled, ADE20K ids 1.. = wall, building, sky, floor, tree):
    the tree (id 5) is outside the 4 classes kept by ``metainfo`` and is ignored."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("training", n_train), ("validation", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            label = np.zeros((size, size), dtype=np.uint8)
            img = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
            q = size // 2
            for k, (y, x) in enumerate(((0, 0), (0, q), (q, 0), (q, q))):
                cls = int(rng.integers(1, 6))
                label[y:y + q, x:x + q] = cls
                img[y:y + q, x:x + q] = (COLORS + [(200, 200, 200)])[cls - 1]
            label[:4] = 0
            Image.fromarray(img).save(root / "images" / split / f"{i}.jpg", quality=95)
            Image.fromarray(label).save(root / "annotations" / split / f"{i}.png")


def tiny_config(path, base, library: str, data_root) -> None:
    """A config that inherits ``base`` (one of configs/) as a user's own would, and only shrinks it: the tiny
    data set, small images and heads, no download (``pretrained=False``), a few iterations, frequent logs and
    checkpoints, no worker processes."""
    common = f'''_base_ = [{str(base)!r}]
data_root = {str(data_root) + "/"!r}
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
'''
    if library == "mmdet":
        text = common + f'''metainfo = dict(classes=("a", "b", "c"))
model = dict(backbone=dict(pretrained=False), neck=dict(out_channels=32),
             bbox_head=dict(num_classes=3, in_channels=32, feat_channels=32, stacked_convs=1))
train_pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True),
                  dict(type="Resize", scale=({SIZE}, {SIZE}), keep_ratio=True), dict(type="RandomFlip", prob=0.5),
                  dict(type="PackDetInputs")]
test_pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=({SIZE}, {SIZE}), keep_ratio=True),
                 dict(type="LoadAnnotations", with_bbox=True),
                 dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))]
loader = dict(num_workers=0, persistent_workers=False)
train_dataloader = dict(batch_size=2, **loader, dataset=dict(data_root=data_root, metainfo=metainfo,
    ann_file="train.json", data_prefix=dict(img="images/"), filter_cfg=dict(min_size=8), pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, **loader, dataset=dict(data_root=data_root, metainfo=metainfo, ann_file="val.json",
    data_prefix=dict(img="images/"), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + "val.json")
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=100)
param_scheduler = [dict(type="ConstantLR", factor=1.0, by_epoch=True, begin=0, end=100)]
'''
    else:
        text = common + f'''crop_size = ({SIZE}, {SIZE})
metainfo = dict(classes={ADE_CLASSES!r}, palette=[[120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50]])
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(pretrained=False),
             decode_head=dict(num_classes=4, channels=32), auxiliary_head=dict(num_classes=4, channels=16))
train_pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=True),
                  dict(type="Resize", scale=crop_size, keep_ratio=True), dict(type="RandomFlip", prob=0.5),
                  dict(type="PackSegInputs")]
test_pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=crop_size, keep_ratio=True),
                 dict(type="LoadAnnotations", reduce_zero_label=True), dict(type="PackSegInputs")]
loader = dict(num_workers=0, persistent_workers=False)
train_dataloader = dict(batch_size=2, **loader, dataset=dict(data_root=data_root, metainfo=metainfo,
    data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"), pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, **loader, dataset=dict(data_root=data_root, metainfo=metainfo,
    data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"), pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=2, val_interval=100)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, by_epoch=False))
'''
    path.write_text(text)


def run_tool(args, cwd, timeout: int = 300) -> str:
    """``python -m repzoo.integrations.openmmlab LIBRARY TOOL ARGS`` in a fresh process; its whole log."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    done = subprocess.run([*TOOL, *map(str, args)], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    return log
