"""Reading and loading checkpoints: formats, wrappers, safety, and every bad input a user can hand them."""
import os
import pickle
import warnings
import zipfile

import pytest
import torch

import repzoo

from conftest import randomize_bn, rel_diff


@pytest.fixture(scope="module")
def a0():
    torch.manual_seed(0)
    return randomize_bn(repzoo.create_model("RepVGG-A0")).eval()


def _same_weights(model, ref):
    sd = model.state_dict()
    return sd.keys() == ref.state_dict().keys() and all(torch.equal(sd[k], v) for k, v in ref.state_dict().items())


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module_prefix", "legacy_format"])
def test_wrappers_and_formats(tmp_path, a0, wrap):
    sd = a0.state_dict()
    path = tmp_path / "ckpt.pth"
    if wrap == "plain":
        torch.save(sd, path)
    elif wrap == "model":
        torch.save({"model": sd, "epoch": 3, "max_accuracy": 72.4}, path)
    elif wrap == "state_dict":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3, "arch": "RepVGG-A0"}, path)
    elif wrap == "module_prefix":
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    else:
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    assert _same_weights(repzoo.create_model("RepVGG-A0", checkpoint_path=path), a0)


def test_safetensors(tmp_path, a0):
    from safetensors.torch import save_file

    path = tmp_path / "a0.safetensors"
    save_file(a0.state_dict(), path)
    assert _same_weights(repzoo.create_model("RepVGG-A0", checkpoint_path=path), a0)


def test_training_file_with_yacs_config_loads_without_unpickling_it(tmp_path, a0):
    """The authors' training saves pickle a yacs CfgNode; torch's weights-only loader refuses it."""
    from yacs.config import CfgNode

    cfg = CfgNode({"MODEL": CfgNode({"ARCH": "RepVGG-A0"}), "TRAIN": CfgNode({"BASE_LR": 0.1})})
    path = tmp_path / "latest.pth"
    torch.save({"model": a0.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "lr_scheduler": {}, "max_accuracy": 72.4, "epoch": 119, "config": cfg}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what torch alone does
    assert _same_weights(repzoo.create_model("RepVGG-A0", checkpoint_path=path), a0)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, a0):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": a0.state_dict(), "payload": _RunsCode(marker)}, path)
    with pytest.raises(repzoo.UnsafeCheckpointError) as exc:
        repzoo.create_model("RepVGG-A0", checkpoint_path=path)
    assert not marker.exists()
    assert "system" in str(exc.value) and "re-save" in str(exc.value)


def test_legacy_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_legacy.pth"
    torch.save({"w": torch.ones(1), "payload": _RunsCode(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(repzoo.UnsafeCheckpointError):
        repzoo.read_state_dict(path)
    assert not marker.exists()


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(repzoo.CheckpointError, match="corrupt: delete it and download it again"):
        repzoo.create_model("RepVGG-A0", checkpoint_path=path)


@pytest.mark.parametrize("kind", ["torch", "safetensors"])
def test_truncated_file(tmp_path, a0, kind):
    path = tmp_path / f"a0.{kind}"
    if kind == "torch":
        torch.save(a0.state_dict(), path)
        assert zipfile.is_zipfile(path)
    else:
        from safetensors.torch import save_file

        save_file(a0.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(repzoo.CheckpointError, match="truncated or corrupt"):
        repzoo.create_model("RepVGG-A0", checkpoint_path=path)


def test_missing_file(tmp_path):
    with pytest.raises(repzoo.CheckpointError, match="does not exist"):
        repzoo.read_state_dict(tmp_path / "nope.pth")


def test_checkpoint_of_another_model_names_the_differences(a0):
    with pytest.raises(repzoo.IncompatibleCheckpointError) as exc:
        repzoo.create_model("RepVGG-A1", checkpoint_path=a0.state_dict())
    msg = str(exc.value)
    assert "stage0.rbr_dense.conv.weight: checkpoint [48, 3, 3, 3] vs model [64, 3, 3, 3]" in msg
    assert "another model" in msg


def test_checkpoint_with_missing_and_unexpected_keys(a0):
    sd = dict(a0.state_dict())
    sd.pop("linear.bias")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(repzoo.IncompatibleCheckpointError) as exc:
        repzoo.load_checkpoint(repzoo.create_model("RepVGG-A0"), sd)
    assert "missing keys (1): linear.bias" in str(exc.value)
    assert "unexpected keys (1): extra.weight" in str(exc.value)


def test_deploy_checkpoint_cannot_become_a_train_model(a0):
    deploy_sd = repzoo.reparameterize(repzoo.create_model("RepVGG-A0", checkpoint_path=a0.state_dict())).state_dict()
    with pytest.raises(repzoo.IncompatibleCheckpointError, match="deploy=True"):
        repzoo.create_model("RepVGG-A0", checkpoint_path=deploy_sd)
    # … but it loads as it is into a deploy model
    model = repzoo.create_model("RepVGG-A0", deploy=True, checkpoint_path=deploy_sd).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert rel_diff(model(x), a0(x)) < 1e-5  # float32


def test_train_checkpoint_into_deploy_model_never_builds_the_train_model(monkeypatch, a0):
    from repzoo.layers.repvgg_block import RepVGGBlock

    built = []
    init = RepVGGBlock.__init__

    def spy(self, *args, **kwargs):
        built.append(kwargs.get("deploy", False))
        init(self, *args, **kwargs)

    monkeypatch.setattr(RepVGGBlock, "__init__", spy)
    model = repzoo.create_model("RepVGG-A0", deploy=True, checkpoint_path=a0.state_dict())
    assert built and all(built)  # 22 blocks, every one built in deploy form
    assert not any(p.is_meta for p in model.parameters())


def test_other_num_classes_resets_the_head_and_says_so(a0):
    with pytest.warns(UserWarning, match="classifier was reset"):
        model = repzoo.create_model("RepVGG-A0", checkpoint_path=a0.state_dict(), num_classes=10)
    assert model.linear.weight.shape == (10, 1280) and not model.linear.weight.is_meta
    assert torch.equal(model.stage4[0].rbr_dense.conv.weight, a0.stage4[0].rbr_dense.conv.weight)
    # without num_classes=…, create_model takes the file's head (as `repzoo convert` does) ...
    small = repzoo.create_model("RepVGG-A0", num_classes=5).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert repzoo.create_model("RepVGG-A0", checkpoint_path=small).linear.weight.shape == (5, 1280)
    # ... and loading it into a model of another head is an error that names the fix
    with pytest.raises(repzoo.IncompatibleCheckpointError, match="num_classes=5"):
        repzoo.load_checkpoint(repzoo.create_model("RepVGG-A0"), small)


def test_same_num_classes_loads_without_warning(a0):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = repzoo.create_model("RepVGG-A0", checkpoint_path=a0.state_dict(), num_classes=1000)
    assert _same_weights(model, a0)


def test_save_state_dict_is_atomic_and_readable(tmp_path, a0):
    from repzoo.weights.checkpoint import save_state_dict

    for name in ("w.safetensors", "w.pth"):
        save_state_dict(a0.state_dict(), tmp_path / name)
        assert _same_weights(repzoo.create_model("RepVGG-A0", checkpoint_path=tmp_path / name), a0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth", "w.safetensors"]
