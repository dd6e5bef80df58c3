"""`vitkit serve`: the HTTP face of `Engine`, on FastAPI and uvicorn.

    POST /predict   one image as the body, or several as multipart files -> top-k per image
    POST /explain   one image -> attention map as numbers and as a PNG overlay
    GET  /          a page to drop an image on;  GET /info, GET /health

Every request carries image bytes and nothing else: no parameter names a file on the server.
Bodies over the size limit get 413 before they are read whole (FastAPI's `max_body_size`); a body
that does not arrive in time gets 408; an image that cannot be decoded gets 400 with the reason,
and the server goes on. Decoding runs in a thread pool and the model in its own thread (see
`batcher.py`), so the event loop only moves bytes.

What a client cannot do (`guard.py`): make the server decode more pixels than an image's and a
request's budget (refused from the images' headers, before any pixel is decoded, whatever the
format); hold more than `max_pending` requests in the server at once (503 beyond); reach it
under another host name than the one it is served at (DNS rebinding: the `Host` header is
checked); or have a web page of another site spend its compute (a browser's cross-site POST is
refused). The API schema is served only with --docs.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import uvicorn
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from vitkit import runtime
from vitkit.data.decode import BadImage
from vitkit.serve import guard
from vitkit.serve.batcher import Batcher
from vitkit.serve.engine import METHODS, Engine, Method, open_model, overlay_png
from vitkit.serve.page import PAGE, PAGE_HEADERS


@dataclass(frozen=True)
class Settings:
    max_batch: int = 32  # images per forward pass
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for company
    max_body_mb: float = 20.0  # larger request bodies get 413
    decode_threads: int = 2
    max_images: int = 64  # per request
    max_connections: int = 1024  # more open at once get 503 from uvicorn
    max_image_mpx: float = 40.0  # decoded megapixels an image may have: refused from its header above
    max_request_mpx: float = 120.0  # and all the images of one request together
    max_pending: int = 256  # requests in the server at once (reading, decoding, waiting for the model)
    body_timeout_s: float = 30.0  # a request body must arrive within this (slow clients get 408)
    host: str | None = None  # the address served at: the Host header is checked against it (None: not)
    allow_hosts: tuple[str, ...] = ()  # other names the server may be reached at (a 0.0.0.0 server's)
    docs: bool = False  # serve the API schema (/openapi.json, /docs)

    def check(self) -> None:
        for name in ("max_batch", "decode_threads", "max_images", "max_connections", "max_pending"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.max_wait_ms >= 0 or not self.max_body_mb > 0:
            raise ValueError("--max-wait-ms must be 0 or more and --max-body-mb more than 0")
        for name in ("max_image_mpx", "max_request_mpx", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be more than 0, got {getattr(self, name)}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)


@dataclass
class Service:
    """What the endpoints share, kept on `app.state.service`."""
    engine: Engine
    settings: Settings
    batcher: Batcher
    decode_pool: ThreadPoolExecutor
    explain_pool: ThreadPoolExecutor  # one thread: explanations are rare and large


def create_app(engine: Engine, settings: Settings = Settings()) -> FastAPI:
    """The ASGI app for one engine; `uvicorn` serves it, tests call it through TestClient."""
    settings.check()
    service = Service(engine, settings, Batcher(engine.probabilities, settings.max_batch, settings.max_wait_ms / 1000),
                      # one core per decode thread: their resizes are torch ops, which would otherwise each
                      # start a team of OpenMP threads as large as the model's, all busy on the same cores
                      ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="vitkit-decode",
                                         initializer=torch.set_num_threads, initargs=(1,)),
                      ThreadPoolExecutor(1, thread_name_prefix="vitkit-explain"))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        yield
        await service.batcher.stop()
        service.decode_pool.shutdown(wait=False, cancel_futures=True)
        service.explain_pool.shutdown(wait=False, cancel_futures=True)

    # max_body_size: 413 from the Content-Length, or as soon as a chunked upload passes the limit
    app = FastAPI(title="vitkit", lifespan=lifespan, docs_url="/docs" if settings.docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if settings.docs else None, max_body_size=settings.max_body_bytes)
    app.add_middleware(guard.Guard, hosts=guard.allowed_hosts(settings.host, settings.allow_hosts),
                       pending=settings.max_pending)
    app.state.service = service
    app.include_router(router)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    return app


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Errors as {"error": "one line"}, the shape the page and scripts read."""
    detail = str(exc.detail)
    if exc.status_code == 413 and detail == "Content Too Large":  # FastAPI's body limit says no more
        detail = f"request body over the limit of {request.app.state.service.settings.max_body_bytes} bytes"
    return JSONResponse({"error": detail}, exc.status_code, headers=exc.headers)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"] if part != "query")
    return JSONResponse({"error": f"{where}: {first['msg']}"}, 422)


async def read_uploads(request: Request, settings: Settings, max_images: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image: the body itself, or every file of a multipart form; within
    the images' and the request's pixel budgets (from the headers)."""
    try:
        uploads = await asyncio.wait_for(_uploads(request, max_images), settings.body_timeout_s)
    except asyncio.TimeoutError:  # (TimeoutError itself from Python 3.11 on, another class before)
        raise HTTPException(408, f"the request body did not arrive within {settings.body_timeout_s:g} s") from None
    uploads = [(name, data) for name, data in uploads if data]
    if not uploads:
        raise HTTPException(400, "no image in the request: send the image file as the body, or as multipart files")
    if len(uploads) > max_images:
        raise HTTPException(413, f"{len(uploads)} images in one request; at most {max_images}")
    problem = guard.over_budget(uploads, int(settings.max_image_mpx * 1e6), int(settings.max_request_mpx * 1e6))
    if problem:
        raise HTTPException(*problem)
    return uploads


async def _uploads(request: Request, max_images: int) -> list[tuple[str, bytes]]:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=max_images, max_fields=max_images) as form:
            files = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
            return [(f.filename or key, await f.read()) for key, f in files]
    return [("image", await request.body())]


async def decode(service: Service, name: str, data: bytes) -> torch.Tensor:
    loop = asyncio.get_running_loop()
    limit = int(service.settings.max_image_mpx * 1e6)
    try:
        return await loop.run_in_executor(service.decode_pool, service.engine.decode, data, limit)
    except BadImage as e:
        reason = " ".join(str(e).split())[:300]
        raise HTTPException(400, f"{name}: cannot use this image: {reason}") from None


router = APIRouter()


@router.post("/predict")
async def predict(request: Request, topk: int = Query(5, ge=1, le=1000)) -> dict:
    """Top-k classes for each image, in the order sent; concurrent requests share batches."""
    service: Service = request.app.state.service
    uploads = await read_uploads(request, service.settings, service.settings.max_images)
    rows = await asyncio.gather(*(service.batcher.submit(decode(service, name, data)) for name, data in uploads))
    return {"predictions": [{"image": name, "top": service.engine.top(row, topk)}
                            for (name, _), row in zip(uploads, rows, strict=True)]}


@router.post("/explain", response_model=None)
async def explain(request: Request, method: Method = "rollout",
                  target: str | None = Query(None, alias="class", description="grad-rollout: the class to explain"),
                  format: Literal["json", "png"] = "json") -> dict | Response:
    """The attention map of one image, as `vitkit explain --method` computes it."""
    service: Service = request.app.state.service
    engine = service.engine
    uploads = await read_uploads(request, service.settings, 1)
    if target is not None and target not in engine.classes:
        raise HTTPException(400, f"class {target!r} is not one of the model's classes (GET /info lists them)")
    image = await decode(service, *uploads[0])
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(service.explain_pool, engine.explain, image, method, target)
    png = await loop.run_in_executor(service.explain_pool, overlay_png, image, result["map"])
    if format == "png":
        return Response(png, media_type="image/png")
    heat = result["map"]
    return {"image": uploads[0][0], "method": method, "class": result["class"],
            "top": engine.top(result["probabilities"], 5), "grid": list(heat.shape[-2:]),
            "map": heat.tolist(), "overlay_png": base64.b64encode(png).decode()}


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers=PAGE_HEADERS)


@router.get("/health")
async def health(request: Request) -> dict:
    batcher = request.app.state.service.batcher
    return {"status": "ok", "waiting": batcher.waiting, "batches": batcher.batches, "images": batcher.images}


@router.get("/info")
async def info(request: Request) -> dict:
    service: Service = request.app.state.service
    engine, settings = service.engine, service.settings
    return {"classes": engine.classes, "model": {"source": engine.loaded.root.name, "config": engine.config.to_dict(),
                                                 "parameters": engine.loaded.model.num_parameters()},
            "normalize": engine.loaded.normalize.to_dict(), "image_size": list(engine.config.image_hw),
            "channels": engine.config.in_channels, "dtype": engine.dtype, "compiled": engine.compiled,
            "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
            "max_body_bytes": settings.max_body_bytes, "methods": list(METHODS)}


def load_engine(source: str | Path, device: str | None = None, dtype: str = "auto", compile: bool = False,
                revision: str | None = None, max_tokens: int | None = None) -> Engine:
    """Open the model (a load failure is a ValueError/FileNotFoundError: the CLI's one-line
    error at start, never a server that fails on its first request)."""

    dev = runtime.device(device)
    loaded = open_model(source, dev, revision)
    if dtype == "auto":  # bf16 pays on CPUs with AMX/AVX512-BF16, and only for wider models
        dtype = "bf16" if runtime.bf16_pays(dev, loaded.model.config) else "fp32"
    return Engine(loaded, dev, dtype, compile, max_tokens)


def listen(host: str, port: int) -> socket.socket:
    """Bind before serving, so a taken port is the CLI's one-line error and port 0 picks one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {os.strerror(e.errno) if e.errno else e}") from None


def run(engine: Engine, settings: Settings, sock: socket.socket, log_level: str = "warning") -> None:
    """Serve until Ctrl-C / SIGTERM, answering only under the address `sock` is bound to (and
    `settings.allow_hosts`). The first batches are run before the socket accepts."""
    settings = dataclasses.replace(settings, host=sock.getsockname()[0])
    engine.warm_up(tuple(sorted({1, 2, settings.max_batch})))
    config = uvicorn.Config(create_app(engine, settings), log_level=log_level, timeout_keep_alive=5,
                            limit_concurrency=settings.max_connections)
    uvicorn.Server(config).run(sockets=[sock])


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

