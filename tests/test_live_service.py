"""The service over a live index: POST /items (images encoded by the server's net,
or codes as JSON) and DELETE /items/{id} with the bearer token, answered once the
change is on disk; a read-only server refuses writes; --protect-reads; an
acknowledged item survives kill -9 of the server and a deleted one stays deleted."""
import os
import select
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.shared_data import needs_shared
from tests.test_server import ITEMS, png, service  # noqa: F401  (the module's fixture)

pytest.importorskip("fastapi")
pytestmark = needs_shared

TOKEN = "s3cret-token-of-the-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _copy(folder, tmp_path):
    for name in os.listdir(folder):
        if name.startswith("codes.ssdh"):
            shutil.copy(folder / name, tmp_path / name)
    return tmp_path / "codes.ssdh"


def _client(path, db, **options):
    from fastapi.testclient import TestClient

    from ssdh_port.hashing import LiveIndex
    from ssdh_port.service.search import ImageSearch
    from ssdh_port.service.server import create_app

    engine = ImageSearch(LiveIndex(path), db, card=str(path) + ".card.json")
    return TestClient(create_app(engine, token=TOKEN, **options)), engine


def test_writes_need_the_token_and_are_searchable_at_once(service, tmp_path):  # noqa: F811
    folder, images, labels = service
    path = _copy(folder, tmp_path)
    api, engine = _client(path, folder / "db")
    try:
        query = images[ITEMS + 5]
        files = [("file", ("a.png", png(query), "image/png")), ("id", (None, "5000")), ("label", (None, "3")),
                 ("file", ("b.png", png(images[ITEMS + 6]), "image/png")), ("id", (None, "5001")),
                 ("label", (None, "4"))]
        assert api.post("/items", files=files).status_code == 401
        wrong = api.post("/items", files=files, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        added = api.post("/items", files=files, headers=AUTH)
        assert added.status_code == 201, added.text
        assert added.json() == {"ids": [5000, 5001], "items": ITEMS + 2}
        # Found at once: by its own code, and by the same image through the net.
        near = api.get("/items/5000/neighbors?k=3").json()
        assert near["item"] == {"id": 5000, "label": 3} and near["results"][0] == \
            {"id": 5000, "distance": 0, "label": 3, "same_label": True}
        hits = api.post("/search?k=1", content=png(query)).json()["results"]
        assert hits[0]["distance"] == 0 and hits[0]["id"] in (5000,) + tuple(
            r["id"] for r in near["results"] if r["distance"] == 0)
        assert api.get("/items/5000/image").status_code == 404  # no record in the image database
        # Codes as JSON, ids after the largest; a repeated id is a conflict.
        code = "".join("1" if b else "0" for b in np.random.default_rng(0).integers(0, 2, 500))
        by_json = api.post("/items", json={"items": [{"code": code, "label": 1}]}, headers=AUTH)
        assert by_json.status_code == 201 and by_json.json()["ids"] == [5002]
        again = api.post("/items", json={"items": [{"code": code, "id": 5002, "label": 1}]}, headers=AUTH)
        assert again.status_code == 409 and "already in" in again.json()["error"]
        bad = api.post("/items", json={"items": [{"code": code[:10], "label": 1}]}, headers=AUTH)
        assert bad.status_code == 422 and "500 bits" in bad.json()["error"]
        no_label = api.post("/items", json={"items": [{"code": code}]}, headers=AUTH)
        assert no_label.status_code == 422 and "give a label" in no_label.json()["error"]
        # Removal.
        assert api.delete("/items/5000").status_code == 401
        gone = api.delete("/items/5000", headers=AUTH)
        assert gone.status_code == 200 and gone.json() == {"removed": 5000, "items": ITEMS + 2}
        assert api.get("/items/5000/neighbors").status_code == 404
        assert api.delete("/items/5000", headers=AUTH).status_code == 404
        assert api.get("/health").json()["writable"] is True
        page = api.get("/").text
        assert 'id="add"' in page and 'id="token"' in page
    finally:
        engine.live.close()
    # Every change was on disk when it was answered: a reader of the file sees them.
    from ssdh_port.hashing import HammingIndex

    view = HammingIndex.load(path)
    assert len(view) == ITEMS + 2 and 5000 not in view.ids.tolist() and {5001, 5002} <= set(view.ids.tolist())


def test_a_read_only_server_refuses_writes_and_reads_can_be_protected(service, tmp_path):  # noqa: F811
    from tests.test_server import client

    folder, images, _ = service
    api = client(folder)
    refused = api.post("/items", files={"file": ("a.png", png(images[0]), "image/png")})
    assert refused.status_code == 405 and "read-only" in refused.json()["error"]
    assert api.delete("/items/1").status_code == 405
    assert 'id="add"' not in api.get("/").text
    path = _copy(folder, tmp_path)
    protected, engine = _client(path, folder / "db", protect_reads=True)
    try:
        assert protected.post("/search", content=png(images[0])).status_code == 401
        assert protected.post("/search", content=png(images[0]), headers=AUTH).status_code == 200
        assert protected.get("/items/1/neighbors").status_code == 401
    finally:
        engine.live.close()


def _serve(path, db, token_file, *flags):
    process = subprocess.Popen([sys.executable, "-m", "ssdh_port", "serve", "--index", str(path), "--db", str(db),
                                "--port", "0", "--api-token-file", str(token_file), *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "SSDH_PROGRESS": "0"})
    ready, _, _ = select.select([process.stdout], [], [], 90)
    line = process.stdout.readline() if ready else ""
    assert " on http://127.0.0.1:" in line, (line, process.poll())
    return process, line.split(" on ")[1].split()[0].rstrip("/")


def test_an_acknowledged_item_survives_kill_9_of_the_server(service, tmp_path):  # noqa: F811
    import json
    import urllib.error
    import urllib.request

    folder, images, _ = service
    path = _copy(folder, tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")

    def call(base, method, route, body=None, kind=None, auth=True):
        request = urllib.request.Request(base + route, data=body, method=method,
                                         headers={**(AUTH if auth else {}), **({"Content-Type": kind} if kind else {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    process, base = _serve(path, folder / "db", token_file, "--writable")
    try:
        code = "".join("1" if b else "0" for b in np.random.default_rng(1).integers(0, 2, 500))
        status, body = call(base, "POST", "/items", json.dumps({"items": [{"code": code, "id": 777, "label": 2}]})
                            .encode(), "application/json")
        assert status == 201 and body["ids"] == [777]
        status, _ = call(base, "DELETE", "/items/3")
        assert status == 200
        assert call(base, "DELETE", "/items/4", auth=False)[0] == 401
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    # The writer lock went with the process: a new server (read-only here) opens the file as it was left.
    process, base = _serve(path, folder / "db", token_file)
    try:
        status, body = call(base, "GET", "/items/777/neighbors?k=1", auth=False)
        assert status == 200 and body["results"][0] == {"id": 777, "distance": 0, "label": 2, "same_label": True}
        assert call(base, "GET", "/items/3/neighbors", auth=False)[0] == 404
        assert call(base, "GET", "/items/4/neighbors", auth=False)[0] == 200
    finally:
        process.terminate()
        process.wait(30)


def test_the_same_writes_through_milvus(service, tmp_path):  # noqa: F811
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from fastapi.testclient import TestClient

    from ssdh_port.hashing import HammingIndex
    from ssdh_port.hashing.milvus import MilvusIndex
    from ssdh_port.service.search import ImageSearch
    from ssdh_port.service.server import create_app

    folder, images, _ = service
    milvus = MilvusIndex.from_hamming(HammingIndex.load(folder / "codes.ssdh"), str(tmp_path / "m.db"))
    engine = ImageSearch(milvus, folder / "db", card=str(folder / "codes.ssdh.card.json"), writable=True)
    api = TestClient(create_app(engine, token=TOKEN))
    added = api.post("/items", files=[("file", ("a.png", png(images[ITEMS + 5]), "image/png")),
                                      ("label", (None, "3"))], headers=AUTH)
    assert added.status_code == 201 and added.json() == {"ids": [ITEMS], "items": ITEMS + 1}
    near = api.get(f"/items/{ITEMS}/neighbors?k=1").json()["results"][0]
    assert near == {"id": ITEMS, "distance": 0, "label": 3, "same_label": True}
    assert api.delete("/items/7", headers=AUTH).status_code == 200
    assert api.get("/items/7/neighbors").status_code == 404
    assert api.delete("/items/7", headers=AUTH).status_code == 404
    assert api.get("/health").json()["index"] == "MilvusIndex"


@pytest.mark.browser
def test_the_add_control_in_a_real_browser(service, tmp_path):  # noqa: F811
    from tests.test_server import CHROMIUM, browser_api

    sync_api = browser_api()
    import cv2

    folder, images, _ = service
    path = _copy(folder, tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    cv2.imwrite(str(tmp_path / "new.png"), images[ITEMS + 9])
    process, base = _serve(path, folder / "db", token_file, "--writable")
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(base + "/")
                page.set_input_files("#addfile", str(tmp_path / "new.png"))
                page.fill("#addid", "4242")
                page.fill("#addlabel", "7")
                page.click("#addgo")  # without the token: refused, on the page
                page.wait_for_function("document.querySelector('#error').textContent.length > 0")
                assert "API token" in page.inner_text("#error")
                page.fill("#token", TOKEN)
                page.click("#addgo")
                page.wait_for_function("document.querySelector('#status').textContent.includes('added item 4242')")
                assert f"{ITEMS + 1} items" in page.inner_text("#info")
                page.set_input_files("#file", str(tmp_path / "new.png"))
                page.wait_for_selector("#results li")
                first = page.locator("#results li").first
                assert first.locator(".id").inner_text() == "id 4242"
                assert first.locator(".distance").inner_text().startswith("distance 0 ")
            finally:
                browser.close()
    finally:
        process.terminate()
        process.wait(30)
