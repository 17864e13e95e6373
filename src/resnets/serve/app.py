"""The HTTP server of ``resnets serve``: one model, two protocols, a web page, metrics.

Endpoints (``{model}`` is the served model's name; any other name is a 404):

- ``POST /predictions/{model}``: TorchServe's form. The body is the image's bytes (or a
  multipart form with the file in field ``data``); the answer is ``{class name: probability}``
  for the top k, most probable first; for a multi-label model, every class whose probability is
  at or above the model's recorded threshold (``topk`` does not apply). As in TorchServe, a raw
  body is recognised by its bytes: an image is an image whatever the declared content type
  (``curl --data-binary`` declares ``application/x-www-form-urlencoded``).
- Open Inference Protocol (KServe v2): ``GET /v2``, ``GET /v2/health/live``,
  ``GET /v2/health/ready``, ``GET /v2/models/{model}`` (metadata), ``GET /v2/models/{model}/ready``,
  ``POST /v2/models/{model}/infer`` (see :mod:`resnets.serve.v2`).
- ``POST /explain/{model}``: the Grad-CAM overlay of the image, as a PNG.
- ``GET /card``: the model card the web page shows; ``GET /``: the web page.
- ``GET /metrics``: Prometheus text format.

Every refusal is a JSON ``{"error": "..."}`` with a 4xx status; nothing a client sends takes
the server down. What a request may ask for is checked before anything is decoded
(:mod:`resnets.serve.admission`: ``--max-images``, ``--max-pixels``), and its CPU work runs in the
decode threads, so ``/v2/health/live`` answers while a large request is worked on. Each request
is one log line (logger ``resnets.serve``: INFO, ERROR with the traceback for a 5xx), never one
per image. A watchdog starts again a worker thread that died; meanwhile ``/v2/health/ready`` is a 503. With a token, every endpoint but the page and the two health checks needs
``Authorization: Bearer TOKEN`` (a load balancer's probes carry no secrets).
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import ResnetsError, first_line
from ..explain import explain_image
from ..predict import InferenceModel
from ..textparse import shorten
from .admission import admit_images
from .metrics import endpoint_of
from .server import ServeConfig, ServeError, Server, decode_request_image
from .v2 import add_v2_routes

log = logging.getLogger("resnets.serve")

OPEN_PATHS = ("/", "/favicon.ico", "/v2/health/live", "/v2/health/ready")
# Raw bodies declared as these are decoded as an image without a look at their bytes first; any
# other declared type is taken when the bytes are an image (see read_image_body).
RAW_IMAGE_TYPES = ("", "application/octet-stream")
ERROR_KEY = "resnets.error"  # the scope entry where a refusal leaves its message for the request's log line


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def noted_error(request: Request, status: int, message: str) -> JSONResponse:
    """The error answer, its message noted for the request's one log line."""
    request.scope[ERROR_KEY] = message
    return error_response(status, message)


def internal_error(error: BaseException) -> tuple[int, str]:
    """The status and message of a failure that is not the client's (503 when memory ran out)."""
    if isinstance(error, MemoryError):
        return 503, "the server ran out of memory for this request; try again, or send fewer or smaller images"
    return 500, f"internal error: {first_line(error)}"


def log_request(scope: dict, status: int, seconds: float, failure: BaseException | None = None) -> None:
    """The one log line of a request (a 5xx: ERROR, with the traceback of what failed)."""
    level = logging.ERROR if status >= 500 else logging.INFO
    if not log.isEnabledFor(level):
        return
    line = f"{scope.get('method', '')} {shorten(scope.get('path', ''), 200)} {status} {1e3 * seconds:.0f} ms"
    message = scope.get(ERROR_KEY)
    log.log(level, "%s", f"{line}: {shorten(message, 300)}" if message else line, exc_info=failure)


# -- the application --------------------------------------------------------------------------
class Guard:
    """ASGI middleware: bearer token, body size (by Content-Length and while streaming), metrics."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_of(scope["path"])
        status: list[int | None] = [None]
        start = time.perf_counter()
        failure = None

        async def send_noting_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_noting_status)
            else:
                await self.app(scope, self._limited(receive), send_noting_status)
        except Exception as error:  # noqa: BLE001 - answered and logged here, once
            failure = error
            if status[0] is None:
                code, scope[ERROR_KEY] = internal_error(error)
                await error_response(code, scope[ERROR_KEY])(scope, receive, send_noting_status)
        finally:
            seconds = time.perf_counter() - start
            self.server.metrics.observe(endpoint, status[0] or 500, seconds)
            log_request(scope, status[0] or 500, seconds, failure)

    def _refusal(self, scope: dict) -> Response | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        token = self.server.config.token
        if token and scope["path"] not in OPEN_PATHS:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                scope[ERROR_KEY] = "missing or wrong bearer token (Authorization: Bearer TOKEN)"
                return error_response(401, scope[ERROR_KEY], {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                scope[ERROR_KEY] = f"invalid Content-Length {shorten(length)!r}"
                return error_response(400, scope[ERROR_KEY])
            if int(length) > self.server.config.max_body_bytes:
                scope[ERROR_KEY] = (f"body of {length} bytes is over the limit of "
                                    f"{self.server.config.max_body_bytes} (--max-body-mb)")
                return error_response(413, scope[ERROR_KEY])
        return None

    def _limited(self, receive: Any) -> Any:
        limit = self.server.config.max_body_bytes
        seen = [0]

        async def limited_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise ServeError(413, f"body over the limit of {limit} bytes (--max-body-mb)")
            return message

        return limited_receive


def create_app(predictor: InferenceModel, config: ServeConfig) -> FastAPI:
    """The FastAPI application serving ``predictor`` (batcher and decode threads start now)."""
    server = Server(predictor, config)
    watchdog: list[asyncio.Task] = []

    async def start_watchdog() -> None:
        watchdog.append(asyncio.create_task(supervise(server)))

    async def stop() -> None:
        for task in watchdog:
            task.cancel()
        server.close()

    app = FastAPI(title="resnets serve", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  on_startup=[server.warm_up, start_watchdog], on_shutdown=[stop])
    app.state.server = server
    _add_error_handlers(app)
    _add_routes(app, server)
    add_v2_routes(app, server)
    app.add_middleware(Guard, server=server)
    return app


async def supervise(server: Server) -> None:
    """The watchdog: every ``watchdog_s``, start again the worker threads that died (readiness is
    false until then: :attr:`Server.ready`)."""
    while True:
        await asyncio.sleep(server.config.watchdog_s)
        restarted = server.supervise()
        if restarted:
            log.warning("started %d worker thread(s) again after they died", restarted)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, error: ServeError) -> JSONResponse:
        return noted_error(request, error.status, error.message)

    @app.exception_handler(ResnetsError)
    async def _resnets_error(request: Request, error: ResnetsError) -> JSONResponse:
        return noted_error(request, 400, str(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return noted_error(request, error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in error.errors())
        return noted_error(request, 422, f"invalid request: {shorten(problems, 300)}")

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, error: ClientDisconnect) -> JSONResponse:
        # nginx's 499: the client closed the connection mid-upload; no fault of the server's, so no
        # 500 in the metrics and no traceback in the log (the answer goes nowhere)
        return noted_error(request, 499, "the client closed the connection before its request was read")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, error: Exception) -> JSONResponse:
        return noted_error(request, *internal_error(error))  # Guard answers these first; kept as a backstop


async def read_image_body(request: Request) -> bytes:
    """The image of a TorchServe-style request: multipart field ``data``, or the raw body.

    A raw body is judged by its bytes, as TorchServe does: whatever its declared type (curl's
    ``application/x-www-form-urlencoded``, ``application/octet-stream``, none, ``image/*``), bytes
    that are an image are taken. Bytes that are not are a 400 where the type allows an image and a
    415 where it names something else (``text/plain``, ``application/json``...).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _form_image(request)
    body = await request.body()
    if not body or content_type in RAW_IMAGE_TYPES or content_type.startswith("image/") or is_image(body):
        return body  # the decoder names what is wrong with an empty or broken image
    raise ServeError(415, f"the body is not an image and its content type {content_type!r} is not one the server "
                          f"takes: send the image's bytes or a multipart form with field 'data'")


def is_image(data: bytes) -> bool:
    """Whether ``data`` starts as an image file PIL knows (a header sniff; nothing is decoded)."""
    try:
        with Image.open(io.BytesIO(data)):
            return True
    except Image.UnidentifiedImageError:
        return False
    except Exception:  # noqa: BLE001 - a format recognised but refused (a bomb, a bad header) is an image
        return True


async def _form_image(request: Request) -> bytes:
    limit = request.app.state.server.config.max_body_bytes
    try:
        form = await request.form(max_files=4, max_fields=16, max_part_size=limit)
    except ServeError:
        raise
    except Exception as error:  # noqa: BLE001 - a malformed form is the client's
        raise ServeError(400, f"malformed multipart form: {first_line(error)}") from None
    part = form.get("data")
    if part is None:
        raise ServeError(400, "the multipart form has no field 'data' holding the image")
    if isinstance(part, str):
        return part.encode("latin-1", "replace")
    return await part.read()


def _add_routes(app: FastAPI, server: Server) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files(__package__).joinpath("static/index.html").read_text("utf-8"))

    @app.get("/card")
    async def card() -> dict:
        return server.card

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = server.metrics.exposition()
        return Response(body, media_type=content_type)

    @app.post("/predictions/{model}")
    async def predictions(model: str, request: Request, topk: int | None = None) -> JSONResponse:
        server.check_model(model)
        k = _checked_topk(topk, server.config.topk)
        probs = await server.classify([(await read_image_body(request), "request body")])
        return JSONResponse(dict(server.labels(probs, k)[0]))

    @app.post("/explain/{model}")
    async def explain(model: str, request: Request, method: str = "gradcam", target: str | None = None,
                      layer: str | None = None) -> Response:
        server.check_model(model)
        data = await read_image_body(request)
        result = await server.run_explain(_explain, server, data, method, _target(target), layer)
        return Response(result.overlay_png, media_type="image/png",
                        headers={"X-Top-Class": _header_safe(_top_name(result)),
                                 "X-Target-Class": _header_safe(str(getattr(result, "target_class", "")))})


def _checked_topk(topk: int | None, default: int) -> int:
    if topk is None:
        return default
    if topk < 1:
        raise ServeError(400, f"topk must be >= 1, got {topk}")
    return topk


def _target(target: str | None) -> int | str | None:
    if target is None or target == "":
        return None
    return int(target) if target.isdigit() else target


def _explain(server: Server, data: bytes, method: str, target: Any, layer: str | None) -> Any:
    admit_images([(data, "request body")], server.config.limits)
    image = decode_request_image(data, "request body", server.predictor.preprocessing.resized_size)
    return explain_image(server.predictor, image, method=method, target=target, layer=layer,
                         topk=server.config.topk)


def _top_name(result: Any) -> str:
    top = getattr(result, "top", None) or []
    if not top:
        return ""
    first = top[0]
    if isinstance(first, dict):
        return str(first.get("class", first.get("label", "")))
    return str(first[0]) if isinstance(first, (tuple, list)) else str(first)


def _header_safe(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\r", " ").replace("\n", " ")
