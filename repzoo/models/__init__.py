"""The model families; importing this package registers every variant."""
from . import repvgg, repvggplus  # noqa: F401
from .base import RepClassifier
from .repvgg import RepVGG
from .repvggplus import RepVGGplus

__all__ = ["RepClassifier", "RepVGG", "RepVGGplus"]
