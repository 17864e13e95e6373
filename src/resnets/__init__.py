"""resnets: the ResNet family for PyTorch.

Build (:func:`create_model`), inspect (:func:`summary`), and more through the ``resnets`` CLI.
"""

from .errors import ResnetsError
from .models import ResNet, ResNetConfig, create_model, get_model_spec, list_models
from .summary import summary  # the function; the module stays resnets.summary in sys.modules
from .weights.imagenet import decode_predictions

__version__ = "0.1.0"

__all__ = ["ResNet", "ResNetConfig", "ResnetsError", "create_model", "decode_predictions", "get_model_spec",
           "list_models"]
