"""repzoo: a model zoo for structurally re-parameterized networks.

>>> import repzoo
>>> model = repzoo.create_model("RepVGG-A0", deploy=True)
"""
from . import models  # noqa: F401  (importing the family files registers every variant)
from .catalog import list_models, model_info
from .errors import (
    CheckpointError,
    ChecksumError,
    IncompatibleCheckpointError,
    InvalidArgumentError,
    RepZooError,
    StorageError,
    UnknownModelError,
    UnsafeCheckpointError,
    WeightsUnavailableError,
)
from .factory import create_model
from .reparam import convert_state_dict, reparameterize
from .registry import get_model_entry, register_model
from .version import __version__
from .weights.checkpoint import load_checkpoint, read_state_dict

__all__ = [
    "create_model",
    "list_models",
    "model_info",
    "get_model_entry",
    "register_model",
    "reparameterize",
    "convert_state_dict",
    "load_checkpoint",
    "read_state_dict",
    "RepZooError",
    "UnknownModelError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "IncompatibleCheckpointError",
    "WeightsUnavailableError",
    "ChecksumError",
    "StorageError",
    "InvalidArgumentError",
    "export",
    "fastest_deploy",
    "save_for_hf",
    "__version__",
]


def save_for_hf(model, folder, **kwargs):
    """Write ``model`` as timm shares models (``config.json``, ``model.safetensors``, a ``README.md`` model
    card): ``repzoo.create_model('local-dir:FOLDER')``, ``timm.create_model('local-dir:FOLDER',
    pretrained=True)`` and, uploaded, ``'hf-hub:owner/name'`` load it (see
    `repzoo.weights.hf_model.save_for_hf`)."""
    from .weights.hf_model import save_for_hf as _save

    return _save(model, folder, **kwargs)


def export(model, path, format: str = "onnx", **kwargs):
    """Export ``model`` to ONNX, TorchScript or ``torch.export`` and check the file (see
    :func:`repzoo.integrations.export.export`)."""
    from .integrations.export import export as _export

    return _export(model, path, format=format, **kwargs)


def fastest_deploy(model, images=None, **kwargs):
    """The fastest deploy path of ``model`` that passes verification against fp32 eager on real ``images`` on
    this machine, and the report that says which one it is: ``fn, report = repzoo.fastest_deploy(model, images)``
    (see [repzoo.deploy.fastest_deploy][])."""
    from .deploy import fastest_deploy as _fastest

    return _fastest(model, images, **kwargs)


def __getattr__(name: str):
    """``repzoo.optim`` and ``repzoo.distributed`` are imported on first use, so that ``import repzoo`` stays light."""
    if name in ("optim", "distributed"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
