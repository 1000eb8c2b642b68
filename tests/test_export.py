"""Export: ONNX (checked with onnxruntime), TorchScript and torch.export files compute what the model does."""
import shutil

import pytest
import torch

import repzoo
from repzoo.cli import main
from repzoo.errors import RepZooError

from conftest import randomize_bn

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def a0():
    torch.manual_seed(0)
    return randomize_bn(repzoo.create_model("RepVGG-A0", num_classes=10)).eval()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported"])
def test_deploy_export_is_checked_and_has_no_branch_left(tmp_path, a0, fmt):
    deploy = repzoo.reparameterize(repzoo.create_model("RepVGG-A0", num_classes=10, checkpoint_path=a0.state_dict()))
    report = repzoo.export(deploy, tmp_path / f"a0.{fmt}", format=fmt, input_size=(3, 64, 64))
    assert report.path.is_file() and report.deploy and report.max_rel_error <= 1e-5
    assert report.checked_shapes == ((2, 3, 64, 64), (3, 3, 64, 64), (1, 3, 96, 128))  # batch and spatial dynamic
    assert report.conv_layers == 22  # one conv per RepVGG-A0 block
    if fmt != "torchscript":
        assert report.conv_nodes == 22 and report.norm_nodes == 0
    # the file, loaded independently of repzoo, gives the train-time model's outputs
    x = torch.randn(4, 3, 80, 80)
    with torch.no_grad():
        ref = a0(x)
        if fmt == "onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        elif fmt == "torchscript":
            got = torch.jit.load(str(report.path))(x)
        else:
            got = torch.export.load(str(report.path)).module()(x)
    assert ((got - ref).abs().max() / ref.abs().max()) < 1e-5


@pytest.mark.heavy  # an ONNX export of the train-time graph
def test_a_train_time_export_keeps_its_branches(tmp_path, a0):
    report = repzoo.export(a0, tmp_path / "a0_train.onnx", input_size=(3, 64, 64))
    assert not report.deploy and report.conv_nodes == 44 and report.norm_nodes == 17


@pytest.mark.heavy  # every export format through the CLI
def test_export_command(tmp_path, a0, capsys):
    ckpt = tmp_path / "a0.pth"
    torch.save({"model": a0.state_dict()}, ckpt)
    out = tmp_path / "a0.onnx"
    assert main(["export", "RepGhostNet-0.5x", "--format", "onnx", "--deploy", "--image-size", "64",
                 "--output", str(tmp_path / "ghost.onnx")]) == 0
    text = capsys.readouterr().out
    assert "conv nodes for" in text and "0 norm nodes" in text
    assert main(["export", "RepVGG-A0", "--deploy", "--checkpoint", str(ckpt), "--num-classes", "10",
                 "--image-size", "64", "--output", str(out)]) == 0
    assert "22 conv nodes for 22 conv layers" in capsys.readouterr().out and out.is_file()
    assert main(["export", "RepVGG-A0", "--output", str(tmp_path / "no" / "x.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unknown_format_and_a_wrong_file_are_refused(tmp_path, a0, monkeypatch):
    with pytest.raises(RepZooError, match="Unknown export format"):
        repzoo.export(a0, tmp_path / "x.bin", format="tflite")
    _off_by_a_bit(monkeypatch, "torchscript")
    with pytest.raises(RepZooError, match="does not compute what the model does"):
        repzoo.export(a0, tmp_path / "bad.pt", format="torchscript", input_size=(3, 64, 64))
    assert list(tmp_path.iterdir()) == []  # nothing kept


def _off_by_a_bit(monkeypatch, fmt):
    """Make the exporter of ``fmt`` hand back a runner whose outputs are 0.1 % off."""
    import repzoo.integrations.export as ex

    real = ex._EXPORTERS[fmt]

    def off_by_a_bit(model, x, path, dims, opset):
        run, c, n = real(model, x, path, dims, opset)
        return (lambda inp: run(inp) * 1.001), c, n

    monkeypatch.setitem(ex._EXPORTERS, fmt, off_by_a_bit)


def _run_alone(path, fmt, x):
    """Run an exported file with its format's own runtime, without repzoo."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path))(x)
    return torch.export.load(str(path)).module()(x)


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".pt"), ("exported", ".pt2")])
def test_every_format_is_one_file_that_runs_when_copied_alone(tmp_path, a0, fmt, suffix, capsys):
    """The file the command names is the whole model: copied alone into another folder, it runs."""
    ckpt = tmp_path / "a0.pth"
    torch.save({"model": a0.state_dict()}, ckpt)
    out_dir, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out_dir.mkdir(), elsewhere.mkdir()
    out = out_dir / f"a0{suffix}"
    assert main(["export", "RepVGG-A0", "--deploy", "--checkpoint", str(ckpt), "--num-classes", "10",
                 "--format", fmt, "--image-size", "64", "--output", str(out)]) == 0
    assert "one self-contained file" in capsys.readouterr().out
    assert sorted(p.name for p in out_dir.iterdir()) == [out.name]  # no hidden or companion file beside it
    copy = shutil.copy(out, elsewhere / "model_copy")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, ref = _run_alone(copy, fmt, x), a0(x)
    assert ((got - ref).abs().max() / ref.abs().max()) < 1e-5


def test_onnx_weights_over_the_protobuf_limit_go_to_a_visible_companion_file(tmp_path, a0, monkeypatch):
    """Past the limit (lowered here to 0 bytes), the weights are ``<name>.onnx.data``: named in the report,
    written with the graph, and the pair runs from another folder; a later self-contained export of the same
    name removes the stale companion."""
    import onnx

    import repzoo.integrations.export as ex

    monkeypatch.setattr(ex, "ONNX_INLINE_LIMIT", 0)
    deploy = repzoo.reparameterize(repzoo.create_model("RepVGG-A0", num_classes=10, checkpoint_path=a0.state_dict()))
    report = repzoo.export(deploy, tmp_path / "big.onnx", input_size=(3, 64, 64))
    data = tmp_path / "big.onnx.data"
    assert report.files == (tmp_path / "big.onnx", data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]  # nothing hidden
    assert str(data) in str(report) and "keep the files together" in str(report)
    locations = {e.value for t in onnx.load(str(tmp_path / "big.onnx"), load_external_data=False).graph.initializer
                 for e in t.external_data if e.key == "location"}
    assert locations == {"big.onnx.data"}  # a relative name, not the staging folder's
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(tmp_path / "big.onnx", moved), shutil.copy(data, moved)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got, ref = _run_alone(moved / "big.onnx", "onnx", x), a0(x)
    assert ((got - ref).abs().max() / ref.abs().max()) < 1e-5
    monkeypatch.setattr(ex, "ONNX_INLINE_LIMIT", 2**31)
    report = repzoo.export(deploy, tmp_path / "big.onnx", input_size=(3, 64, 64))
    assert report.files == (tmp_path / "big.onnx",) and not data.exists()


def test_openvino_export_round_trip_from_the_command(tmp_path, a0, capsys):
    """`repzoo export --format openvino`: <name>.xml + <name>.bin, checked like ONNX (batch and size dynamic,
    one conv per layer, no norm), and the pair, moved to another folder, runs in OpenVINO (f32) as the
    train-time model does."""
    ov = pytest.importorskip("openvino")
    ckpt = tmp_path / "a0.pth"
    torch.save({"model": a0.state_dict()}, ckpt)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["export", "RepVGG-A0", "--deploy", "--checkpoint", str(ckpt), "--num-classes", "10",
                 "--format", "openvino", "--image-size", "64", "--output", str(out_dir / "a0.xml")]) == 0
    text = capsys.readouterr().out
    assert "a0.bin" in text and "keep the files together" in text and "22 conv nodes for 22 conv layers" in text
    assert "0 norm nodes" in text and "1x3x96x128" in text
    assert sorted(p.name for p in out_dir.iterdir()) == ["a0.bin", "a0.xml"]  # nothing hidden left beside them
    moved = tmp_path / "moved"
    shutil.copytree(out_dir, moved)
    compiled = ov.Core().compile_model(str(moved / "a0.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.randn(3, 3, 72, 88)
    with torch.no_grad():
        ref = a0(x)
    got = torch.from_numpy(compiled(x.numpy())[0])
    assert ((got - ref).abs().max() / ref.abs().max()) < 1e-5


def test_openvino_export_refuses_a_bad_path_and_keeps_nothing_of_a_wrong_file(tmp_path, a0, monkeypatch):
    pytest.importorskip("openvino")
    deploy = repzoo.reparameterize(repzoo.create_model("RepVGG-A0", num_classes=10, checkpoint_path=a0.state_dict()))
    with pytest.raises(RepZooError, match=r"ends in \.xml.*a0\.xml"):
        repzoo.export(deploy, tmp_path / "a0.onnx", format="openvino")
    with pytest.raises(RepZooError, match="does not exist"):
        repzoo.export(deploy, tmp_path / "missing" / "a0.xml", format="openvino")
    _off_by_a_bit(monkeypatch, "openvino")
    with pytest.raises(RepZooError, match="does not compute what the model does"):
        repzoo.export(deploy, tmp_path / "bad.xml", format="openvino", input_size=(3, 64, 64))
    assert list(tmp_path.iterdir()) == []  # neither the .xml nor the .bin is kept
