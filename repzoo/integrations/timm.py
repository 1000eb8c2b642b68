"""repzoo models in timm's registry, under the prefix ``repzoo_`` (timm's own ``repvgg_*`` and
``repghostnet_*`` stay untouched).

    import repzoo.integrations.timm            # registers every repzoo model (idempotent)
    import timm
    model = timm.create_model("repzoo_repopt_vgg_b1", pretrained=True, num_classes=10)
    timm.data.resolve_data_config(model=model)  # the authors' eval transform, from pretrained_cfg

``timm.create_model`` passes ``pretrained``, ``num_classes``, ``in_chans``, ``drop_rate``,
``features_only`` / ``out_indices``, ``pretrained_cfg_overlay`` and a ``name.tag`` through to
:func:`repzoo.create_model`. timm's training scripts take repzoo models when run through this
module, which registers them first::

    python -m repzoo.integrations.timm path/to/timm/train.py --model repzoo_repvgg_a0 ...
"""
from __future__ import annotations

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


def _entrypoint(name: str):
    def entry(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Optional[dict] = None,
              cache_dir: Any = None, **kwargs):
        global_pool = kwargs.pop("global_pool", "avg")
        if global_pool not in ("avg", "", None):
            raise InvalidArgumentError(f"{name} pools by average only, not global_pool={global_pool!r}")
        for unsupported in ("drop_path_rate", "drop_block_rate"):
            if kwargs.pop(unsupported, 0):
                raise InvalidArgumentError(f"{name} has no {unsupported}; leave it unset")
        return create_model(name, pretrained=pretrained, tag=_tag(pretrained_cfg),
                            pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)

    entry.__name__ = entry.__qualname__ = timm_name(name)
    entry.__module__ = __name__
    entry.__doc__ = f"repzoo's {name} (see `repzoo info {name}`)."
    return entry


def _cfgs(name: str) -> Dict[str, Any]:
    """timm pretrained configs for every tag of ``name`` (none: one untagged config)."""
    from ..weights.pretrained import pretrained_cfg

    known = manifest.load_manifest()
    tags = known.tags(name) or [""]
    out = {}
    for tag in tags:
        cfg = pretrained_cfg(name, tag or None)
        out[f"{timm_name(name)}.{tag}" if tag else timm_name(name)] = dict(
            input_size=tuple(cfg["input_size"]), interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"],
            mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), num_classes=1000,
            license=cfg.get("license"), paper_ids=cfg.get("paper"))
    return out


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
    if not argv:
        raise SystemExit("usage: python -m repzoo.integrations.timm SCRIPT.py [ARGS...]   "
                         "(e.g. timm's train.py --model repzoo_repvgg_a0 ...)")
    import importlib

    importlib.import_module("repzoo.integrations.timm")  # registers the models
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
