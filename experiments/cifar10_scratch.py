#!/usr/bin/env python
"""CIFAR-10 SSDH from scratch on a modern backbone (no ImageNet weights): a
CIFAR ResNet-18 with a 48-bit latent layer trained with the SSDH objective
(E1 + E2 + E3, p = 2), then evaluated under both original protocols (the 10,000
test images query the 50,000 training images; mAP@1000 and mAP over the whole
ranking), with classification accuracy and the wall time.

    python tools/train_cifar10_scratch.py [--archive cvprw15-cifar10-dataset-jpg.tar.gz]
        [--data runs/cifar10] [--bits 48] [--epochs 30] [--batch 512] [--lr 0.2]
        [--device cuda] [--no-amp] [--compile] [--out results/cifar10_scratch]

The data are the LMDBs of tools/prepare_dataset.py (made from --archive when
missing), held on the device as uint8; each batch is augmented there (4-pixel
reflected padding, random 32 x 32 crop, random mirror). Training: SGD with
Nesterov momentum 0.9, weight decay 5e-4 (not on norms and biases), a linear
warm-up for the first 15 % of the steps and a linear decay to 0; on a GPU, bf16
autocast and channels_last (--no-amp: float32). Writes <out>/report.json,
<out>/table.md and <out>/training.png; progress per epoch on stderr.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

from ssdh_port import ops
from ssdh_port.caffe.io import atomic_write
from ssdh_port.data import datasets
from ssdh_port.data.db import DatumLMDB
from ssdh_port.hashing import evaluate
from ssdh_port.models.resnet import ResNetSSDH
from ssdh_port.models.ssdh import SSDHLoss
from ssdh_port.plotting import pyplot, save_png

# The TPAMI paper's best 48-bit CIFAR-10 mAP (VGG16 pre-trained on ImageNet).
PAPER_BEST_MAP = 0.9269


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", help="the authors' CIFAR-10 JPEG archive (if --data lacks the LMDBs)")
    parser.add_argument("--data", default="runs/cifar10")
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--p", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N training images (smoke runs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-amp", action="store_true", help="float32 instead of bf16 autocast on a GPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/cifar10_scratch")
    return parser.parse_args(argv)


def load_split(path, limit=0):
    """All records of a 32 x 32 Datum LMDB: (uint8 N x 3 x 32 x 32, int64 labels)."""
    db = DatumLMDB(path)
    count = min(len(db), limit) if limit else len(db)
    images = np.empty((count, 3, 32, 32), np.uint8)
    labels = db.read_batch(range(count), images)
    return torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64)


def data_paths(args):
    paths = {split: os.path.join(args.data, f"{split}_lmdb_32") for split in ("train", "test")}
    if not all(os.path.isdir(p) for p in paths.values()):
        if not args.archive:
            raise datasets.DatasetError(
                f"{args.data} has no train_lmdb_32/test_lmdb_32: give --archive (the authors' "
                "CIFAR-10 JPEG archive) to make them")
        datasets.prepare_cifar10_jpg(args.archive, args.data, sizes=(32,))
    return paths


class Augment:
    """4-pixel reflected padding, a random 32 x 32 crop and a random mirror per
    image, on the device, one gather per batch."""

    def __init__(self, pad=4, generator=None):
        self.pad, self.generator = pad, generator

    def __call__(self, batch):
        n, _, h, w = batch.shape
        device = batch.device
        padded = F.pad(batch, (self.pad,) * 4, mode="reflect")
        offsets = torch.randint(0, 2 * self.pad + 1, (2, n), device=device, generator=self.generator)
        flips = torch.rand(n, device=device, generator=self.generator) < 0.5
        rows = offsets[0][:, None] + torch.arange(h, device=device)
        base = torch.arange(w, device=device)
        cols = offsets[1][:, None] + torch.where(flips[:, None], w - 1 - base, base)
        picked = padded[torch.arange(n, device=device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return picked.permute(0, 3, 1, 2)


def schedule(step, total, peak, warmup=0.15):
    """Linear warm-up to `peak` over the first `warmup` of the steps, then linear decay to 0."""
    rise = max(1, int(warmup * total))
    if step < rise:
        return peak * (step + 1) / rise
    return peak * max(0.0, (total - step) / max(1, total - rise))


def parameter_groups(model, weight_decay):
    # Norm scales and biases (1-D) take no weight decay.
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def normalise(batch, mean, std, memory_format):
    return ((batch.float() - mean) / std).contiguous(memory_format=memory_format)


@torch.no_grad()
def encode(model, images, mean, std, memory_format, amp, batch=1000):
    """Latent activations (float32) and predicted classes of all images."""
    model.eval()
    latents, predictions = [], []
    for start in range(0, len(images), batch):
        x = normalise(images[start:start + batch], mean, std, memory_format)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            latent, scores = model(x)
        latents.append(latent.float())
        predictions.append(scores.argmax(dim=1))
    return torch.cat(latents), torch.cat(predictions)


def train(args, model, train_images, train_labels, mean, std, memory_format, amp, log):
    device = train_images.device
    generator = torch.Generator(device=device).manual_seed(args.seed)
    augment = Augment(generator=generator)
    objective = SSDHLoss(args.alpha, args.beta, args.gamma, p=args.p)
    optimizer = torch.optim.SGD(parameter_groups(model, args.weight_decay), lr=args.lr,
                                momentum=0.9, nesterov=True)
    forward = torch.compile(model) if args.compile else model
    steps_per_epoch = max(1, len(train_images) // args.batch)
    total = args.epochs * steps_per_epoch
    history = []
    step = 0
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_images), device=device, generator=generator)
        sums = torch.zeros(3, device=device)  # loss, correct, seen (no sync per step)
        for i in range(steps_per_epoch):
            index = order[i * args.batch:(i + 1) * args.batch]
            x = normalise(augment(train_images[index]), mean, std, memory_format)
            y = train_labels[index]
            for group in optimizer.param_groups:
                group["lr"] = schedule(step, total, args.lr)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                latent, scores = forward(x)
            loss, _ = objective(latent, scores, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums[0] += loss.detach() * len(y)
            sums[1] += (scores.argmax(1) == y).sum()
            sums[2] += len(y)
            step += 1
        loss, correct, seen = sums.tolist()
        elapsed = time.perf_counter() - start
        history.append({"epoch": epoch + 1, "loss": loss / seen, "train_accuracy": correct / seen,
                        "seconds": elapsed})
        log(f"epoch {epoch + 1}/{args.epochs}: loss {loss / seen:.4f}, train accuracy "
            f"{correct / seen:.4f}, {elapsed:.1f} s")
    return history


def plot(history, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], label="SSDH loss")
    ax.plot(epochs, [h["train_accuracy"] for h in history], label="train accuracy")
    ax.set_xlabel("epoch")
    ax.set_title("CIFAR-10 SSDH from scratch (ResNet-18)")
    ax.legend()
    save_png(fig, path)


def main(argv=None):
    args = parse_args(argv)
    log = lambda line: print(line, file=sys.stderr, flush=True)
    try:
        paths = data_paths(args)
    except datasets.DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    amp = device.type == "cuda" and not args.no_amp
    memory_format = torch.channels_last if amp else torch.contiguous_format
    torch.manual_seed(args.seed)
    wall = time.perf_counter()
    train_images, train_labels = (t.to(device) for t in load_split(paths["train"], args.limit))
    test_images, test_labels = (t.to(device) for t in load_split(paths["test"]))
    mean = train_images.float().mean(dim=(0, 2, 3), keepdim=True)
    std = train_images.float().std(dim=(0, 2, 3), keepdim=True)
    model = ResNetSSDH(bits=args.bits, width=args.width).to(device, memory_format=memory_format)
    log(f"training on {len(train_images)} images, {args.epochs} epochs of batch {args.batch} on "
        f"{device} ({'bf16 + channels_last' if amp else 'float32'})")
    history = train(args, model, train_images, train_labels, mean, std, memory_format, amp, log)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_seconds = history[-1]["seconds"] if history else 0.0

    db_latent, _ = encode(model, train_images, mean, std, memory_format, amp)
    query_latent, predicted = encode(model, test_images, mean, std, memory_format, amp)
    db_codes, query_codes = ops.pack_bits(db_latent, 0.5), ops.pack_bits(query_latent, 0.5)
    cut = min(1000, len(db_codes))
    top = evaluate(query_codes, db_codes, test_labels.cpu(), train_labels.cpu(), topk=cut, device=device)
    whole = evaluate(query_codes, db_codes, test_labels.cpu(), train_labels.cpu(), topk=None, device=device)
    report = {
        "bits": args.bits, "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
        "train_images": len(train_images), "width": args.width, "amp": amp, "compile": args.compile,
        "loss_weights": [args.alpha, args.beta, args.gamma], "p": args.p,
        "map_at_1000": top["map"], "map_whole_ranking": whole["map"], "topk": cut,
        "precision_at_1000": float(top["precision_at_k"][cut - 1]),
        "precision_within_radius_2": top["precision_within_radius"],
        "test_accuracy": float((predicted == test_labels).float().mean()),
        "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - wall,
        "paper_best_map": PAPER_BEST_MAP,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU",
        "torch": torch.__version__, "history": history,
    }
    os.makedirs(args.out, exist_ok=True)
    with atomic_write(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = (f"| backbone | bits | epochs | mAP@1000 | mAP (whole ranking) | P(r<=2) | accuracy | "
             f"train time | device |\n|---|---|---|---|---|---|---|---|---|\n"
             f"| ResNet-18, width {args.width} (scratch) | {args.bits} | {args.epochs} | {100 * report['map_at_1000']:.2f} | "
             f"{100 * report['map_whole_ranking']:.2f} | {100 * report['precision_within_radius_2']:.2f} | "
             f"{100 * report['test_accuracy']:.2f} | {train_seconds:.0f} s | {report['device']} |\n")
    with atomic_write(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    if history:
        plot(history, os.path.join(args.out, "training.png"))
    print(table)
    print(f"paper's best 48-bit CIFAR-10 mAP (VGG16, ImageNet weights): {100 * PAPER_BEST_MAP:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
