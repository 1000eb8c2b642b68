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
from openmmlab_helpers import (CONFIGS, DOC, FULL_CONFIGS, doc_blocks, doc_commands, load_config, rel, require, scope,
                               small_model_config)

require("mmengine")
require("mmcv")

from repzoo.integrations.openmmlab import (RepZooBackbone, allow_mmengine_checkpoints, patch_mmcv_lite,  # noqa: E402
                                           stage_channels)


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
    import importlib.util
    import pkgutil

    import mmcv.ops  # fails on mmcv-lite without the layer (No module named 'mmcv._ext')
    from mmengine.utils.dl_utils import mmcv_full_available

    ext = sys.modules["mmcv._ext"]
    assert importlib.util.find_spec("mmcv._ext") is ext.__spec__ and ext.__spec__.loader is not None
    assert pkgutil.find_loader("mmcv._ext") is ext.__spec__.loader and mmcv_full_available()
    from mmengine.model.utils import revert_sync_batchnorm  # what Runner.wrap_model calls on one process

    reverted = revert_sync_batchnorm(torch.nn.Sequential(torch.nn.SyncBatchNorm(4)))
    assert type(reverted[0]).__name__ == "_BatchNormXd"

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


def _example(library):
    found = [b for b in doc_blocks() if f"{library}.registry import MODELS" in b]
    assert len(found) == 1, library
    return found[0]


def test_the_doc_has_one_example_per_library_and_the_conversion_script():
    blocks = doc_blocks()
    assert len(blocks) == 3 and sum("CHECKPOINT = " in b for b in blocks) == 1
    _example("mmdet"), _example("mmseg")


@pytest.mark.parametrize("library", ["mmdet", "mmseg"])
def test_doc_example_runs(library, monkeypatch, capsys):
    """Run as written, from the repository root (the examples load configs/ by relative path)."""
    require(library)
    from mmengine.registry import DefaultScope

    monkeypatch.chdir(REPO_ROOT)
    saved = dict(DefaultScope._instance_dict)
    try:
        torch.manual_seed(0)
        run_example(_example(library), f"{DOC.name} ({library})")
    finally:
        DefaultScope._instance_dict.clear()
        DefaultScope._instance_dict.update(saved)
    out = capsys.readouterr().out
    assert "torch.Size([1, 64, 64])" in out if library == "mmseg" else "loss_cls" in out


def test_the_doc_commands_name_a_shipped_config_and_the_runner():
    """The commands the heavy tier runs (tests/test_mmdet.py, test_mmseg.py) name a config of configs/."""
    bash = doc_commands()
    config = [line.split("=", 1)[1] for line in bash.splitlines() if line.startswith("CONFIG=")]
    assert config and (REPO_ROOT / config[0]).is_file() and config[0][len("configs/"):] in FULL_CONFIGS
    runs = [line for line in bash.splitlines() if line.startswith("python ")]
    assert len(runs) == 4 and all(r.startswith("python -m repzoo.integrations.openmmlab mmdet ") for r in runs)
    assert sum("--resume" in r for r in runs) == 1 and sum("model.backbone.deploy=True" in r for r in runs) == 1


# --------------------------------------------------------------------------- configs/


@pytest.mark.parametrize("config", sorted(FULL_CONFIGS))
def test_full_config_inherits_the_library_bases(config):
    """A full config loads (its ``mmdet::`` / ``mmseg::`` bases resolve), carries the library's dataset,
    schedule and runtime, and the backbone with its released weights; its model fragment is exactly the model."""
    library, fragment, backbone, dataset, length = FULL_CONFIGS[config]
    require(library)
    from mmengine.registry import MODELS as ROOT

    cfg = load_config(config)
    assert cfg.default_scope == library and cfg.custom_imports.imports == [f"repzoo.integrations.{library}"]
    assert ROOT.get(f"{library}.RepZooBackbone") is RepZooBackbone  # the custom_imports registered it
    assert cfg.model.backbone.type == "RepZooBackbone" and cfg.model.backbone.model_name == backbone
    assert cfg.model.backbone.pretrained is True
    assert cfg.train_dataloader.dataset.type == dataset and cfg.test_evaluator.type in ("CocoMetric", "IoUMetric")
    assert (cfg.train_cfg.get("max_epochs") or cfg.train_cfg.get("max_iters")) == length
    neck = cfg.model.get("neck")
    in_channels = (neck if neck is not None else cfg.model.decode_head).in_channels
    assert in_channels == stage_channels(backbone, cfg.model.backbone.out_indices)
    model_only = load_config(f"{library}/_base_/models/{fragment}")
    assert set(model_only.keys()) == {"custom_imports", "model"}  # composes with any base, no key twice
    if library == "mmseg":
        assert cfg.model.data_preprocessor.size == cfg.crop_size
        heads = [cfg.model.decode_head] + ([cfg.model.auxiliary_head] if "auxiliary_head" in cfg.model else [])
        assert {h.num_classes for h in heads} == {150 if dataset == "ADE20KDataset" else 19}
    else:
        assert cfg.model.bbox_head.num_classes == 80


def test_every_config_is_checked_and_every_family_covered():
    shipped = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.py")}
    fragments = {f"{lib}/_base_/models/{frag}" for lib, frag, *_ in FULL_CONFIGS.values()}
    assert shipped == set(FULL_CONFIGS) | fragments
    families = {b.split("-")[0] for _, _, b, *_ in FULL_CONFIGS.values()}
    assert {"RepVGG", "RepOpt", "RepGhostNet", "OREPA", "RepMLPNet"} <= families


@pytest.mark.parametrize("config", ["mmseg/upernet_repmlpnet_b256_4xb2-80k_cityscapes-512x1024.py",
                                    "mmdet/retinanet_orepa_resnet_50_fpn_1x_coco.py"])
def test_the_families_that_return_four_levels_build_and_run(config):
    """OREPA-ResNet and RepMLPNet have no stem level: their fragments take levels 0..3; built small."""
    library, fragment, *_ = FULL_CONFIGS[config]
    require(library)
    cfg = small_model_config(library, fragment)
    with scope(library):
        model = __import__(f"{library}.registry", fromlist=["MODELS"]).MODELS.build(cfg.model).eval()
    size = 256 if "repmlpnet" in config else 64  # RepMLPNet-B256: sides that are multiples of 256
    with torch.no_grad():
        feats = model.backbone(torch.rand(1, 3, size, size))
    assert [f.shape[1] for f in feats] == list(model.backbone.out_channels)
    assert [size // f.shape[-1] for f in feats] == [4, 8, 16, 32]


# --------------------------------------------------------------------------- mmengine's checkpoints and the load hook


def test_mmengine_checkpoints_load_with_weights_only(tmp_path):
    """What mmengine's CheckpointHook writes (a message hub of HistoryBuffers with numpy arrays) loads with the
    weights_only check on after the allow-list; a pickle that asks getattr for anything else is refused."""
    import pickle

    import numpy as np
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("repzoo-test-ckpt")
    for v in (2.5, 1.25):
        hub.update_scalar("train/loss", v)
    hub.update_info("iter", np.int64(7))
    path = tmp_path / "epoch_1.pth"
    torch.save({"meta": {"epoch": 1, "seed": 0}, "state_dict": {"w": torch.ones(2)},
                "message_hub": hub.state_dict()}, path)
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()  # (other tests may have allow-listed them already)
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        with pytest.raises(pickle.UnpicklingError, match="HistoryBuffer"):
            torch.load(path)
        allow_mmengine_checkpoints()
        names = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"
                 for g in torch.serialization.get_safe_globals()}
        assert "mmengine.logging.history_buffer.HistoryBuffer" in unsafe and unsafe <= names
        loaded = torch.load(path)  # weights_only=True: torch's default
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)
        allow_mmengine_checkpoints()
    assert loaded["message_hub"]["log_scalars"]["train/loss"].mean() == 1.875
    assert loaded["message_hub"]["runtime_info"]["iter"] == 7

    from mmengine.logging.history_buffer import HistoryBuffer

    class Reach:  # the allow-listed getattr asked for anything but a statistic (the way to a function's globals)
        def __reduce__(self):
            return getattr, (HistoryBuffer, "__init__")

    bad = tmp_path / "bad.pth"
    torch.save({"x": Reach()}, bad)
    with pytest.raises(pickle.UnpicklingError, match="refused: getattr"):
        torch.load(bad)


@pytest.mark.parametrize("loader", ["torch", "mmengine"])
def test_a_deploy_backbone_converts_a_whole_model_train_checkpoint_on_load(loader, float64, tmp_path):
    """``tools/test.py CKPT`` with ``backbone.deploy=True``: mmengine's non-strict load of a whole detector's
    train-form state dict converts the backbone (the load hook), and a file of neither form is refused."""
    from mmengine.runner import load_checkpoint

    torch.manual_seed(0)
    holder = lambda **kw: torch.nn.ModuleDict(dict(backbone=RepZooBackbone("RepVGG-A0", **kw),  # noqa: E731
                                                   neck=torch.nn.Conv2d(1280, 4, 1)))
    train = holder()
    randomize_bn(train["backbone"])
    train.eval()
    path = tmp_path / "epoch_1.pth"
    torch.save({"meta": {}, "state_dict": train.state_dict()}, path)
    deploy = holder(deploy=True).eval()
    if loader == "torch":
        deploy.load_state_dict(torch.load(path)["state_dict"])
    else:
        load_checkpoint(deploy, str(path), strict=False)
    x = _x()
    with torch.no_grad():
        assert all(rel(a, b) < 1e-10 for a, b in zip(deploy["backbone"](x), train["backbone"](x)))
        assert torch.equal(deploy["neck"].weight, train["neck"].weight)
    other = {k.replace("backbone.", "backbone.x."): v for k, v in train.state_dict().items()}
    with pytest.raises(IncompatibleCheckpointError, match="either form"):
        holder(deploy=True).load_state_dict(other, strict=False)
    with pytest.raises(IncompatibleCheckpointError, match="deploy=True"):
        holder().load_state_dict(deploy.state_dict(), strict=False)


# --------------------------------------------------------------------------- the tool runner


def test_the_runner_names_the_tools_and_refuses_what_it_cannot_run():
    from repzoo.integrations.openmmlab import main, tool_path

    for library in ("mmdet", "mmseg"):
        require(library)
        for tool in ("train", "test"):
            path = tool_path(library, tool)
            assert path.endswith(os.path.join(".mim", "tools", f"{tool}.py")) and os.path.isfile(path)
    with pytest.raises(InvalidArgumentError, match="no tools/nope.py.*train"):
        tool_path("mmdet", "nope")
    with pytest.raises(InvalidArgumentError, match="one of mmdet, mmseg"):
        tool_path("mmpose", "train")
    assert main(["mmpose", "train"]) == 2


def test_mmdet_test_script_starts_through_the_runner():
    """mmdet's tools/test.py imports mmcv.ops before it reads a config: through the runner it gets to argparse."""
    require("mmdet")
    out = _run("""
        import sys
        from repzoo.integrations.openmmlab import main
        try:
            main(["mmdet", "test", "--help"])
        except SystemExit as e:
            print("exit", e.code)
        from mmengine.utils.dl_utils import mmcv_full_available
        print(mmcv_full_available(), sys.modules["mmcv._ext"].__spec__.origin)
    """)
    assert "checkpoint" in out and out.splitlines()[-2:] == ["exit 0", "True repzoo.integrations.openmmlab"]
