#!/usr/bin/env python
"""Forward + backward of the SSDH losses: native ops vs the same math written
as plain PyTorch ops, measured in the same run on the same device.

    python bench/bench_ops.py [--device cpu|cuda] [--json out.json]

Cases: E2 + E3 together (the latent-layer terms every SSDH step computes), by
the fused op and by the two separate ops, and
the max-margin multi-label loss, at N=256, K=48 and N=4096, K=1024, p = 2.
Reports the median time of each and the ratio plain / native (> 1: native is
faster).
"""
import argparse

import torch

from ssdh_port import ops
from ssdh_port.fileio import write_json
from ssdh_port.device import describe
from timer import time_calls


def plain_latent_losses(a, p=2):
    """E2 + E3 as a user would write them with torch ops (docs/SPEC.md section 1)."""
    n, k = a.shape
    d = a - 0.5
    m = a.mean(dim=1) - 0.5
    if p == 2:
        e2 = -(d * d).sum() / (2 * n * k)
        e3 = (m * m).sum() / (2 * n)
    else:
        e2 = -d.abs().sum() / (n * k)
        e3 = m.abs().sum() / n
    return e2 + e3


def native_latent_losses(a, p=2):
    """The fused op: one pass over a forward, one kernel backward."""
    return ops.latent_losses(a, p).sum()


def separate_latent_losses(a, p=2):
    """The two native ops, one per Caffe layer (K1/K2_EuclideanLoss)."""
    return ops.forcing_binary_loss(a, p) + ops.fire_rate_loss(a, p)


def plain_max_margin(scores, labels, mask, p=2):
    positive = (labels == 1) & (mask == 1)
    negative = (labels == 0) & (mask == 1)
    zero = torch.zeros_like(scores)
    violation = torch.where(
        positive, (scores - 1).clamp(max=0), torch.where(negative, scores.clamp(min=0), zero)
    )
    return 0.5 * (violation.abs() ** p).sum() / scores.shape[0]


def native_max_margin(scores, labels, mask, p=2):
    return ops.max_margin_loss(scores, labels, p, mask=mask, label_format="binary")


def time_step(fn, inputs, device, repeats):
    """Median seconds of one forward + backward, over `repeats` timed blocks."""
    x = inputs[0]

    def step():
        x.grad = None
        fn(*inputs).backward()

    # Enough calls per block for about 20 ms of work.
    return time_calls(step, rounds=repeats, number=None, warmup=3, device=device, min_round_s=0.02).median


def cases(device):
    g = torch.Generator().manual_seed(0)
    for n, k in ((256, 48), (4096, 1024)):
        a = torch.rand(n, k, generator=g).to(device).requires_grad_(True)
        yield f"E2+E3 fused fwd+bwd N={n} K={k}", plain_latent_losses, native_latent_losses, (a,)
        yield f"E2+E3 two ops fwd+bwd N={n} K={k}", plain_latent_losses, separate_latent_losses, (a,)
        scores = torch.randn(n, k, generator=g).to(device).requires_grad_(True)
        labels = (torch.rand(n, k, generator=g) < 0.3).float().to(device)
        mask = (torch.rand(n, k, generator=g) < 0.8).float().to(device)
        yield (
            f"max-margin fwd+bwd N={n} M={k}",
            plain_max_margin,
            native_max_margin,
            (scores, labels, mask),
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = describe(device)
    print(f"device: {name}, torch {torch.__version__}")
    print(f"{'case':40s} {'plain torch':>12s} {'native':>12s} {'ratio':>7s}")
    results = []
    for label, plain, native, inputs in cases(device):
        # The two must agree before their speed means anything.
        torch.testing.assert_close(native(*inputs), plain(*inputs), rtol=1e-4, atol=1e-6)
        t_plain = time_step(plain, inputs, device, args.repeats)
        t_native = time_step(native, inputs, device, args.repeats)
        ratio = t_plain / t_native
        print(f"{label:40s} {t_plain * 1e6:10.1f}us {t_native * 1e6:10.1f}us {ratio:6.2f}x")
        results.append(
            {"case": label, "plain_s": t_plain, "native_s": t_native, "ratio": ratio}
        )
    if args.json:
        write_json(args.json, {"device": name, "torch": torch.__version__, "results": results})


if __name__ == "__main__":
    main()
