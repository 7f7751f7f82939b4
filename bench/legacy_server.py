#!/usr/bin/env python
"""The project's first retrieval server (http.server, before the ASGI service), kept
only as the baseline of bench/bench_serve.py: a ThreadingHTTPServer with the
standard listen backlog of 5, the whole body read as announced by
Content-Length, no size, pixel or time limits, raw image bodies only.

    python bench/legacy_server.py --index codes.ssdh --db DB [--port 0]
"""
import argparse
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from ssdh_port import cli
from ssdh_port.service.search import ImageSearch


def make_handler(engine):
    class Handler(BaseHTTPRequestHandler):
        def _json(self, status, payload):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._json(200, {"items": len(engine.index), "bits": engine.index.bits})

        def do_POST(self):
            parsed = urllib.parse.urlparse(self.path)
            try:
                k = int(urllib.parse.parse_qs(parsed.query).get("k", ["10"])[0])
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
                if image is None:
                    raise ValueError("the request body is not an image OpenCV can decode")
                hits = engine.search([image], k)[0]
            except ValueError as err:
                self._json(400, {"error": str(err)})
                return
            self._json(200, {"results": [{"id": h.id, "distance": h.distance, "label": h.label} for h in hits]})

        def log_message(self, fmt, *args):
            sys.stderr.write("serve: " + fmt % args + "\n")

    return Handler


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--db")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    engine = ImageSearch(args.index, args.db)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(engine))
    print(f"serving {len(engine.index)} items on http://127.0.0.1:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
