"""Models shared the way timm users share them: a folder with ``config.json`` and ``model.safetensors``
(or ``pytorch_model.bin``), as timm's ``save_for_hf`` writes it and ``push_to_hf_hub`` uploads it.

:func:`resolve` reads such a folder (``local-dir:PATH``) or Hub repo (``hf-hub:owner/name[@revision]``,
through ``huggingface_hub`` and ``HF_ENDPOINT``) into its config and weights file, for
``repzoo.create_model`` and ``timm.create_model``; :func:`save_for_hf` writes one from a model,
with a model card, in one line.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Optional, Union

from ..errors import InvalidArgumentError, RepZooError, WeightsUnavailableError
from ..registry import get_model_entry, name_alias, resolve_name

__all__ = ["HFModel", "resolve", "save_for_hf", "repzoo_name", "TIMM_PREFIX", "WEIGHT_FILES"]

#: the prefix of repzoo's models in timm's registry (``repzoo.integrations.timm`` registers them)
TIMM_PREFIX = "repzoo_"
#: the weight files a timm folder may hold, in the order they are tried
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: the fields of a pretrained cfg that describe how to evaluate the weights
EVAL_FIELDS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std", "test_input_size",
               "test_crop_pct", "fixed_input_size", "min_input_size", "license")


@dataclass(frozen=True)
class HFModel:
    """A shared model: the repzoo name of its architecture, its ``config.json`` and its weights file."""

    name: str
    config: Dict[str, Any]
    weights: pathlib.Path

    @property
    def deploy(self) -> bool:
        """True when the weights are in the deploy (converted) form."""
        return bool(self.config.get("model_args", {}).get("deploy", False))

    @property
    def num_classes(self) -> Optional[int]:
        return self.config.get("num_classes", self.config.get("pretrained_cfg", {}).get("num_classes"))

    def eval_cfg(self) -> Dict[str, Any]:
        """The evaluation config the folder records (input size, crop, mean, std …)."""
        cfg = self.config.get("pretrained_cfg", {})
        return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in EVAL_FIELDS}


def repzoo_name(architecture: str) -> str:
    """The canonical repzoo name of a config's ``architecture`` (``repzoo_repvgg_a0`` or ``RepVGG-A0``)."""
    arch = architecture[len(TIMM_PREFIX):] if architecture.startswith(TIMM_PREFIX) else architecture
    return resolve_name(arch)[0].name  # a timm-style ``.tag`` is dropped


def _split(name: str):
    source, _, ident = name.partition(":")
    if source not in ("hf-hub", "local-dir") or not ident:
        raise InvalidArgumentError(f"{name!r}: a shared model is named 'hf-hub:owner/name[@revision]' or "
                                   "'local-dir:/path/to/folder'")
    return source, ident


def resolve(name: str) -> HFModel:
    """The config and weights of ``hf-hub:owner/name[@revision]`` or ``local-dir:PATH``."""
    source, ident = _split(name)
    if source == "local-dir":
        folder = pathlib.Path(ident).expanduser()
        if not (folder / "config.json").is_file():
            raise WeightsUnavailableError(f"{folder} has no config.json: is it a folder written by "
                                          "repzoo.save_for_hf / timm's save_for_hf?")
        weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
        if weights is None:
            raise WeightsUnavailableError(f"{folder} has no weights file ({' or '.join(WEIGHT_FILES)})")
        config_file = folder / "config.json"
    else:
        config_file, weights = _from_hub(ident)
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        architecture = config["architecture"]
    except (ValueError, KeyError) as err:
        raise RepZooError(f"{config_file} is not a timm model config ({err}): it needs an 'architecture'") from None
    return HFModel(repzoo_name(architecture), config, weights)


def _from_hub(ident: str):
    from huggingface_hub import hf_hub_download

    repo_id, _, revision = ident.partition("@")
    kwargs: Dict[str, Any] = dict(revision=revision or None)
    endpoint = os.environ.get("HF_ENDPOINT", "").strip()
    if endpoint:
        kwargs["endpoint"] = endpoint.rstrip("/")
    try:
        config = pathlib.Path(hf_hub_download(repo_id, "config.json", **kwargs))
    except Exception as err:  # noqa: BLE001 - every Hub failure becomes one clear error
        raise WeightsUnavailableError(f"could not fetch config.json of hf-hub:{ident} ({type(err).__name__}: "
                                      f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}); "
                                      "check the repo id, HF_ENDPOINT and your network") from None
    last = None
    for file in WEIGHT_FILES:
        try:
            return config, pathlib.Path(hf_hub_download(repo_id, file, **kwargs))
        except Exception as err:  # noqa: BLE001 - try the next file name
            last = err
    raise WeightsUnavailableError(f"hf-hub:{ident} has no {' or '.join(WEIGHT_FILES)} ({type(last).__name__})")


def model_card(model: Any, timm_name: str, repo_id: Optional[str] = None) -> str:
    """A README.md for the folder: what the model is, its form and how to load it."""
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    canonical = repzoo_name(timm_name)
    entry = get_model_entry(canonical)
    form = "deploy (re-parameterized, plain)" if getattr(model, "deploy", False) else "train-time (multi-branch)"
    where = f"hf-hub:{repo_id}" if repo_id else "local-dir:/path/to/this/folder"
    license_ = cfg.get("license") or "other"
    size = "x".join(str(s) for s in cfg.get("input_size", (3, 224, 224))[1:])
    return f"""---
tags:
- image-classification
- timm
- repzoo
library_name: timm
license: {license_}
---
# {canonical} ({timm_name})

A {entry.family} model ({entry.paper}) in its {form} form, with {getattr(model, 'num_classes', '?')} classes,
written by repzoo. Evaluate at {size} px, crop_pct {cfg.get('crop_pct')}, mean {tuple(cfg.get('mean', ()))},
std {tuple(cfg.get('std', ()))} (`config.json` carries these as `pretrained_cfg`).

```python
import repzoo
model = repzoo.create_model("{where}")                   # the form it was saved in
fast = repzoo.create_model("{where}", deploy=True)       # converted on load

import repzoo.integrations.timm, timm                    # registers repzoo's models in timm
model = timm.create_model("{where}", pretrained=True)
```
"""


def save_for_hf(model: Any, folder: Union[str, os.PathLike], *, repo_id: Optional[str] = None,
                card: bool = True, overwrite: bool = False) -> pathlib.Path:
    """Write ``model`` as timm's ``save_for_hf`` does (``config.json`` + ``model.safetensors``), plus a
    model card (``README.md``): the folder ``timm.create_model('local-dir:...')``,
    ``repzoo.create_model('local-dir:...')`` and, once uploaded (``huggingface_hub.upload_folder``),
    ``'hf-hub:owner/name'`` load. The folder is written beside and moved into place whole."""
    from timm.models import save_for_hf as timm_save_for_hf

    folder = pathlib.Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise InvalidArgumentError(f"{folder} is not empty: pass overwrite=True or another folder")
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if not cfg.get("architecture"):
        raise InvalidArgumentError("the model has no pretrained_cfg['architecture']: build it with "
                                   "repzoo.create_model or timm.create_model('repzoo_...')")
    if callable(getattr(model, "cfg_fields", None)) and "input_size" in cfg:
        cfg.update(model.cfg_fields(cfg["input_size"]))  # first_conv etc. of the form it is in now
    timm_name = TIMM_PREFIX + name_alias(repzoo_name(cfg["architecture"]))
    model_args = dict(num_classes=int(model.num_classes), deploy=bool(getattr(model, "deploy", False)))
    if getattr(model, "in_chans", 3) != 3:
        model_args["in_chans"] = int(model.in_chans)
    if getattr(model, "aux_logits", False):
        model_args["aux_logits"] = True
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        saved_cfg = model.pretrained_cfg
        model.pretrained_cfg = dict(cfg, architecture=timm_name)
        try:
            timm_save_for_hf(model, str(tmp), model_args=model_args, safe_serialization=True)
        finally:
            model.pretrained_cfg = saved_cfg
        if card:
            (tmp / "README.md").write_text(model_card(model, timm_name, repo_id), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
