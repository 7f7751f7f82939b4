#!/usr/bin/env python
"""The Caffe path against real BVLC Caffe, same prototxt, same threads, same run:
`caffe.bin time` (forward, backward and their sum per iteration, and per layer)
against CaffeNet in the TRAIN phase with force_backward (forward with the autograd
graph kept, as training keeps it; backward of every blob and weight from random top
gradients).

    source ../shared/tools/caffe-cpu/env.sh     # caffe.bin on PATH
    python bench/bench_vs_caffe.py [--nets lenet:64 alexnet:8 ...] [--iterations 10]
        [--rounds 3] [--threads 2] [--precision fp32|bf16] [--channels-last] [--layers]
        [--default-allocator] [--json out.json] [--markdown out.md]

Nets (bench/zoo_nets.py): lenet:64, alexnet:8, alexnet:32, googlenet:8, resnet50:8,
squeezenet11:8, mobilenet:8 by default. Each round runs caffe.bin, then the port; the
table has the median over rounds of each side's mean per iteration and the ratio
Caffe / port (> 1: the port is faster). --layers adds each layer's forward and
backward times: Caffe's own per-layer report beside the port's layers timed one by one
on the shapes of the run. Without caffe.bin on PATH the port alone is timed (a message
says so). --precision bf16 runs the port under CPU autocast to bfloat16 (Caffe has no
such mode: the ratio is then against Caffe's fp32). --channels-last runs the port's
convolutions and pooling on NHWC tensors (CaffeNet.use_channels_last: the same values
and blob shapes, other strides). The port runs as the training commands run it: the
solver's nets accumulate their diffs (CaffeNet.accumulate_diffs) and glibc keeps freed
memory for the next iteration (ssdh_port.allocator; --default-allocator leaves it).
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timer import time_calls  # noqa: E402
from zoo_nets import NETS, write_net  # noqa: E402

from ssdh_port.allocator import keep_freed_memory  # noqa: E402
from ssdh_port.caffe.net import CaffeNet  # noqa: E402
from ssdh_port.device import cpu_name  # noqa: E402
from ssdh_port.fileio import write_json  # noqa: E402

DEFAULT_NETS = ["lenet:64", "alexnet:8", "alexnet:32", "googlenet:8", "resnet50:8", "squeezenet11:8", "mobilenet:8"]
LAYER_LINE = re.compile(r"caffe\.cpp:\d+\]\s+(\S+)\s+(forward|backward): ([0-9.e+-]+) ms")
TOTAL_LINE = re.compile(r"Average (Forward pass|Backward pass|Forward-Backward): ([0-9.e+-]+) ms")


def caffe_time(prototxt, iterations, threads):
    """caffe.bin time: {"forward", "backward", "forward_backward": ms, "layers": {name: [fwd, bwd]}}."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), GLOG_minloglevel="0",
               GLOG_logtostderr="1")
    done = subprocess.run(["caffe.bin", "time", "-model", prototxt, "-iterations", str(iterations)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench_vs_caffe: caffe.bin time {prototxt} failed:\n{done.stderr[-2000:]}")
    out = {"layers": {}}
    for name, kind, ms in LAYER_LINE.findall(done.stderr):
        out["layers"].setdefault(name, [0.0, 0.0])[kind == "backward"] = float(ms)
    keys = {"Forward pass": "forward", "Backward pass": "backward", "Forward-Backward": "forward_backward"}
    for what, ms in TOTAL_LINE.findall(done.stderr):
        out[keys[what]] = float(ms)
    return out


def port_time(net, iterations, precision):
    """The port's mean ms of a forward (graph kept) and of a forward + backward."""
    data = torch.randn(*net.blob_shapes["data"])
    outputs = [name for name in net.output_names]
    bf16 = precision == "bf16"

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return net(data=data)

    def forward_backward():
        # The gradients cleared in place each iteration, as the solver's step clears
        # them (Caffe's ClearParamDiffs; caffe time skips the clearing).
        net.zero_grad(set_to_none=False)
        blobs = forward()
        tops = [blobs[name] for name in outputs]
        torch.autograd.backward(tops, [torch.randn_like(t) for t in tops])

    forward_backward()  # warm-up, as caffe time runs one forward and backward first
    times = {}
    for name, fn in (("forward", forward), ("forward_backward", forward_backward)):
        times[name] = 1000 * time_calls(fn, rounds=1, number=iterations).mean
    times["backward"] = times["forward_backward"] - times["forward"]
    return times


def port_layers(net, iterations, precision):
    """{layer name: [forward ms, backward ms]}: each layer alone on the bottoms it saw."""
    seen = {}

    def keep(module, args, out):
        seen.setdefault(module.name, [a.detach().clone() for a in args])

    hooks = [module.register_forward_hook(keep) for module in net.layers]
    net(data=torch.randn(*net.blob_shapes["data"]))
    for hook in hooks:
        hook.remove()
    bf16 = precision == "bf16"
    out = {}
    for module in net.layers:
        name = module.name
        if name not in seen:
            continue
        bottoms = [b.requires_grad_() if b.is_floating_point() else b for b in seen[name]]

        module.zero_grad(set_to_none=False)  # then accumulated, as caffe time accumulates its diffs

        def run(backward):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                tops = module(*[b.clone() if b.requires_grad else b for b in bottoms])
            tops = [t for t in (tops if isinstance(tops, (tuple, list)) else [tops]) if t.requires_grad]
            if backward and tops:
                torch.autograd.backward(tops, [torch.ones_like(t) for t in tops])

        timed = [1000 * time_calls(lambda: run(backward), rounds=1, number=iterations, warmup=1).mean
                 for backward in (False, True)]
        out[name] = [timed[0], max(timed[1] - timed[0], 0.0)]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=DEFAULT_NETS, help="name:batch, names: " + ", ".join(NETS))
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--channels-last", action="store_true", help="the port in the NHWC layout")
    parser.add_argument("--layers", action="store_true", help="per-layer times of both sides")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's treatment of freed memory as it is (the training commands change it)")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.default_allocator:
        keep_freed_memory()  # as `ssdh train` and tools/train_net.py run the port
    have_caffe = shutil.which("caffe.bin") is not None
    if not have_caffe:
        print("caffe.bin is not on PATH (source ../shared/tools/caffe-cpu/env.sh): timing the port alone",
              file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for spec in args.nets:
            name, _, batch = spec.partition(":")
            if name not in NETS:
                raise SystemExit(f"bench_vs_caffe: unknown net {name!r} (nets: {', '.join(NETS)})")
            batch = int(batch or 8)
            prototxt = write_net(name, batch, os.path.join(folder, f"{name}_{batch}.prototxt"))
            net = CaffeNet(prototxt, "TRAIN").accumulate_diffs()  # as the solver trains it
            if args.channels_last:
                net.use_channels_last()
            caffe_rounds, port_rounds = [], []
            for _ in range(args.rounds):
                if have_caffe:
                    caffe_rounds.append(caffe_time(prototxt, args.iterations, args.threads))
                port_rounds.append(port_time(net, args.iterations, args.precision))
            row = {"net": name, "batch": batch}
            for key in ("forward", "backward", "forward_backward"):
                row[f"port_{key}_ms"] = statistics.median(r[key] for r in port_rounds)
                if have_caffe:
                    row[f"caffe_{key}_ms"] = statistics.median(r[key] for r in caffe_rounds)
                    row[f"{key}_ratio"] = row[f"caffe_{key}_ms"] / row[f"port_{key}_ms"]
            row["port_rounds"], row["caffe_rounds"] = port_rounds, [
                {k: v for k, v in r.items() if k != "layers"} for r in caffe_rounds]
            if args.layers:
                row["port_layers"] = port_layers(net, args.iterations, args.precision)
                row["layer_types"] = {module.name: module.type for module in net.layers}
                row["layer_macs"] = layer_macs(net)
                if have_caffe:
                    row["caffe_layers"] = caffe_rounds[len(caffe_rounds) // 2]["layers"]
            rows.append(row)
            print(line(row), flush=True)
    result = {"machine": f"{cpu_name()}, {os.cpu_count()} CPUs", "threads": args.threads, "torch": torch.__version__,
              "gemm_gflops": gemm_gflops(args.threads),
              "precision": args.precision, "channels_last": args.channels_last, "allocator": "glibc defaults" if args.default_allocator else "freed memory kept", "iterations": args.iterations, "rounds": args.rounds, "rows": rows}
    if args.json:
        write_json(args.json, result)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(result))
    return 0


def layer_macs(net):
    """{layer name: multiply-adds of its forward} for the Convolution and InnerProduct
    layers (the backward does twice as many: the bottom's and the weight's gradients)."""
    macs = {}

    def count(module, args, out):
        weight = module.blobs[0]
        top = (out[0] if isinstance(out, (tuple, list)) else out).shape
        if module.type == "Convolution":  # N Co Ho Wo x (Ci / group) kh kw
            macs[module.name] = top[0] * top[2] * top[3] * weight.numel() * (top[1] // weight.shape[0])
        else:
            macs[module.name] = weight.numel() * (args[0].numel() // weight.shape[-1])

    hooks = [module.register_forward_hook(count) for module in net.layers
             if module.type in ("Convolution", "InnerProduct")]
    with torch.no_grad():
        net(data=torch.randn(*net.blob_shapes["data"]))
    for hook in hooks:
        hook.remove()
    return macs


def gemm_gflops(threads, size=2048, repeats=5):
    """The machine's attainable float32 GEMM rate here: torch.mm of two size^2
    matrices, best of repeats (GFLOP/s, 2 flops a multiply-add)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size ** 3 / time_calls(lambda: torch.mm(a, b), rounds=repeats, warmup=1).best / 1e9


def line(row):
    text = f"{row['net']} x{row['batch']}: port forward {row['port_forward_ms']:.1f} ms, forward+backward " \
           f"{row['port_forward_backward_ms']:.1f} ms"
    if "caffe_forward_ms" in row:
        text += f"; Caffe {row['caffe_forward_ms']:.1f} / {row['caffe_forward_backward_ms']:.1f} ms; Caffe / port " \
                f"{row['forward_ratio']:.2f}x / {row['forward_backward_ratio']:.2f}x"
    return text


def markdown(result):
    lines = [f"Machine: {result['machine']}; {result['threads']} threads; torch {result['torch']}; port in "
             f"{result['precision']}{', channels_last' if result.get('channels_last') else ''}{'; ' + result['allocator'] if result.get('allocator') else ''}; median of {result['rounds']} rounds of {result['iterations']} iterations.", "",
             "| net, batch | forward Caffe / port | ratio | forward+backward Caffe / port | ratio |",
             "|---|---|---|---|---|"]
    for row in result["rows"]:
        if "caffe_forward_ms" not in row:
            lines.append(f"| {row['net']}, {row['batch']} | - / {row['port_forward_ms']:.1f} ms | - | - / "
                         f"{row['port_forward_backward_ms']:.1f} ms | - |")
            continue
        lines.append(f"| {row['net']}, {row['batch']} | {row['caffe_forward_ms']:.1f} / {row['port_forward_ms']:.1f} "
                     f"ms | {row['forward_ratio']:.2f}x | {row['caffe_forward_backward_ms']:.1f} / "
                     f"{row['port_forward_backward_ms']:.1f} ms | {row['forward_backward_ratio']:.2f}x |")
    if result.get("gemm_gflops"):
        lines += ["", f"Reference: torch.mm of two 2048 x 2048 float32 matrices runs at {result['gemm_gflops']:.0f} "
                  "GFLOP/s here (same threads, same run): the attainable rate of a GEMM-bound layer."]
    for row in result["rows"]:
        if "port_layers" not in row:
            continue
        lines += ["", f"### {row['net']}, batch {row['batch']}: per layer (ms, forward / backward)", "",
                  "| layer | Caffe | port |", "|---|---|---|"]
        caffe = row.get("caffe_layers", {})
        for name, (fwd, bwd) in row["port_layers"].items():
            theirs = caffe.get(name)
            lines.append(f"| {name} | {'-' if theirs is None else f'{theirs[0]:.2f} / {theirs[1]:.2f}'} | "
                         f"{fwd:.2f} / {bwd:.2f} |")
        if caffe and "layer_types" in row:
            lines += by_type(row, caffe)
    return "\n".join(lines) + "\n"


def by_type(row, caffe):
    """Markdown lines: per layer type, the summed forward and backward ms of both
    sides (layers each side timed) and Caffe / port, heaviest type first."""
    sums, macs = {}, row.get("layer_macs", {})
    for name, (fwd, bwd) in row["port_layers"].items():
        if name not in caffe:
            continue
        kind = row["layer_types"].get(name, "?")
        total = sums.setdefault(kind, [0, 0.0, 0.0, 0.0, 0.0, 0])
        total[0] += 1
        total[1:] = [total[1] + caffe[name][0], total[2] + caffe[name][1], total[3] + fwd, total[4] + bwd,
                     total[5] + macs.get(name, 0)]
    lines = ["", f"By layer type ({row['net']}, batch {row['batch']}; ms summed over the layers; Caffe / port; "
             "GFLOP/s of forward + backward, 6 flops a forward multiply-add):", "",
             "| type | layers | Caffe fwd / bwd | port fwd / bwd | ratio fwd / bwd | GFLOP/s Caffe / port |",
             "|---|---|---|---|---|---|"]
    for kind, (count, cf, cb, pf, pb, mac) in sorted(sums.items(), key=lambda item: -(item[1][1] + item[1][2])):
        ratio = " / ".join(f"{c / p:.2f}x" if p > 0 else "-" for c, p in ((cf, pf), (cb, pb)))
        rate = f"{6 * mac / (cf + cb) / 1e6:.0f} / {6 * mac / (pf + pb) / 1e6:.0f}" if mac and cf + cb and pf + pb else "-"
        lines.append(f"| {kind} | {count} | {cf:.1f} / {cb:.1f} | {pf:.1f} / {pb:.1f} | {ratio} | {rate} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
