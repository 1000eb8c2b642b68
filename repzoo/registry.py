"""The model registry: canonical names, forgiving lookup, aliases, listing and info.

Every family file registers one entrypoint per variant with :func:`register_model`;
:func:`get_model_entry` resolves any spelling of a name (case, ``-``, ``_``, ``.``
and spaces do not matter) to its :class:`ModelEntry`.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

from .errors import UnknownModelError

__all__ = [
    "ModelEntry",
    "register_model",
    "get_model_entry",
    "list_models",
    "model_info",
    "name_alias",
    "normalize_name",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_name(name: str) -> str:
    """The lookup key: lower case without ``-``, ``_``, ``.`` and whitespace."""
    return re.sub(r"[-_.\s]+", "", name).lower()


def name_alias(name: str) -> str:
    """The Python-identifier alias: ``RepGhostNet-0.5x`` → ``repghostnet_0_5x``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def natural_key(name: str) -> list:
    """Sort key so that ``A2 < A10`` and ``B1 < B1g2 < B1g4 < B2``."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", name.lower()) if tok]


@dataclass(frozen=True)
class ModelEntry:
    """One registered variant: how to build it and what it is."""

    name: str
    builder: Callable[..., Any] = field(repr=False)
    family: str
    paper: str
    config: Mapping[str, Any]
    default_cfg: Mapping[str, Any]

    @property
    def alias(self) -> str:
        return name_alias(self.name)


_ENTRIES: Dict[str, ModelEntry] = {}
_LOOKUP: Dict[str, str] = {}


def register_model(name: str, *, family: str, paper: str, config: Optional[Mapping[str, Any]] = None,
                   default_cfg: Optional[Mapping[str, Any]] = None) -> Callable:
    """Register an entrypoint under its canonical ``name``.

    The decorated function must be named like the alias (``repvgg_a0`` for ``RepVGG-A0``)
    and build the architecture from keyword arguments. The returned builder attaches
    ``pretrained_cfg`` (input size, interpolation, crop_pct, mean, std, num_classes) to
    every model it makes.
    """
    cfg = dict(input_size=(3, 224, 224), interpolation="bilinear", crop_pct=0.875,
               mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000)
    cfg.update(default_cfg or {})

    def decorator(fn: Callable) -> Callable:
        if fn.__name__ != name_alias(name):
            raise ValueError(f"entrypoint for {name!r} must be named {name_alias(name)!r}, not {fn.__name__!r}")
        key = normalize_name(name)
        if key in _LOOKUP and _LOOKUP[key] != name:
            raise ValueError(f"{name!r} collides with registered {_LOOKUP[key]!r}")

        @functools.wraps(fn)
        def build(**kwargs):
            model = fn(**kwargs)
            model.pretrained_cfg = dict(cfg, architecture=name, num_classes=model.num_classes)
            return model

        _ENTRIES[name] = ModelEntry(name, build, family, paper, dict(config or {}), cfg)
        _LOOKUP[key] = name
        _LOOKUP[normalize_name(name_alias(name))] = name
        return build

    return decorator


def _ensure_registered() -> None:
    from . import models  # noqa: F401  (importing the family files registers them)


def get_model_entry(name: str) -> ModelEntry:
    """The entry of ``name`` in any spelling; :class:`UnknownModelError` lists the closest names."""
    _ensure_registered()
    canonical = _LOOKUP.get(normalize_name(name))
    if canonical is None:
        keys = difflib.get_close_matches(normalize_name(name), list(_LOOKUP), n=5, cutoff=0.6)
        close = list(dict.fromkeys(_LOOKUP[k] for k in keys))
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"Unknown model {name!r}.{hint} Run `repzoo list` or repzoo.list_models() to see all "
            f"{len(_ENTRIES)} models."
        )
    return _ENTRIES[canonical]


def list_models(pattern: Optional[str] = None, pretrained: bool = False) -> List[str]:
    """Canonical names, naturally sorted; ``pattern`` is a shell wildcard, case-insensitive,
    matched against the canonical name and its alias; ``pretrained`` keeps the names with
    released weights."""
    _ensure_registered()
    names = list(_ENTRIES)
    if pattern:
        pat = pattern.lower()
        names = [n for n in names if fnmatch.fnmatchcase(n.lower(), pat) or fnmatch.fnmatchcase(name_alias(n), pat)]
    if pretrained:
        names = [n for n in names if pretrained_tags(n)]
    return sorted(names, key=natural_key)


def pretrained_tags(name: str) -> List[str]:
    """Tags of the released weights of ``name`` (``in1k`` …), read from the manifest."""
    try:
        from .manifest import load_manifest
    except ImportError:  # the manifest layer is optional for the registry
        return []
    return load_manifest().tags(get_model_entry(name).name)


@functools.lru_cache(maxsize=None)
def count_params(name: str, deploy: bool) -> int:
    """Parameters of the train-time or deploy form, counted on the ``meta`` device (no memory)."""
    import torch

    with torch.device("meta"):
        model = get_model_entry(name).builder(deploy=deploy)
    return sum(p.numel() for p in model.parameters())


def model_info(name: str) -> Dict[str, Any]:
    """What a variant is: family, paper, config, parameters of both forms, eval config, tags."""
    entry = get_model_entry(name)
    return {
        "name": entry.name,
        "alias": entry.alias,
        "family": entry.family,
        "paper": entry.paper,
        "config": dict(entry.config),
        "params_train": count_params(entry.name, False),
        "params_deploy": count_params(entry.name, True),
        "input_size": tuple(entry.default_cfg["input_size"]),
        "pretrained_cfg": dict(entry.default_cfg),
        "pretrained_tags": pretrained_tags(entry.name),
    }
