"""The retrieval service: an ASGI app (FastAPI) over an ImageSearch, served by uvicorn.

    POST /search?k=10              one image: the raw body, or a multipart form field
    POST /search/batch?k=10        several images in one multipart form, one answer
    GET  /items/{id}/neighbors?k=  search by a database item's own code
    GET  /items/{id}/image         a database image (PNG)
    GET  /health                   items, bits, the model card, the limits
    GET  /                         the page; GET /docs the API's documentation (/openapi.json)
    GET  /favicon.ico              the page's icon
    POST /items                    (a writable server) add images (multipart: `file` fields, each
                                   optionally followed by `id` and `label` fields) or codes (JSON
                                   {"items": [{"code": "0101...", "id": 7, "label": 3}]}); 201
                                   with the ids once the change is on disk
    DELETE /items/{id}             (a writable server) remove an item

Writes need `Authorization: Bearer <token>` (the token of serve --api-token-file,
compared in constant time, never logged; 401 without it or with another); reads
too with --protect-reads. A read-only server answers writes with 405.

Searches take thumbnails=true to carry each result's image inline (a PNG data
URL), so that a page shows the results with one request.

Every error is a JSON body {"error": message, "status": code}: 413 over the body
limit, 400 an empty body or a malformed form, 415 not an image, 422 an
undecodable image, one over the pixel limit (checked from the header, before the
pixels are decoded) or k outside 1..N, 404 an unknown item, 408 a body that does
not arrive within the read timeout, 503 when the model queue is full or a request
waits too long for it.

The model runs in a bounded pool of threads; the requests waiting for it are
gathered into one forward pass (micro-batching), which is what keeps the
throughput up under load on a CPU. The index and the net are shared read-only.
A client that goes away is one warning line, not a traceback.
"""
import asyncio
import base64
import contextlib
import dataclasses
import hmac
import logging
import logging.handlers
import queue as queue_module
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import cv2

from ssdh_port.errors import SSDHError
from ssdh_port.service.search import ImageInputError, decode_image

log = logging.getLogger("ssdh_port.service")


@dataclasses.dataclass
class ServiceLimits:
    max_body_bytes: int = 8 << 20       # a request body, raw or multipart
    max_pixels: int = 16_000_000        # width x height of one image
    max_images: int = 32                # images in one batch request
    max_k: int = 0                      # 0: the number of items
    max_pending: int = 256              # images waiting for the model; beyond: 503
    workers: int = 1                    # threads running the model
    batch_images: int = 64              # images per forward pass at most
    read_timeout: float = 15.0          # seconds for the whole request body
    model_timeout: float = 30.0         # seconds a request may wait for the model
    max_connections: int = 1024         # open connections at once; beyond: 503
    backlog: int = 2048                 # the listen queue
    header_timeout: float = 5.0         # seconds for a request's line and headers; then the connection closes
    drain_bytes: int = 64 << 20         # of a refused body, read (and dropped) so the client sees the answer
    log_queue: int = 10000              # log lines waiting for stderr; beyond, lines are dropped and counted

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type is float:
                if not isinstance(value, (int, float)) or not value > 0:
                    raise SSDHError(f"ServiceLimits.{field.name} must be a positive number of seconds, "
                                    f"got {value!r}")
                continue
            least = 0 if field.name == "max_k" else 1
            if not isinstance(value, int) or value < least:
                raise SSDHError(f"ServiceLimits.{field.name} must be an integer >= {least}, got {value!r}")


class ApiError(SSDHError):
    """An error answered as JSON with its HTTP status."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class _ModelQueue:
    """Requests for the model, answered in batches by `workers` threads."""

    def __init__(self, engine, limits):
        self.engine, self.limits = engine, limits
        self.pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="ssdh-model")
        self.waiting = []          # (images, k, future)
        self.pending_images = 0
        self.active = 0

    async def encode(self, images):
        """Packed codes of images, through the same batched forward passes as searches."""
        return await self.search(images, None)

    async def search(self, images, k):
        if self.pending_images + len(images) > self.limits.max_pending:
            raise ApiError(503, f"the server is busy ({self.pending_images} images waiting for the model); "
                                "retry later")
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((images, k, future))
        self.pending_images += len(images)
        if self.active < self.limits.workers:
            self.active += 1
            asyncio.get_running_loop().create_task(self._drain())
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.limits.model_timeout)
        except asyncio.TimeoutError:
            raise ApiError(503, f"no answer from the model within {self.limits.model_timeout:g} s") from None

    async def _drain(self):
        loop = asyncio.get_running_loop()
        try:
            while self.waiting:
                batch, count = [], 0
                while self.waiting and (not batch or count + len(self.waiting[0][0]) <= self.limits.batch_images):
                    batch.append(self.waiting.pop(0))
                    count += len(batch[-1][0])
                try:
                    answers = await loop.run_in_executor(self.pool, self._run, batch)
                except Exception as err:  # one failed pass fails its own requests only
                    answers = [err] * len(batch)
                for (images, _, future), answer in zip(batch, answers):
                    self.pending_images -= len(images)
                    if future.done():
                        continue
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:
            self.active -= 1

    def _run(self, batch):
        """One forward pass for every image of the batch; then each search request's
        hits, or (k None) an add request's codes."""
        images = [image for request in batch for image in request[0]]
        codes = self.engine.encode_images(images)
        searches = [request[1] for request in batch if request[1] is not None]
        hits = self.engine.search_codes(codes, max(searches)) if searches else None
        answers, start = [], 0
        for request_images, request_k, _ in batch:
            rows = slice(start, start + len(request_images))
            answers.append(codes[rows] if request_k is None else [row[:request_k] for row in hits[rows]])
            start += len(request_images)
        return answers


async def _read_body(request, limits):
    """The whole body, within the size limit and the read timeout."""
    declared = request.headers.get("content-length")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.read_timeout
    stream = request.stream().__aiter__()
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"Content-Length {declared!r} is not a byte count")
        if int(declared) > limits.max_body_bytes:
            await _drain(stream, limits, deadline, int(declared))
            raise ApiError(413, f"the body is {declared} bytes; the limit is {limits.max_body_bytes}")
    chunks, size = [], 0
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise ApiError(408, f"the body did not arrive within {limits.read_timeout:g} s") from None
        size += len(chunk)
        if size > limits.max_body_bytes:
            await _drain(stream, limits, deadline)
            raise ApiError(413, f"the body is over the limit of {limits.max_body_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(stream, limits, deadline, declared=None):
    """Read and drop what a client still sends of a refused body (up to
    drain_bytes, within the read timeout), so that it reads the answer instead of
    a reset connection (nginx's lingering close)."""
    if declared is not None and declared > limits.drain_bytes:
        return  # too much to read for nothing: the connection closes
    loop, dropped = asyncio.get_running_loop(), 0
    with contextlib.suppress(StopAsyncIteration, asyncio.TimeoutError, Exception):
        while dropped <= limits.drain_bytes:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - loop.time()))
            dropped += len(chunk)


# Leading bytes of the image formats the decoder reads (PNG, JPEG, BMP, TIFF, WebP, PNM, GIF).
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"P5", b"P6",
                     b"GIF87a", b"GIF89a")


def _looks_like_an_image(body):
    return body.startswith(_IMAGE_SIGNATURES) or (body[:4] == b"RIFF" and body[8:12] == b"WEBP")


async def _uploaded_images(request, limits, most):
    """[(file name, bytes)] of a request: the raw body (one image, name None) or the
    file fields of a multipart form (at most `most`)."""
    from starlette.datastructures import UploadFile

    body = await _read_body(request, limits)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded" and not _looks_like_an_image(body):
        # curl --data-binary @q.png sends this type with the raw image: an image's bytes are taken
        # as the raw body whatever the type says; a real form is refused.
        raise ApiError(415, "send the image as the raw body or as a multipart/form-data file field")
    if kind != "multipart/form-data":
        if not body:
            raise ApiError(400, "the body is empty: send an image (raw bytes or a multipart file field)")
        return [(None, body)]

    form = await _multipart(request, body, limits, most, most)
    files = [(value.filename or key, await value.read()) for key, value in form.multi_items()
             if isinstance(value, UploadFile)]
    if not files:
        raise ApiError(400, "the multipart form has no file field")
    return files


def _hit(hit, query_label=None):
    out = {"id": hit.id, "distance": hit.distance, "label": hit.label}
    if query_label is not None and hit.label is not None:
        out["same_label"] = hit.label == query_label
    return out


def create_app(engine, limits=None, token=None, protect_reads=False):
    """The FastAPI app answering for engine (an ssdh_port.service.search.ImageSearch);
    token: the bearer token writes (and, with protect_reads, reads) need."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    from ssdh_port.service.page import FAVICON, api_page, page

    limits = limits or ServiceLimits()
    writable = engine.writer is not None
    if writable and not token:
        raise SSDHError("a writable server needs an API token (serve --api-token-file)")
    if protect_reads and not token:
        raise SSDHError("--protect-reads needs an API token (serve --api-token-file)")
    queue = _ModelQueue(engine, limits)
    writer = ThreadPoolExecutor(1, thread_name_prefix="ssdh-write")  # one writer, changes in arrival order
    decoder = ThreadPoolExecutor(2, thread_name_prefix="ssdh-decode")
    # /docs is rendered here from the schema: FastAPI's own pages load Swagger UI / ReDoc from a CDN.
    app = FastAPI(title="SSDH image search", version="1", docs_url=None, redoc_url=None,
                  description="Binary-code image search with a trained SSDH net (Hamming distance).")

    def error(status, message):
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request, err):
        response = error(err.status, str(err))
        if err.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(ImageInputError)
    async def _image_error(request, err):
        return error(err.status, str(err))

    @app.exception_handler(HTTPException)
    async def _http_error(request, err):
        message = {404: f"no such page {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(err.status_code, err.detail)
        return error(err.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, err):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return error(422, problems)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request, err):
        log.warning("client %s went away during %s %s", request.client.host if request.client else "?",
                    request.method, request.url.path)
        return Response(status_code=499)

    def max_k():
        items = engine.items
        return min(limits.max_k or items, items)

    def check_k(k):
        if not 1 <= k <= max_k():
            raise ApiError(422, f"k must be between 1 and {max_k()}, got {k}")

    def authorized(request):
        """The bearer token, compared in constant time; 401 otherwise (the token is never logged)."""
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())):
            raise ApiError(401, "this needs the API token: Authorization: Bearer <token>")

    def reads(request):
        if protect_reads:
            authorized(request)

    def writes(request):
        if not writable:
            raise ApiError(405, "the server is read-only (ssdh serve --writable --api-token-file F takes changes)")
        authorized(request)

    def item_or_404(item_id):
        try:
            return engine.item(item_id)
        except SSDHError:
            raise ApiError(404, f"no item with id {item_id}") from None

    async def decode(files):
        loop = asyncio.get_running_loop()
        return [await loop.run_in_executor(decoder, decode_image, data, limits.max_pixels,
                                           "the request body" if name is None else f"file {name!r}")
                for name, data in files]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page():
        return page(engine.items, engine.index.bits, max_k(), engine.db is not None, engine.has_labels,
                    writable=writable, token_needed=protect_reads)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs_page():
        return api_page(app.openapi())

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})

    async def with_thumbnails(results, thumbnails):
        """Each result with its database image as a PNG data URL, when asked."""
        if not thumbnails or engine.db is None:
            return results
        loop = asyncio.get_running_loop()
        for result in results:
            try:
                result["thumbnail"] = await loop.run_in_executor(decoder, _png_data_url, engine, result["id"])
            except SSDHError:
                result["thumbnail"] = None  # an item without a stored image (added later)
        return results

    @app.get("/health")
    async def health(request: Request):
        reads(request)
        card = engine.card
        return {"status": "ok", "items": engine.items, "bits": engine.index.bits, "writable": writable,
                "labels": engine.has_labels, "images": engine.db is not None,
                "index": type(engine.writer or engine.index).__name__,
                "model": {"prototxt": card.prototxt, "weights": card.weights, "latent_blob": engine.latent,
                          "transform": card.transform, "image_size": card.image_size, "card": card.path},
                "limits": dataclasses.asdict(limits), "waiting_images": queue.pending_images,
                "log_lines_dropped": getattr(getattr(app.state, "dropped_log_lines", None), "dropped", 0)}

    @app.post("/search")
    async def search(request: Request, k: int = 10, thumbnails: bool = False):
        """Nearest database items of one image (raw body, or the first file of a
        multipart form); thumbnails=true adds each result's image as a data URL."""
        reads(request)
        check_k(k)
        started = time.perf_counter()
        files = await _uploaded_images(request, limits, 1)
        images = await decode(files)
        hits = (await queue.search(images, k))[0]
        results = await with_thumbnails([_hit(h) for h in hits], thumbnails)
        return {"k": k, "results": results, "seconds": round(time.perf_counter() - started, 4)}

    @app.post("/search/batch")
    async def search_batch(request: Request, k: int = 10):
        """Nearest database items of each file of a multipart form, in the form's order."""
        reads(request)
        check_k(k)
        started = time.perf_counter()
        files = await _uploaded_images(request, limits, limits.max_images)
        images = await decode(files)
        answers = await queue.search(images, k)
        return {"k": k, "queries": [{"name": name, "results": [_hit(h) for h in hits]}
                                    for (name, _), hits in zip(files, answers)],
                "seconds": round(time.perf_counter() - started, 4)}

    @app.get("/items/{item_id}/neighbors")
    async def neighbors(request: Request, item_id: int, k: int = 10, thumbnails: bool = False):
        """Nearest database items of a database item's own code; each result says
        whether its label is the item's (thumbnails=true: with its image)."""
        reads(request)
        check_k(k)
        _, label = item_or_404(item_id)
        hits = await asyncio.get_running_loop().run_in_executor(decoder, engine.neighbors, item_id, k)
        return {"k": k, "item": {"id": item_id, "label": label},
                "results": await with_thumbnails([_hit(h, label) for h in hits], thumbnails)}

    @app.get("/items/{item_id}/image", responses={200: {"content": {"image/png": {}}}})
    async def item_image(request: Request, item_id: int):
        """A database image as PNG (when the server was given the image database)."""
        reads(request)
        item_or_404(item_id)
        if engine.db is None:
            raise ApiError(404, "the server was started without the image database (--db)")
        try:
            image = await asyncio.get_running_loop().run_in_executor(decoder, engine.database_image, item_id)
        except SSDHError as err:
            raise ApiError(404, str(err)) from None
        _, png = cv2.imencode(".png", image)
        return Response(png.tobytes(), media_type="image/png",
                        headers={"Cache-Control": "public, max-age=3600"})

    @app.post("/items", status_code=201)
    async def add_items(request: Request):
        """Add items (a writable server, with the token): images as multipart `file`
        fields (each optionally followed by `id` and `label` fields), encoded by the
        server's net; or JSON {"items": [{"code": "0/1 string", "id": ..., "label": ...}]}.
        Answers 201 with the ids once the change is on disk."""
        writes(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            codes, ids, labels = _json_items(await _read_body(request, limits), engine, limits)
        else:
            entries = await _uploaded_items(request, limits)
            images = await decode([(name, data) for name, data, _, _ in entries])
            codes = await queue.encode(images)
            ids = [e[2] for e in entries]
            labels = [e[3] for e in entries]
            ids, labels = _complete(ids, labels, engine)
        loop = asyncio.get_running_loop()
        try:
            added = await loop.run_in_executor(writer, engine.add_codes, codes, ids, labels)
        except SSDHError as err:
            raise ApiError(409 if "already in" in str(err) else 507 if "not written" in str(err) else 422,
                           str(err)) from None
        return {"ids": added, "items": engine.items}

    @app.delete("/items/{item_id}")
    async def remove_item(request: Request, item_id: int):
        """Remove an item (a writable server, with the token)."""
        writes(request)
        try:
            await asyncio.get_running_loop().run_in_executor(writer, engine.remove, [item_id])
        except SSDHError as err:
            raise ApiError(404 if "not in" in str(err) else 507, str(err)) from None
        return {"removed": item_id, "items": engine.items}

    return app


def _complete(ids, labels, engine):
    """Ids for the items given none (after the largest one); labels checked against
    the index (all or none, whole numbers)."""
    given = [i for i in ids if i is not None]
    if given and len(given) != len(ids):
        raise ApiError(422, "give an id for every item or for none")
    if not given:
        ids = None  # the next ones, chosen by the writer thread
    present = [label for label in labels if label is not None]
    if engine.has_labels and len(present) != len(labels):
        raise ApiError(422, "the index holds labels: give a label for every item")
    if not engine.has_labels and present:
        raise ApiError(422, "the index holds no labels: give none")
    return ids, (labels if engine.has_labels else None)


def _whole(value, what):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ApiError(422, f"{what} must be a whole number, got {value!r}") from None
    if str(number) != str(value).strip() and not isinstance(value, int):
        raise ApiError(422, f"{what} must be a whole number, got {value!r}")
    return number


def _json_items(body, engine, limits):
    """(packed codes, ids, labels) of a JSON body {"items": [{"code", "id", "label"}]}."""
    import json

    import numpy as np

    try:
        payload = json.loads(body)
        items = payload["items"]
        assert isinstance(items, list) and items
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ApiError(400, 'expected JSON {"items": [{"code": "0101...", "id": 7, "label": 3}, ...]}') from None
    if len(items) > limits.max_images:
        raise ApiError(422, f"more than {limits.max_images} items in one request; the limit is {limits.max_images}")
    bits = engine.index.bits
    rows, ids, labels = [], [], []
    for n, item in enumerate(items):
        code = item.get("code") if isinstance(item, dict) else None
        if isinstance(code, str):
            code = list(code)
        if not isinstance(code, list) or len(code) != bits or any(str(b) not in ("0", "1") for b in code):
            raise ApiError(422, f"item {n}: code must be {bits} bits as a string or list of 0 and 1")
        rows.append([int(b) for b in code])
        ids.append(None if item.get("id") is None else _whole(item["id"], f"item {n}: id"))
        labels.append(None if item.get("label") is None else _whole(item["label"], f"item {n}: label"))
    ids, labels = _complete(ids, labels, engine)
    return np.asarray(rows, dtype=np.uint8), ids, labels


async def _multipart(request, body, limits, files, fields):
    """The parsed multipart form of a body already read, with at most `files` files
    and `fields` other fields (422 beyond, 400 for a malformed form)."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def once():
        yield body

    parser = MultiPartParser(request.headers, once(), max_files=files, max_fields=fields,
                             max_part_size=limits.max_body_bytes)
    try:
        return await parser.parse()
    except MultiPartException as err:
        if err.message.startswith("Too many files"):
            raise ApiError(422, f"more than {files} images in one request; the limit is {files}") from None
        raise ApiError(400, f"malformed multipart form: {err.message}") from None


async def _uploaded_items(request, limits):
    """[(file name, bytes, id or None, label or None)] of a multipart form: each
    `file` field, with the `id` / `label` fields that follow it."""
    from starlette.datastructures import UploadFile

    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise ApiError(415, "send images as multipart/form-data file fields (or codes as application/json)")
    body = await _read_body(request, limits)
    form = await _multipart(request, body, limits, limits.max_images, 3 * limits.max_images)
    entries = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            entries.append([value.filename or key, await value.read(), None, None])
        elif key in ("id", "label"):
            if not entries:
                raise ApiError(400, f"a {key!r} field before any file: each file's fields follow it")
            entries[-1][2 if key == "id" else 3] = _whole(value, f"file {entries[-1][0]!r}: {key}")
    if not entries:
        raise ApiError(400, "no file field in the form: add images as `file` fields")
    return [tuple(e) for e in entries]


def _png_data_url(engine, item_id):
    _, png = cv2.imencode(".png", engine.database_image(item_id))
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def listening_socket(host="127.0.0.1", port=8000, backlog=2048):
    """A bound, listening TCP socket (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise SSDHError(f"cannot listen on {host}:{port} ({err.strerror})") from None
    sock.listen(backlog)
    return sock


def serve(engine, host="127.0.0.1", port=8000, limits=None, ready=None, proxy_headers=False,
          forwarded_allow_ips=None, token=None, protect_reads=False):
    """Serve engine with uvicorn until interrupted; ready(url) is called once listening."""
    import uvicorn

    limits = limits or ServiceLimits()
    sock = listening_socket(host, port, limits.backlog)
    bound = sock.getsockname()[1]
    logs = _QueuedLog(limits.log_queue)
    app = create_app(engine, limits, token=token, protect_reads=protect_reads)
    app.state.dropped_log_lines = logs.handler
    config = uvicorn.Config(
        app, limit_concurrency=limits.max_connections, backlog=limits.backlog, timeout_keep_alive=5,
        proxy_headers=proxy_headers, forwarded_allow_ips=forwarded_allow_ips, server_header=False,
        log_config=None, http=_header_timeout_protocol(limits.header_timeout))
    server = uvicorn.Server(config)
    if ready:
        ready(f"http://{host}:{bound}/")
    try:
        server.run(sockets=[sock])
    finally:
        logs.stop()


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Puts records on a bounded queue without waiting: a full queue (its reader
    stuck behind a full pipe) drops the line and counts it."""

    def __init__(self, queue):
        super().__init__(queue)
        self.dropped = 0

    def enqueue(self, record):
        try:
            self.queue.put_nowait(record)
        except queue_module.Full:
            self.dropped += 1


class _QueuedLog:
    """The server's loggers (uvicorn's, access lines included, and ssdh_port's) write
    through a queue to a thread that writes stderr: the event loop never blocks on a
    log line, whoever reads (or does not read) the other end of stderr."""

    def __init__(self, size):
        self.queue = queue_module.Queue(size)
        self.handler = _DroppingQueueHandler(self.queue)
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.listener = logging.handlers.QueueListener(self.queue, stream)
        self.listener.start()
        self.loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "uvicorn.access",
                                                             "ssdh_port")]
        self.saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in self.loggers]
        for lg in self.loggers:
            lg.handlers[:] = [] if lg.name == "uvicorn.error" else [self.handler]
            lg.setLevel(logging.INFO)
            lg.propagate = lg.name == "uvicorn.error"  # through "uvicorn"

    def stop(self):
        with contextlib.suppress(Exception):
            self.listener.stop()
        for lg, (handlers, level, propagate) in zip(self.loggers, self.saved):
            lg.handlers[:], lg.propagate = handlers, propagate
            lg.setLevel(level)


def _header_timeout_protocol(seconds):
    """uvicorn's h11 protocol that closes a connection whose request line and headers
    have not all arrived within `seconds` (uvicorn has no such bound: a client that
    never finishes its headers would hold a connection, and --max-connections of
    them every connection)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._header_timer = self.loop.call_later(seconds, self._headers_late)

        def data_received(self, data):
            super().data_received(data)
            waiting = self.conn.their_state is h11.IDLE
            timer = getattr(self, "_header_timer", None)
            if not waiting and timer is not None:
                timer.cancel()
                self._header_timer = None
            elif waiting and timer is None:
                self._header_timer = self.loop.call_later(seconds, self._headers_late)

        def connection_lost(self, exc):
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
            super().connection_lost(exc)

        def _headers_late(self):
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.warning("closed a connection from %s: no complete request headers within %g s",
                            self.client[0] if self.client else "?", seconds)
                self.transport.close()

    return HeaderTimeoutProtocol
