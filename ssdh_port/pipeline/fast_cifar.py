"""CIFAR-10 SSDH from scratch in about an hour on two CPU cores: FastNetSSDH
(ssdh_port.models.fastnet) trained with a fast-training recipe, then encoded and
evaluated under the project's protocol (10,000 test queries against the 50,000
training images).

Recipe (the facts of the published fast CIFAR-10 recipes, in this project's
own code): batch 1024; SGD with Nesterov momentum 0.85; per-example learning
rate 11.5 / 1024 and weight decay 0.0153 / 1024 in the "decoupled" convention
(here: lr 1.5 and weight decay 1.33e-3 on the batch-mean loss), batch-norm
biases at 64 times the learning rate with the same absolute decay; the
learning rate rises from 0.2 to 1 of its peak over the first 20 % of the steps,
then falls linearly to 0; label smoothing 0.2; augmentation: 2-pixel reflected
translation (a random 32 x 32 crop of the padded image) and alternating flips
(each image flipped at random in the first epoch, then every other epoch), both
per image; optionally cutout (one random square per image set to the mean); the
whitening layer's bias trains for the first 3 epochs only; with lookahead=True,
the recipe's weight averaging (every 5 steps the weights and batch-norm statistics
move to an exponential average of themselves, which then replaces them; the
average's decay grows as 0.95**5 x (step / steps)**3, so it is off early and
strongest at the end; the last average is the trained net). The SSDH objective:
alpha * E1 (the smoothed cross-entropy) + beta * E2 + gamma * E3.

Codes: the latent activations averaged over test-time views (the image and its
mirror, and both shifted by one pixel up-left and down-right, weighted 1/2,
1/4, 1/4 as the recipe weights its logits) and then thresholded at 0.5; the
class scores are averaged over the same views. tta=0 uses the image alone.

Devices: device="cpu" or "cuda[:N]"; the uint8 images are moved to the device once
and every batch is cut, normalised and augmented there (the random numbers come
from one CPU generator, so a run draws the same augmentation on either device).

Precision: float32 weights; the forward and backward in bfloat16 autocast with
channels_last (precision="bf16") or in float32 (precision="fp32"); on these
AVX-512-BF16 CPUs bf16 with channels_last is 1.7x float32 with channels_last
(bench/bench_fast_cifar.py).
"""
import dataclasses
import json
import os
import time

import torch
from torch.nn import functional as F

from ssdh_port import ops
from ssdh_port import distributed
from ssdh_port.fileio import atomic_write
from ssdh_port.device import describe, resolve_device
from ssdh_port.errors import SSDHError
from ssdh_port.hashing.index import HammingIndex
from ssdh_port.models.fastnet import FastNetSSDH
from ssdh_port.pipeline.evaluate import retrieval_report
from ssdh_port.pipeline.plots import epoch_curves, retrieval_curves
from ssdh_port.pipeline.scratch import Normaliser, data_paths, load_split
from ssdh_port.progress import bar, logger


@dataclasses.dataclass
class FastCifarConfig:
    data: str = "runs/cifar10"
    archive: str | None = None
    out_dir: str = "results/cifar10_fast"
    bits: int = 48
    epochs: float = 16.0
    batch_size: int = 1024
    widths: str = "128,384,384"
    head: str = "ssdh"          # "plain": the recipe's own head, a reference (no SSDH codes)
    lr: float = 11.5            # per 1024 examples, the recipe's convention
    momentum: float = 0.85
    weight_decay: float = 0.0153
    bias_scaler: float = 64.0
    label_smoothing: float = 0.2
    whiten_bias_epochs: float = 3.0
    translate: int = 2
    cutout: int = 0             # side of a square erased at random in each image (0: none)
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    p: int = 2
    tta: int = 2
    lookahead: bool = False     # the recipe's weight averaging (below)
    precision: str = "bf16"
    device: str = "cpu"
    limit: int = 0
    seed: int = 0
    resume: str | None = None


@dataclasses.dataclass
class FastCifarResult:
    report: object            # RetrievalReport
    weights: str
    log: str
    plots: dict
    seconds: dict             # train, encode, evaluate, wall
    codes: dict = dataclasses.field(default_factory=dict)  # {"test", "train"}: code files (.ssdh)


def _widths(config):
    try:
        widths = tuple(int(w) for w in config.widths.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 3 or min(widths) <= 0:
        raise SSDHError(f"widths {config.widths!r}: expected three positive channel counts like 128,384,384")
    return widths


class _Batches:
    """Normalised, augmented training batches from uint8 images in memory."""

    def __init__(self, images, labels, config, generator, ranks=None):
        self.images, self.labels, self.config, self.generator = images, labels, config, generator
        # Several processes: each step takes world x batch_size images, rank r its slice
        # (every rank draws the same permutation and augmentation numbers, in step).
        self.ranks = ranks or distributed.Ranks()
        self.flip_base = torch.rand(len(images), generator=generator) < 0.5
        self.normalise = Normaliser(images)

    def epoch(self, epoch, memory_format):
        n, size, pad = len(self.images), self.config.batch_size, self.config.translate
        step = size * self.ranks.world
        order = torch.randperm(n, generator=self.generator)
        # Alternating flips: random in the first epoch, then every other epoch the other way.
        flips = self.flip_base ^ bool(epoch % 2)
        for start in range(0, n - step + 1, step):
            index = order[start + self.ranks.rank * size:start + (self.ranks.rank + 1) * size]
            x = self.normalise(self.images[index])
            x = torch.where(flips[index].to(x.device)[:, None, None, None], x.flip(-1), x)
            if pad:
                x = _translate(x, pad, self.generator)
            if self.config.cutout:
                x = _cutout(x, self.config.cutout, self.generator)
            yield x.contiguous(memory_format=memory_format), self.labels[index]


def _translate(x, pad, generator):
    """Each image shifted by up to pad pixels (a random crop of its reflected padding)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def _cutout(x, side, generator):
    """Each image with one side x side square, placed at random inside it, set to 0
    (the mean after normalisation)."""
    n, _, h, w = x.shape
    top, left = (torch.randint(0, extent - side + 1, (n,), generator=generator).to(x.device) for extent in (h, w))
    rows = torch.arange(h, device=x.device)[None, :] - top[:, None]
    cols = torch.arange(w, device=x.device)[None, :] - left[:, None]
    inside = ((rows >= 0) & (rows < side))[:, :, None] & ((cols >= 0) & (cols < side))[:, None, :]
    return x.masked_fill(inside[:, None], 0.0)


def _optimizer(model, config, batch_norm_names, world=1):
    kilostep = 1024 * (1 + 1 / (1 - config.momentum))
    batch = config.batch_size * world                      # the effective batch
    lr = config.lr / kilostep * batch                      # on the batch-mean loss
    decay = config.weight_decay * batch / kilostep
    biases = [p for n, p in model.named_parameters() if n in batch_norm_names and p.requires_grad]
    others = [p for n, p in model.named_parameters() if n not in batch_norm_names and p.requires_grad]
    bias_lr = lr * config.bias_scaler
    groups = [{"params": biases, "lr": bias_lr, "weight_decay": decay / bias_lr, "initial_lr": bias_lr},
              {"params": others, "lr": lr, "weight_decay": decay / lr, "initial_lr": lr}]
    return torch.optim.SGD(groups, momentum=config.momentum, nesterov=True)


def _schedule(step, total):
    """0.2 -> 1 of the peak over the first 20 % of the steps, then linearly to 0."""
    rise = max(1, int(0.2 * total))
    if step < rise:
        return 0.2 + 0.8 * step / rise
    return max(0.0, (total - step) / max(1, total - rise))


class _Lookahead:
    """Weight averaging as the fast recipes do it: an exponential average of the
    floating-point state (weights and batch-norm statistics) that, at each
    update, also replaces the net's own state."""

    every = 5

    def __init__(self, model):
        self.average = {name: value.detach().clone() for name, value in model.state_dict().items()
                        if value.is_floating_point()}

    @staticmethod
    def decay(step, total):
        return 0.95 ** 5 * (step / total) ** 3

    @torch.no_grad()
    def update(self, model, decay):
        state = model.state_dict()
        for name, average in self.average.items():
            average.lerp_(state[name], 1 - decay)
            state[name].copy_(average)


def _objective(config, latent, scores, labels):
    e1 = F.cross_entropy(scores, labels, label_smoothing=config.label_smoothing)
    e2_e3 = ops.latent_losses(latent, config.p)
    return config.alpha * e1 + config.beta * e2_e3[0] + config.gamma * e2_e3[1], e1


@torch.no_grad()
def tta_latents(model, images, batches, config, memory_format, batch=1000):
    """(latent activations averaged over the test-time views, averaged scores)."""
    model.eval()
    latents, scores = [], []
    weights = {0: [(1.0, 0, False)], 1: [(0.5, 0, False), (0.5, 0, True)]}.get(
        config.tta, [(0.25, 0, False), (0.25, 0, True), (0.125, -1, False), (0.125, -1, True),
                     (0.125, 1, False), (0.125, 1, True)])
    for start in range(0, len(images), batch):
        x = batches.normalise(images[start:start + batch])
        latent_sum, score_sum = 0.0, 0.0
        for weight, shift, flip in weights:
            view = x.flip(-1) if flip else x
            if shift:
                # One pixel up-left (-1) or down-right (+1), reflected at the border.
                padded = F.pad(view, (1, 1, 1, 1), mode="reflect")
                offset = 1 + shift
                view = padded[:, :, offset:offset + 32, offset:offset + 32]
            with torch.autocast(view.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                latent, score = model(view.contiguous(memory_format=memory_format))
            latent_sum = latent_sum + weight * latent.float()
            score_sum = score_sum + weight * score.float()
        latents.append(latent_sum.cpu())
        scores.append(score_sum.cpu())
    return torch.cat(latents), torch.cat(scores)


def _snapshot(path, model, optimizer, epoch, step, generator, history, lookahead):
    with atomic_write(path) as f:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "step": step, "generator": generator.get_state(), "history": history,
                    "torch_rng": torch.get_rng_state(),
                    "lookahead": lookahead.average if lookahead else None}, f)


def train_fast_cifar(config):
    """Train, encode and evaluate one FastCifarConfig; returns a FastCifarResult (None
    on the ranks other than 0 of a torchrun training)."""
    wall = time.perf_counter()
    device = distributed.rank_device(resolve_device(config.device))
    if config.precision not in ("bf16", "fp32"):
        raise SSDHError(f"precision {config.precision!r}: expected bf16 or fp32")
    if not 0 <= config.cutout <= 32:
        raise SSDHError(f"cutout {config.cutout}: expected a square side from 0 (none) to 32 pixels")
    if config.tta not in (0, 1, 2):
        raise SSDHError(f"tta {config.tta}: expected 0, 1 or 2")
    # Under torchrun: ranks of one training (each batch_size images per step, the
    # gradients averaged, rank 0 logs, snapshots, encodes and evaluates).
    ranks = distributed.from_environment(device)
    if not ranks.root:
        torch.distributed.barrier()  # rank 0 prepares the databases first
    paths = data_paths(config.data, config.archive)
    if ranks.root and ranks.world > 1:
        torch.distributed.barrier()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    # The uint8 images live on the device (150 MB for CIFAR-10); batches are cut there.
    train_images, train_labels = (t.to(device) for t in load_split(paths["train"], config.limit))
    test_images, test_labels = (t.to(device) for t in load_split(paths["test"]))
    if len(train_images) < config.batch_size * ranks.world:
        raise SSDHError(f"{len(train_images)} training images for {ranks.world} batch(es) of {config.batch_size}")
    batches = _Batches(train_images, train_labels, config, generator, ranks)
    model = FastNetSSDH(bits=config.bits, widths=_widths(config), head=config.head)
    model.init_whitening(batches.normalise(train_images[:5000]))
    memory_format = torch.channels_last
    model = model.to(device, memory_format=memory_format)
    norm_names = {n for n, _ in model.named_parameters() if ".norm" in n}
    optimizer = _optimizer(model, config, norm_names, ranks.world)
    if ranks.world > 1:
        distributed.broadcast_parameters(list(model.parameters()) + list(model.buffers()))
    steps_per_epoch = len(train_images) // (config.batch_size * ranks.world)
    total = int(config.epochs * steps_per_epoch)
    os.makedirs(config.out_dir, exist_ok=True)
    log_path = os.path.join(config.out_dir, "train_log.jsonl") if ranks.root else os.devnull
    history, step, start_epoch = [], 0, 0
    lookahead = _Lookahead(model) if config.lookahead else None
    if config.resume:
        state = torch.load(config.resume, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if lookahead:
            if state.get("lookahead") is None:
                raise SSDHError(f"resume {config.resume}: the snapshot has no lookahead average "
                                "(trained without --lookahead)")
            lookahead.average = {name: value.to(device) for name, value in state["lookahead"].items()}
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, step, start_epoch = state["history"], state["step"], state["epoch"]
    logger.info("training FastNet-SSDH-%d (%s) on %d images: %d steps of %d, %s", config.bits, config.widths,
                len(train_images), total, config.batch_size, config.precision)
    train_seconds = history[-1]["seconds"] if history else 0.0
    ticker = bar(total=total, initial=step, desc="train", unit="step", disable_if=not ranks.root)
    with open(log_path, "a" if config.resume else "w") as log_file:
        epoch = start_epoch
        while step < total:
            t0 = time.perf_counter()
            model.train()
            if epoch >= config.whiten_bias_epochs:
                model.whiten.bias.requires_grad_(False)
            sums = torch.zeros(3)
            for x, y in batches.epoch(epoch, memory_format):
                if step >= total:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * _schedule(step, total)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                    latent, scores = model(x)
                loss, e1 = _objective(config, latent, scores, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if ranks.world > 1:
                    distributed.average_gradients([p for p in model.parameters() if p.requires_grad], ranks.world)
                optimizer.step()
                sums += torch.tensor([float(loss.detach()) * len(y), float((scores.argmax(1) == y).sum()), len(y)])
                step += 1
                if lookahead and step % lookahead.every == 0:
                    lookahead.update(model, lookahead.decay(step, total))
                ticker.update(1)
            epoch += 1
            train_seconds += time.perf_counter() - t0
            record = {"epoch": epoch, "step": step, "loss": float(sums[0] / sums[2]),
                      "train_accuracy": float(sums[1] / sums[2]), "seconds": train_seconds}
            history.append(record)
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            if not ranks.root:
                continue
            _snapshot(os.path.join(config.out_dir, "snapshot.pt"), model, optimizer, epoch, step, generator, history,
                      lookahead)
            logger.info("epoch %d: loss %.4f, train accuracy %.4f, %.0f s", epoch, record["loss"],
                        record["train_accuracy"], train_seconds)
    ticker.close()
    if lookahead:
        lookahead.update(model, 1.0)  # the trained net is the last average
    if not ranks.root:
        return None
    weights = os.path.join(config.out_dir, "model.pt")
    with atomic_write(weights) as f:
        torch.save({"config": dataclasses.asdict(config), "state_dict": model.state_dict()}, f)

    t0 = time.perf_counter()
    db_latent, _ = tta_latents(model, train_images, batches, config, memory_format)
    query_latent, query_scores = tta_latents(model, test_images, batches, config, memory_format)
    encode_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    test_labels, train_labels = test_labels.cpu(), train_labels.cpu()
    evaluation = retrieval_report(
        ops.pack_bits(query_latent, 0.5), ops.pack_bits(db_latent, 0.5), test_labels, train_labels,
        method=(f"FastNet-SSDH-{config.bits} (scratch)" if config.head == "ssdh"
                else f"FastNet, the recipe's plain head (scratch; {config.bits} untrained latent bits)"), bits=config.bits, curves=True,
        classification_accuracy=float((query_scores.argmax(1) == test_labels).float().mean()),
        seconds=round(train_seconds, 1),
        extra={"epochs": config.epochs, "widths": config.widths, "precision": config.precision,
               "tta": config.tta, "lookahead": config.lookahead, "cutout": config.cutout, "head": config.head,
               "loss_weights": [config.alpha, config.beta, config.gamma],
               "seed": config.seed, "train_images": len(train_images),
               "device": describe(device), "threads": torch.get_num_threads(),
               "torch": torch.__version__})
    evaluate_seconds = time.perf_counter() - t0
    codes = {}
    for split, latent, labels in (("test", query_latent, test_labels), ("train", db_latent, train_labels)):
        index = HammingIndex(config.bits)
        index.add(ops.pack_bits(latent, 0.5), labels=labels)
        codes[split] = os.path.join(config.out_dir, f"{split}.ssdh")
        index.save(codes[split])
    plots = {"curves": os.path.join(config.out_dir, "retrieval_curves.png"),
             "training": os.path.join(config.out_dir, "training.png")}
    retrieval_curves([evaluation], {}, plots["curves"])
    epoch_curves(history, plots["training"], "FastNet-SSDH from scratch on CIFAR-10")
    seconds = {"train": round(train_seconds, 1), "encode": round(encode_seconds, 1),
               "evaluate": round(evaluate_seconds, 1), "wall": round(time.perf_counter() - wall, 1)}
    evaluation.report.extra["seconds"] = seconds
    return FastCifarResult(evaluation.report, weights, log_path, plots, seconds, codes)



@torch.no_grad()
def _pooled_features(model, images, batches, config, memory_format, batch=1000):
    model.eval()
    out = []
    for start in range(0, len(images), batch):
        x = batches.normalise(images[start:start + batch]).contiguous(memory_format=memory_format)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            out.append(model.features(x).float())
    return torch.cat(out).numpy()


def feature_baselines(weights, bits=None):
    """LSH, ITQ and CCA-ITQ codes (and l2) of a trained FastNet-SSDH's pooled
    features (the input of its latent layer), fitted on the training images,
    under the protocol: the paper's comparison at this network's accuracy."""
    from ssdh_port.pipeline.experiment import hashing_baseline_reports

    state = torch.load(weights, map_location="cpu", weights_only=False)
    config = FastCifarConfig(**state["config"])
    paths = data_paths(config.data, config.archive)
    train_images, train_labels = load_split(paths["train"], config.limit)
    test_images, test_labels = load_split(paths["test"])
    batches = _Batches(train_images, train_labels, config, torch.Generator().manual_seed(config.seed))
    model = FastNetSSDH(bits=config.bits, widths=_widths(config), head=config.head)
    model.load_state_dict(state["state_dict"])
    model = model.to(memory_format=torch.channels_last)
    train = _pooled_features(model, train_images, batches, config, torch.channels_last)
    test = _pooled_features(model, test_images, batches, config, torch.channels_last)
    return hashing_baseline_reports(train, train_labels.numpy(), test, test_labels.numpy(),
                                    bits=bits or config.bits, source="FastNet features")
