"""resnets: the ResNet family for PyTorch.

Build (:func:`create_model`), load anything (:func:`load_model`: run directory, weights file of
any format, ``NAME`` or ``NAME:TAG``), inspect (:func:`summary`), feed (:class:`Preprocessing`,
on every model as ``model.preprocessing``), speed up (:func:`optimize_for_inference`), and more
through the ``resnets`` command line.
"""

from .errors import ResnetsError
from .inference import optimize_for_inference
from .models import ResNet, ResNetConfig, create_model, get_model_spec, list_models
from .preprocessing import Preprocessing
from .summary import summary  # the function; the module stays resnets.summary in sys.modules
from .weights import load_weights_file, save_weights
from .weights.imagenet import decode_predictions
from .weights.resolve import load_model

__version__ = "0.1.0"

# No tqdm monitor thread (tqdm starts one even for a disabled bar, and its atexit hook wakes it as
# the interpreter finalises, unjoined: an intermittent "Fatal Python error ... GIL is released").
from tqdm import tqdm as _tqdm  # noqa: E402

_tqdm.monitor_interval = 0  # every tqdm class (tqdm.auto too) reads it from here

__all__ = ["Preprocessing", "ResNet", "ResNetConfig", "ResnetsError", "create_model", "decode_predictions",
           "get_model_spec", "list_models", "load_model", "load_weights_file", "optimize_for_inference",
           "save_weights", "summary"]
