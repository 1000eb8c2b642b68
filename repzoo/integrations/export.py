"""Export a model — ONNX, TorchScript, ``torch.export`` or OpenVINO — and prove the file computes what the model does.

    repzoo.export(model, "a0.onnx", format="onnx")        # or the CLI: repzoo export RepVGG-A0 --deploy

Every file has a dynamic batch axis (and dynamic height and width where the family allows them).
Before it is kept, the file is loaded back — ONNX with onnxruntime — and run on a batch of another
size than the one it was exported with (OpenVINO's IR with OpenVINO Runtime on the CPU, in f32: its
default there is bf16 where the CPU has bf16 units); the outputs must match PyTorch's to a relative error of
``rtol`` (1e-5, fp32). The report counts the graph's convolutions against the model's: a deploy
model's graph has one per conv layer and no BatchNorm, so no branch is left.

Every format is one self-contained file that can be copied alone. The one exception is an ONNX model
whose weights do not fit protobuf's 2 GB limit: its weights then go to a visible ``<name>.onnx.data``
beside it (named in the report), and the two are written together: nothing is moved into place before
both are checked. OpenVINO's IR is always two files, ``<name>.xml`` (the graph) and ``<name>.bin`` (the
weights, uncompressed float32), written together the same way.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..errors import RepZooError
from ..reparam import is_deploy
from ..weights.files import storage_error, umask

__all__ = ["FORMATS", "ONNX_INLINE_LIMIT", "ExportReport", "export", "openvino_compile", "openvino_convert"]

#: format -> the file suffix it is written with by default.
FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported": ".pt2", "openvino": ".xml"}

#: Weights up to this many bytes are stored inside the ``.onnx`` file (protobuf caps a message at 2 GiB;
#: the margin leaves room for the graph); larger ones go to ``<name>.onnx.data`` beside it.
ONNX_INLINE_LIMIT = 2**31 - 2**26


@dataclass(frozen=True)
class ExportReport:
    """What was written and how it was checked."""

    path: pathlib.Path
    format: str
    input_shape: tuple
    checked_shapes: tuple
    max_rel_error: float
    conv_nodes: Optional[int]
    conv_layers: int
    norm_nodes: Optional[int]
    deploy: bool
    #: every file written: ``(path,)``, ``(path, path + ".data")`` for an ONNX model over 2 GB, or
    #: ``(<name>.xml, <name>.bin)`` for OpenVINO
    files: tuple = ()

    def __str__(self) -> str:
        graph = (f"{self.conv_nodes} conv nodes for {self.conv_layers} conv layers, {self.norm_nodes} norm nodes"
                 if self.conv_nodes is not None else f"{self.conv_layers} conv layers")
        shapes = ", ".join("x".join(map(str, s)) for s in self.checked_shapes)
        extra = [f for f in self.files if f != self.path]
        form = f"{self.format}, {'deploy' if self.deploy else 'train-time'} form"
        why = "the weights are over 2 GB: " if self.format == "onnx" else ""
        where = (f"{self.path} and its weights {', '.join(map(str, extra))} ({form}; {why}"
                 "keep the files together in one folder)") if extra else f"{self.path} ({form}, one self-contained file)"
        return f"wrote {where}; {graph}; checked on inputs {shapes}: max relative error {self.max_rel_error:.1e}"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _needs(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RepZooError(f"Exporting needs {module}: pip install 'repzoo[{extra}]'") from None


def _export_onnx(model: nn.Module, x: torch.Tensor, path: pathlib.Path, dims: dict, opset: Optional[int]):
    _needs("onnxscript", "export")
    onnx = _needs("onnx", "export")
    weight_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input"], output_names=["output"],
                      dynamic_shapes={"x": dims}, opset_version=opset, verbose=False,
                      external_data=weight_bytes > ONNX_INLINE_LIMIT)
    ort = _needs("onnxruntime", "export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = onnx.load(str(path), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]

    def run(inp: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: inp.numpy()})[0])

    return run, ops.count("Conv"), sum(op in ("BatchNormalization", "InstanceNormalization") for op in ops)


def _export_torchscript(model: nn.Module, x: torch.Tensor, path: pathlib.Path, dims: dict, opset):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.save(torch.jit.script(model), str(path))
        loaded = torch.jit.load(str(path))
    return loaded, None, None


def _export_exported(model: nn.Module, x: torch.Tensor, path: pathlib.Path, dims: dict, opset):
    program = torch.export.export(model, (x,), dynamic_shapes={"x": dims})
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path))
    nodes = [str(n.target) for n in loaded.graph.nodes if n.op == "call_function"]
    convs = sum("convolution" in t or "conv2d" in t for t in nodes)
    norms = sum("batch_norm" in t for t in nodes)
    return loaded.module(), convs, norms


def openvino_compile(model_or_path, threads: Optional[int] = None, precision: str = "f32"):
    """An OpenVINO ``CompiledModel`` on the CPU from an ``ov.Model`` or an IR path, at ``precision`` (``"f32"``;
    OpenVINO's own default on a CPU with bf16 units is bf16), latency hint, ``threads`` inference threads."""
    ov = _needs("openvino", "openvino")
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return ov.Core().compile_model(model_or_path if not isinstance(model_or_path, pathlib.Path) else str(model_or_path),
                                   "CPU", config)


def openvino_convert(model: nn.Module, x: torch.Tensor, dims: dict):
    """``openvino.convert_model`` of ``model`` traced on ``x``; the axes in ``dims`` dynamic."""
    import warnings

    ov = _needs("openvino", "openvino")
    shape = ov.PartialShape([-1 if i in dims else n for i, n in enumerate(x.shape)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation notice (OpenVINO traces)
        return ov.convert_model(model, example_input=x, input=[shape])


def _export_openvino(model: nn.Module, x: torch.Tensor, path: pathlib.Path, dims: dict, opset):
    ov = _needs("openvino", "openvino")
    ov.save_model(openvino_convert(model, x, dims), str(path), compress_to_fp16=False)
    compiled = openvino_compile(path)
    graph = [op.get_type_name() for op in ov.Core().read_model(str(path)).get_ordered_ops()]

    def run(inp: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(compiled(inp.numpy())[0].copy())

    return run, graph.count("Convolution") + graph.count("GroupConvolution"), sum("BatchNorm" in op for op in graph)


_EXPORTERS: dict = {"onnx": _export_onnx, "torchscript": _export_torchscript, "exported": _export_exported,
                    "openvino": _export_openvino}


def export(model: nn.Module, path: Union[str, os.PathLike], format: str = "onnx", *,
           input_size: Optional[Sequence[int]] = None, batch_size: int = 2, dynamic_spatial: Optional[bool] = None,
           rtol: float = 1e-5, opset: Optional[int] = None) -> ExportReport:
    """Export ``model`` (eval mode, CPU, float32) to ``path`` and check the file before keeping it.

    Args:
        format: ``"onnx"``, ``"torchscript"``, ``"exported"`` (``torch.export``'s ``.pt2``) or ``"openvino"``
            (OpenVINO's IR: ``path`` ends in ``.xml``, the weights go to the ``.bin`` beside it).
        input_size: ``(C, H, W)`` of the example input (default: the model's ``pretrained_cfg``).
        batch_size: the example batch; the check runs another size too (the batch axis is dynamic).
        dynamic_spatial: dynamic height and width (default: what the model allows — every size for the
            convolutional families, fixed for a model with an ``input_multiple``, RepMLPNet).
        rtol: the largest relative error allowed between the file's outputs and PyTorch's.
    Raises:
        RepZooError: an unknown format, a missing exporter package, or a file that does not compute
            what the model does (nothing is kept then).
    """
    if format not in _EXPORTERS:
        raise RepZooError(f"Unknown export format {format!r}: use one of {', '.join(_EXPORTERS)}.")
    path = pathlib.Path(path)
    if format == "openvino" and path.suffix != ".xml":
        raise RepZooError(f"OpenVINO writes a graph <name>.xml and its weights <name>.bin: give a path that ends in "
                          f".xml, not {path.name!r} (e.g. {path.with_suffix('.xml').name}).")
    if not path.parent.is_dir():
        raise RepZooError(f"The output folder {path.parent} does not exist: create it first.")
    model = model.eval().float().cpu()
    size = tuple(input_size or getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    if dynamic_spatial is None:  # a model that takes only multiples of its input size keeps it fixed
        dynamic_spatial = tuple(getattr(model, "input_multiple", (1, 1))) == (1, 1)
    spatial = dynamic_spatial
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    if spatial:
        dims.update({2: torch.export.Dim("height", min=64, max=4096), 3: torch.export.Dim("width", min=64, max=4096)})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *size, generator=g)
    checks = [torch.randn(batch_size + 1, *size, generator=g)]
    if spatial:
        checks.append(torch.randn(1, size[0], size[1] + 32, size[2] + 64, generator=g))
    with _staged(path) as staged, torch.no_grad():
        run, conv_nodes, norm_nodes = _EXPORTERS[format](model, x, staged, dims, opset)
        worst = max(_rel(_out(run(c)), _out(model(c))) for c in [x] + checks)
        del run  # an onnxruntime session keeps its files open
        if not worst <= rtol:
            raise RepZooError(f"The {format} export does not compute what the model does (max relative error "
                              f"{worst:.2e} > {rtol:g}); nothing was kept. Please report it.")
    files = (path,) + tuple(path.parent / f.name for f in _companions(path, format))
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    return ExportReport(path, format, tuple(x.shape), tuple(tuple(c.shape) for c in [x] + checks), worst,
                        conv_nodes, convs, norm_nodes, is_deploy(model), files)


def _companions(path: pathlib.Path, format: str = "onnx") -> list:
    """The files an export keeps beside ``path``: ONNX's external weights, when there are any; OpenVINO's ``.bin``."""
    data = path.with_suffix(".bin") if format == "openvino" else path.with_name(path.name + ".data")
    return [data] if data.is_file() else []


@contextlib.contextmanager
def _staged(path: pathlib.Path):
    """Yield ``<hidden folder beside path>/<path.name>``; on success, move what was written there into place
    (``path`` last, after its companion files; a stale companion of an earlier export is removed); on failure,
    remove it all. The files keep their final names while they are written, so the references inside them
    (ONNX's external-data location) are the ones they keep."""
    try:
        folder = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as err:
        raise storage_error(err, path.parent, f"the exported model {path.name}") from None
    staged = folder / path.name
    try:
        yield staged
        if not staged.is_file():
            raise RepZooError(f"The exporter wrote no file for {path.name}. Please report it.")
        written = {f.name for f in folder.iterdir()}
        stale = path.with_name(path.name + ".data")
        if stale.name not in written and stale.is_file():
            stale.unlink()
        for name in sorted(written - {path.name}) + [path.name]:
            os.chmod(folder / name, 0o666 & ~umask())
            os.replace(folder / name, path.parent / name)
    except OSError as err:
        raise storage_error(err, path.parent, f"the exported model {path.name}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _out(y) -> torch.Tensor:
    """The tensor output of a model call (the first, for tuple outputs)."""
    return y[0] if isinstance(y, (tuple, list)) else y


