"""The OpenVINO backends of :func:`resnets.optimize_for_inference`: an ONNX graph compiled by
OpenVINO for the CPU, in fp32 or quantized to int8 by NNCF.

The graph it is given is already pinned to the example input's height and width
(:func:`resnets.inference.pin_input_shape`) and keeps a dynamic batch dimension (static spatial
shapes let OpenVINO pick its fastest kernels); a call at another size compiles that size once more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Sequence

import torch
from torch import Tensor, nn


class OpenVinoModule(nn.Module):
    """An OpenVINO compiled model behind a module interface: tensors in, tensors out."""

    def __init__(self, onnx_path: str | os.PathLike, backend: str, example: Tensor,
                 calibration_batches: Sequence[Tensor] | None = None) -> None:
        super().__init__()
        import openvino as ov

        self.backend = backend
        self.core = ov.Core()
        self.image_shape = tuple(example.shape[1:])
        model = self.core.read_model(str(onnx_path))
        model.reshape({model.inputs[0]: ov.PartialShape([-1, *self.image_shape])})
        if calibration_batches is not None:
            model = quantize_int8(model, calibration_batches)
        self.model = model
        self.requests: dict[tuple[int, ...], object] = {}
        self._request(self.image_shape)  # compile now, not at the caller's first timed call

    def _request(self, image_shape: tuple[int, ...]):
        """The infer request for images of ``image_shape`` (C, H, W), compiled on first use."""
        request = self.requests.get(image_shape)
        if request is None:
            import openvino as ov

            model = self.model
            if image_shape != self.image_shape:
                model = model.clone()
                model.reshape({model.inputs[0]: ov.PartialShape([-1, *image_shape])})
            config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                      "INFERENCE_NUM_THREADS": torch.get_num_threads()}
            request = self.core.compile_model(model, "CPU", config).create_infer_request()
            self.requests[image_shape] = request
        return request

    def forward(self, x: Tensor) -> Tensor:
        array = x.detach().cpu().contiguous().float().numpy()
        request = self._request(tuple(array.shape[1:]))
        request.infer({0: array})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())


def quantize_int8(model, batches: Sequence[Tensor]):
    """NNCF post-training int8 quantization of an OpenVINO model, calibrated on ``batches``.

    NNCF draws its progress bars on stdout; they go to stderr here so that ``--json`` output
    stays parseable.
    """
    with contextlib.redirect_stdout(sys.stderr):
        import nncf

        nncf.set_log_level(logging.WARNING)
        images = [image[None].contiguous().float().numpy() for batch in batches for image in batch]
        return nncf.quantize(model, nncf.Dataset(images), subset_size=len(images),
                             preset=nncf.QuantizationPreset.PERFORMANCE)
