"""Caffe support: read and run ``.prototxt``/``.caffemodel`` networks, export ResNets to Caffe.

Nothing here needs Caffe or protoc: the text format has its own parser and the binary
caffemodel is read with a minimal protobuf schema declared in Python.
"""

from .caffemodel import read_binaryproto, read_caffemodel, write_caffemodel
from .convert import caffe_model_spec, caffe_to_state_dict
from .export import export_caffe
from .net import CaffeDataInfo, CaffeNet, from_prototxt
from .prototxt import format_prototxt, parse_prototxt

__all__ = ["CaffeDataInfo", "CaffeNet", "caffe_model_spec", "caffe_to_state_dict", "export_caffe", "format_prototxt",
           "from_prototxt", "parse_prototxt", "read_binaryproto", "read_caffemodel", "write_caffemodel"]
