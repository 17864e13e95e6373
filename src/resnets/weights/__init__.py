"""Weights: the project's file format, pretrained weights, and converters from other frameworks."""

from .format import WeightsFile, load_weights_file, model_from_weights, save_weights
from .imagenet import decode_predictions, imagenet_classes
from .pretrained import PretrainedWeights, get_pretrained, list_pretrained

__all__ = ["PretrainedWeights", "WeightsFile", "decode_predictions", "get_pretrained", "imagenet_classes",
           "list_pretrained", "load_weights_file", "model_from_weights", "save_weights"]
