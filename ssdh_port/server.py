"""A small retrieval server with a web page: upload an image, see its nearest
database images by Hamming distance (tools/serve.py runs it).

GET /                 the page (upload form, results with their distances and labels)
POST /search?k=10     body: an image file (JPEG/PNG); answer: JSON {results: [{id, distance, label}]}
GET /image/<id>.png   a database image, from the Datum database the index was encoded from
GET /health           {"items": N, "bits": K}
"""
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>SSDH image search</title>
<style>
body { font-family: sans-serif; margin: 2em; }
#results { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 1em; }
.item { text-align: center; font-size: 12px; }
.item img { width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid #ccc; }
</style></head>
<body>
<h1>SSDH image search</h1>
<p>__INFO__</p>
<input type="file" id="file" accept="image/*"> k <input type="number" id="k" value="20" min="1" max="200">
<button id="go">Search</button>
<div id="query"></div>
<div id="results"></div>
<script>
document.getElementById("go").onclick = async () => {
  const file = document.getElementById("file").files[0];
  if (!file) { alert("choose an image"); return; }
  document.getElementById("query").innerHTML =
    '<p>query:</p><img width="96" src="' + URL.createObjectURL(file) + '">';
  const k = document.getElementById("k").value;
  const response = await fetch("/search?k=" + k, { method: "POST", body: file });
  const answer = await response.json();
  const box = document.getElementById("results");
  if (!response.ok) { box.textContent = answer.error; return; }
  box.innerHTML = answer.results.map(r =>
    '<div class="item"><img src="/image/' + r.id + '.png"><br>id ' + r.id +
    '<br>distance ' + r.distance + (r.label === null ? "" : '<br>label ' + r.label) + '</div>').join("");
};
</script>
</body></html>
"""


def make_handler(engine):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status, body, content_type):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status, payload):
            self._send(status, json.dumps(payload).encode(), "application/json")

        def do_GET(self):
            path = urllib.parse.urlparse(self.path).path
            if path == "/":
                info = f"{len(engine.index)} items, {engine.index.bits}-bit codes"
                self._send(200, PAGE.replace("__INFO__", info).encode(), "text/html; charset=utf-8")
            elif path == "/health":
                self._json(200, {"items": len(engine.index), "bits": engine.index.bits})
            elif path.startswith("/image/") and path.endswith(".png"):
                try:
                    item = int(path[len("/image/"):-4])
                    if not 0 <= item < len(engine.db):
                        raise ValueError
                    ok, png = cv2.imencode(".png", engine.database_image(item))
                    self._send(200, png.tobytes(), "image/png")
                except ValueError:
                    self._json(404, {"error": f"no database image {path}"})
            else:
                self._json(404, {"error": f"no such page {path}"})

        def do_POST(self):
            parsed = urllib.parse.urlparse(self.path)
            if parsed.path != "/search":
                self._json(404, {"error": f"no such endpoint {parsed.path}"})
                return
            try:
                k = int(urllib.parse.parse_qs(parsed.query).get("k", ["10"])[0])
                if not 1 <= k <= len(engine.index):
                    raise ValueError(f"k must be between 1 and {len(engine.index)}")
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
                if image is None:
                    raise ValueError("the request body is not an image OpenCV can decode")
                ids, distances, labels = engine.search([image], k)[0]
            except ValueError as err:
                self._json(400, {"error": str(err)})
                return
            results = [{"id": i, "distance": d, "label": None if labels is None else labels[n]}
                       for n, (i, d) in enumerate(zip(ids, distances))]
            self._json(200, {"results": results})

        def log_message(self, fmt, *args):
            sys.stderr.write("serve: " + fmt % args + "\n")

    return Handler


def make_server(engine, host="127.0.0.1", port=8000):
    """A threading HTTP server answering for engine (an ssdh_port.search.ImageSearch)."""
    return ThreadingHTTPServer((host, port), make_handler(engine))
