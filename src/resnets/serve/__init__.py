"""``resnets serve``: a trained ResNet behind HTTP (TorchServe-style and Open Inference Protocol
endpoints, dynamic batching, Prometheus metrics, a web page). Needs the ``serve`` extra."""

from __future__ import annotations

from .app import create_app
from .server import ServeConfig

__all__ = ["ServeConfig", "create_app"]
