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


def write_coco(root, n_train: int = 4, n_val: int = 2, size: int = SIZE) -> None:
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
            for _ in range(2):
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
            for y, x in ((0, 0), (0, q), (q, 0), (q, q)):
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
randomness = dict(seed=0)
# a random backbone under norm_eval: a smaller step, clipped, so a few iterations stay finite
optim_wrapper = dict(_delete_=True, type="OptimWrapper", clip_grad=dict(max_norm=10, norm_type=2),
                     optimizer=dict(type="SGD", lr=0.002, momentum=0.9, weight_decay=0.0001))
'''
    if library == "mmdet":
        text = common + f'''metainfo = dict(classes=("a", "b", "c"))
model = dict(backbone=dict(pretrained=False), neck=dict(out_channels=32),
             test_cfg=dict(score_thr=0.0),  # a few iterations score below 0.05: keep the boxes, so mAP is measured
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
train_cfg = dict(max_epochs=1, val_begin=100, val_interval=100)  # no validation while training
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
train_cfg = dict(max_iters=2, val_begin=100, val_interval=100)
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


# --------------------------------------------------------------------------- configs/ and the doc

FULL_CONFIGS = {  # config -> (library, model fragment, backbone, dataset type, schedule length)
    "mmdet/retinanet_repvgg_a0_fpn_1x_coco.py": ("mmdet", "retinanet_repvgg_a0_fpn.py", "RepVGG-A0", "CocoDataset", 12),
    "mmdet/fcos_repghostnet_1_0x_fpn_1x_coco.py": ("mmdet", "fcos_repghostnet_1_0x_fpn.py", "RepGhostNet-1.0x",
                                                   "CocoDataset", 12),
    "mmdet/retinanet_orepa_resnet_50_fpn_1x_coco.py": ("mmdet", "retinanet_orepa_resnet_50_fpn.py", "OREPA-ResNet-50",
                                                       "CocoDataset", 12),
    "mmseg/upernet_repvgg_b0_4xb4-160k_ade20k-512x512.py": ("mmseg", "upernet_repvgg_b0.py", "RepVGG-B0",
                                                            "ADE20KDataset", 160000),
    "mmseg/fpn_repopt_vgg_b1_4xb4-160k_ade20k-512x512.py": ("mmseg", "fpn_repopt_vgg_b1.py", "RepOpt-VGG-B1",
                                                            "ADE20KDataset", 160000),
    "mmseg/upernet_orepa_resnet_50_4xb2-80k_cityscapes-512x1024.py": ("mmseg", "upernet_orepa_resnet_50.py",
                                                                      "OREPA-ResNet-50", "CityscapesDataset", 80000),
    "mmseg/upernet_repmlpnet_b256_4xb2-80k_cityscapes-512x1024.py": ("mmseg", "upernet_repmlpnet_b256.py",
                                                                     "RepMLPNet-B256", "CityscapesDataset", 80000),
}

# What the default-tier tests shrink in a model fragment (small heads, few classes, no download, plain BN: a
# model built outside a Runner keeps SyncBN, which needs a process group).
_BN = dict(type="BN", requires_grad=True)
SMALL = {
    "mmdet": dict(neck=dict(out_channels=32), bbox_head=dict(num_classes=3, in_channels=32, feat_channels=32,
                                                             stacked_convs=2)),
    "mmseg": dict(data_preprocessor=dict(size=(SIZE, SIZE)), decode_head=dict(num_classes=4, channels=32, norm_cfg=_BN),
                  auxiliary_head=dict(num_classes=4, channels=16, norm_cfg=_BN)),
}


def small_model_config(library: str, fragment: str, **backbone):
    """A model fragment of configs/<library>/_base_/models, shrunk by :data:`SMALL`, ``pretrained=False``
    (no download) unless given, and ``backbone`` merged into its backbone."""
    cfg = load_config(f"{library}/_base_/models/{fragment}")
    small = dict(SMALL[library])
    if library == "mmseg" and "neck" in cfg.model:  # Semantic FPN: a neck, no auxiliary head
        small = dict(data_preprocessor=dict(size=(SIZE, SIZE)), neck=dict(out_channels=32),
                     decode_head=dict(num_classes=4, channels=16, norm_cfg=_BN, in_channels=[32] * 4))
    if library == "mmdet" and "norm_cfg" in cfg.model.bbox_head:  # FCOS's GN head: 32 groups of 32 channels
        gn = dict(cfg.model.bbox_head.norm_cfg, num_groups=8)  # would hold 1 value each at the 1x1 level
        small["bbox_head"] = dict(small["bbox_head"], norm_cfg=gn)
    cfg.merge_from_dict(dict(model=dict(small, backbone=dict(dict(pretrained=False), **backbone))))
    return cfg


def sgd(model, lr: float = 0.01):
    """The optimizer wrapper the configs' schedules use (SGD, momentum 0.9)."""
    from mmengine.optim import OptimWrapper

    return OptimWrapper(torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4))


DOC = REPO_ROOT / "docs" / "detection_segmentation.md"


def doc_blocks(lang: str = "python") -> list:
    import re

    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def doc_commands() -> str:
    """The doc's block of tool commands (the one that sets ``CONFIG=``)."""
    found = [b for b in doc_blocks("bash") if "\nCONFIG=" in "\n" + b]
    assert len(found) == 1, "docs/detection_segmentation.md: one bash block sets CONFIG="
    return found[0]


# --------------------------------------------------------------------------- the round trip through the tools


def _numbers(log: str, key: str) -> list:
    import re

    return [float(v) for v in re.findall(rf"(?<![\w/.]){re.escape(key)}: (-?[0-9.]+)", log)]


def tools_round_trip(library: str, config: str, tmp_path) -> dict:
    """The doc's commands, as written (``mmseg`` in place of ``mmdet`` for mmseg), on a tiny data set and a
    tiny config that inherits ``config``: train (frozen_stages=1, norm_eval) → resume (with_cp) → test → test
    with ``deploy=True`` from the train checkpoint → the doc's conversion script (convert, save, reload).
    Returns the logs' figures."""
    import re
    import shlex

    data = tmp_path / "data"
    (write_coco if library == "mmdet" else write_ade)(data)
    tiny = tmp_path / "tiny.py"
    tiny_config(tiny, CONFIGS / config.split("/", 1)[1] if config.startswith("configs/") else CONFIGS / config,
                library, data)
    bash = doc_commands()
    doc_config = re.search(r"^CONFIG=(\S+)$", bash, flags=re.M).group(1)
    commands = [shlex.split(line)[3:] for line in bash.splitlines() if line.startswith("python -m ")]
    assert [c[:2] for c in commands] == [["mmdet", "train"]] * 2 + [["mmdet", "test"]] * 2
    last, epochs = ("epoch_1.pth", "epoch_2.pth") if library == "mmdet" else ("iter_2.pth", "iter_4.pth")
    length = "train_cfg.max_epochs" if library == "mmdet" else "train_cfg.max_iters"

    def argv(command, *extra):
        out = [library, *command[1:]]
        out = [str(tiny) if a == "$CONFIG" else a.replace("work_dirs/retinanet", str(tmp_path / "work"))
               .replace("epoch_12.pth", epochs) for a in out]
        return out + list(extra)

    figures = dict(doc_config=doc_config)
    log = run_tool(argv(commands[0], "--cfg-options", f"{length}={1 if library == 'mmdet' else 2}",
                        "model.backbone.frozen_stages=1", "model.backbone.norm_eval=True"), tmp_path)
    assert (tmp_path / "work" / last).is_file(), log[-3000:]
    figures["first_losses"] = _numbers(log, "loss")
    log = run_tool(argv(commands[1], "--cfg-options", f"{length}={2 if library == 'mmdet' else 4}",
                        "model.backbone.with_cp=True"), tmp_path)
    figures["resumed"] = re.findall(r"resumed epoch: \d+, iter: \d+", log)
    figures["last_losses"] = _numbers(log, "loss")
    assert (tmp_path / "work" / epochs).is_file(), log[-3000:]
    metric = "coco/bbox_mAP" if library == "mmdet" else "mIoU"
    for name, command in (("test", commands[2]), ("test_deploy", commands[3])):
        log = run_tool(argv(command), tmp_path)
        figures[name] = _numbers(log, metric)
        figures[name + "_line"] = [line for line in log.splitlines() if f"{metric}: " in line][-1:]
        assert "unexpected key" not in log and "missing keys" not in log, log[-3000:]

    # the doc's conversion script, with its two paths
    script = doc_blocks()[[i for i, b in enumerate(doc_blocks()) if "CHECKPOINT = " in b][0]]
    ckpt = tmp_path / "work" / epochs
    script = re.sub(r'^CONFIG = ".*"$', f"CONFIG = {str(tiny)!r}", script, flags=re.M)
    script = re.sub(r'^CHECKPOINT = ".*"$', f"CHECKPOINT = {str(ckpt)!r}", script, flags=re.M)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    figures["deploy_difference"] = float(re.search(r"deploy difference: (\S+)", done.stdout).group(1))
    figures["reloaded"] = "reloaded: identical outputs" in done.stdout
    assert ckpt.with_name(ckpt.stem + "_deploy.pth").is_file()
    return figures
