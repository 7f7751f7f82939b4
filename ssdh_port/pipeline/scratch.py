"""The plain-PyTorch trainer: an SSDH model (ssdh_port.models) trained from
scratch on images held in memory as uint8, then encoded and evaluated with the
project's protocol. The counterpart of train_caffe for nets that are not Caffe
nets (e.g. the CIFAR ResNet-18-SSDH).

Each batch is augmented on the device (4-pixel reflected padding, a random
32 x 32 crop, a random mirror); SGD with Nesterov momentum 0.9, weight decay on
weights only (not on norms and biases), a linear warm-up for the first 15 % of
the steps and a linear decay to 0; on a GPU, bf16 autocast and channels_last
unless amp=False. A JSON-lines log (one line per epoch, flushed) and the final
weights (.pt) go to out_dir.
"""
import dataclasses
import json
import os
import time

import numpy as np
import torch
from torch.nn import functional as F

from ssdh_port import ops
from ssdh_port.fileio import atomic_write
from ssdh_port.data import datasets
from ssdh_port.data.db import DatumLMDB
from ssdh_port.device import describe, resolve_device, synchronize
from ssdh_port.errors import SSDHError
from ssdh_port.models.resnet import ResNetSSDH
from ssdh_port.models.ssdh import SSDHLoss
from ssdh_port.pipeline.evaluate import retrieval_report
from ssdh_port.pipeline.plots import epoch_curves
from ssdh_port.progress import bar, logger


@dataclasses.dataclass
class ScratchConfig:
    """One from-scratch run. data: a folder with train_lmdb_32 / test_lmdb_32 (made
    from archive, the authors' CIFAR-10 JPEG archive, when missing)."""
    data: str = "runs/cifar10"
    archive: str | None = None
    out_dir: str = "results/cifar10_scratch"
    bits: int = 48
    epochs: int = 30
    batch_size: int = 512
    lr: float = 0.2
    weight_decay: float = 5e-4
    width: int = 64
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    p: int = 2
    limit: int = 0
    device: str = "cpu"
    amp: bool = True
    compile: bool = False
    seed: int = 0


@dataclasses.dataclass
class ScratchResult:
    report: object           # RetrievalReport of the test queries against the training images
    weights: str             # the trained model's state_dict (.pt)
    log: str                 # one JSON line per epoch
    plot: str | None
    train_seconds: float
    wall_seconds: float


def load_split(path, limit=0):
    """All records of a 32 x 32 Datum LMDB: (uint8 N x 3 x 32 x 32, int64 labels)."""
    db = DatumLMDB(path)
    count = min(len(db), limit) if limit else len(db)
    images = np.empty((count, 3, 32, 32), np.uint8)
    labels = db.read_batch(range(count), images)
    return torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64)


def data_paths(data, archive=None):
    paths = {split: os.path.join(data, f"{split}_lmdb_32") for split in ("train", "test")}
    if not all(os.path.isdir(p) for p in paths.values()):
        if not archive:
            raise SSDHError(f"{data} has no train_lmdb_32/test_lmdb_32: give the archive (the "
                            "authors' CIFAR-10 JPEG archive) to make them")
        datasets.prepare_cifar10_jpg(archive, data, sizes=(32,))
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


class Normaliser:
    """uint8 images -> float batches normalised by the per-channel mean and std of
    the training images, in the model's memory format (or the one asked for)."""

    def __init__(self, images, memory_format=torch.contiguous_format):
        self.mean = images.float().mean(dim=(0, 2, 3), keepdim=True)
        self.std = images.float().std(dim=(0, 2, 3), keepdim=True)
        self.memory_format = memory_format

    def __call__(self, batch, memory_format=None):
        return ((batch.float() - self.mean) / self.std).contiguous(memory_format=memory_format or self.memory_format)


@torch.no_grad()
def latents(model, images, inputs, amp, batch=1000):
    """Latent activations (float32) and predicted classes of all images."""
    model.eval()
    out, predictions = [], []
    for start in range(0, len(images), batch):
        x = inputs(images[start:start + batch])
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            latent, scores = model(x)
        out.append(latent.float())
        predictions.append(scores.argmax(dim=1))
    return torch.cat(out), torch.cat(predictions)


def _fit(config, model, images, labels, inputs, amp, log_file):
    device = images.device
    generator = torch.Generator(device=device).manual_seed(config.seed)
    augment = Augment(generator=generator)
    objective = SSDHLoss(config.alpha, config.beta, config.gamma, p=config.p)
    optimizer = torch.optim.SGD(parameter_groups(model, config.weight_decay), lr=config.lr,
                                momentum=0.9, nesterov=True)
    forward = torch.compile(model) if config.compile else model
    steps_per_epoch = max(1, len(images) // config.batch_size)
    total = config.epochs * steps_per_epoch
    history, step, start = [], 0, time.perf_counter()
    ticker = bar(total=total, desc="train", unit="step")
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(images), device=device, generator=generator)
        sums = torch.zeros(3, device=device)  # loss, correct, seen (no sync per step)
        for i in range(steps_per_epoch):
            index = order[i * config.batch_size:(i + 1) * config.batch_size]
            x, y = inputs(augment(images[index])), labels[index]
            for group in optimizer.param_groups:
                group["lr"] = schedule(step, total, config.lr)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                latent, scores = forward(x)
            loss, _ = objective(latent, scores, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([loss.detach() * len(y), (scores.argmax(1) == y).sum(),
                                 torch.tensor(len(y), device=device)]).float()
            step += 1
            ticker.update(1)
        loss, correct, seen = sums.tolist()
        record = {"epoch": epoch + 1, "loss": loss / seen, "train_accuracy": correct / seen,
                  "seconds": time.perf_counter() - start}
        history.append(record)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        logger.info("epoch %d/%d: loss %.4f, train accuracy %.4f, %.1f s", epoch + 1, config.epochs,
                    record["loss"], record["train_accuracy"], record["seconds"])
    ticker.close()
    return history



def train_scratch(config):
    """Train, encode (test images as queries, training images as the database) and
    evaluate one ScratchConfig; returns a ScratchResult."""
    paths = data_paths(config.data, config.archive)
    device = resolve_device(config.device)
    amp = device.type == "cuda" and config.amp
    memory_format = torch.channels_last if amp else torch.contiguous_format
    torch.manual_seed(config.seed)
    wall = time.perf_counter()
    train_images, train_labels = (t.to(device) for t in load_split(paths["train"], config.limit))
    test_images, test_labels = (t.to(device) for t in load_split(paths["test"]))
    inputs = Normaliser(train_images, memory_format)
    model = ResNetSSDH(bits=config.bits, width=config.width).to(device, memory_format=memory_format)
    logger.info("training on %d images, %d epochs of batch %d on %s (%s)", len(train_images),
                config.epochs, config.batch_size, device, "bf16 + channels_last" if amp else "float32")
    os.makedirs(config.out_dir, exist_ok=True)
    log_path = os.path.join(config.out_dir, "train_log.jsonl")
    with open(log_path, "w") as log_file:
        history = _fit(config, model, train_images, train_labels, inputs, amp, log_file)
    synchronize(device)
    train_seconds = history[-1]["seconds"] if history else 0.0
    weights = os.path.join(config.out_dir, "model.pt")
    with atomic_write(weights) as f:
        torch.save({"config": dataclasses.asdict(config), "state_dict": model.state_dict()}, f)

    db_latent, _ = latents(model, train_images, inputs, amp)
    query_latent, predicted = latents(model, test_images, inputs, amp)
    report = retrieval_report(
        ops.pack_bits(query_latent.cpu(), 0.5), ops.pack_bits(db_latent.cpu(), 0.5), test_labels.cpu(),
        train_labels.cpu(), method=f"ResNet-18-SSDH-{config.bits} (width {config.width}, scratch)",
        bits=config.bits, device=device,
        classification_accuracy=float((predicted == test_labels).float().mean()), seconds=train_seconds,
        extra={"epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
               "loss_weights": [config.alpha, config.beta, config.gamma], "p": config.p,
               "train_images": len(train_images), "amp": amp, "seed": config.seed,
               "device": describe(device), "torch": torch.__version__})
    plot = None
    if history:
        plot = os.path.join(config.out_dir, "training.png")
        epoch_curves(history, plot, "SSDH from scratch")
    return ScratchResult(report, weights, log_path, plot, train_seconds, time.perf_counter() - wall)
