"""The retrieval service (ssdh_port.service.server) in-process: every endpoint and every
error status, the model card travelling with the codes, labels by position, the
read timeout and client disconnects at the ASGI level. The real LeNet (BVLC
Caffe's trained MNIST model) encodes 300 MNIST test digits to 500-bit codes (its
ip1 layer > 0.5), which retrieve the same digit well enough to check labels."""
import asyncio
import base64
import contextlib
import json
import logging
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib

import cv2
import numpy as np
import pytest

from tests.shared_data import ROOT, needs_shared, shared

pytest.importorskip("fastapi")
pytestmark = needs_shared

ITEMS = 300
SCALE = 0.00390625


def lenet(name):
    return shared("caffe-models", "lenet", name)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from ssdh_port.data import mnist
    from ssdh_port.data.datasets import write_array_db
    from ssdh_port.pipeline import encode_split, transform_param

    folder = tmp_path_factory.mktemp("service")
    images, labels = mnist.load_split("test")
    write_array_db(folder / "db", images[:ITEMS, None], labels[:ITEMS])
    encoded = encode_split(lenet("lenet.prototxt"), lenet("lenet_iter_10000.caffemodel"), folder / "db",
                           latent_blob="ip1", transform=transform_param(SCALE), batch_size=100)
    encoded.save(folder / "codes.ssdh")
    return folder, images, labels


def png(image):
    return cv2.imencode(".png", image)[1].tobytes()


def client(folder, db=True, **limits):
    from fastapi.testclient import TestClient

    from ssdh_port.service.search import ImageSearch
    from ssdh_port.service.server import ServiceLimits, create_app

    engine = ImageSearch(folder / "codes.ssdh", folder / "db" if db else None)
    return TestClient(create_app(engine, ServiceLimits(**limits)))


def png_header_only(width, height):
    """A valid PNG signature and IHDR claiming width x height, and one tiny IDAT."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_model_card_is_written_beside_the_codes_and_read_back(service):
    from ssdh_port.service.model_card import read_card

    folder, _, _ = service
    record = json.load(open(folder / "codes.ssdh.card.json"))
    assert record["schema"] == "ssdh_port.model_card/1"
    assert record["latent_blob"] == "ip1" and record["bits"] == 500 and record["items"] == ITEMS
    assert record["transform"]["scale"] == SCALE and record["image_size"] == [28, 28]
    assert record["source"] == "db"  # relative to the card's folder
    card = read_card(folder / "codes.ssdh")
    assert card.weights == lenet("lenet_iter_10000.caffemodel") and card.source == str(folder / "db")


def test_search_uses_the_card_and_flags_override_with_a_warning(service, caplog):
    from ssdh_port.service.search import ImageSearch

    folder, images, labels = service
    engine = ImageSearch(folder / "codes.ssdh")
    hits = engine.search([images[7]], 5)[0]
    assert hits[0].id == 7 and hits[0].distance == 0 and hits[0].label == labels[7]
    with caplog.at_level(logging.WARNING, logger="ssdh_port"):
        other = ImageSearch(folder / "codes.ssdh", scale=1.0)
    assert any("scale 0.00390625 overridden by 1.0" in r.getMessage() for r in caplog.records)
    # Without the card's scale the query codes change: this is what the card prevents.
    assert other.search([images[7]], 1)[0][0].distance > 0


def test_without_a_card_the_net_must_be_named(tmp_path, service):
    from ssdh_port.errors import SSDHError
    from ssdh_port.service.search import ImageSearch

    folder, _, _ = service
    shutil.copy(folder / "codes.ssdh", tmp_path / "bare.ssdh")
    with pytest.raises(SSDHError, match="no prototxt, weights known; give --prototxt and --weights"):
        ImageSearch(tmp_path / "bare.ssdh")


def test_a_changed_weights_file_is_a_warning(tmp_path, service, caplog):
    from ssdh_port.service.model_card import read_card

    folder, _, _ = service
    card = read_card(folder / "codes.ssdh")
    shutil.copy(card.weights, tmp_path / "w.caffemodel")
    with open(tmp_path / "w.caffemodel", "ab") as f:
        f.write(b"\0")
    with caplog.at_level(logging.WARNING, logger="ssdh_port"):
        card.with_overrides(weights=tmp_path / "w.caffemodel").check_files()
    assert any("is not the file the codes were encoded with" in r.getMessage() for r in caplog.records)


def test_search_raw_body_and_multipart(service):
    folder, images, labels = service
    api = client(folder)
    raw = api.post("/search?k=10", content=png(images[12]), headers={"content-type": "image/png"})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["k"] == 10 and len(body["results"]) == 10
    assert body["results"][0] == {"id": 12, "distance": 0, "label": int(labels[12])}
    distances = [r["distance"] for r in body["results"]]
    assert distances == sorted(distances)
    form = api.post("/search?k=10", files={"file": ("digit.png", png(images[12]), "image/png")})
    assert form.status_code == 200 and form.json()["results"] == body["results"]
    # A digit that is not in the database: most of its neighbours carry its label.
    query = api.post("/search?k=10", content=png(images[ITEMS + 1])).json()["results"]
    assert sum(r["label"] == labels[ITEMS + 1] for r in query) >= 8


def test_batch_search_answers_each_file_in_order(service):
    folder, images, labels = service
    api = client(folder)
    files = [("files", (f"{i}.png", png(images[i]), "image/png")) for i in (3, 50, 99)]
    answer = api.post("/search/batch?k=4", files=files)
    assert answer.status_code == 200, answer.text
    queries = answer.json()["queries"]
    assert [q["name"] for q in queries] == ["3.png", "50.png", "99.png"]
    assert [q["results"][0]["id"] for q in queries] == [3, 50, 99]
    assert all(len(q["results"]) == 4 for q in queries)
    too_many = client(folder, max_images=2).post("/search/batch", files=files)
    assert too_many.status_code == 422 and "limit is 2" in too_many.json()["error"]


def test_neighbors_marks_other_labels(service):
    folder, _, labels = service
    answer = client(folder).get("/items/5/neighbors?k=20").json()
    assert answer["item"] == {"id": 5, "label": int(labels[5])}
    assert answer["results"][0]["id"] == 5
    for result in answer["results"]:
        assert result["same_label"] == (result["label"] == labels[5])


def test_item_image_health_page_and_docs(service):
    folder, images, _ = service
    api = client(folder)
    picture = api.get("/items/42/image")
    assert picture.headers["content-type"] == "image/png"
    assert np.array_equal(cv2.imdecode(np.frombuffer(picture.content, np.uint8), cv2.IMREAD_UNCHANGED), images[42])
    health = api.get("/health").json()
    assert health["status"] == "ok" and health["items"] == ITEMS and health["bits"] == 500
    assert health["model"]["latent_blob"] == "ip1" and health["model"]["transform"]["scale"] == SCALE
    page = api.get("/")
    assert page.status_code == 200 and "300 items, 500-bit codes" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no external assets
    docs = api.get("/docs")
    # The API's page is rendered here: no script from a CDN, so it works offline.
    assert docs.status_code == 200 and "<script" not in docs.text and "cdn" not in docs.text.lower()
    assert "/items/{item_id}/neighbors" in docs.text and "/openapi.json" in docs.text
    assert api.get("/redoc").status_code == 404
    icon = api.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    # Thumbnails inside the answer: the database image of each result, as a PNG data URL.
    answer = api.get("/items/42/neighbors?k=3&thumbnails=true").json()
    for result in answer["results"]:
        data = base64.b64decode(result["thumbnail"].split(",", 1)[1])
        assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED),
                              images[result["id"]])
    assert "thumbnail" not in api.get("/items/42/neighbors?k=3").json()["results"][0]
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/search", "/search/batch", "/items/{item_id}/neighbors", "/items/{item_id}/image", "/health"} <= set(paths)


@pytest.mark.parametrize("request_kwargs, status, message", [
    ({"content": b""}, 400, "the body is empty"),
    ({"content": b"plain text, no image"}, 415, "is not an image"),
    ({"content": b"GIF87a" + b"\0" * 4}, 415, "is not an image"),
    ({"data": {"field": "value"}}, 415, "raw body or as a multipart/form-data file field"),
    ({"content": b"field=value&other=1", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415,
     "raw body or as a multipart/form-data file field"),
    ({"files": {"file": ("x.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "image/png")}}, 415, "file 'x.png'"),
    ({"content": png_header_only(10000, 9000)}, 422, "10000 x 9000 pixels, more than the limit of 16000000"),
    ({"content": png_header_only(30000, 30000)}, 422, "too many pixels (Image size (900000000 pixels)"),
    ({"content": png_header_only(20, 20)}, 422, "the pixels cannot be decoded"),
    ({"content": b"x" * 5000}, 413, "the limit is 4096"),
])
def test_upload_errors(service, request_kwargs, status, message):
    folder, _, _ = service
    answer = client(folder, max_body_bytes=4096).post("/search", **request_kwargs)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"] and answer.json()["status"] == status


def test_a_chunked_body_over_the_limit_is_413(service):
    folder, _, _ = service

    def chunks():
        for _ in range(10):
            yield b"y" * 1000
    answer = client(folder, max_body_bytes=4096).post("/search", content=chunks())
    assert answer.status_code == 413 and "over the limit of 4096" in answer.json()["error"]


def test_multipart_without_a_file_and_malformed_forms(service):
    folder, _, _ = service
    api = client(folder)
    empty = api.post("/search", files={"note": (None, "hello")})
    assert empty.status_code == 400 and "no file field" in empty.json()["error"]
    broken = api.post("/search", content=b"--xyz\r\nnonsense", headers={"content-type": "multipart/form-data"})
    assert broken.status_code == 400 and "malformed multipart form" in broken.json()["error"]


@pytest.mark.parametrize("path, status, message", [
    ("/search?k=0", 422, "k must be between 1 and 300, got 0"),
    ("/search?k=301", 422, "k must be between 1 and 300, got 301"),
    ("/search?k=ten", 422, "query.k"),
])
def test_k_outside_the_index_is_422(service, path, status, message):
    folder, images, _ = service
    answer = client(folder).post(path, content=png(images[0]))
    assert answer.status_code == status and message in answer.json()["error"]


@pytest.mark.parametrize("method, path, status, message", [
    ("get", "/items/300/neighbors", 404, "no item with id 300"),
    ("get", "/items/-1/image", 404, "no item with id -1"),
    ("get", "/items/abc/image", 422, "path.item_id"),
    ("get", "/items/1/neighbors?k=0", 422, "k must be between"),
    ("get", "/../../etc/passwd", 404, "no such page"),
    ("get", "/search", 405, "GET is not allowed on /search"),
    ("delete", "/items/1/image", 405, "DELETE is not allowed"),
])
def test_item_and_route_errors(service, method, path, status, message):
    folder, _, _ = service
    answer = getattr(client(folder), method)(path)
    assert answer.status_code == status and message in answer.json()["error"]


def test_without_the_database_images_are_404_and_the_page_says_so(service):
    folder, _, _ = service
    api = client(folder, db=False)
    answer = api.get("/items/1/image")
    assert answer.status_code == 404 and "without the image database" in answer.json()["error"]
    assert '"images": false' in api.get("/").text


def test_labels_and_images_are_found_by_position_when_ids_are_not_positions(tmp_path, service):
    from ssdh_port.hashing import HammingIndex

    folder, images, labels = service
    index = HammingIndex.load(folder / "codes.ssdh")
    renumbered = HammingIndex(index.bits)
    renumbered.add(index.codes, ids=np.arange(ITEMS) * 7 + 1000, labels=index.labels)
    renumbered.save(tmp_path / "codes.ssdh")
    card = json.load(open(folder / "codes.ssdh.card.json"))
    card["source"] = None
    json.dump(card | {"prototxt": lenet("lenet.prototxt"), "weights": lenet("lenet_iter_10000.caffemodel")},
              open(tmp_path / "codes.ssdh.card.json", "w"))
    shutil.copytree(folder / "db", tmp_path / "db")
    api = client(tmp_path)
    first = api.post("/search?k=3", content=png(images[9])).json()["results"][0]
    assert first == {"id": 9 * 7 + 1000, "distance": 0, "label": int(labels[9])}
    picture = api.get(f"/items/{9 * 7 + 1000}/image").content
    assert np.array_equal(cv2.imdecode(np.frombuffer(picture, np.uint8), cv2.IMREAD_UNCHANGED), images[9])
    assert api.get("/items/9/image").status_code == 404


def test_a_full_model_queue_is_503(service):
    folder, images, _ = service
    files = [("files", (f"{i}.png", png(images[i]), "image/png")) for i in range(3)]
    answer = client(folder, max_pending=2).post("/search/batch", files=files)
    assert answer.status_code == 503 and "busy" in answer.json()["error"]


def _asgi_post(app, receive, headers):
    """Run one POST /search through the ASGI app; (status, JSON body or None)."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/search", "raw_path": b"/search", "query_string": b"k=3",
             "headers": headers, "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80), "root_path": ""}

    async def main():
        async with asyncio.timeout(10):
            await app(scope, receive, send)
    asyncio.run(main())
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body) if body else None


def test_a_body_that_does_not_arrive_is_408(service):
    from ssdh_port.service.search import ImageSearch
    from ssdh_port.service.server import ServiceLimits, create_app

    folder, _, _ = service
    app = create_app(ImageSearch(folder / "codes.ssdh"), ServiceLimits(read_timeout=0.3))
    parts = [{"type": "http.request", "body": b"\x89PNG", "more_body": True}]

    async def receive():  # ten bytes announced, four sent, then silence (a lying Content-Length)
        if parts:
            return parts.pop()
        await asyncio.sleep(60)
    status, body = _asgi_post(app, receive, [(b"content-length", b"10")])
    assert status == 408 and "within 0.3 s" in body["error"]


def test_a_client_that_goes_away_is_one_warning_line(service, caplog):
    from ssdh_port.service.search import ImageSearch
    from ssdh_port.service.server import create_app

    folder, _, _ = service
    app = create_app(ImageSearch(folder / "codes.ssdh"))
    parts = [{"type": "http.disconnect"}, {"type": "http.request", "body": b"\x89PNG", "more_body": True}]

    async def receive():
        return parts.pop()
    with caplog.at_level(logging.WARNING):
        status, _ = _asgi_post(app, receive, [(b"content-length", b"100")])
    assert status == 499
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "went away during POST /search" in warnings[0].getMessage()
    assert warnings[0].exc_info is None


def test_limits_are_checked():
    from ssdh_port.errors import SSDHError
    from ssdh_port.service.server import ServiceLimits

    with pytest.raises(SSDHError, match="ServiceLimits.workers must be an integer >= 1, got 0"):
        ServiceLimits(workers=0)


# ---------------------------------------------------------------- a real server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = os.environ.get("SSDH_TEST_ARTIFACTS", os.path.join(ROOT, "test-artifacts"))


@contextlib.contextmanager
def running_server(folder, *flags):
    """`ssdh serve` on 127.0.0.1, any free port; yields (base URL, the process)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ssdh_port", "serve", "--index", str(folder / "codes.ssdh"),
         "--db", str(folder / "db"), "--port", "0", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "SSDH_PROGRESS": "0"})
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline() if ready else ""
        assert "serving 300 items on http://127.0.0.1:" in line, (
            line, process.poll(), process.stderr.read() if process.poll() is not None else "")
        yield line.split(" on ")[1].strip().rstrip("/"), process
    finally:
        process.terminate()
        process.wait(10)


def raw_request(base, request, timeout=10):
    """Send raw bytes to the server and return the status line and everything after."""
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while True:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            answer += part
    return answer.decode("latin-1")


def test_the_real_server_answers_hostile_clients(service):
    folder, images, labels = service
    with running_server(folder, "--read-timeout", "1", "--max-body-mb", "1") as (base, process):
        started = time.monotonic()
        lying = raw_request(base, b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                            b"Connection: close\r\n\r\n\x89PNG")
        assert lying.startswith("HTTP/1.1 408") and time.monotonic() - started < 5
        huge = raw_request(base, b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n"
                           b"Connection: close\r\n\r\n")
        assert huge.startswith("HTTP/1.1 413") and "the limit is 1048576" in huge
        empty_chunked = raw_request(base, b"POST /search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                    b"Connection: close\r\n\r\n0\r\n\r\n")
        assert empty_chunked.startswith("HTTP/1.1 400") and "the body is empty" in empty_chunked
        # A client that sends half a body and hangs up.
        host, port = base.split("//")[1].split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"\x89PNG" * 100)
        body = png(images[1])
        ok = raw_request(base, b"POST /search?k=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert ok.startswith("HTTP/1.1 200") and '"id":1,"distance":0' in ok
        # The README's command: curl --data-binary sends the image as x-www-form-urlencoded.
        query = folder / "q.png"
        query.write_bytes(png(images[2]))
        curl = subprocess.run(["curl", "-s", "--data-binary", f"@{query}", f"{base}/search?k=3"],
                              capture_output=True, text=True, timeout=30)
        assert json.loads(curl.stdout)["results"][0] == {"id": 2, "distance": 0, "label": int(labels[2])}
        time.sleep(0.5)
    log = process.stderr.read()
    assert "Traceback" not in log, log[-3000:]
    assert "went away during POST /search" in log
    assert '"POST /search?k=2 HTTP/1.1" 200' in log  # one access line per request


def test_an_image_sent_as_a_form_type_is_taken_as_the_raw_body(service):
    # What `curl --data-binary @q.png` sends: the image's bytes, typed application/x-www-form-urlencoded.
    folder, images, labels = service
    answer = client(folder).post("/search?k=2", content=png(images[7]),
                                 headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0] == {"id": 7, "distance": 0, "label": int(labels[7])}


def browser_api():
    """playwright's sync API with Debian's chromium present (CI must have it; skipped elsewhere)."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"no chromium at {CHROMIUM}: make test installs Debian's chromium with apt")
        pytest.skip(f"no chromium at {CHROMIUM} (make test installs it)")
    return pytest.importorskip("playwright.sync_api")


@pytest.mark.browser
def test_the_page_in_a_real_browser(service, tmp_path):
    sync_api = browser_api()
    folder, images, labels = service
    query = ITEMS + 1
    cv2.imwrite(str(tmp_path / "digit.png"), images[query])
    (tmp_path / "notes.txt").write_text("not an image")
    os.makedirs(ARTIFACTS, exist_ok=True)
    with running_server(folder) as (base, _), sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            missing = []  # any request of the page but its searches that fails (the favicon included)
            page.on("response", lambda r: missing.append(r.url) if r.status >= 400 and "/search" not in r.url
                    else None)
            page.goto(base + "/")
            assert page.title() == "SSDH image search"
            page.fill("#k", "10")
            page.set_input_files("#file", str(tmp_path / "digit.png"))
            page.wait_for_selector("#results li")
            found = page.locator("#results .label").all_inner_texts()
            assert len(found) == 10
            assert sum(text == f"label {labels[query]}" for text in found) >= 8, found
            assert page.locator("#query img").count() == 1
            # The thumbnails came with the answer: every one is there when the list is.
            sources = page.eval_on_selector_all("#results img", "imgs => imgs.map(i => i.src)")
            assert len(sources) == 10 and all(src.startswith("data:image/png;base64,") for src in sources)
            page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete)")
            assert page.evaluate("document.querySelector('#results img').naturalWidth") == 28
            assert all(t.endswith("/ 500 bits") for t in page.locator("#results .distance").all_inner_texts())
            page.screenshot(path=os.path.join(ARTIFACTS, "search_page.png"), full_page=True)

            # Search by a result with the keyboard: Tab to its button, Enter.
            page.locator("#results button").first.focus()
            page.keyboard.press("Enter")
            page.wait_for_selector("#query h2:has-text('Query: item')")
            page.wait_for_function("document.querySelector('#status').textContent.includes('of another class')")
            item_label = page.locator("#query h2").inner_text().split("label ")[1]
            for li in page.locator("#results li").all():
                different = li.locator(".label").inner_text() != f"label {item_label}"
                assert ("wrong" in li.get_attribute("class")) == different
                assert (li.locator(".mark").count() == 1) == different
            page.screenshot(path=os.path.join(ARTIFACTS, "search_by_item.png"), full_page=True)

            # The drop zone opens the file dialog from the keyboard; an error shows on the page.
            with page.expect_file_chooser() as chooser:
                page.focus("#drop")
                page.keyboard.press("Enter")
            chooser.value.set_files(str(tmp_path / "notes.txt"))
            page.wait_for_function("document.querySelector('#error').textContent.length > 0")
            assert "is not an image" in page.inner_text("#error")
            assert page.locator("#results li").count() == 0
            # No broken image for a query that is not one.
            assert page.locator("#query img").count() == 0 and page.locator("#query .nopreview").count() == 1
            assert not missing, missing
        finally:
            browser.close()


def test_connections_without_whole_headers_are_closed(service):
    """Slow headers: five connections that never finish theirs, with room for five,
    are closed after the header timeout; a normal request is then served, not 503'd."""
    folder, _, _ = service
    with running_server(folder, "--header-timeout", "1", "--max-connections", "6") as (base, process):
        host, port = base.split("//")[1].split(":")
        slow = [socket.create_connection((host, int(port))) for _ in range(5)]
        for sock in slow:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        time.sleep(2)
        for sock in slow:
            sock.settimeout(5)
            assert sock.recv(100) == b""  # closed by the server
            sock.close()
        ok = raw_request(base, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert ok.startswith("HTTP/1.1 200")
        time.sleep(0.3)
    assert "no complete request headers within 1 s" in process.stderr.read()


def test_a_refused_upload_is_read_by_a_client_still_sending(service):
    """A 413 that a client still sending its body can read (the server drains a
    bounded amount before closing) instead of a connection reset."""
    import urllib.error
    import urllib.request

    folder, _, _ = service
    with running_server(folder, "--max-body-mb", "1") as (base, _):
        body = b"\x89PNG" + b"\0" * (6 << 20)
        request = urllib.request.Request(base + "/search", data=body, method="POST",
                                         headers={"Content-Type": "image/png"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 413 and "the limit is 1048576" in refused.value.read().decode()


def test_a_log_nobody_reads_does_not_stop_the_service(service):
    """stderr into a pipe nobody reads (a stuck log collector): the access lines fill
    it after a few hundred requests; the server goes on answering."""
    import urllib.request

    folder, _, _ = service
    process = subprocess.Popen(
        [sys.executable, "-m", "ssdh_port", "serve", "--index", str(folder / "codes.ssdh"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "SSDH_PROGRESS": "0"})
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline().decode() if ready else ""
        base = line.split(" on ")[1].strip().rstrip("/")
        started = time.monotonic()
        for _ in range(3000):  # ~100 bytes of access log each: 300 kB, far over a pipe's 64 kB
            with urllib.request.urlopen(base + "/health", timeout=10) as answer:
                assert answer.status == 200
        assert time.monotonic() - started < 120
    finally:
        process.kill()
        process.wait(10)
