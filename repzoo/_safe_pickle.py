"""A restricted pickle module for ``torch.load(pickle_module=...)``.

The authors' training files pickle a yacs ``CfgNode`` (and sometimes other objects)
beside the weights, which torch's weights-only unpickler refuses. This unpickler
resolves only torch's own weights-only allowlist; every other class becomes an inert
stand-in that holds whatever data the pickle gives it and imports nothing. Calling a
stand-in — the only way a pickle runs code (``os.system``, ``eval``, …) — raises
:class:`UnsafeGlobalCall` before anything runs.
"""
from __future__ import annotations

import _compat_pickle
import functools
import pickle
from typing import Any, Dict, Set

__all__ = ["Unpickler", "load", "UnsafeGlobalCall"]


class UnsafeGlobalCall(pickle.UnpicklingError):
    """The pickle tried to call something that is not on torch's allowlist."""


class _InertMeta(type):
    def __call__(cls, *args: Any, **kwargs: Any):
        raise UnsafeGlobalCall(f"{cls.__module__}.{cls.__qualname__}")


class _Inert(dict, metaclass=_InertMeta):
    """Stand-in for an unknown class: keeps dict items and state, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "_pickled_state", state)

    def __reduce__(self):  # pragma: no cover - never re-pickled on purpose
        raise TypeError("inert stand-ins cannot be pickled")


@functools.lru_cache(maxsize=1)
def _allowed() -> Dict[str, Any]:
    from torch._weights_only_unpickler import _get_allowed_globals

    return dict(_get_allowed_globals())


def _python3_name(module: str, name: str) -> str:
    """Protocol-2 pickles name Python 2 modules (``__builtin__.set``): map them as pickle does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that never imports or calls anything off torch's allowlist."""

    #: names of the globals that were replaced by inert stand-ins during the last load
    replaced: Set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        full = _python3_name(module, name)
        allowed = _allowed()
        if full in allowed:
            return allowed[full]
        Unpickler.replaced.add(full)
        return _InertMeta(name, (_Inert,), {"__module__": module, "__qualname__": name})


def load(file, **kwargs: Any) -> Any:
    return Unpickler(file, **kwargs).load()
