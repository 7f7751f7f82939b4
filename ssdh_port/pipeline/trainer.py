"""The plain-PyTorch trainer: one training loop for every SSDH model of the
registry (ssdh_port.models.MODELS), in the manner of torchvision's reference
classification trainer: train_one_epoch(), evaluate(), fit().

Images are held in memory as uint8 (loaded from Datum LMDBs), moved to the
device once, and every batch is cut, normalised and augmented there. What
differs between the models is the recipe, all of it fields of TrainConfig:

  optimizer "fast"     SGD + Nesterov; lr and weight_decay per 1024 examples in the
                       decoupled convention of the published fast CIFAR-10 recipes
                       (lr / (1024 (1 + 1 / (1 - momentum))) x batch on the batch-mean
                       loss), batch-norm biases at bias_scaler x the rate with the same
                       absolute decay
            "sgd"      SGD + Nesterov with lr as given, weight decay on weights only
                       (not on norms and biases)
  schedule  "fast"     0.2 -> 1 of the peak over the first 20 % of the steps, then
                       linearly to 0
            "warmup"   a linear warm-up over the first 15 %, then linearly to 0
  augment   "flip-translate"  after normalisation: alternating flips (each image
                       flipped at random in the first epoch, then every other epoch
                       the other way), a shift of up to `translate` pixels (a random
                       crop of the reflected padding), optional cutout; random
                       numbers from one CPU generator (the same on any device)
            "pad-crop-flip"   before normalisation: 4-pixel reflected padding, a
                       random crop and a random mirror per image, with a generator
                       on the device
            "none"
  normalise "mean-std" (per channel, of the training images) or "scale" (x / 256, LeNet's)
  label_smoothing, whiten_bias_epochs (FastNet's whitening bias trains for that
  many epochs), lookahead (the recipes' weight averaging), cutout, tta (test-time
  views: 0 the image, 1 and its mirror, 2 and both shifted by a pixel)
  precision "bf16" (autocast, channels_last), "fp32", or "auto" (bf16 with
                       channels_last on a GPU, float32 on the CPU)

The objective is SSDH's: alpha * E1 (cross-entropy, smoothed when asked) + beta *
E2 + gamma * E3 (ops.latent_losses). One checkpoint dict (snapshot.pt, every
epoch) holds the model, optimizer, generator and RNG states, the history and
the averaged weights; resume continues exactly. The trained model's latents of
the test (queries) and training (database) images are thresholded at 0.5 into
code files through the pipeline's encoding step (codes_from_activations), with
the class scores kept beside them; the runner evaluates them as it does the
Caffe path's codes.

Under torchrun, the ranks train one net: each rank takes batch_size images per
step (the fast optimizer's rate follows the effective batch), the gradients are
averaged, rank 0 logs, snapshots and encodes; batch-norm statistics stay per rank.
"""
import dataclasses
import json
import os
import pickle
import time

import numpy as np
import torch
from torch.nn import functional as F

from ssdh_port import distributed, ops
from ssdh_port.data.db import DatumLMDB
from ssdh_port.device import describe, resolve_device, synchronize
from ssdh_port.errors import SSDHError
from ssdh_port.fileio import atomic_write
from ssdh_port.hashing.codes import code_report
from ssdh_port.models import MODELS, build_model
from ssdh_port.pipeline.encode import EncodedSplit, codes_from_activations
from ssdh_port.pipeline.plots import epoch_curves
from ssdh_port.progress import bar, logger


@dataclasses.dataclass
class TrainConfig:
    """One run of the trainer. The defaults are FastNet-SSDH's CPU recipe; each model's
    recipe in ssdh_port.models.MODELS replaces the fields it sets."""
    arch: str = "fastnet"
    train_db: str = "runs/cifar10/train_lmdb_32"
    test_db: str = "runs/cifar10/test_lmdb_32"
    out_dir: str = "runs/train"
    bits: int = 48
    widths: str = "128,384,384"     # fastnet: channels of the three groups
    width: int = 64                 # resnet18: channels of the first stage
    head: str = "ssdh"              # fastnet: "plain" is the recipe's own head (no SSDH codes)
    epochs: float = 16.0
    batch_size: int = 1024
    optimizer: str = "fast"
    lr: float = 11.5
    momentum: float = 0.85
    weight_decay: float = 0.0153
    bias_scaler: float = 64.0
    schedule: str = "fast"
    label_smoothing: float = 0.2
    whiten_bias_epochs: float = 3.0
    augment: str = "flip-translate"
    translate: int = 2
    cutout: int = 0
    normalise: str = "mean-std"
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    p: int = 2
    tta: int = 2
    lookahead: bool = False
    precision: str = "bf16"
    compile: bool = False
    device: str = "cpu"
    limit: int = 0                  # the first N training images only (0: all)
    seed: int = 0
    resume: str | None = None

    CHOICES = {"optimizer": ("fast", "sgd"), "schedule": ("fast", "warmup"),
               "augment": ("flip-translate", "pad-crop-flip", "none"), "normalise": ("mean-std", "scale"),
               "precision": ("bf16", "fp32", "auto"), "tta": (0, 1, 2), "head": ("ssdh", "plain")}

    def check(self):
        if self.arch not in MODELS:
            raise SSDHError(f"arch {self.arch!r}: expected one of {sorted(MODELS)}")
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise SSDHError(f"{name} {getattr(self, name)!r}: expected one of {list(allowed)}")
        if not 0 <= self.cutout <= 32:
            raise SSDHError(f"cutout {self.cutout}: expected a square side from 0 (none) to 32 pixels")
        if self.epochs <= 0 or self.batch_size <= 0:
            raise SSDHError(f"epochs {self.epochs} and batch_size {self.batch_size} must be positive")


def recipe(arch, **fields):
    """TrainConfig of a model's recipe (MODELS[arch].recipe), with fields replaced."""
    if arch not in MODELS:
        raise SSDHError(f"arch {arch!r}: expected one of {sorted(MODELS)}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise SSDHError(f"unknown training option(s) {unknown} (options: {sorted(known)})")
    return TrainConfig(arch=arch, **{**MODELS[arch].recipe, **fields})


@dataclasses.dataclass
class TrainResult:
    weights: str                      # the trained model: {"config", "state_dict"} (.pt)
    log: str                          # one JSON line per epoch
    history: list
    seconds: dict                     # train, encode, wall
    query: EncodedSplit               # test images: codes, labels, class scores ("scores")
    database: EncodedSplit            # training images
    plot: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------ data


def load_images(path, limit=0):
    """All records of a Datum LMDB of raw images: (uint8 N x C x H x W, int64 labels)."""
    db = DatumLMDB(path)
    count = min(len(db), limit) if limit else len(db)
    if not count:
        raise SSDHError(f"{path}: no records")
    first, _ = db.read(0)
    images = np.empty((count,) + tuple(first.shape), np.uint8)
    labels = db.read_batch(range(count), images)
    return torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64)


class Normaliser:
    """uint8 images -> float batches: per channel mean and std of the training
    images ("mean-std"), or x / 256 ("scale"), in the memory format asked for."""

    def __init__(self, images, kind="mean-std", memory_format=torch.contiguous_format):
        if kind == "scale":
            self.mean, self.std = torch.zeros((), device=images.device), torch.full((), 256.0, device=images.device)
        else:
            self.mean = images.float().mean(dim=(0, 2, 3), keepdim=True)
            self.std = images.float().std(dim=(0, 2, 3), keepdim=True)
        self.memory_format = memory_format

    def __call__(self, batch, memory_format=None):
        return ((batch.float() - self.mean) / self.std).contiguous(memory_format=memory_format or self.memory_format)


class FlipTranslateBatches:
    """The fast recipes' augmentation, after normalisation (see the module's doc)."""

    def __init__(self, images, labels, config, normalise, generator, ranks):
        self.images, self.labels, self.config, self.generator = images, labels, config, generator
        self.normalise, self.ranks = normalise, ranks
        self.flip_base = torch.rand(len(images), generator=generator) < 0.5

    def steps_per_epoch(self):
        return len(self.images) // (self.config.batch_size * self.ranks.world)

    def epoch(self, epoch, memory_format):
        n, size, pad = len(self.images), self.config.batch_size, self.config.translate
        step = size * self.ranks.world
        # Every rank draws the same permutation and augmentation numbers, in step; rank r takes its slice.
        order = torch.randperm(n, generator=self.generator)
        flips = self.flip_base ^ bool(epoch % 2)
        for start in range(0, n - step + 1, step):
            index = order[start + self.ranks.rank * size:start + (self.ranks.rank + 1) * size]
            x = self.normalise(self.images[index])
            x = torch.where(flips[index].to(x.device)[:, None, None, None], x.flip(-1), x)
            if pad:
                x = translate(x, pad, self.generator)
            if self.config.cutout:
                x = cutout(x, self.config.cutout, self.generator)
            yield x.contiguous(memory_format=memory_format), self.labels[index]


class PadCropFlipBatches:
    """4-pixel reflected padding, a random crop and a random mirror per image, on the
    device, before normalisation ("pad-crop-flip"); "none" when pad is 0 and mirror off."""

    def __init__(self, images, labels, config, normalise, generator, ranks, pad=4, mirror=True):
        self.images, self.labels, self.config, self.normalise = images, labels, config, normalise
        self.generator, self.ranks, self.pad, self.mirror = generator, ranks, pad, mirror

    def steps_per_epoch(self):
        return max(1, len(self.images) // (self.config.batch_size * self.ranks.world))

    def epoch(self, epoch, memory_format):
        device, size = self.images.device, self.config.batch_size
        order = torch.randperm(len(self.images), device=device, generator=self.generator)
        for i in range(self.steps_per_epoch()):
            start = (i * self.ranks.world + self.ranks.rank) * size
            index = order[start:start + size]
            batch = self.images[index]
            if self.pad or self.mirror:
                batch = pad_crop_flip(batch, self.pad, self.generator)
            yield self.normalise(batch, memory_format), self.labels[index]


def pad_crop_flip(batch, pad, generator):
    """Each image reflected-padded by pad, cropped back at a random offset, mirrored at
    random; one gather per batch."""
    n, _, h, w = batch.shape
    device = batch.device
    padded = F.pad(batch, (pad,) * 4, mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (2, n), device=device, generator=generator)
    flips = torch.rand(n, device=device, generator=generator) < 0.5
    rows = offsets[0][:, None] + torch.arange(h, device=device)
    base = torch.arange(w, device=device)
    cols = offsets[1][:, None] + torch.where(flips[:, None], w - 1 - base, base)
    picked = padded[torch.arange(n, device=device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2)


def translate(x, pad, generator):
    """Each image shifted by up to pad pixels (a random crop of its reflected padding)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def cutout(x, side, generator):
    """Each image with one side x side square, placed at random inside it, set to 0
    (the mean after normalisation)."""
    n, _, h, w = x.shape
    top, left = (torch.randint(0, extent - side + 1, (n,), generator=generator).to(x.device) for extent in (h, w))
    rows = torch.arange(h, device=x.device)[None, :] - top[:, None]
    cols = torch.arange(w, device=x.device)[None, :] - left[:, None]
    inside = ((rows >= 0) & (rows < side))[:, :, None] & ((cols >= 0) & (cols < side))[:, None, :]
    return x.masked_fill(inside[:, None], 0.0)


# ------------------------------------------------------------------ optimisation


def make_optimizer(model, config, world=1):
    if config.optimizer == "sgd":
        decay = [p for p in model.parameters() if p.dim() > 1]
        no_decay = [p for p in model.parameters() if p.dim() <= 1]
        groups = [{"params": decay, "weight_decay": config.weight_decay, "initial_lr": config.lr},
                  {"params": no_decay, "weight_decay": 0.0, "initial_lr": config.lr}]
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    norm_names = {n for n, _ in model.named_parameters() if ".norm" in n}
    kilostep = 1024 * (1 + 1 / (1 - config.momentum))
    batch = config.batch_size * world                      # the effective batch
    lr = config.lr / kilostep * batch                      # on the batch-mean loss
    decay = config.weight_decay * batch / kilostep
    biases = [p for n, p in model.named_parameters() if n in norm_names and p.requires_grad]
    others = [p for n, p in model.named_parameters() if n not in norm_names and p.requires_grad]
    bias_lr = lr * config.bias_scaler
    groups = [{"params": biases, "lr": bias_lr, "weight_decay": decay / bias_lr, "initial_lr": bias_lr},
              {"params": others, "lr": lr, "weight_decay": decay / lr, "initial_lr": lr}]
    return torch.optim.SGD(groups, momentum=config.momentum, nesterov=True)


def learning_rate(kind, peak, step, total):
    """The rate at `step` of `total` for a group whose peak rate is `peak`."""
    if kind == "warmup":
        rise = max(1, int(0.15 * total))
        if step < rise:
            return peak * (step + 1) / rise
        return peak * max(0.0, (total - step) / max(1, total - rise))
    rise = max(1, int(0.2 * total))
    if step < rise:
        return peak * (0.2 + 0.8 * step / rise)
    return peak * max(0.0, (total - step) / max(1, total - rise))


class Lookahead:
    """Weight averaging as the fast recipes do it: an exponential average of the
    floating-point state (weights and batch-norm statistics) that, at each update
    (every 5 steps), also replaces the net's own state; its decay grows as
    0.95**5 x (step / steps)**3, so it is off early and strongest at the end."""

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


def objective(config, latent, scores, labels):
    """(alpha E1 + beta E2 + gamma E3, E1)."""
    e1 = F.cross_entropy(scores, labels, label_smoothing=config.label_smoothing)
    e2_e3 = ops.latent_losses(latent, config.p)
    return config.alpha * e1 + config.beta * e2_e3[0] + config.gamma * e2_e3[1], e1


@dataclasses.dataclass
class _State:
    """What a step changes, and what a checkpoint keeps."""
    step: int = 0
    epoch: int = 0
    total: int = 0
    history: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def train_one_epoch(model, forward, batches, optimizer, config, state, device, memory_format, ranks,
                    lookahead=None, ticker=None):
    """One pass over the epoch's batches (stopping at state.total steps); returns the
    epoch's record (mean loss, training accuracy)."""
    model.train()
    whiten = getattr(model, "whiten", None)
    if whiten is not None and whiten.bias is not None and state.epoch >= config.whiten_bias_epochs:
        whiten.bias.requires_grad_(False)
    bf16 = _bf16(config, device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)   # loss, correct, seen (no sync per step)
    for x, y in batches.epoch(state.epoch, memory_format):
        if state.step >= state.total:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config.schedule, group["initial_lr"], state.step, state.total)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            latent, scores = forward(x)
        loss, _ = objective(config, latent, scores, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if ranks.world > 1:
            distributed.average_gradients([p for p in model.parameters() if p.requires_grad], ranks.world)
        optimizer.step()
        sums += torch.stack([loss.detach().double() * len(y), (scores.argmax(1) == y).sum().double(),
                             torch.tensor(len(y), dtype=torch.float64, device=device)])
        state.step += 1
        if lookahead and state.step % lookahead.every == 0:
            lookahead.update(model, lookahead.decay(state.step, state.total))
        if ticker:
            ticker.update(1)
    loss, correct, seen = sums.tolist()
    return {"epoch": state.epoch + 1, "step": state.step, "loss": loss / max(seen, 1),
            "train_accuracy": correct / max(seen, 1)}


@torch.no_grad()
def evaluate(model, images, normalise, config, memory_format, batch=1000):
    """(latent activations, class scores) of images, each averaged over the
    test-time views (config.tta): the image and its mirror, weighted 1/2 each
    (tta 1); with both shifted by one pixel up-left and down-right, 1/4, 1/4,
    1/8 x 4 (tta 2), as the recipe weights its logits."""
    model.eval()
    latents, scores = [], []
    weights = {0: [(1.0, 0, False)], 1: [(0.5, 0, False), (0.5, 0, True)]}.get(
        config.tta, [(0.25, 0, False), (0.25, 0, True), (0.125, -1, False), (0.125, -1, True),
                     (0.125, 1, False), (0.125, 1, True)])
    bf16 = _bf16(config, images.device)
    for start in range(0, len(images), batch):
        x = normalise(images[start:start + batch])
        latent_sum, score_sum = 0.0, 0.0
        for weight, shift, flip in weights:
            view = x.flip(-1) if flip else x
            if shift:
                # One pixel up-left (-1) or down-right (+1), reflected at the border.
                h, w = view.shape[-2:]
                padded = F.pad(view, (1, 1, 1, 1), mode="reflect")
                view = padded[:, :, 1 + shift:1 + shift + h, 1 + shift:1 + shift + w]
            with torch.autocast(view.device.type, dtype=torch.bfloat16, enabled=bf16):
                latent, score = model(view.contiguous(memory_format=memory_format))
            latent_sum = latent_sum + weight * latent.float()
            score_sum = score_sum + weight * score.float()
        latents.append(latent_sum.cpu())
        scores.append(score_sum.cpu())
    return torch.cat(latents), torch.cat(scores)


def _bf16(config, device):
    return config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")


def _memory_format(config, device):
    channels_last = MODELS[config.arch].channels_last or _bf16(config, device)
    return torch.channels_last if channels_last else torch.contiguous_format


def _checkpoint(path, model, optimizer, state, generator, lookahead):
    with atomic_write(path) as f:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": state.epoch,
                    "step": state.step, "history": state.history, "seconds": state.seconds,
                    "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                    "lookahead": lookahead.average if lookahead else None}, f)


def _restore(path, model, optimizer, state, generator, lookahead, device):
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
    except OSError as err:
        raise SSDHError(f"resume {path}: cannot read ({err.strerror})") from None
    except (RuntimeError, KeyError, EOFError, ValueError, pickle.UnpicklingError) as err:
        what = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SSDHError(f"resume {path}: not a checkpoint of this model ({what})") from None
    if lookahead:
        if saved.get("lookahead") is None:
            raise SSDHError(f"resume {path}: the snapshot has no lookahead average (trained without lookahead)")
        lookahead.average = {name: value.to(device) for name, value in saved["lookahead"].items()}
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    state.history, state.step, state.epoch = saved["history"], saved["step"], saved["epoch"]
    state.seconds = saved.get("seconds", state.history[-1]["seconds"] if state.history else 0.0)


# ------------------------------------------------------------------ the whole run


def fit(config):
    """Train, then encode the test (queries) and training (database) images; ->
    TrainResult (None on the ranks other than 0 of a torchrun training)."""
    config.check()
    wall = time.perf_counter()
    device = distributed.rank_device(resolve_device(config.device))
    ranks = distributed.from_environment(device)
    torch.manual_seed(config.seed)
    # The uint8 images live on the device (150 MB for CIFAR-10); batches are cut there.
    train_images, train_labels = (t.to(device) for t in load_images(config.train_db, config.limit))
    test_images, test_labels = (t.to(device) for t in load_images(config.test_db))
    if len(train_images) < config.batch_size * ranks.world:
        raise SSDHError(f"{len(train_images)} training images for {ranks.world} batch(es) of {config.batch_size}")
    memory_format = _memory_format(config, device)
    if config.augment == "flip-translate":
        generator = torch.Generator().manual_seed(config.seed)
        normalise = Normaliser(train_images, config.normalise)
        batches = FlipTranslateBatches(train_images, train_labels, config, normalise, generator, ranks)
    else:
        normalise = Normaliser(train_images, config.normalise, memory_format)
        generator = None
    spec = MODELS[config.arch]
    model = build_model(config.arch, bits=config.bits, widths=config.widths, width=config.width, head=config.head,
                        in_channels=train_images.shape[1])
    if hasattr(model, "init_whitening"):
        model.init_whitening(normalise(train_images[:5000], torch.contiguous_format))
    model = model.to(device, memory_format=memory_format)
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
        augment = config.augment == "pad-crop-flip"
        batches = PadCropFlipBatches(train_images, train_labels, config, normalise, generator, ranks,
                                     pad=4 if augment else 0, mirror=augment)
    optimizer = make_optimizer(model, config, ranks.world)
    if ranks.world > 1:
        distributed.broadcast_parameters(list(model.parameters()) + list(model.buffers()))
    forward = torch.compile(model) if config.compile else model
    state = _State(total=int(config.epochs * batches.steps_per_epoch()))
    lookahead = Lookahead(model) if config.lookahead else None
    if config.resume:
        _restore(config.resume, model, optimizer, state, generator, lookahead, device)
    os.makedirs(config.out_dir, exist_ok=True)
    log_path = os.path.join(config.out_dir, "train_log.jsonl")
    logger.info("training %s-SSDH-%d on %d images: %d steps of %d, %s on %s", spec.name, config.bits,
                len(train_images), state.total, config.batch_size, "bf16" if _bf16(config, device) else "float32",
                device)
    ticker = bar(total=state.total, initial=state.step, desc="train", unit="step", disable_if=not ranks.root)
    with open(log_path if ranks.root else os.devnull, "a" if config.resume else "w") as log_file:
        while state.step < state.total:
            t0 = time.perf_counter()
            record = train_one_epoch(model, forward, batches, optimizer, config, state, device, memory_format,
                                     ranks, lookahead, ticker)
            synchronize(device)
            state.epoch += 1
            state.seconds += time.perf_counter() - t0
            record["seconds"] = state.seconds
            state.history.append(record)
            if not ranks.root:
                continue
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            _checkpoint(os.path.join(config.out_dir, "snapshot.pt"), model, optimizer, state, generator, lookahead)
            logger.info("epoch %d: loss %.4f, train accuracy %.4f, %.0f s", state.epoch, record["loss"],
                        record["train_accuracy"], state.seconds)
    ticker.close()
    if lookahead:
        lookahead.update(model, 1.0)  # the trained net is the last average
    if not ranks.root:
        return None
    weights = os.path.join(config.out_dir, "model.pt")
    with atomic_write(weights) as f:
        torch.save({"config": dataclasses.asdict(config), "state_dict": model.state_dict()}, f)
    t0 = time.perf_counter()
    splits = {}
    for split, images, labels in (("test", test_images, test_labels), ("train", train_images, train_labels)):
        latent, scores = evaluate(model, images, normalise, config, memory_format)
        splits[split] = encoded_split(latent, scores, labels.cpu())
    encode_seconds = time.perf_counter() - t0
    plot = None
    if state.history:
        plot = os.path.join(config.out_dir, "training.png")
        epoch_curves(state.history, plot, f"{spec.name}-SSDH from scratch")
    seconds = {"train": round(state.seconds, 1), "encode": round(encode_seconds, 1),
               "wall": round(time.perf_counter() - wall, 1)}
    extra = {"epochs": config.epochs, "steps": state.step, "seed": config.seed, "tta": config.tta,
             "precision": config.precision, "lookahead": config.lookahead, "cutout": config.cutout,
             "train_images": len(train_images), "device": describe(device), "threads": torch.get_num_threads()}
    return TrainResult(weights, log_path, state.history, seconds, splits["test"], splits["train"], plot, extra)


def encoded_split(latent, scores, labels):
    """Latent activations -> the pipeline's EncodedSplit (codes at > 0.5, labels),
    the class scores kept as the blob "scores"."""
    index = codes_from_activations(latent, labels=labels)
    return EncodedSplit(index, "latent", {"scores": scores.numpy()}, code_report(latent.numpy()))


def load_trained(weights):
    """(model on the CPU, its TrainConfig) from a model.pt written by fit()."""
    state = torch.load(weights, map_location="cpu", weights_only=False)
    config = TrainConfig(**state["config"])
    model = build_model(config.arch, bits=config.bits, widths=config.widths, width=config.width, head=config.head,
                        in_channels=_in_channels(state))
    model.load_state_dict(state["state_dict"])
    return model, config


def _in_channels(state):
    """Input channels of a saved model: those of its first convolution's weight."""
    for name, value in state["state_dict"].items():
        if value.dim() == 4:
            return value.shape[1]
    return 3


@torch.no_grad()
def pooled_features(weights, images):
    """The trained model's pooled features (the latent layer's input) of uint8 images:
    what hash functions of the same network's features are fitted on."""
    model, config = load_trained(weights)
    train_images, _ = load_images(config.train_db, config.limit)
    normalise = Normaliser(train_images, config.normalise)
    memory_format = _memory_format(config, torch.device("cpu"))
    model = model.to(memory_format=memory_format).eval()
    out = []
    for start in range(0, len(images), 1000):
        x = normalise(images[start:start + 1000], memory_format)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=_bf16(config, torch.device("cpu"))):
            out.append(model.features(x).float())
    return torch.cat(out).numpy()


def feature_baselines(weights, bits=None):
    """LSH, ITQ and CCA-ITQ codes (and l2) of a trained model's pooled features,
    fitted on the training images, under the protocol: the paper's comparison at
    this network's accuracy."""
    from ssdh_port.pipeline.experiment import hashing_baseline_reports

    _, config = load_trained(weights)
    train_images, train_labels = load_images(config.train_db, config.limit)
    test_images, test_labels = load_images(config.test_db)
    train = pooled_features(weights, train_images)
    test = pooled_features(weights, test_images)
    return hashing_baseline_reports(train, train_labels.numpy(), test, test_labels.numpy(),
                                    bits=bits or config.bits, source=f"{MODELS[config.arch].name} features")
