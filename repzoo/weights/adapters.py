"""Key adapters: state dicts of re-hosted weights (timm, …) mapped to the official key names.

Each family registers its mappings with :func:`register_key_adapter`, with a predicate that
recognises the style from the keys; the pretrained loader calls :func:`adapt_state_dict` with
the manifest record's ``key_style``, and a user's own file is recognised by :func:`detect_key_style`.
A mapping is explicit, one-to-one, and proved numerically in the tests.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from ..errors import IncompatibleCheckpointError
from ..registry import get_model_entry

__all__ = ["register_key_adapter", "adapt_state_dict", "key_styles", "detect_key_style"]

StateDict = Dict[str, torch.Tensor]
Adapter = Callable[[Mapping[str, torch.Tensor]], StateDict]
Detector = Callable[[Iterable[str]], bool]

_ADAPTERS: Dict[Tuple[str, str], Tuple[Adapter, Optional[Detector]]] = {}


def register_key_adapter(key_style: str, family: str, detect: Optional[Detector] = None) -> Callable[[Adapter], Adapter]:
    """Register ``fn(state_dict) -> state_dict`` mapping ``key_style`` keys to ``family``'s official keys.

    ``detect(keys)`` says whether a state dict's keys are in this style (for files a user passes).
    """

    def decorator(fn: Adapter) -> Adapter:
        _ADAPTERS[(key_style, family)] = (fn, detect)
        return fn

    return decorator


def key_styles(family: str) -> List[str]:
    """The key styles a family can load (``official`` always)."""
    return ["official"] + sorted(style for style, fam in _ADAPTERS if fam == family)


def detect_key_style(state_dict: Mapping[str, torch.Tensor], model_name: str) -> str:
    """The key style of ``state_dict`` for ``model_name``'s family: a registered style whose predicate
    recognises the keys, else ``official``."""
    family = get_model_entry(model_name).family
    keys = list(state_dict)
    for (style, fam), (_, detect) in _ADAPTERS.items():
        if fam == family and detect is not None and detect(keys):
            return style
    return "official"


def adapt_state_dict(state_dict: Mapping[str, torch.Tensor], key_style: str, model_name: str) -> StateDict:
    """``state_dict`` in ``key_style`` → the official keys of ``model_name``'s family."""
    if key_style == "official":
        return dict(state_dict)
    family = get_model_entry(model_name).family
    try:
        adapter, _ = _ADAPTERS[(key_style, family)]
    except KeyError:
        raise IncompatibleCheckpointError(
            f"No key adapter from {key_style!r} keys to {family} models; styles known for {family}: "
            f"{key_styles(family)}."
        ) from None
    return adapter(state_dict)
