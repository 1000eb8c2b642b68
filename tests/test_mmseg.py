"""Real mmsegmentation segmentors (FPN + FPNHead, UPerNet) with repzoo backbones, built from configs/mmseg's model
fragments; and mmseg's own tools/train.py and tools/test.py on a tiny ADE20K-layout set (heavy tier)."""
from __future__ import annotations

import pytest
import torch

import repzoo
from repzoo.reparam import is_deploy

from openmmlab_helpers import build, rel, require, scope, seg_batch, sgd, small_model_config, tools_round_trip

require("mmseg")

CONFIGS = {  # model fragments of configs/mmseg/_base_/models
    "fpn_repopt_vgg_b1.py": ("FPNHead", "RepOpt-VGG-B1"),
    "upernet_repvgg_b0.py": ("UPerHead", "RepVGG-B0"),
}
FROZEN = {"fpn_repopt_vgg_b1.py": 2, "upernet_repvgg_b0.py": -1}  # one with frozen stages, one without


@pytest.fixture(autouse=True)
def _mmseg(one_thread):
    with scope("mmseg"):
        yield


def _config(name, **backbone):
    return small_model_config("mmseg", name, **dict(dict(frozen_stages=FROZEN[name]), **backbone))


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
    assert out.shape == (2, 4, 16, 16)

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
    wrapper = sgd(model)
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
        assert result.seg_logits.data.shape == (4, 64, 64)
        assert int(result.pred_sem_seg.data.max()) < 4
        assert torch.allclose(pred.seg_logits.data, result.seg_logits.data)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reparameterize_the_fine_tuned_segmentor(name, float64):
    torch.manual_seed(0)
    cfg = _config(name)
    model = build(cfg, "mmseg")
    wrapper = sgd(model)
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


@pytest.mark.heavy
def test_mmseg_tools_train_resume_test_deploy(tmp_path):
    """mmseg's own tools/train.py and tools/test.py, run as docs/detection_segmentation.md runs them, on a tiny
    ADE20K-layout set (4 classes through metainfo) with a config that inherits
    configs/mmseg/upernet_repvgg_b0_4xb4-160k_ade20k-512x512.py."""
    figures = tools_round_trip("mmseg", "mmseg/upernet_repvgg_b0_4xb4-160k_ade20k-512x512.py", tmp_path)
    print(figures)
    assert figures["resumed"] == ["resumed epoch: 0, iter: 2"]
    assert len(figures["first_losses"]) == len(figures["last_losses"]) == 2
    assert all(0 < v < 100 for v in figures["first_losses"] + figures["last_losses"])
    (test,), (deploy,) = figures["test"], figures["test_deploy"]
    assert 0 <= test <= 100 and abs(deploy - test) <= 0.01
    assert figures["deploy_difference"] < 1e-5 and figures["reloaded"]
