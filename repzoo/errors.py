"""The errors repzoo raises: one base class, a few precise subclasses.

Every message says what happened and what to do next.
"""
from __future__ import annotations

__all__ = [
    "RepZooError",
    "UnknownModelError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "IncompatibleCheckpointError",
    "WeightsUnavailableError",
    "ChecksumError",
    "StorageError",
    "InvalidArgumentError",
]


class RepZooError(Exception):
    """Base class of every error repzoo raises on purpose."""


class UnknownModelError(RepZooError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(RepZooError):
    """A checkpoint file that cannot be read (missing, corrupt, truncated, wrong format)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would run code or build an unknown object when loaded."""


class IncompatibleCheckpointError(RepZooError, ValueError):
    """A readable checkpoint whose tensors do not fit the model."""


class WeightsUnavailableError(RepZooError):
    """No source could provide a weights file (offline, not released, not found)."""


class ChecksumError(RepZooError):
    """A downloaded or cached file whose sha256 is not the expected one."""


class StorageError(RepZooError):
    """The cache (or an output folder) cannot be written: full, read-only, or not a folder."""


class InvalidArgumentError(RepZooError, ValueError):
    """An argument repzoo cannot honour (a feature index out of range, scales for a model without any)."""
