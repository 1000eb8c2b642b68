"""Real mmdetection detectors (RetinaNet, FCOS, with FPN) with repzoo backbones, built from configs/mmdet's model
fragments; and mmdet's own tools/train.py and tools/test.py on a tiny COCO-format set (heavy tier)."""
from __future__ import annotations

import pytest
import torch

import repzoo
from repzoo.reparam import is_deploy

from conftest import randomize_bn
from openmmlab_helpers import (build, det_batch, flat_outputs, rel, require, scope, sgd, small_model_config,
                               tools_round_trip)

require("mmdet")

CONFIGS = {  # model fragments of configs/mmdet/_base_/models
    "retinanet_repvgg_a0_fpn.py": ("RetinaNet", "RepVGG-A0"),
    "fcos_repghostnet_1_0x_fpn.py": ("FCOS", "RepGhostNet-1.0x"),
}


@pytest.fixture(autouse=True)
def _mmdet(one_thread):
    with scope("mmdet"):
        yield


def _config(name, **backbone):
    cfg = small_model_config("mmdet", name, **backbone)
    cfg.model.test_cfg.score_thr = 0.0  # untrained heads score below 0.05: keep boxes, so NMS runs
    return cfg


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_detector_tensor_loss_predict_train_step_test_step(name):
    from mmdet.structures import DetDataSample

    torch.manual_seed(0)
    cfg = _config(name)
    model = build(cfg, "mmdet")
    assert type(model).__name__ == CONFIGS[name][0]
    backbone = model.backbone
    data = det_batch()

    model.train()
    batch = model.data_preprocessor(data, True)
    feats = backbone(batch["inputs"])
    assert isinstance(feats, tuple) and [f.shape[1] for f in feats] == list(backbone.out_channels)
    assert [64 // f.shape[-1] for f in feats] == list(backbone.out_strides) == [4, 8, 16, 32]

    # tensor mode: the raw head outputs (per level) of the whole network
    out = model(batch["inputs"], batch["data_samples"], mode="tensor")
    assert isinstance(out, tuple) and all(len(level) == 5 for level in out)

    # loss mode + backward: gradients reach the trainable backbone, not its frozen stages
    losses = model(batch["inputs"], batch["data_samples"], mode="loss")
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(x.sum() for x in v) for k, v in losses.items()
                if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    frozen = {id(p) for m in backbone.frozen_modules() for p in m.parameters()}
    assert (len(frozen) > 0) == (cfg.model.backbone.frozen_stages >= 0)
    for n, p in backbone.named_parameters():
        if id(p) in frozen:
            assert not p.requires_grad and p.grad is None, n
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, n

    # train_step: optimizer steps change the backbone's trainable weights, not its frozen ones
    wrapper = sgd(model)
    model.zero_grad()
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    for _ in range(2):
        log = model.train_step(data, wrapper)
        assert torch.isfinite(log["loss"])
    for n, p in backbone.named_parameters():
        assert torch.equal(p, before[n]) == (id(p) in frozen), n

    # predict mode and test_step: DetDataSamples with boxes in the image
    model.eval()
    batch = model.data_preprocessor(data, False)
    preds = model(batch["inputs"], batch["data_samples"], mode="predict")
    results = model.test_step(data)
    for pred, result in zip(preds, results):
        assert isinstance(result, DetDataSample)
        boxes = result.pred_instances.bboxes
        assert 0 < len(boxes) <= cfg.model.test_cfg.max_per_img
        assert boxes.min() >= 0 and boxes.max() <= 64
        assert torch.allclose(pred.pred_instances.scores, result.pred_instances.scores)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reparameterize_the_fine_tuned_detector(name, float64):
    """A few train steps (BN statistics and weights move), then ``repzoo.reparameterize(detector)``
    converts the backbone inside the detector: the same features and outputs in float64."""
    torch.manual_seed(0)
    cfg = _config(name, frozen_stages=-1, norm_eval=False)
    model = build(cfg, "mmdet")
    wrapper = sgd(model)
    data = det_batch(seed=1)
    for _ in range(3):
        model.train_step(data, wrapper)
    model.eval()
    x = model.data_preprocessor(data, False)["inputs"].double()
    with torch.no_grad():
        feats = model.backbone(x)
        out = flat_outputs(model(x, mode="tensor"))
        assert not is_deploy(model.backbone)
        assert repzoo.reparameterize(model) is model
        assert is_deploy(model.backbone)
        for a, b in zip(model.backbone(x), feats):
            assert rel(a, b) < 1e-10
        after = flat_outputs(model(x, mode="tensor"))
    assert len(after) == len(out) and max(rel(a, b) for a, b in zip(after, out)) < 1e-10


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_deploy_detector_from_a_train_checkpoint(name, float64, tmp_path):
    """The deploy form built from the config (``deploy=True``): a fine-tuned train-time detector's
    file, converted by ``repzoo.convert_state_dict`` (whole detector) or loaded into the backbone
    through ``init_cfg=Pretrained(prefix='backbone.')``, gives the same features and outputs."""
    torch.manual_seed(0)
    cfg = _config(name)
    train = build(cfg, "mmdet")
    train.train_step(det_batch(seed=2), sgd(train))
    randomize_bn(train.backbone)  # norm_eval kept the statistics at their init: give them trained ones
    train.eval()
    path = tmp_path / "detector.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": train.state_dict()}, path)
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)

    deploy = build(_config(name, deploy=True), "mmdet").eval()
    assert is_deploy(deploy.backbone) and set(deploy.state_dict()) != set(train.state_dict())
    deploy.load_state_dict(repzoo.convert_state_dict(deploy, train.state_dict()))
    with torch.no_grad():
        ref, got = flat_outputs(train(x, mode="tensor")), flat_outputs(deploy(x, mode="tensor"))
        assert max(rel(a, b) for a, b in zip(got, ref)) < 1e-10

        backbone_cfg = _config(name, deploy=True, init_cfg=dict(type="Pretrained", checkpoint=str(path),
                                                                prefix="backbone."))
        fresh = build(backbone_cfg, "mmdet").eval()
        for a, b in zip(fresh.backbone(x), train.backbone(x)):
            assert rel(a, b) < 1e-10


@pytest.mark.heavy
def test_mmdet_tools_train_resume_test_deploy(tmp_path):
    """mmdet's own tools/train.py and tools/test.py, run as docs/detection_segmentation.md runs them, on a tiny
    COCO-format set with a config that inherits configs/mmdet/retinanet_repvgg_a0_fpn_1x_coco.py."""
    figures = tools_round_trip("mmdet", "mmdet/retinanet_repvgg_a0_fpn_1x_coco.py", tmp_path)
    print(figures)
    assert figures["doc_config"] == "configs/mmdet/retinanet_repvgg_a0_fpn_1x_coco.py"
    assert figures["resumed"] == ["resumed epoch: 1, iter: 2"]  # 4 images, batch 2: 2 iterations an epoch
    assert len(figures["first_losses"]) == len(figures["last_losses"]) == 2
    assert all(0 < v < 100 for v in figures["first_losses"] + figures["last_losses"])
    (test,), (deploy,) = figures["test"], figures["test_deploy"]
    assert 0 <= test <= 1 and deploy == test  # the deploy form: the same boxes, the same mAP
    assert figures["deploy_difference"] < 1e-5 and figures["reloaded"]
