"""The web app of ``fastadapt serve``: the page (static files shipped in the package) and its JSON API.

    GET  /               the page
    GET  /api/model      what is served: method, dataset, test accuracy, learning curves, limits
    POST /api/classify   {"support": [{"label": "a", "image": "<base64 PNG/JPEG/...>", "drawn": true}, ...],
                          "queries": [{"image": "...", "drawn": true}], "invert": null | true | false | "auto"}
                         -> {"classes": [...], "predictions": [{"class": "a", "probabilities": [...]}], ...}
    POST /api/find       {"symbol": {"image": "...", "drawn": true}, "scene": null | {"image": "..."},
                          "characters": 8, "copies": 2, "seed": 0}
                         -> {"scene": "<PNG data URL>", "detections": [{"box": [left, top, width, height],
                             "score": 0.93}], "mask": "<PNG data URL>", "truth": [[...]] | null, ...}

Requests are checked before any work: the body's size (413), its type (415), its JSON and fields (400 for
malformed JSON, 422 for a field out of range), then each image's encoded size, its format (PNG, JPEG,
GIF, BMP or WebP) and its pixel count from its header before it is decoded (422). Nothing a client sends
is unpickled; the model's checkpoint was loaded with ``torch.load(weights_only=True)``. The model is
shared read-only between requests (``FewShotClassifier.classify`` changes nothing), each request runs in
a worker thread, and an error in one request is answered with its message and touches nothing else.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastadapt.datasets.drawing import on_white
from fastadapt.serve.find import SceneFinder, template_matching_detector
from fastadapt.serve.model import MAX_CLASSES, ServedModel, omniglot_here, png_data_url

STATIC = Path(__file__).parent / "static"
# --- limits (the README states them) ---
MAX_BODY_BYTES = 8 * 2**20  # a request body
DRAIN_BYTES = 64 * 2**20  # a larger body is read and dropped before the 413, up to this size
MAX_IMAGE_BYTES = 2 * 2**20  # one encoded image file
MAX_IMAGE_SIDE = 2048  # pixels, either side of one image
MAX_REQUEST_PIXELS = 16 * 2**20  # all images of one request together, decoded
MAX_PER_CLASS = 20  # support images of one class
MAX_QUERIES = 20
MAX_LABEL_CHARS = 64
MAX_SCENE_CHARACTERS = 32  # characters of a scene drawn for "find it"
MAX_COPIES = 4  # copies of the symbol in it
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Connections served at once; more are answered 503 at once rather than queued without bound.
MAX_CONNECTIONS = 64


class RequestError(ValueError):
    """A request the server will not serve: its HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- the JSON the API takes ---
_BASE64_CHARS = -(-MAX_IMAGE_BYTES // 3) * 4 + 64  # base64 of the largest image, plus a data-URL prefix


class ImageIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    image: str = Field(max_length=_BASE64_CHARS, description="an image file (PNG, JPEG, GIF, BMP, WebP) in "
                                                             "base64, or as a data: URL")
    drawn: bool = Field(False, description="a drawing (dark strokes on light): redrawn as the model's training "
                                           "drawings look (for Omniglot runs) before it is prepared")


class SupportIn(ImageIn):
    label: str = Field(min_length=1, max_length=MAX_LABEL_CHARS)


class ClassifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    support: list[SupportIn] = Field(min_length=2, max_length=MAX_CLASSES * MAX_PER_CLASS)
    queries: list[ImageIn] = Field(min_length=1, max_length=MAX_QUERIES)
    invert: bool | Literal["auto"] | None = Field(
        None, description="None: prepared as the training files were, refusing images whose strokes then come "
                          "out the other way round; true / false: invert every image / none; 'auto': flip each "
                          "image that needs it")
    return_inputs: bool = Field(False, description="also return what the network saw, as PNG data URLs")


class SceneIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    image: str = Field(max_length=_BASE64_CHARS, description="a scene to search (PNG, JPEG, ...) in base64 or as a "
                                                             "data: URL")


class FindIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    symbol: ImageIn = Field(description="the symbol to find (drawn: dark strokes on light)")
    scene: SceneIn | None = Field(None, description="the scene to search; null: a scene of Omniglot test "
                                                    "characters holding copies of the symbol, drawn here")
    characters: int = Field(8, ge=1, le=MAX_SCENE_CHARACTERS, description="characters of a drawn scene, copies "
                                                                          "included")
    copies: int = Field(2, ge=1, le=MAX_COPIES, description="copies of the symbol in a drawn scene")
    seed: int = Field(0, ge=0, lt=2**32, description="the drawn scene's random seed")


def limits() -> dict[str, Any]:
    return {"max_body_bytes": MAX_BODY_BYTES, "max_image_bytes": MAX_IMAGE_BYTES, "max_image_side": MAX_IMAGE_SIDE,
            "max_request_pixels": MAX_REQUEST_PIXELS, "classes": [2, MAX_CLASSES], "max_per_class": MAX_PER_CLASS,
            "max_queries": MAX_QUERIES, "max_label_chars": MAX_LABEL_CHARS, "formats": list(IMAGE_FORMATS),
            "scene_characters": [1, MAX_SCENE_CHARACTERS], "copies": [1, MAX_COPIES]}


# --- images ---
def open_image(text: str, name: str) -> Image.Image:
    """A base64 image (or data URL) opened, not yet decoded: its encoded size, format and size checked."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise RequestError(422, f"{name}: a data URL must be base64 (data:image/png;base64,...)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, f"{name}: not valid base64") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise RequestError(413, f"{name}: {len(data):,} bytes, more than the {MAX_IMAGE_BYTES:,} an image may have")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:  # a header claiming billions of pixels
        raise RequestError(413, f"{name}: far more pixels than an image may have ({MAX_IMAGE_SIDE} per side)") from None
    except Exception:  # PIL raises many kinds for bytes that are no image it reads
        raise RequestError(422, f"{name}: not an image in a format read here ({', '.join(IMAGE_FORMATS)})") from None
    width, height = image.size
    if max(width, height) > MAX_IMAGE_SIDE or min(width, height) < 1:
        raise RequestError(413, f"{name}: {width}x{height} pixels; each side must be 1 to {MAX_IMAGE_SIDE}")
    return image


def decode_images(items: Sequence[tuple[str, str]]) -> list[Image.Image]:
    """(base64 text, name for messages) pairs as images on white: each checked from its header, then all
    together against ``MAX_REQUEST_PIXELS``, and only then decoded."""
    opened = [(open_image(text, name), name) for text, name in items]
    total = sum(image.width * image.height for image, _ in opened)
    if total > MAX_REQUEST_PIXELS:
        raise RequestError(413, f"the request's images hold {total:,} pixels, more than {MAX_REQUEST_PIXELS:,}")
    decoded = []
    for image, name in opened:
        try:
            image.load()
        except Exception:
            raise RequestError(422, f"{name}: the {image.format} data is truncated or corrupt") from None
        decoded.append(on_white(image))
    return decoded


def check_classes(labels: Sequence[str]) -> None:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    if not 2 <= len(counts) <= MAX_CLASSES:
        raise RequestError(422, f"the support set has {len(counts)} classes; give 2 to {MAX_CLASSES}")
    crowded = [label for label, count in counts.items() if count > MAX_PER_CLASS]
    if crowded:
        raise RequestError(422, f"class {crowded[0]!r} has {counts[crowded[0]]} images; at most {MAX_PER_CLASS}")


# --- the app ---
def create_app(served: ServedModel, allowed_hosts: Sequence[str] = ("*",), finder: SceneFinder | None = None
               ) -> FastAPI:
    """The app; ``finder``: what "find it" uses (default: template matching, scenes from the Omniglot archives
    found on this machine, if any)."""
    app = FastAPI(title="fastadapt", docs_url=None, redoc_url=None)  # the docs pages load scripts from a CDN
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.add_middleware(GuardRequests)
    finder = finder or SceneFinder(template_matching_detector(), omniglot_here(None))
    description = {**served.describe(), "find": finder.describe(), "limits": limits()}

    @app.exception_handler(RequestValidationError)
    def invalid_request(_request: Any, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return _error(400, "the request body is not valid JSON")
        shown = "; ".join(f"{'.'.join(map(str, p['loc'][1:])) or 'body'}: {p['msg']}" for p in problems[:3])
        return _error(422, shown + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))

    @app.exception_handler(RequestError)
    def refused(_request: Any, error: RequestError) -> JSONResponse:
        return _error(error.status, str(error))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/model")
    def model() -> dict[str, Any]:
        return description

    @app.post("/api/classify")
    def classify(request: ClassifyIn) -> dict[str, Any]:
        return _classify(served, request)

    @app.post("/api/find")
    def find(request: FindIn) -> dict[str, Any]:
        return _find(finder, request)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _classify(served: ServedModel, request: ClassifyIn) -> dict[str, Any]:
    """POST /api/classify: each query's class among the support images' labels, with its probabilities."""
    start = time.perf_counter()
    check_classes([item.label for item in request.support])
    images = decode_images([(item.image, f"support image {i + 1} ({item.label})")
                            for i, item in enumerate(request.support)]
                           + [(item.image, f"query {i + 1}") for i, item in enumerate(request.queries)])
    support, queries = images[:len(request.support)], images[len(request.support):]
    try:
        result, inputs = served.classify(support, [item.label for item in request.support], queries,
                                         [item.drawn for item in request.support],
                                         [item.drawn for item in request.queries], request.invert)
    except (ValueError, TypeError) as error:
        raise RequestError(422, str(error)) from None
    reply: dict[str, Any] = {
        "classes": result.classes,
        "predictions": [{"class": label, "probabilities": [round(float(p), 6) for p in row]}
                        for label, row in zip(result.predictions, result.probabilities)]}
    if request.return_inputs:
        urls = [png_data_url(image) for image in inputs]
        reply["inputs"] = {"support": urls[:len(support)], "queries": urls[len(support):]}
    reply["milliseconds"] = round(1000 * (time.perf_counter() - start), 2)
    return reply


def _find(finder: SceneFinder, request: FindIn) -> dict[str, Any]:
    """POST /api/find: the boxes, scores and mask of the symbol in the scene (the client's, or one made of Omniglot
    characters with ``copies`` of the symbol among them)."""
    start = time.perf_counter()
    if request.scene is None and request.copies > request.characters:
        raise RequestError(422, f"copies: {request.copies} copies do not fit in a scene of {request.characters} "
                                "characters")
    items = [(request.symbol.image, "the symbol")]
    if request.scene is not None:
        items.append((request.scene.image, "the scene"))
    images = decode_images(items)
    try:
        reply = finder.find(images[0], images[1] if request.scene else None, request.characters, request.copies,
                            request.seed)
    except (ValueError, TypeError) as error:
        raise RequestError(422, str(error)) from None
    reply["milliseconds"] = round(1000 * (time.perf_counter() - start), 2)
    return reply


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class GuardRequests:
    """ASGI middleware: refuses a body over ``MAX_BODY_BYTES`` (by its Content-Length, else as it streams in)
    and a POST that is not JSON, and sets headers that keep the page to its own scripts and server."""

    HEADERS = [(b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; "
                                            b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
               (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        if not length.isdigit():
            await self._refuse(send, 400, "Content-Length is not a number")
            return
        if int(length) > MAX_BODY_BYTES:
            if int(length) <= DRAIN_BYTES:  # read and drop it, so the client is not cut off mid-upload
                await self._drain(receive, 0)
            await self._refuse(send, 413, f"the request body is larger than {MAX_BODY_BYTES:,} bytes")
            return
        if scope["method"] == "POST":
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind != b"application/json":
                await self._refuse(send, 415, "send the request as JSON (Content-Type: application/json)")
                return
        received = 0
        started = refused = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES and not refused:
                refused = True
                if message.get("more_body"):
                    await self._drain(receive, received)
                if not started:
                    await self._refuse(send, 413, f"the request body is larger than {MAX_BODY_BYTES:,} bytes")
                return {"type": "http.disconnect"}  # the app stops reading; what it answers is dropped
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, counted_receive, send_with_headers)

    @staticmethod
    async def _drain(receive: Receive, received: int) -> None:
        """Read the rest of a body and drop it, up to ``DRAIN_BYTES`` in all."""
        while received <= DRAIN_BYTES:
            message = await receive()
            received += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                return

    async def _refuse(self, send: Send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), *self.HEADERS]})
        await send({"type": "http.response.body", "body": body})


# --- running it ---
def server_config(served: ServedModel, host: str = "127.0.0.1", port: int = 8000,
                  finder: SceneFinder | None = None) -> uvicorn.Config:
    """One process serving ``served`` on ``host``:``port``; Host headers other than this machine's names (or
    ``host``) are refused, so a web page elsewhere cannot reach the server through DNS rebinding."""
    wildcard = host in ("0.0.0.0", "::", "")
    allowed = ["*"] if wildcard else sorted({*LOCAL_HOSTS, "[::1]", host})
    return uvicorn.Config(create_app(served, allowed, finder), host=host, port=port, log_level="warning",
                          limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5)


def serve(served: ServedModel, host: str = "127.0.0.1", port: int = 8000, finder: SceneFinder | None = None) -> None:
    """Serve until interrupted; inference runs on one thread per request (requests run side by side)."""
    torch.set_num_threads(1)
    uvicorn.Server(server_config(served, host, port, finder)).run()


class BackgroundServer:
    """The app served from a thread of this process (tests, the benchmark): ``with BackgroundServer(served) as
    url: ...``; port 0 picks a free one."""

    def __init__(self, served: ServedModel, host: str = "127.0.0.1", port: int = 0,
                 finder: SceneFinder | None = None) -> None:
        self.server = uvicorn.Server(server_config(served, host, port, finder))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the web server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
