#!/usr/bin/env python
"""Load test of the retrieval service against the first (http.server) server, in
the same run: requests/s, p50/p99 latency, errors and peak memory at 8, 32 and 64
concurrent clients, and hostile inputs sent while 32 clients load it.

    python bench/bench_serve.py [--items 10000] [--requests 1000] [--clients 8,32,64]
        [--out results/serve]

The database: the first --items MNIST test digits, coded by the real BVLC LeNet
(../shared/data/caffe-models/lenet; 500-bit codes of ip1 > 0.5). Queries: 200 MNIST
training digits as PNG, POST /search?k=10, one new connection per request
(Connection: close), as independent clients do. Both servers bind 127.0.0.1 and
run as their own processes; peak memory is the server process's VmHWM. Writes
<out>/bench_serve.json and <out>/bench_serve.md.
"""
import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

import cv2

from ssdh_port.fileio import atomic_write, write_json
from ssdh_port.data import mnist
from ssdh_port.data.datasets import write_array_db
from ssdh_port.pipeline import encode_split, transform_param

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(os.path.dirname(ROOT), "shared", "data", "caffe-models", "lenet")
SERVERS = {
    "asgi (ssdh serve)": ["-m", "ssdh_port", "serve", "--read-timeout", "5"],
    "http.server (first server)": [os.path.join(ROOT, "bench", "legacy_server.py")],
}


def prepare(folder, items):
    images, labels = mnist.load_split("test")
    write_array_db(os.path.join(folder, "db"), images[:items, None], labels[:items])
    encoded = encode_split(os.path.join(LENET, "lenet.prototxt"), os.path.join(LENET, "lenet_iter_10000.caffemodel"),
                           os.path.join(folder, "db"), latent_blob="ip1", transform=transform_param(0.00390625),
                           batch_size=500)
    encoded.save(os.path.join(folder, "codes.ssdh"))
    queries, _ = mnist.load_split("train")
    return [cv2.imencode(".png", image)[1].tobytes() for image in queries[:200]]


def start(command, folder):
    log = open(os.path.join(folder, f"server{len(os.listdir(folder))}.log"), "w+")
    process = subprocess.Popen([sys.executable, *command, "--index", os.path.join(folder, "codes.ssdh"),
                                "--db", os.path.join(folder, "db"), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "SSDH_PROGRESS": "0"})
    line = process.stdout.readline()
    if " on http://" not in line:
        raise SystemExit(f"bench_serve: the server did not start: {line!r}")
    host, port = line.split("//")[1].strip().rstrip("/").split(":")
    return process, log, (host, int(port))


async def exchange(address, request, timeout=60.0, hang_up_after=None):
    """(status or None, seconds, error or None) of one raw HTTP request on a new connection."""
    started = time.perf_counter()
    writer = None

    async def send():
        for part in request if isinstance(request, list) else [request]:
            writer.write(part)
            await writer.drain()
            if isinstance(request, list):
                await asyncio.sleep(0.2)

    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(*address)
            if hang_up_after is not None:
                await send()
                return None, time.perf_counter() - started, None
            # Read while sending: a server may answer (413) before the body is sent.
            sent, answer = await asyncio.gather(send(), reader.read(), return_exceptions=True)
        if isinstance(answer, BaseException):
            raise answer
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None
        return status, time.perf_counter() - started, None if status else "no HTTP answer"
    except TimeoutError:
        return None, time.perf_counter() - started, "timeout"
    except (ConnectionError, OSError) as err:
        return None, time.perf_counter() - started, type(err).__name__
    finally:
        if writer is not None:
            writer.close()


def post(body, path="/search?k=10", headers=""):
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
            f"{headers}\r\n").encode() + body


async def load(address, queries, clients, requests):
    latencies, errors, statuses = [], {}, {}
    counter = iter(range(requests))

    async def client():
        for n in counter:
            status, seconds, error = await exchange(address, post(queries[n % len(queries)]))
            if error or status != 200:
                key = error or f"HTTP {status}"
                errors[key] = errors.get(key, 0) + 1
            else:
                latencies.append(seconds)
            statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    latencies.sort()
    quantile = (lambda q: round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)
                if latencies else None)
    return {"clients": clients, "requests": requests, "requests_per_s": round(requests / wall, 1),
            "p50_ms": quantile(0.5), "p99_ms": quantile(0.99), "errors": sum(errors.values()),
            "error_kinds": errors, "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else None}


def huge_png(width=30000, height=30000):
    """A real gray PNG of width x height zero pixels (about 0.9 MB compressed)."""
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    data = b"".join(compressor.compress(row * 1000) for _ in range(height // 1000)) + compressor.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def hostile_requests(query):
    boundary = "benchboundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + query + f"\r\n--{boundary}--\r\n".encode()
    chunked = (b"POST /search?k=10 HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
               + f"{len(query):x}\r\n".encode() + query + b"\r\n0\r\n\r\n")
    head = b"POST /search HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
    return {
        "PNG of 30000 x 30000 pixels": (post(huge_png()), {}),
        "50 MB body, sent at once": (post(b"\0" * (50 << 20)), {}),
        "50 MB body after Expect: 100-continue (as curl sends it)": (
            [head + b"Content-Length: 52428800\r\nExpect: 100-continue\r\n\r\n", b"\0" * (50 << 20)], {}),
        "lying Content-Length (1000 announced, 10 sent)": (head + b"Content-Length: 1000\r\n\r\n" + b"\x89PNG" * 2 + b"..", {}),
        "empty POST": (post(b""), {}),
        "chunked POST of an image": (chunked, {}),
        "multipart upload": (post(form, headers=f"Content-Type: multipart/form-data; boundary={boundary}\r\n"), {}),
        "slow upload, then hang up": ([head + b"Content-Length: 100000\r\n\r\n"] + [b"\x89PNG" * 25] * 5,
                                      {"hang_up_after": True}),
    }


def peak_memory_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


async def bench_server(name, command, folder, queries, levels, requests):
    process, log, address = start(command, folder)
    try:
        await load(address, queries, 4, 40)  # warm-up
        rows, hostile = [], {}
        for clients in levels:
            if clients == 32:
                tasks = {label: asyncio.create_task(exchange(address, request, 30.0, **options))
                         for label, (request, options) in hostile_requests(queries[0]).items()}
                row = await load(address, queries, clients, requests)
                for label, task in tasks.items():
                    status, seconds, error = await task
                    hostile[label] = {"status": status, "seconds": round(seconds, 2), "error": error}
            else:
                row = await load(address, queries, clients, requests)
            row["peak_memory_mb"] = peak_memory_mb(process.pid)
            rows.append(row)
            print(f"{name}: {row}", flush=True)
        alive = process.poll() is None
    finally:
        process.terminate()
        process.wait(30)
    log.seek(0)
    text = log.read()
    return {"server": name, "levels": rows, "hostile": hostile, "alive_after": alive,
            "log_lines": len(text.splitlines()), "tracebacks": text.count("Traceback")}


def table(results):
    lines = ["| server | clients | requests/s | p50 ms | p99 ms | errors | peak memory MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        for row in result["levels"]:
            lines.append(f"| {result['server']} | {row['clients']} | {row['requests_per_s']} | {row['p50_ms']} | "
                         f"{row['p99_ms']} | {row['errors']} | {row['peak_memory_mb']} |")
    lines += ["", "| hostile input (sent while 32 clients load the server) | "
              + " | ".join(r["server"] for r in results) + " |", "|---|" + "---|" * len(results)]
    for label in results[0]["hostile"]:
        cells = []
        for result in results:
            h = result["hostile"][label]
            cells.append(f"{h['status'] or h['error'] or 'hung up'} in {h['seconds']} s")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| tracebacks / log lines | " + " | ".join(f"{r['tracebacks']} / {r['log_lines']}" for r in results)
                 + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", default="8,32,64")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "serve"))
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        queries = prepare(folder, args.items)
        results = [asyncio.run(bench_server(name, command, folder, queries, levels, args.requests))
                   for name, command in SERVERS.items()]
    os.makedirs(args.out, exist_ok=True)
    record = {"items": args.items, "bits": 500, "requests_per_level": args.requests, "cpus": os.cpu_count(),
              "results": results}
    write_json(os.path.join(args.out, "bench_serve.json"), record)
    text = table(results)
    with atomic_write(os.path.join(args.out, "bench_serve.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
