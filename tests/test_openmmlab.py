"""``repzoo.integrations``: the backbone (stages, freezing, weights), the registries, the mmcv-lite layer."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import repzoo
from repzoo.errors import IncompatibleCheckpointError, InvalidArgumentError

from conftest import REPO_ROOT, randomize_bn, run_example
from openmmlab_helpers import rel, require

require("mmengine")
require("mmcv")

from repzoo.integrations.openmmlab import RepZooBackbone, patch_mmcv_lite, stage_channels  # noqa: E402


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def _x(dtype=None):
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=dtype or torch.get_default_dtype())


def _bns(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


# --------------------------------------------------------------------------- structure


def test_stage_channels_and_out_indices():
    assert stage_channels("RepVGG-A0") == [48, 96, 192, 1280]
    assert stage_channels("repghostnet_1_0x", (0, -1)) == [16, 960]
    assert stage_channels("RepOpt-VGG-B1-csla", (2, 3)) == [256, 512]
    backbone = RepZooBackbone("RepVGG-A0", out_indices=(-3, -1))
    assert backbone.out_indices == (2, 4) and list(backbone.out_channels) == stage_channels("RepVGG-A0", (2, 4))
    outs = backbone(_x())
    assert isinstance(outs, tuple) and [o.shape[1:] for o in outs] == [(96, 8, 8), (1280, 2, 2)]
    with pytest.raises(InvalidArgumentError, match="out of range"):
        RepZooBackbone("RepVGG-A0", out_indices=(5,))


@pytest.mark.parametrize("name, frozen, first_free", [
    ("RepVGG-A0", 1, "stage2"),
    ("RepGhostNet-0.5x", 0, "blocks_1"),   # the stem: conv_stem, bn1, act1 and blocks.0 (stride 2)
    ("RepGhostNet-0.5x", 2, "blocks_5"),   # … and the stages up to blocks.4 (stride 8)
])
def test_frozen_stages(name, frozen, first_free):
    backbone = RepZooBackbone(name, frozen_stages=frozen)
    names = [n for n, _ in backbone.model.named_children()]
    frozen_names = names[: names.index(first_free)]
    assert [m for m in backbone.frozen_modules()] == [getattr(backbone.model, n) for n in frozen_names]
    backbone.train()
    for n, child in backbone.model.named_children():
        is_frozen = n in frozen_names
        assert all(p.requires_grad != is_frozen for p in child.parameters()), n
        assert all(m.training != is_frozen for m in child.modules()), n
    stats = [bn.running_mean.clone() for bn in _bns(backbone)]
    backbone(_x())  # a training forward moves the statistics of the free BNs only
    moved = [not torch.equal(s, bn.running_mean) for s, bn in zip(stats, _bns(backbone))]
    frozen_bns = {id(bn) for m in backbone.frozen_modules() for bn in _bns(m)}
    assert moved == [id(bn) not in frozen_bns for bn in _bns(backbone)]


def test_norm_eval_keeps_every_bn_in_eval_mode():
    backbone = RepZooBackbone("RepVGG-A0", norm_eval=True).train()
    assert backbone.training and _bns(backbone) and not any(bn.training for bn in _bns(backbone))
    assert all(p.requires_grad for p in backbone.parameters())
    stats = [bn.running_var.clone() for bn in _bns(backbone)]
    backbone(_x())
    assert all(torch.equal(s, bn.running_var) for s, bn in zip(stats, _bns(backbone)))


def test_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="frozen_stages"):
        RepZooBackbone("RepVGG-A0", frozen_stages=5)
    with pytest.raises(InvalidArgumentError, match="freezes past"):
        RepZooBackbone("RepVGG-A0", out_indices=(1, 2), frozen_stages=3)
    with pytest.raises(InvalidArgumentError, match="init_cfg=dict"):
        RepZooBackbone("RepVGG-A0", pretrained="RepVGG-A0-train.pth")
    with pytest.raises(InvalidArgumentError, match="not both"):
        RepZooBackbone("RepVGG-A0", pretrained=True, init_cfg=dict(type="Pretrained", checkpoint="x.pth"))


def test_with_cp_gives_the_same_gradients(float64):
    torch.manual_seed(0)
    plain = RepZooBackbone("RepVGG-A0", out_indices=(2, 4))
    cp = RepZooBackbone("RepVGG-A0", out_indices=(2, 4), with_cp=True)
    cp.load_state_dict(plain.state_dict())
    for m in (plain, cp):
        sum(o.sum() for o in m(_x())).backward()
    for (n, a), b in zip(plain.named_parameters(), cp.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12), n


# --------------------------------------------------------------------------- weights


def _trained(name="RepVGG-A0", **kwargs):
    """A classifier whose BNs hold non-trivial statistics, as a released training file would."""
    torch.manual_seed(0)
    return randomize_bn(repzoo.create_model(name, **kwargs)).eval()


def _features(model, x, indices=(1, 2, 3, 4)):
    return model.forward_intermediates(x, indices=list(indices), intermediates_only=True)


def test_pretrained_true_loads_the_manifest_weights(float64, tmp_path, monkeypatch):
    """``pretrained=True`` goes through the manifest (here served by a REPZOO_MIRROR folder that holds
    the authors' file name in their format: a plain train-time state dict)."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv("REPZOO_MIRROR", str(mirror))
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    monkeypatch.setenv("REPZOO_PROGRESS", "0")
    ref = _trained()
    torch.save(ref.state_dict(), mirror / "RepVGG-A0-train.pth")
    x = _x()
    with torch.no_grad():
        expected = _features(ref, x)
        for deploy in (False, True):
            backbone = RepZooBackbone("RepVGG-A0", pretrained=True, deploy=deploy).eval()
            backbone.init_weights()  # no init_cfg: the loaded weights stay
            assert all(rel(a, b) < 1e-10 for a, b in zip(backbone(x), expected)), deploy


@pytest.mark.parametrize("deploy", [False, True])
def test_init_cfg_pretrained_loads_a_classifier_file_strictly(float64, tmp_path, deploy):
    """A training save (``{'model': ...}``, a 10-class head) into either form: converted for deploy."""
    ref = _trained(num_classes=10)
    path = tmp_path / "finetuned.pth"
    torch.save({"model": ref.state_dict(), "epoch": 7}, path)
    backbone = RepZooBackbone("RepVGG-A0", deploy=deploy, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    params = [id(p) for p in backbone.parameters()]
    backbone.init_weights()
    assert backbone.is_init and [id(p) for p in backbone.parameters()] == params  # loaded in place
    backbone.eval()
    x = _x()
    with torch.no_grad():
        assert all(rel(a, b) < 1e-10 for a, b in zip(backbone(x), _features(ref, x)))


def test_init_cfg_pretrained_is_strict(tmp_path):
    """Another model's file is refused with the keys that differ (mmengine's own loader would only warn)."""
    path = tmp_path / "a1.pth"
    torch.save(repzoo.create_model("RepVGG-A1").state_dict(), path)
    backbone = RepZooBackbone("RepVGG-A0", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(IncompatibleCheckpointError, match="mismatched shapes"):
        backbone.init_weights()
    with pytest.raises(InvalidArgumentError, match="prefix"):
        RepZooBackbone("RepVGG-A0", init_cfg=dict(type="Pretrained", checkpoint=str(path),
                                                  prefix="backbone.")).init_weights()


def test_init_cfg_pretrained_takes_a_backbone_state_and_runs_other_initializers_first(float64, tmp_path):
    """A saved backbone (``model.*`` keys, train form) into a deploy backbone; a Kaiming init_cfg runs,
    and the Pretrained weights are loaded after it."""
    torch.manual_seed(0)
    trained = RepZooBackbone("RepGhostNet-0.5x")
    randomize_bn(trained).eval()
    path = tmp_path / "backbone.pth"
    torch.save(trained.state_dict(), path)
    init_cfg = [dict(type="Kaiming", layer="Conv2d"), dict(type="Pretrained", checkpoint=str(path))]
    backbone = RepZooBackbone("RepGhostNet-0.5x", deploy=True, init_cfg=init_cfg)
    backbone.init_weights()
    assert backbone.init_cfg == init_cfg
    backbone.eval()
    x = _x()
    with torch.no_grad():
        assert all(rel(a, b) < 1e-10 for a, b in zip(backbone(x), trained(x)))
    kaiming_only = RepZooBackbone("RepGhostNet-0.5x", init_cfg=dict(type="Kaiming", layer="Conv2d"))
    before = kaiming_only.model.conv_stem.weight.clone()
    kaiming_only.init_weights()
    assert not torch.equal(before, kaiming_only.model.conv_stem.weight)


# --------------------------------------------------------------------------- registries and imports


def _run(code: str, extra_path: str = "") -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (extra_path, str(REPO_ROOT),
                                                                  os.environ.get("PYTHONPATH", "")) if p))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=str(REPO_ROOT), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


@pytest.mark.parametrize("library, other", [("mmdet", "mmseg"), ("mmseg", "mmdet")])
def test_each_integration_imports_without_the_other_library(library, other):
    require(library)
    out = _run(f"""
        import sys
        sys.modules[{other!r}] = None  # as if it were not installed
        import repzoo.integrations.{library} as integration
        from {library}.registry import MODELS
        from repzoo.integrations.openmmlab import RepZooBackbone
        assert MODELS.get("RepZooBackbone") is RepZooBackbone is integration.RepZooBackbone
        import {library}.models  # needs mmcv.ops: works on mmcv-lite after the layer
        print(sorted(m for m in ("mmdet", "mmseg") if sys.modules.get(m) is not None))
    """)
    assert out == repr([library])


# --------------------------------------------------------------------------- the mmcv-lite layer


def _reference_nms(boxes, scores, threshold, offset):
    """Greedy NMS written out: keep the best box, drop the others that overlap it by more than ``threshold``."""
    wh = lambda b: ((b[:, 2] - b[:, 0] + offset).clamp(min=0), (b[:, 3] - b[:, 1] + offset).clamp(min=0))  # noqa: E731
    w, h = wh(boxes)
    area = w * h
    keep, alive = [], torch.ones(len(boxes), dtype=torch.bool)
    for i in scores.argsort(descending=True).tolist():
        if not alive[i]:
            continue
        keep.append(i)
        lt = torch.maximum(boxes[i, :2], boxes[:, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[:, 2:])
        inter = (rb - lt + offset).clamp(min=0).prod(1)
        iou = inter / (area[i] + area - inter)
        alive &= ~(iou > threshold)
    return torch.tensor(keep, dtype=torch.long)


def test_patch_mmcv_lite_gives_nms_and_refuses_the_other_ops():
    if not patch_mmcv_lite():
        pytest.skip("a compiled mmcv is installed: the layer rightly does nothing")
    assert patch_mmcv_lite() is True  # idempotent
    import mmcv.ops  # fails on mmcv-lite without the layer (No module named 'mmcv._ext')

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 2 + torch.rand(200, 2, generator=g) * 20], 1)
    scores = torch.rand(200, generator=g)
    for offset in (0, 1):
        dets, inds = mmcv.ops.nms(boxes, scores, 0.3, offset=offset)
        assert torch.equal(inds, _reference_nms(boxes, scores, 0.3, offset))
        assert torch.equal(dets, torch.cat([boxes[inds], scores[inds, None]], 1))
    dets, inds = mmcv.ops.nms(boxes.numpy(), scores.numpy(), 0.5, score_threshold=0.4, max_num=5)
    keep = torch.nonzero(scores > 0.4).squeeze(1)
    assert inds.tolist() == keep[_reference_nms(boxes[keep], scores[keep], 0.5, 0)][:5].tolist()
    # batched_nms (what mmdet's heads call) runs per class
    labels = torch.randint(0, 3, (200,), generator=g)
    dets, inds = mmcv.ops.batched_nms(boxes, scores, labels, dict(type="nms", iou_threshold=0.3))
    for c in range(3):
        own = torch.nonzero(labels == c).squeeze(1)
        assert set(inds[labels[inds] == c].tolist()) == set(own[_reference_nms(boxes[own], scores[own], 0.3, 0)].tolist())
    with pytest.raises(NotImplementedError, match="roi_align_forward.*compiled mmcv"):
        sys.modules["mmcv._ext"].roi_align_forward(torch.zeros(1))


def test_patch_mmcv_lite_leaves_a_compiled_mmcv_and_a_missing_one_alone(tmp_path):
    fake = tmp_path / "fake"
    (fake / "mmcv").mkdir(parents=True)
    (fake / "mmcv" / "__init__.py").write_text("__version__ = '2.1.0'\n")
    (fake / "mmcv" / "_ext.py").write_text("COMPILED = True\n")  # stands for the compiled extension
    out = _run("""
        import sys
        from repzoo.integrations.openmmlab import patch_mmcv_lite
        print(patch_mmcv_lite(), "mmcv._ext" in sys.modules)
        import mmcv._ext
        print(mmcv._ext.COMPILED)
    """, extra_path=str(fake))
    assert out.splitlines() == ["False False", "True"]
    out = _run("""
        import sys
        sys.modules["mmcv"] = None  # not installed
        from repzoo.integrations.openmmlab import patch_mmcv_lite
        print(patch_mmcv_lite(), "mmcv._ext" in sys.modules)
    """)
    assert out == "False False"


# --------------------------------------------------------------------------- the documentation

DOC = REPO_ROOT / "docs" / "detection_segmentation.md"


def _doc_blocks():
    import re

    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_doc_has_one_example_per_library():
    blocks = _doc_blocks()
    assert len(blocks) == 2 and "mmdet.registry" in blocks[0] and "mmseg.registry" in blocks[1]


@pytest.mark.parametrize("index, library", [(0, "mmdet"), (1, "mmseg")])
def test_doc_example_runs(index, library, monkeypatch, capsys):
    """Run as written, from the repository root (the examples load configs/ by relative path)."""
    require(library)
    from mmengine.registry import DefaultScope

    monkeypatch.chdir(REPO_ROOT)
    saved = dict(DefaultScope._instance_dict)
    try:
        torch.manual_seed(0)
        run_example(_doc_blocks()[index], f"{DOC.name} block {index}")
    finally:
        DefaultScope._instance_dict.clear()
        DefaultScope._instance_dict.update(saved)
    out = capsys.readouterr().out
    assert "torch.Size([1, 64, 64])" in out if library == "mmseg" else "loss_cls" in out
