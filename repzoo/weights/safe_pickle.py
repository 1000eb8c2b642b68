"""A restricted pickle module for ``torch.load(pickle_module=...)``: nothing runs, little is allocated.

Every checkpoint repzoo reads goes through this unpickler. It resolves a subset of torch's own
weights-only allowlist (the tensor rebuilders, dtypes, ``OrderedDict`` …); every other class —
a yacs ``CfgNode`` beside the authors' weights, say — becomes an inert stand-in that holds
whatever data the pickle gives it and imports nothing. Calling a stand-in, the only way a pickle
runs code (``os.system``, ``eval``, …), raises :class:`UnsafeGlobalCall` before anything runs.

Allocation is bounded by a byte *budget* (:func:`budget`, set by the reader from the file's size
and the model's): ``bytearray(n)``, the legacy format's declared storages and the like must fit
in it, and kinds of tensor repzoo does not load (sparse, quantized, nested, subclasses) are
refused rather than built. Legacy tensor constructors that allocate by size (``torch.FloatTensor(n)``)
are not resolved at all.
"""
from __future__ import annotations

import _compat_pickle
import contextlib
import functools
import pickle
import threading
from typing import Any, Callable, Dict, Iterator, Optional

__all__ = ["Unpickler", "load", "UnsafeGlobalCall", "OverBudget", "budget", "replaced"]


class UnsafeGlobalCall(pickle.UnpicklingError):
    """The pickle tried to call something that is not on the allowlist."""


class OverBudget(pickle.UnpicklingError):
    """The pickle asked for more memory than the file can justify."""


class Unsupported(pickle.UnpicklingError):
    """A kind of tensor repzoo does not load (sparse, quantized, nested, a subclass)."""


_state = threading.local()


@contextlib.contextmanager
def budget(limit: int) -> Iterator[None]:
    """Bound what the unpicklers in this thread may allocate to ``limit`` bytes; collect replaced names."""
    old = getattr(_state, "left", None), getattr(_state, "replaced", None)
    _state.left, _state.replaced = int(limit), set()
    try:
        yield
    finally:
        _state.left, _state.replaced = old


def replaced() -> set:
    """Names of the globals replaced by inert stand-ins in the current :func:`budget`."""
    return set(getattr(_state, "replaced", None) or ())


def _spend(nbytes: int, what: str) -> None:
    left = getattr(_state, "left", None)
    if left is None:
        return
    if nbytes > left:
        raise OverBudget(f"{what} asks for {nbytes:,} bytes, more than the file can hold or the model needs")
    _state.left = left - nbytes


class _InertMeta(type):
    def __call__(cls, *args: Any, **kwargs: Any):
        raise UnsafeGlobalCall(f"{cls.__module__}.{cls.__qualname__}")


class _Inert(dict, metaclass=_InertMeta):
    """Stand-in for an unknown class: keeps dict items and state, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "_pickled_state", state)

    def __reduce__(self):  # pragma: no cover - never re-pickled on purpose
        raise TypeError("inert stand-ins cannot be pickled")


def _bytearray(*args: Any) -> bytearray:
    if args and isinstance(args[0], int):
        _spend(args[0], "bytearray")
    return bytearray(*args)


def _refuse(kind: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any):
        raise Unsupported(f"the checkpoint holds a {kind}, which repzoo does not load")

    return refuse


class _TensorType:
    """What ``torch.Tensor`` resolves to: a type marker for the rebuilders, not a constructor."""


@functools.lru_cache(maxsize=1)
def _allowed() -> Dict[str, Any]:
    import torch
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = dict(_get_allowed_globals())
    keep = {}
    for name, obj in allowed.items():
        leaf = name.rsplit(".", 1)[-1]
        if name.startswith(("torch.cuda.", "torch.sparse.")) or (leaf.endswith("Tensor") and leaf != "Tensor"):
            continue  # legacy constructors that allocate by size
        if leaf.endswith("Storage"):
            continue  # storages come from the file's records (torch's own loader), never from calls
        keep[name] = obj
    keep["builtins.bytearray"] = _bytearray
    keep["torch.Tensor"] = _TensorType
    for name, kind in (("_rebuild_sparse_tensor", "sparse tensor"), ("_rebuild_qtensor", "quantized tensor"),
                       ("_rebuild_nested_tensor", "nested tensor"), ("_rebuild_wrapper_subclass", "tensor subclass"),
                       ("_rebuild_device_tensor_from_numpy", "numpy-backed tensor"),
                       ("_rebuild_device_tensor_from_cpu_tensor", "device tensor")):
        keep[f"torch._utils.{name}"] = _refuse(kind)
    keep["torch._tensor._rebuild_from_type_v2"] = _rebuild_from_type_v2
    keep["torch._utils._rebuild_parameter_with_state"] = _rebuild_parameter_with_state
    del torch
    return keep


def _drop_state(state: Any) -> None:
    """A tensor's pickled Python state (instance attributes) is never set: note that it was dropped."""
    if state and getattr(_state, "replaced", None) is not None:
        _state.replaced.add("the Python attributes pickled on a tensor")


def _rebuild_from_type_v2(func: Callable[..., Any], new_type: Any, args: tuple, state: Any):
    """torch's ``_rebuild_from_type_v2`` for plain tensors and parameters only, without their pickled state."""
    import torch

    ret = func(*args)
    if new_type not in (_TensorType, torch.Tensor, torch.nn.Parameter) and type(ret) is not new_type:
        raise Unsupported(f"the checkpoint holds a tensor of type {getattr(new_type, '__name__', new_type)}")
    _drop_state(state)
    return ret


def _rebuild_parameter_with_state(data: Any, requires_grad: bool, backward_hooks: Any, state: Any):
    """torch's ``_rebuild_parameter_with_state`` without the state (and without hooks, which torch never
    pickles): nothing the pickle names reaches the returned parameter."""
    import torch

    _drop_state(state)
    return torch.nn.Parameter(data, requires_grad)


def _python3_name(module: str, name: str) -> str:
    """Protocol-2 pickles name Python 2 modules (``__builtin__.set``): map them as pickle does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def _checked_persistent_load(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap torch's ``persistent_load``: a storage the pickle declares must fit in the budget."""

    def load(pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            storage_type, numel = pid[1], pid[4]
            itemsize = getattr(getattr(storage_type, "dtype", None), "itemsize", 1)
            if not isinstance(numel, int) or numel < 0:
                raise pickle.UnpicklingError(f"a storage of {numel!r} elements")
            _spend(numel * itemsize, "a storage")
        return fn(pid)

    return load


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that never imports or calls anything off the allowlist, within the budget."""

    def find_class(self, module: str, name: str) -> Any:
        full = _python3_name(module, name)
        allowed = _allowed()
        if full in allowed:
            return allowed[full]
        if getattr(_state, "replaced", None) is not None:
            _state.replaced.add(full)
        return _InertMeta(name, (_Inert,), {"__module__": module, "__qualname__": name})

    # torch's loaders assign ``unpickler.persistent_load = fn``: keep the C slot, wrapped with the budget
    @property
    def persistent_load(self) -> Optional[Callable[[Any], Any]]:
        return pickle.Unpickler.persistent_load.__get__(self)

    @persistent_load.setter
    def persistent_load(self, fn: Callable[[Any], Any]) -> None:
        pickle.Unpickler.persistent_load.__set__(self, _checked_persistent_load(fn))


def load(file, **kwargs: Any) -> Any:
    return Unpickler(file, **kwargs).load()
