"""Key adapters: state dicts of re-hosted weights (timm, …) mapped to the official key names.

Each family registers its mappings with :func:`register_key_adapter`; the weights layer
calls :func:`adapt_state_dict` with the manifest record's ``key_style``. A mapping is
explicit, one-to-one, and proved numerically in the tests.
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Tuple

import torch

from .errors import IncompatibleCheckpointError

__all__ = ["register_key_adapter", "adapt_state_dict", "key_styles"]

StateDict = Dict[str, torch.Tensor]
Adapter = Callable[[Mapping[str, torch.Tensor]], StateDict]

_ADAPTERS: Dict[Tuple[str, str], Adapter] = {}


def register_key_adapter(key_style: str, family: str) -> Callable[[Adapter], Adapter]:
    """Register ``fn(state_dict) -> state_dict`` mapping ``key_style`` keys to ``family``'s official keys."""

    def decorator(fn: Adapter) -> Adapter:
        _ADAPTERS[(key_style, family)] = fn
        return fn

    return decorator


def key_styles(family: str) -> list:
    """The key styles a family can load (``official`` always)."""
    from .registry import _ensure_registered

    _ensure_registered()  # the family files register their adapters
    return ["official"] + sorted(style for style, fam in _ADAPTERS if fam == family)


def adapt_state_dict(state_dict: Mapping[str, torch.Tensor], key_style: str, model_name: str) -> StateDict:
    """``state_dict`` in ``key_style`` → the official keys of ``model_name``'s family."""
    if key_style == "official":
        return dict(state_dict)
    from .registry import get_model_entry

    family = get_model_entry(model_name).family
    try:
        adapter = _ADAPTERS[(key_style, family)]
    except KeyError:
        raise IncompatibleCheckpointError(
            f"No key adapter from {key_style!r} keys to {family} models; styles known for {family}: "
            f"{key_styles(family)}."
        ) from None
    return adapter(state_dict)
