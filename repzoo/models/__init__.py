"""The model families; importing this package registers every variant."""
from . import repvgg, repvggplus  # noqa: F401
from . import repghost, repopt_vgg  # noqa: F401
from . import repmlpnet  # noqa: F401
from . import orepa  # noqa: F401
from .base import RepClassifier
from .repvgg import RepVGG
from .repvggplus import RepVGGplus
from .repghost import RepGhostNet
from .repopt_vgg import RepOptVGG
from .repmlpnet import RepMLPNet
from .orepa import OREPAResNet, OREPAVGG

__all__ = ["RepClassifier", "RepVGG", "RepVGGplus", "RepOptVGG", "RepGhostNet", "RepMLPNet", "OREPAResNet", "OREPAVGG"]
