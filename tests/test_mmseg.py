"""Real mmsegmentation segmentors (FPN + FPNHead, UPerNet) with repzoo backbones, built from configs/mmseg."""
from __future__ import annotations

import pytest
import torch

import repzoo
from repzoo.reparam import is_deploy

from openmmlab_helpers import build, load_config, optim_wrapper, rel, require, scope, seg_batch

require("mmseg")

CONFIGS = {
    "fpn_repopt_vgg_b1.py": ("FPNHead", "RepOpt-VGG-B1"),
    "upernet_repvgg_b0.py": ("UPerHead", "RepVGG-B0"),
}


@pytest.fixture(autouse=True)
def _mmseg(one_thread):
    with scope("mmseg"):
        yield


def _config(name, **backbone):
    cfg = load_config(f"mmseg/{name}")
    cfg.model.backbone.update(backbone)
    return cfg


def _in_channels(cfg):
    return (cfg.model.neck if "neck" in cfg.model else cfg.model.decode_head).in_channels


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_names_the_backbone_and_its_channels(name):
    from mmseg.registry import MODELS

    from repzoo.integrations.openmmlab import RepZooBackbone, stage_channels

    cfg = load_config(f"mmseg/{name}")
    assert cfg.custom_imports.imports == ["repzoo.integrations.mmseg"]
    assert MODELS.get("RepZooBackbone") is RepZooBackbone
    head, backbone = CONFIGS[name]
    assert cfg.model.decode_head.type == head and cfg.model.backbone.model_name == backbone
    assert _in_channels(cfg) == stage_channels(backbone, cfg.model.backbone.out_indices)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_segmentor_tensor_loss_predict_train_step_test_step(name):
    from mmseg.structures import SegDataSample

    torch.manual_seed(0)
    cfg = _config(name)
    model = build(cfg, "mmseg")
    assert type(model.decode_head).__name__ == CONFIGS[name][0]
    backbone = model.backbone
    data = seg_batch()  # batch 2: UPerHead's pooling BN cannot train on one image

    model.train()
    batch = model.data_preprocessor(data, True)
    feats = backbone(batch["inputs"])
    assert isinstance(feats, tuple) and [f.shape[1] for f in feats] == list(backbone.out_channels)

    # tensor mode: the decode head's logits at stride 4
    out = model(batch["inputs"], batch["data_samples"], mode="tensor")
    assert out.shape == (2, cfg.num_classes, 16, 16)

    # loss mode + backward
    losses = model(batch["inputs"], batch["data_samples"], mode="loss")
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    frozen = {id(p) for m in backbone.frozen_modules() for p in m.parameters()}
    assert (len(frozen) > 0) == (cfg.model.backbone.frozen_stages >= 0)
    for n, p in backbone.named_parameters():
        assert (p.grad is None) == (id(p) in frozen), n

    # train_step
    wrapper = optim_wrapper(model, cfg)
    model.zero_grad()
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    for _ in range(2):
        log = model.train_step(data, wrapper)
        assert torch.isfinite(log["loss"])
    for n, p in backbone.named_parameters():
        assert torch.equal(p, before[n]) == (id(p) in frozen), n

    # predict mode and test_step: a label map at the input's size
    model.eval()
    batch = model.data_preprocessor(data, False)
    preds = model(batch["inputs"], batch["data_samples"], mode="predict")
    results = model.test_step(data)
    for pred, result in zip(preds, results):
        assert isinstance(result, SegDataSample)
        assert result.pred_sem_seg.data.shape == (1, 64, 64)
        assert result.seg_logits.data.shape == (cfg.num_classes, 64, 64)
        assert int(result.pred_sem_seg.data.max()) < cfg.num_classes
        assert torch.allclose(pred.seg_logits.data, result.seg_logits.data)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reparameterize_the_fine_tuned_segmentor(name, float64):
    torch.manual_seed(0)
    cfg = _config(name)
    model = build(cfg, "mmseg")
    wrapper = optim_wrapper(model, cfg)
    data = seg_batch(seed=1)
    for _ in range(2):
        model.train_step(data, wrapper)
    model.eval()
    x = model.data_preprocessor(data, False)["inputs"].double()
    with torch.no_grad():
        feats = model.backbone(x)
        out = model(x, mode="tensor")
        repzoo.reparameterize(model)
        assert is_deploy(model.backbone)
        for a, b in zip(model.backbone(x), feats):
            assert rel(a, b) < 1e-10
        assert rel(model(x, mode="tensor"), out) < 1e-10
        # and the converted segmentor still predicts through test_step
        assert model.test_step(data)[0].pred_sem_seg.data.shape == (1, 64, 64)
