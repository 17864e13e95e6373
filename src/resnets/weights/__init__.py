"""Weights: the project's file format, and (later) the pretrained registry and converters."""

from .format import WeightsFile, load_weights_file, model_from_weights, save_weights

__all__ = ["WeightsFile", "load_weights_file", "model_from_weights", "save_weights"]
