"""``resnets serve``: answer HTTP requests with a trained model (see :mod:`resnets.serve`)."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import warnings

from ..errors import ResnetsError
from . import add_command, add_model_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "serve", run, description="Serve MODEL over HTTP: POST /predictions/NAME (image bytes "
                    "-> top-k), the Open Inference Protocol under /v2, POST /explain/NAME (Grad-CAM PNG), GET "
                    "/metrics (Prometheus) and a web page at /. Concurrent requests are decoded in parallel and run "
                    "as one batch. SIGTERM stops accepting, answers the requests in flight, then exits 0.")
    add_model_argument(p, "model")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--name", help="model name in the URLs (default: the model's architecture name)")
    p.add_argument("--backend", default="auto", help="inference backend: auto, eager, compile, onnxruntime, "
                   "openvino")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batch", type=int, default=32, help="most images per forward pass")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="longest a request waits for others to share its batch (default 0: no timer; a "
                   "request finding the model idle runs at once, those arriving during a batch form the next)")
    p.add_argument("--workers", type=int, help="threads decoding images in parallel (default: the cores this "
                   "process may use)")
    p.add_argument("--threads", type=int, help="torch threads running the model (default: the cores this "
                   "process may use)")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (not on / and /v2/health/*)")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body accepted")
    p.add_argument("--max-images", type=int, default=256, help="most images in one request (default 256; a "
                   "request over it is a 413 before anything is decoded; it runs in batches of --max-batch)")
    p.add_argument("--max-pixels", type=int, default=2**27, help="most decoded pixels in one request, all its "
                   "images together, read from their headers before decoding (default 134217728: the decode "
                   "budget of one image)")
    p.add_argument("--topk", type=int, default=5, help="classes in each answer")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def check_args(args: argparse.Namespace) -> None:
    """Every argument checked before the model is loaded (one line each, exit 2)."""
    if not 0 <= args.port <= 65535:
        raise ResnetsError(f"--port must be in 0..65535, got {args.port}")
    for flag, value in (("--max-batch", args.max_batch), ("--workers", args.workers), ("--threads", args.threads),
                        ("--topk", args.topk)):
        if value is not None and value < 1:
            raise ResnetsError(f"{flag} must be >= 1, got {value}")
    if not 0 <= args.max_wait_ms <= 10_000:
        raise ResnetsError(f"--max-wait-ms must be in 0..10000, got {args.max_wait_ms}")
    if not 0 < args.max_body_mb <= 4096:
        raise ResnetsError(f"--max-body-mb must be in (0, 4096], got {args.max_body_mb}")
    if not 1 <= args.max_images <= 65536:
        raise ResnetsError(f"--max-images must be in 1..65536, got {args.max_images}")
    if not 1 <= args.max_pixels <= 2**34:
        raise ResnetsError(f"--max-pixels must be in 1..{2**34}, got {args.max_pixels}")
    if args.token is not None and not args.token.strip():
        raise ResnetsError("--token must not be empty")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now so that a taken port or a bad host is one line, exit 2."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise ResnetsError(f"cannot resolve --host {host!r}: {error}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise ResnetsError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    check_args(args)
    try:
        import uvicorn

        from ..serve import ServeConfig, create_app
        from ..serve.server import process_cores
    except ImportError as error:
        raise ResnetsError(f"serve needs the 'serve' extra ({error.name} is missing): "
                           f"pip install 'resnets[serve]'") from None
    from PIL import Image

    from ..predict import load_for_inference

    sock = bind(args.host, args.port)
    predictor = load_for_inference(args.model, args.device, backend=args.backend)
    name = args.name or getattr(predictor.plain, "model_name", None) or "model"
    cores = process_cores()
    config = ServeConfig(name=name, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                         workers=args.workers or cores, threads=args.threads or cores, token=args.token,
                         max_body_mb=args.max_body_mb, topk=args.topk, max_images=args.max_images,
                         max_pixels=args.max_pixels)
    # The whole process is the server: an image between one and two times PIL's pixel limit is
    # refused, not decoded with a warning.
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    request_log = logging.getLogger("resnets.serve")  # one line per request (INFO), 5xx at ERROR
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s resnets.serve: %(message)s"))
    request_log.addHandler(handler)
    request_log.setLevel(args.log_level.upper())
    request_log.propagate = False
    app = create_app(predictor, config)
    host, port = sock.getsockname()[:2]
    print(f"resnets: serving {name} ({predictor.backend}) on http://{host}:{port}/", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=60,
                                           access_log=False))
    # uvicorn re-raises SIGTERM after its graceful shutdown; the default action would turn a clean
    # drain into death by signal. A Python handler makes the re-raise a no-op: exit status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run(sockets=[sock])
    return 0
