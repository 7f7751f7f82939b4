"""The retrieval service: a JSON API and a search page over a code file and its net.

    ssdh serve --index codes.ssdh | --milvus URI [--collection C] [--db DB] [--port 8000]
        [--prototxt deploy.prototxt --weights W ...] [--workers 1] [--max-body-mb 8]
        [--max-pixels 16000000] [--read-timeout 15] [--proxy-headers --forwarded-allow-ips IP]
        [--writable --api-token-file F [--protect-reads]] [--spatial L]

POST /search?k=10 (raw image body or multipart field), POST /search/batch?k=10
(multipart, several files), GET /items/{id}/neighbors?k=10, GET /items/{id}/image,
GET /health, GET / (the page), GET /docs (OpenAPI); with --writable, POST /items and
DELETE /items/{id} with `Authorization: Bearer <token>`, each change on disk (the code
file's log) before it is answered. Errors are JSON
{"error", "status"}. The net and its preprocessing come from the model card
beside the code file; the flags override it. Binds 127.0.0.1 unless --host says
otherwise; see the README for running it behind a reverse proxy.
"""

from ssdh_port import cli
from ssdh_port.errors import SSDHError
from ssdh_port.service.server import ServiceLimits, serve


def main(argv=None):
    parser = cli.parser(__doc__)
    cli.add_model_arguments(parser)
    parser.add_argument("--db", help="Datum database the codes were encoded from (serves the images)")
    parser.add_argument("--backend", default="lmdb", choices=("lmdb", "leveldb"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (the URL is printed)")
    defaults = ServiceLimits()
    parser.add_argument("--workers", type=int, default=defaults.workers, help="threads running the model")
    parser.add_argument("--max-body-mb", type=float, default=defaults.max_body_bytes / 2**20)
    parser.add_argument("--max-pixels", type=int, default=defaults.max_pixels)
    parser.add_argument("--max-images", type=int, default=defaults.max_images, help="files per batch request")
    parser.add_argument("--max-k", type=int, default=defaults.max_k, help="0: the number of items")
    parser.add_argument("--max-pending", type=int, default=defaults.max_pending,
                        help="images waiting for the model before requests get 503")
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections)
    parser.add_argument("--read-timeout", type=float, default=defaults.read_timeout)
    parser.add_argument("--model-timeout", type=float, default=defaults.model_timeout)
    parser.add_argument("--header-timeout", type=float, default=defaults.header_timeout,
                        help="seconds for a request's line and headers before the connection is closed")
    parser.add_argument("--proxy-headers", action="store_true",
                        help="trust X-Forwarded-For/-Proto from --forwarded-allow-ips (behind a reverse proxy)")
    parser.add_argument("--forwarded-allow-ips", default="127.0.0.1")
    parser.add_argument("--writable", action="store_true",
                        help="take changes: POST /items, DELETE /items/{id} (the code file becomes a live index, "
                        "each change on disk before it is answered); needs --api-token-file")
    parser.add_argument("--api-token-file", help="a file holding the bearer token that writes need")
    parser.add_argument("--protect-reads", action="store_true", help="searches need the token too")
    parser.add_argument("--spatial", type=int, default=0, metavar="L",
                        help="--index is a patch code file (ssdh encode --patches L): instance search by patches")
    args = parser.parse_args(argv)
    token = _token(args.api_token_file) if args.api_token_file else None
    if args.writable and not token:
        raise SSDHError("--writable needs --api-token-file (a file holding the token writes need)")
    if args.protect_reads and not token:
        raise SSDHError("--protect-reads needs --api-token-file")
    limits = ServiceLimits(
        max_body_bytes=int(args.max_body_mb * 2**20), max_pixels=args.max_pixels, max_images=args.max_images,
        max_k=args.max_k, max_pending=args.max_pending, workers=args.workers,
        max_connections=args.max_connections, read_timeout=args.read_timeout, model_timeout=args.model_timeout,
        header_timeout=args.header_timeout)
    if args.spatial:
        if args.writable or args.milvus:
            raise SSDHError("--spatial serves a patch code file read-only: no --writable or --milvus")
        from ssdh_port.service.search import SpatialSearch

        engine = SpatialSearch(args.index, args.db, levels=args.spatial, card=args.card, backend=args.backend,
                               prototxt=args.prototxt, weights=args.weights, latent_blob=args.blob,
                               mean_file=args.mean_file, mean_value=args.mean_value, scale=args.scale)
    else:
        engine = cli.search_engine(args, args.db, args.backend, writable=args.writable)
    serve(engine, args.host, args.port, limits,
          ready=lambda url: print(f"serving {engine.items} items on {url}"
                                  + (" (writable)" if args.writable else ""), flush=True),
          proxy_headers=args.proxy_headers, forwarded_allow_ips=args.forwarded_allow_ips, token=token,
          protect_reads=args.protect_reads)
    return 0


def _token(path):
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as err:
        raise SSDHError(f"{path}: cannot read the API token ({err.strerror})") from None
    if len(token) < 16:
        raise SSDHError(f"{path}: the API token must be at least 16 characters")
    return token

