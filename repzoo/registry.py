"""The model registry: canonical names, forgiving lookup, aliases, and the entries themselves.

Every family file registers one entrypoint per variant with :func:`register_model`, as in timm;
the registry imports no family (``import repzoo`` imports them all).
:func:`get_model_entry` resolves any spelling of a name (case, ``-``, ``_``, ``.`` and spaces do
not matter), a timm-style ``name.tag`` and the timm names of shared variants.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import UnknownModelError

__all__ = [
    "ModelEntry",
    "register_model",
    "get_model_entry",
    "resolve_name",
    "model_names",
    "name_alias",
    "normalize_name",
    "natural_key",
]


def normalize_name(name: str) -> str:
    """The lookup key: lower case without ``-``, ``_``, ``.`` and whitespace."""
    return re.sub(r"[-_.\s]+", "", name).lower()


def name_alias(name: str) -> str:
    """The Python-identifier alias: ``RepGhostNet-0.5x`` → ``repghostnet_0_5x``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def natural_key(name: str) -> list:
    """Sort key: numbers compare as numbers, decimals included (``A2 < A10``, ``B1 < B1g2 < B2``,
    ``0.5x < 0.58x < 0.8x < 1.11x < 2.0x``)."""
    return [(0, float(tok), "") if tok[0].isdigit() else (1, 0.0, tok)
            for tok in re.split(r"(\d+(?:\.\d+)?)", name.lower()) if tok]


@dataclass(frozen=True)
class ModelEntry:
    """One registered variant: how to build it and what it is.

    ``scales`` names the released RepOptimizer scale set that a constant-scale (``-csla``) model
    takes by default; ``aliases`` are other projects' names of the same variant (timm's); ``reported`` is
    what its authors reported of it (top-1, training cost), with the setting they measured it in.
    """

    name: str
    builder: Callable[..., Any] = field(repr=False)
    family: str
    paper: str
    config: Mapping[str, Any]
    scales: Optional[str] = None
    aliases: Tuple[str, ...] = ()
    reported: Mapping[str, Any] = field(default_factory=dict)

    @property
    def alias(self) -> str:
        return name_alias(self.name)


_ENTRIES: Dict[str, ModelEntry] = {}
_LOOKUP: Dict[str, str] = {}
_FOREIGN: Dict[str, str] = {}  # normalized other-project name -> canonical


def register_model(name: str, *, family: str, paper: str, config: Optional[Mapping[str, Any]] = None,
                   scales: Optional[str] = None, aliases: Sequence[str] = (),
                   reported: Optional[Mapping[str, Any]] = None) -> Callable:
    """Register an entrypoint under its canonical ``name``.

    The decorated function must be named like the alias (``repvgg_a0`` for ``RepVGG-A0``) and
    build the architecture from keyword arguments (``deploy``, ``num_classes``, ``in_chans`` …).
    """

    def decorator(fn: Callable) -> Callable:
        if fn.__name__ != name_alias(name):
            raise ValueError(f"entrypoint for {name!r} must be named {name_alias(name)!r}, not {fn.__name__!r}")
        key = normalize_name(name)
        if key in _LOOKUP and _LOOKUP[key] != name:
            raise ValueError(f"{name!r} collides with registered {_LOOKUP[key]!r}")
        _ENTRIES[name] = ModelEntry(name, fn, family, paper, dict(config or {}), scales, tuple(aliases),
                                   dict(reported or {}))
        _LOOKUP[key] = name
        for other in aliases:
            _FOREIGN[normalize_name(other)] = name
        return fn

    return decorator


def resolve_name(name: str) -> Tuple[ModelEntry, Optional[str]]:
    """``(entry, tag)`` for any spelling of a name, with an optional timm-style ``.tag``
    (``"RepVGG-A0.in1k"`` → ``(RepVGG-A0, "in1k")``). Raises :class:`UnknownModelError`."""
    if not isinstance(name, str):
        raise UnknownModelError(f"A model name is a string, not {type(name).__name__}.")
    key = normalize_name(name)
    if key in _LOOKUP:
        return _ENTRIES[_LOOKUP[key]], None
    if key in _FOREIGN:
        canonical = _FOREIGN[key]
        warnings.warn(f"{name!r} is another project's name for {canonical}; repzoo builds {canonical} with "
                      "the authors' key names.", UserWarning, stacklevel=3)
        return _ENTRIES[canonical], None
    head, dot, tag = name.rpartition(".")
    if dot and head and tag and normalize_name(head) in _LOOKUP:
        return _ENTRIES[_LOOKUP[normalize_name(head)]], tag
    if dot and head and tag and normalize_name(head) in _FOREIGN:  # timm's ``repghostnet_050.in1k``
        return _ENTRIES[_FOREIGN[normalize_name(head)]], tag
    keys = difflib.get_close_matches(key, list(_LOOKUP), n=5, cutoff=0.6)
    close = list(dict.fromkeys(_LOOKUP[k] for k in keys))
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"Unknown model {name!r}.{hint} Run `repzoo list` or repzoo.list_models() to see all "
        f"{len(_ENTRIES)} models."
    )


def get_model_entry(name: str) -> ModelEntry:
    """The entry of ``name`` in any spelling; [UnknownModelError][repzoo.errors.UnknownModelError] lists the
    closest names."""
    return resolve_name(name)[0]


def model_names(pattern: Optional[str] = None) -> List[str]:
    """Canonical names, naturally sorted; ``pattern`` is a shell wildcard, case-insensitive, matched
    against the canonical name and its alias."""
    names = list(_ENTRIES)
    if pattern:
        pat = pattern.lower()
        names = [n for n in names if fnmatch.fnmatchcase(n.lower(), pat) or fnmatch.fnmatchcase(name_alias(n), pat)]
    return sorted(names, key=natural_key)
