"""repzoo models in timm's registry, under the prefix ``repzoo_`` (timm's own ``repvgg_*`` and
``repghostnet_*`` stay untouched).

    import repzoo.integrations.timm            # registers every repzoo model (idempotent)
    import timm
    model = timm.create_model("repzoo_repopt_vgg_b1", pretrained=True, num_classes=10)
    timm.data.resolve_data_config(model=model)  # the authors' eval transform, from pretrained_cfg

``timm.create_model`` passes ``pretrained``, ``num_classes``, ``in_chans``, ``drop_rate``, ``global_pool``,
``deploy``, ``features_only`` / ``out_indices`` / ``feature_cls`` / ``feature_cfg``,
``pretrained_cfg_overlay`` and a ``name.tag`` through to :func:`repzoo.create_model` (pretrained weights
come through repzoo's verified fetch); ``timm.create_model('local-dir:...' / 'hf-hub:...', pretrained=True)``
loads a folder written by timm's ``save_for_hf`` or :func:`repzoo.save_for_hf`. The registered cfgs
are complete (``pool_size``, ``first_conv``, ``classifier``, where the weights are), so
``timm.list_pretrained('repzoo_*')`` lists every model and tag with weights. See docs/guides/timm.md. timm's training scripts take repzoo models when run through this
module, which registers them first::

    python -m repzoo.integrations.timm path/to/timm/train.py --model repzoo_repvgg_a0 ...
"""
from __future__ import annotations

import json
import pathlib
import runpy
import sys
from typing import Any, Dict, List, Optional

from ..catalog import list_models
from ..errors import InvalidArgumentError
from ..factory import create_model
from ..registry import get_model_entry, name_alias
from ..weights import manifest

__all__ = ["PREFIX", "timm_name", "register_all", "default_cfgs"]

#: The prefix of repzoo's names in timm's registry.
PREFIX = "repzoo_"

#: timm name -> the pretrained configs timm reads (filled by :func:`register_all`).
default_cfgs: Dict[str, Any] = {}


def timm_name(name: str) -> str:
    """timm's name of a repzoo model: ``RepVGG-A0`` → ``repzoo_repvgg_a0``."""
    return PREFIX + name_alias(get_model_entry(name).name)


def _tag(pretrained_cfg: Any) -> Optional[str]:
    """The tag timm hands over: a ``name.tag``'s tag, or the ``tag`` of a pretrained config."""
    if pretrained_cfg is None or isinstance(pretrained_cfg, str):
        return pretrained_cfg or None
    tag = pretrained_cfg.get("tag") if isinstance(pretrained_cfg, dict) else getattr(pretrained_cfg, "tag", None)
    return tag or None


def _cfg_value(pretrained_cfg: Any, key: str) -> Any:
    if isinstance(pretrained_cfg, dict):
        return pretrained_cfg.get(key)
    return getattr(pretrained_cfg, key, None)


def _entrypoint(name: str):
    def entry(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Optional[dict] = None,
              cache_dir: Any = None, **kwargs):
        kwargs.pop("pretrained_model_args", None)  # timm's record of a shared folder's model_args
        for unsupported in ("drop_path_rate", "drop_block_rate"):
            if kwargs.pop(unsupported, 0):
                raise InvalidArgumentError(f"{name} has no {unsupported}; leave it unset")
        source = _cfg_value(pretrained_cfg, "source")
        if source in ("local-dir", "hf-hub"):  # timm.create_model('local-dir:...' / 'hf-hub:...')
            where = _cfg_value(pretrained_cfg, "file" if source == "local-dir" else "hf_hub_id")
            shared = f"{source}:{where}"
            if pretrained:
                model = create_model(shared, pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)
            else:
                from ..weights.hf_model import resolve

                overlay = dict(resolve(shared).eval_cfg(), **(pretrained_cfg_overlay or {}))
                model = create_model(name, pretrained_cfg_overlay=overlay, **kwargs)
        else:
            model = create_model(name, pretrained=pretrained, tag=_tag(pretrained_cfg),
                                 pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)
        # timm's save_for_hf writes pretrained_cfg['architecture'] into config.json: the name timm knows
        cfg = dict(model.pretrained_cfg, architecture=timm_name(name))
        model.pretrained_cfg = cfg
        if not hasattr(model, "num_classes"):  # a features wrapper: its own attribute, not the model's property
            model.default_cfg = cfg
        return model

    entry.__name__ = entry.__qualname__ = timm_name(name)
    entry.__module__ = __name__
    entry.__doc__ = f"repzoo's {name} (see `repzoo info {name}`)."
    return entry


def _weights_location(rec: Any) -> Dict[str, Any]:
    """Where timm's ``pretrained_cfg`` says the weights are (``hf_hub_id`` / ``url`` / ``file``): the first
    source of the tag's first file (or where a person downloads it). repzoo's entrypoints load them themselves, through repzoo's verified fetch."""
    for file in rec.files:
        for src in file.sources:
            if src.kind == "hf":
                return dict(hf_hub_id=src.location, hf_hub_filename=src.filename)
            return dict(url=src.location if src.kind == "url" else src.manual_link())
        if file.packaged is not None:
            return dict(file=file.packaged.file)
        if file.manual:  # released by hand only (a Drive folder): REPZOO_MIRROR or the cache serves it
            return dict(url=file.manual[0].url)
    return {}


def _cfgs(name: str) -> Dict[str, Any]:
    """timm pretrained configs for every tag of ``name`` (none: one untagged config)."""
    from ..weights.pretrained import pretrained_cfg

    known = manifest.load_manifest()
    facts = model_facts()[name]
    tags = known.tags(name) or [""]
    out = {}
    for tag in tags:
        cfg = pretrained_cfg(name, tag or None)
        size = tuple(cfg["input_size"])
        first = facts["first_conv"]
        item = dict(
            input_size=size, interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"],
            crop_mode=cfg.get("crop_mode", "center"), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
            num_classes=1000, pool_size=tuple(-(-s // facts["reduction"]) for s in size[1:]),
            first_conv=tuple(first) if isinstance(first, list) else first, classifier=facts["classifier"],
            license=cfg.get("license"), paper_ids=cfg.get("paper"))
        if facts.get("input_multiple"):
            item.update(fixed_input_size=True, min_input_size=(3, *facts["input_multiple"]))
        if tag:
            item.update(_weights_location(known.weights(name, tag)))
        out[f"{timm_name(name)}.{tag}" if tag else timm_name(name)] = item
    return out


FACTS_PATH = pathlib.Path(__file__).with_name("timm_cfgs.json")
_FACTS: Optional[Dict[str, Dict[str, Any]]] = None


def model_facts() -> Dict[str, Dict[str, Any]]:
    """The model-derived fields of each train-form model's timm config (``first_conv``, ``classifier``,
    the final ``reduction``, ``input_multiple`` where the input size is fixed), packaged as
    ``timm_cfgs.json`` so that registering builds no model; :func:`compute_model_facts` derives them
    from the models and a test keeps the two equal (``python -m repzoo.integrations.timm --write-cfgs``)."""
    global _FACTS
    if _FACTS is None:
        _FACTS = json.loads(FACTS_PATH.read_text(encoding="utf-8"))
    return _FACTS


def compute_model_facts(name: str) -> Dict[str, Any]:
    """:func:`model_facts` of one model, from the model itself (built on the ``meta`` device)."""
    import torch

    from ..factory import model_cfg_fields
    from ..registry import get_model_entry as _entry

    with torch.device("meta"):
        model = _entry(name).builder()
    fields = model_cfg_fields(model, (3, 224, 224))
    first = fields.get("first_conv")
    out: Dict[str, Any] = dict(first_conv=list(first) if isinstance(first, tuple) else first,
                               classifier=fields["classifier"], reduction=int(model.feature_info[-1]["reduction"]))
    multiple = tuple(getattr(model, "input_multiple", (1, 1)))
    if multiple != (1, 1):
        out["input_multiple"] = list(multiple)
    return out


def _write_facts() -> None:
    facts = {name: compute_model_facts(name) for name in list_models()}
    FACTS_PATH.write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def register_all() -> List[str]:
    """Register every repzoo model in timm's registry (again is a no-op); the timm names."""
    import timm.models as timm_models
    from timm.models import generate_default_cfgs, register_model

    names = []
    for name in list_models():
        tname = timm_name(name)
        names.append(tname)
        if tname in default_cfgs or timm_models.is_model(tname):
            continue
        default_cfgs.update(generate_default_cfgs(_cfgs(name)))
        register_model(_entrypoint(name))
    del timm_models
    return names


if __name__ != "__main__":  # run as a script, main() imports this module under its own name
    register_all()


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m repzoo.integrations.timm SCRIPT [ARGS...]``: run a timm script with repzoo's models."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--write-cfgs"]:  # maintainers: after a model's structure changes
        _write_facts()
        return
    if not argv:
        raise SystemExit("usage: python -m repzoo.integrations.timm SCRIPT.py [ARGS...]   "
                         "(e.g. timm's train.py --model repzoo_repvgg_a0 ...)")
    import importlib

    importlib.import_module("repzoo.integrations.timm")  # registers the models
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
