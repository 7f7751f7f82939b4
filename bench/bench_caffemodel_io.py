#!/usr/bin/env python
"""Peak memory of reading a large caffemodel, against its file size: the
memory-mapped wire reader (ssdh_port.caffe.wire, what CaffeNet uses) vs a full
protobuf parse, each in a fresh process, on an AlexNet-SSDH-48-sized model
(57M parameters, about 228 MB) written by CaffeNet.save_caffemodel.

    python bench/bench_caffemodel_io.py [--prototxt P] [--json out.json]
"""
import argparse
import os
import subprocess
import sys
import tempfile

from timer import stopwatch

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
DEFAULT_PROTOTXT = os.path.join(os.path.dirname(ROOT), "shared", "data", "caffe-oracle",
                                "b_fullsize_shapes", "alexnet_ssdh48.deploy.prototxt")

CHILD = r"""
import resource, sys
mode, prototxt, path, bench = sys.argv[1:5]
sys.path.insert(0, bench)
import torch
from ssdh_port.caffe.net import CaffeNet
from timer import stopwatch
net = CaffeNet(prototxt, input_shapes={"data": (1, 3, 227, 227)})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with stopwatch() as elapsed:
    if mode == "wire":
        net.copy_from(path)
    else:
        from ssdh_port.caffe import io
        net.copy_from(io.read_caffemodel(path))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base * 1024, peak * 1024, elapsed.seconds)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prototxt", default=DEFAULT_PROTOTXT)
    parser.add_argument("--json")
    args = parser.parse_args()
    from ssdh_port.fileio import write_json
    from ssdh_port.caffe.net import CaffeNet

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.caffemodel")
        with stopwatch() as elapsed:
            CaffeNet(args.prototxt, input_shapes={"data": (1, 3, 227, 227)}).save_caffemodel(path)
        write_s = elapsed.seconds
        size = os.path.getsize(path)
        print(f"model file {size / 2**20:.0f} MiB, written in {write_s:.1f} s (streaming writer)")
        results = {"file_bytes": size, "write_seconds": write_s}
        for mode in ("wire", "protobuf"):
            out = subprocess.run([sys.executable, "-c", CHILD, mode, args.prototxt, path, BENCH],
                                 capture_output=True, text=True, check=True).stdout.split()
            base, peak, seconds = int(out[0]), int(out[1]), float(out[2])
            extra = peak - base
            print(f"{mode:9s} load: {seconds:5.1f} s, peak memory above the built net "
                  f"{extra / 2**20:7.0f} MiB = {extra / size:.2f} x the file")
            results[mode] = {"seconds": seconds, "extra_peak_bytes": extra, "ratio_to_file": extra / size}
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
