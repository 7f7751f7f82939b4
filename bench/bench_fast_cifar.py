#!/usr/bin/env python
"""Training throughput of FastNet-SSDH (ssdh_port.models.fastnet) per precision
mode on the CPU or a GPU, measured in the same run: images/s of the whole training step
(forward, SSDH objective, backward, SGD with Nesterov) at batch 1024 on 32 x 32
images, in

  fp32       float32, contiguous (NCHW) tensors
  fp32-cl    float32, channels_last
  bf16       bfloat16 autocast, NCHW
  bf16-cl    bfloat16 autocast, channels_last (the trainer's default for FastNet)

The C allocator keeps freed blocks as the trainer tells it to
(ssdh_port.allocator.keep_freed_memory); --malloc-defaults measures glibc's
defaults instead, under which each step faults its activations in again.

bf16 pays where oneDNN has bfloat16 convolutions (AVX-512 BF16 or AMX), most
with channels_last tensors (measured on the 2-core VM: fp32 135, fp32-cl 195,
bf16 219, bf16-cl 330 images/s).

--device cuda measures the same step on a GPU (the clock stops after the GPU
has finished the step); divide 50,000 by the images/s for the seconds an epoch
of `ssdh run cifar10_fast --device cuda` takes.

    python bench/bench_fast_cifar.py [--widths 128,384,384] [--batch 1024] [--iters 3] [--device cpu|cuda]
        [--malloc-defaults] [--json out.json]
"""
import argparse
import sys

import torch
from torch.nn import functional as F

from ssdh_port import cli, ops
from ssdh_port.allocator import keep_freed_memory
from ssdh_port.fileio import write_json
from ssdh_port.device import describe, resolve_device
from ssdh_port.models.fastnet import FastNetSSDH
from timer import time_calls

MODES = {"fp32": (False, torch.contiguous_format), "fp32-cl": (False, torch.channels_last),
         "bf16": (True, torch.contiguous_format), "bf16-cl": (True, torch.channels_last)}


def measure(widths, batch, iters, amp, memory_format, device):
    torch.manual_seed(0)
    model = FastNetSSDH(widths=widths).to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.85,
                                nesterov=True)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,), device=device)
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            latent, scores = model(x)
        loss = F.cross_entropy(scores, y, label_smoothing=0.2) + ops.latent_losses(latent, 2).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # Each step timed alone; the first warms up (oneDNN / cuDNN pick their kernels).
    return batch / time_calls(step, rounds=iters, warmup=1, device=device).mean


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="128,384,384")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    cli.add_device(parser)
    parser.add_argument("--malloc-defaults", action="store_true", help="leave glibc's trimming and unmapping on")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    kept = device.type == "cpu" and not args.malloc_defaults and keep_freed_memory()
    widths = tuple(int(w) for w in args.widths.split(","))
    results = {}
    for mode in args.modes.split(","):
        amp, memory_format = MODES[mode]
        results[mode] = measure(widths, args.batch, args.iters, amp, memory_format, device)
    base_mode = "fp32-cl" if "fp32-cl" in results else next(iter(results))
    where = describe(device)
    print(f"FastNet-SSDH {args.widths}, batch {args.batch}, {where}, freed memory kept: {kept}")
    for mode, rate in results.items():
        print(f"  {mode:8s} {rate:8.0f} images/s  ({rate / results[base_mode]:.2f}x {base_mode}; an epoch of 50,000: "
              f"{50000 / rate:.0f} s)")
    if args.json:
        write_json(args.json, {"widths": args.widths, "batch": args.batch, "device": where,
                               "freed_memory_kept": kept, "images_per_s": results})


if __name__ == "__main__":
    sys.exit(cli.run(main))
