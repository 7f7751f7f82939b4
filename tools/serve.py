#!/usr/bin/env python
"""A small retrieval server with a web page: upload an image, see its nearest
database images by Hamming distance.

    python tools/serve.py --prototxt deploy.prototxt --weights W --index codes.ssdh
        --db DB [--host 127.0.0.1] [--port 8000] [--mean-file M | --mean-value V ...] [--scale S]

GET /                 the page (upload form, results with their distances and labels)
POST /search?k=10     body: an image file (JPEG/PNG); answer: JSON {results: [{id, distance, label}]}
GET /image/<id>.png   a database image, from the Datum database the index was encoded from
GET /health           {"items": N, "bits": K}
"""
import argparse
import sys

from ssdh_port import cli
from ssdh_port.search import ImageSearch
from ssdh_port.server import make_server


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_model_arguments(parser)
    parser.add_argument("--db", required=True, help="Datum database the index was encoded from")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    engine = ImageSearch(args.prototxt, args.weights, args.index, args.db, args.blob, args.mean_file,
                         args.mean_value, args.scale)
    server = make_server(engine, args.host, args.port)
    print(f"serving {len(engine.index)} items on http://{args.host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
