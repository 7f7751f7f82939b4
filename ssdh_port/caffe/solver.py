"""Caffe's solvers (SolverParameter semantics; docs/SPEC.md section 3).

The update follows Caffe's ApplyUpdate, per iteration: learning rate of the
policy, gradient clipping over all parameters, then for each parameter the
iter_size normalisation, regularisation (L2: grad += decay * w; L1: grad +=
decay * sign(w)), the solver's update value and w -= update. For SGD the
learning rate lives inside the momentum history (v = momentum * v + lr * g,
w -= v), which differs from torch.optim.SGD whenever the rate changes.
local_lr = lr * lr_mult and local_decay = weight_decay * decay_mult per blob.
"""
import collections
import contextlib
import json
import math
import os
import re

import numpy as np
import torch

from ssdh_port.caffe import io as caffe_io
from ssdh_port import distributed
from ssdh_port.caffe.net import CaffeNet
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.errors import SSDHError
from ssdh_port.fileio import pt_problem, stale_temporaries, temporary_beside
from ssdh_port.precision import tf32_mode
from ssdh_port.progress import logger

SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


class SolverError(SSDHError):
    """A solver definition that cannot run; the message names the field."""


def solver_type(param):
    """The solver's type: 'type', or the deprecated solver_type enum."""
    if param.HasField("type"):
        name = param.type
    elif param.HasField("solver_type"):
        name = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                "ADADELTA": "AdaDelta", "ADAM": "Adam"}[pb.SolverParameter.SolverType.Name(param.solver_type)]
    else:
        name = "SGD"
    if name not in SOLVER_TYPES:
        raise SolverError(f"solver type must be one of {SOLVER_TYPES}, got {name!r}")
    return name


class LearningRate:
    """Caffe's GetLearningRate for every policy (multistep keeps its current step)."""

    def __init__(self, param):
        self.p = param
        self.policy = param.lr_policy or "fixed"
        if self.policy not in LR_POLICIES:
            raise SolverError(f"lr_policy must be one of {LR_POLICIES}, got {self.policy!r}")
        if self.policy in ("step", "sigmoid") and param.stepsize <= 0 and self.policy == "step":
            raise SolverError("lr_policy 'step' needs a positive stepsize")
        self.current_step = 0

    def __call__(self, it):
        p = self.p
        if self.policy == "fixed":
            return p.base_lr
        if self.policy == "step":
            self.current_step = it // p.stepsize
            return p.base_lr * p.gamma ** self.current_step
        if self.policy == "exp":
            return p.base_lr * p.gamma ** it
        if self.policy == "inv":
            return p.base_lr * (1 + p.gamma * it) ** (-p.power)
        if self.policy == "multistep":
            while self.current_step < len(p.stepvalue) and it >= p.stepvalue[self.current_step]:
                self.current_step += 1
            return p.base_lr * p.gamma ** self.current_step
        if self.policy == "poly":
            return p.base_lr * (1 - it / p.max_iter) ** p.power
        return p.base_lr / (1 + math.exp(-p.gamma * (it - p.stepsize)))


class LearnableParam:
    """One learnable blob (its owner layer's) with its multipliers and solver history."""

    def __init__(self, layer, index, tensor, lr_mult=1.0, decay_mult=1.0):
        self.layer, self.index, self.tensor = layer, index, tensor
        self.lr_mult, self.decay_mult = lr_mult, decay_mult
        self.history = [torch.zeros_like(tensor) for _ in range(2)]

    @property
    def key(self):
        return f"{self.layer}/{self.index}"


def learnable_params(net):
    """Caffe's learnable_params_: every blob once, under the layer that owns it
    (shared blobs are updated once), frozen ones (lr_mult 0, BatchNorm statistics)
    included, with the multipliers the net resolved."""
    return [LearnableParam(name, i, net.layer(name).blobs[i], lr, decay)
            for (name, i), (lr, decay) in net.param_multipliers.items()]


class Updater:
    """The update rule of one solver type, applied to a LearnableParam."""

    def __init__(self, param):
        self.p = param
        self.kind = solver_type(param)
        if param.regularization_type not in ("L1", "L2"):
            raise SolverError(
                f"regularization_type must be L1 or L2, got {param.regularization_type!r}")

    @torch.no_grad()
    def __call__(self, lp, grad, rate, it):
        p = self.p
        local_rate = rate * lp.lr_mult
        local_decay = p.weight_decay * lp.decay_mult
        w = lp.tensor
        if local_decay:
            grad = grad + local_decay * (w if p.regularization_type == "L2" else torch.sign(w))
        h, h2 = lp.history
        if self.kind == "SGD":
            h.mul_(p.momentum).add_(grad, alpha=local_rate)
            update = h
        elif self.kind == "Nesterov":
            previous = h.clone()
            h.mul_(p.momentum).add_(grad, alpha=local_rate)
            update = (1 + p.momentum) * h - p.momentum * previous
        elif self.kind == "AdaGrad":
            h.add_(grad * grad)
            update = local_rate * grad / (h.sqrt() + p.delta)
        elif self.kind == "RMSProp":
            # Caffe's float order: g^2; h = (1 - decay) g^2 + decay h; g / (sqrt(h) + delta);
            # then the local rate.
            h.mul_(p.rms_decay).add_(grad * grad, alpha=1 - p.rms_decay)
            update = local_rate * (grad / (h.sqrt() + p.delta))
        elif self.kind == "AdaDelta":
            h.mul_(p.momentum).add_((1 - p.momentum) * grad * grad)
            step = grad * (h2 + p.delta).sqrt() / (h + p.delta).sqrt()
            h2.mul_(p.momentum).add_((1 - p.momentum) * step * step)
            update = local_rate * step
        else:  # Adam
            beta1, beta2 = p.momentum, p.momentum2
            h.mul_(beta1).add_((1 - beta1) * grad)
            h2.mul_(beta2).add_((1 - beta2) * grad * grad)
            t = it + 1
            correction = math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
            update = local_rate * correction * h / (h2.sqrt() + p.delta)
        w.sub_(update)
        return update

    @torch.no_grad()
    def update_all(self, lps, grads, rate, it):
        """Every blob's update. SGD with L2 decay, the recipes' rule, runs as a few
        fused torch._foreach_* kernels per (lr_mult, decay_mult) group, in Caffe's
        order: diff += decay w (into the gradient, as Caffe's Regularize does);
        h = momentum h + rate diff; w -= h. Other rules go blob by blob."""
        if self.kind != "SGD" or self.p.regularization_type != "L2":
            for lp, grad in zip(lps, grads):
                self(lp, grad, rate, it)
            return
        groups = collections.defaultdict(list)
        for lp, grad in zip(lps, grads):
            groups[(lp.lr_mult, lp.decay_mult)].append((lp, grad))
        for (lr_mult, decay_mult), members in groups.items():
            weights = [lp.tensor for lp, _ in members]
            history = [lp.history[0] for lp, _ in members]
            diffs = [grad for _, grad in members]
            decay = self.p.weight_decay * decay_mult
            if decay:
                torch._foreach_add_(diffs, weights, alpha=decay)
            torch._foreach_mul_(history, self.p.momentum)
            torch._foreach_add_(history, diffs, alpha=rate * lr_mult)
            torch._foreach_sub_(weights, history)


def clip_gradients(grads, threshold):
    """Caffe's ClipGradients: scale all gradients when their joint L2 norm exceeds threshold."""
    if threshold < 0:
        return grads
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    if norm > threshold:
        scale = threshold / norm
        return [g * scale for g in grads]
    return grads


def share_weights(source, target):
    """Caffe's ShareTrainedLayersWith: target's layers use source's blobs, by layer name."""
    owners = {m.name: m for m in source.layers}
    for module in target.layers:
        owner = owners.get(module.name)
        if owner is None or not len(module.blobs):
            continue
        if [tuple(b.shape) for b in owner.blobs] != [tuple(b.shape) for b in module.blobs]:
            raise SolverError(f"layer '{module.name}' has different blob shapes in the train and test nets")
        for i in range(len(module.blobs)):
            module.blobs[i] = owner.blobs[i]


def resolve_nets(param):
    """(train net definition, [test net definitions]) as Caffe's Solver::InitTrainNet / InitTestNets."""
    train_fields = [f for f in ("train_net_param", "train_net", "net_param", "net") if param.HasField(f)]
    if len(train_fields) != 1:
        raise SolverError("give exactly one of train_net_param, train_net, net_param or net "
                          f"(got {train_fields or 'none'})")
    train = getattr(param, train_fields[0])
    tests = list(param.test_net_param) + list(param.test_net)
    if not tests and (param.HasField("net") or param.HasField("net_param")) and param.test_iter:
        tests = [param.net_param if param.HasField("net_param") else param.net] * len(param.test_iter)
    if len(param.test_iter) != len(tests):
        raise SolverError(f"{len(tests)} test nets but {len(param.test_iter)} test_iter values")
    return train, tests


class Solver:
    """Caffe's Solver::Solve / Step on CaffeNets. log(line) receives Caffe-style
    display lines (default: the `ssdh_port` logger); on_iteration(record) a dict
    per displayed iteration."""

    def __init__(self, param, device="cpu", log=None, on_iteration=None, on_test=None, amp=False,
                 channels_last=False, tf32=False, prefetch=None, ranks=None, compile=False):
        self.param = param
        self.device = torch.device(device)
        # One rank of a multi-process run (ssdh_port.caffe.parallel): Caffe's rules.
        self.ranks = ranks or distributed.Ranks()
        if not self.ranks.root:
            log = on_iteration = on_test = None
        # Opt-in speed modes for the GPU's tensor cores, off by default for Caffe
        # fidelity: bf16 autocast of the training forward passes (weights, their
        # gradients and the update stay float32), channels_last layout, and TF32
        # for the float32 convolutions (on a GPU, inside step() and test_all() only).
        self.amp = bool(amp)
        self.channels_last = bool(channels_last)
        self.tf32 = bool(tf32)
        self.log = (log or logger.info) if self.ranks.root else (lambda line: None)
        self.on_iteration = on_iteration or (lambda record: None)
        self.on_test = on_test or (lambda record: None)
        if param.random_seed >= 0:
            # Caffe::set_random_seed: the solver's random_seed seeds the process's
            # generators (Caffe's are process-wide too); only when the solver sets it.
            torch.manual_seed(param.random_seed)
            np.random.seed(param.random_seed % 2**32)
        train_def, test_defs = resolve_nets(param)
        train_state = param.train_state if param.HasField("train_state") else None
        self.net = CaffeNet(train_def, phase="TRAIN",
                            stages=tuple(train_state.stage) if train_state else (),
                            level=train_state.level if train_state else 0).to(self.device)
        self.test_nets = []
        for k, definition in enumerate(test_defs):
            state = param.test_state[k] if k < len(param.test_state) else None
            net = CaffeNet(definition, phase="TEST", stages=tuple(state.stage) if state else (),
                           level=state.level if state else 0)
            share_weights(self.net, net)
            self.test_nets.append(net.to(self.device))
        # Data layers read ahead on a GPU (Caffe's prefetch threads), where the
        # reads would otherwise leave it idle; the batches do not change.
        prefetch = (3 if self.device.type == "cuda" else 0) if prefetch is None else int(prefetch)
        for net in [self.net] + self.test_nets:
            net.use_channels_last(self.channels_last)
            if prefetch:
                net.start_prefetch(prefetch)
        self._seed_data_layers()
        # Opt-in torch.compile of the TRAIN net's layers (the data layers stay eager);
        # the trajectory is the eager one to float tolerance (CaffeNet.compile_layers).
        if compile:
            self.net.compile_layers()
        else:
            # Caffe's diffs: the large weight gradients are added into memory kept
            # from one iteration to the next (cleared in _step), not allocated anew.
            self.net.accumulate_diffs()
        self.params = learnable_params(self.net)
        if self.ranks.world > 1:
            for module in self.net.layers:
                if hasattr(module, "shard"):
                    module.shard(self.ranks.rank, self.ranks.world)
            distributed.broadcast_parameters([lp.tensor for lp in self.params])
        self.rate = LearningRate(param)
        self.updater = Updater(param)
        self.iter = 0
        self.losses = collections.deque(maxlen=max(1, param.average_loss))
        self.requested_action, self.stopped_early = None, False

    def _seed_data_layers(self):
        if self.param.random_seed < 0:
            return
        for net_index, net in enumerate([self.net] + self.test_nets):
            for layer_index, module in enumerate(net.layers):
                if hasattr(module, "reseed"):
                    # Each rank draws its own crops and mirrors.
                    module.reseed(self.param.random_seed + 1000 * net_index + layer_index
                                  + 7919 * self.ranks.rank)

    # ------------------------------------------------------------ training

    def forward_backward(self):
        total = 0.0
        outputs = None
        for _ in range(self.param.iter_size):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.net()
            if out.loss is None:
                raise SolverError("the TRAIN net has no loss (no loss layer or loss_weight)")
            out.loss.backward()
            total += float(out.loss.detach())
            outputs = out
        return total / self.param.iter_size, outputs

    def _divergence(self, loss, outputs):
        bad = [name for name in self.net.output_names
               if not bool(torch.isfinite(outputs[name].detach()).all())]
        return (f"iteration {self.iter}: the loss is {loss} (non-finite: {bad or 'the total'}); "
                "training stopped, no update applied and the last snapshot kept")

    def apply_update(self):
        rate = self.rate(self.iter)
        if self.param.display and self.iter % self.param.display == 0:
            self.log(f"Iteration {self.iter}, lr = {rate:g}")
        grads = [lp.tensor.grad if lp.tensor.grad is not None else torch.zeros_like(lp.tensor)
                 for lp in self.params]
        grads = clip_gradients(grads, self.param.clip_gradients)
        if self.param.iter_size > 1:
            grads = [grad / self.param.iter_size for grad in grads]
        self.updater.update_all(self.params, grads, rate, self.iter)
        return rate

    def _clear_diffs(self):
        """Caffe's ClearParamDiffs: every gradient set to zero in place (a blob that
        has none yet gets its first from autograd)."""
        grads = [lp.tensor.grad for lp in self.params if lp.tensor.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    def _precision(self):
        return tf32_mode(self.tf32) if self.device.type == "cuda" else contextlib.nullcontext()

    def step(self, iters):
        """Run iters iterations (tests, display and snapshots as configured)."""
        with self._precision():
            self._step(iters)

    def _step(self, iters):
        stop = self.iter + iters
        while self.iter < stop:
            self._clear_diffs()
            p = self.param
            if p.test_interval and self.iter % p.test_interval == 0 and (
                    self.iter > 0 or p.test_initialization):
                self.test_all()
            loss, outputs = self.forward_backward()
            finite = math.isfinite(loss)
            if self.ranks.world > 1:
                finite = not distributed.agree(not finite)  # a divergence anywhere stops every rank
            if not finite:
                raise SolverError(self._divergence(loss, outputs))
            if self.ranks.world > 1:
                distributed.average_gradients([lp.tensor for lp in self.params], self.ranks.world)
            self.losses.append(loss)
            smoothed = sum(self.losses) / len(self.losses)
            displayed = p.display and self.iter % p.display == 0
            if displayed:
                self.log(f"Iteration {self.iter}, loss = {smoothed:g}")
                self._log_outputs("Train", self.net, {n: outputs[n] for n in self.net.output_names})
            rate = self.apply_update()
            self.on_iteration({"iter": self.iter, "loss": loss, "smoothed_loss": smoothed,
                               "lr": rate, "outputs": _scalars(outputs, self.net.output_names)})
            # This iteration's blobs go before the next forward makes its own (two sets
            # alive would double the memory the allocator has to find each step).
            del outputs
            self.iter += 1
            if p.snapshot and self.iter % p.snapshot == 0:
                self.snapshot()
            # A signal's request takes effect at the end of the iteration, as in Caffe;
            # the ranks agree on it (a stop outranks a snapshot).
            action, self.requested_action = self.requested_action, None
            if self.ranks.world > 1:
                action = [None, "snapshot", "stop"][distributed.agree({"snapshot": 1, "stop": 2}.get(action, 0))]
            if action == "snapshot":
                self.snapshot()
            elif action == "stop":
                self.stopped_early = True
                return

    def request(self, action):
        """Ask for "snapshot" or "stop" at the end of the current iteration (what
        Caffe's signal handlers do; safe to call from a signal handler)."""
        if action not in ("snapshot", "stop", "none"):
            raise SolverError(f"requested action must be snapshot, stop or none, got {action!r}")
        if action != "none" and self.requested_action != "stop":
            self.requested_action = action

    def solve(self, progress=None):
        p = self.param
        while self.iter < p.max_iter and not self.stopped_early:
            chunk = min(max(1, p.display or 1), p.max_iter - self.iter)
            self.step(chunk)
            if progress:
                progress(self.iter, p.max_iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.stopped_early:
            self.log("Optimization stopped early.")
            return
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        self.log("Optimization Done.")

    # ------------------------------------------------------------ testing

    def test_all(self):
        with self._precision():
            return self._test_all()

    @torch.no_grad()
    def _test_all(self):
        results = []
        if not self.ranks.root:
            return results  # only rank 0 tests, as Caffe's root solver
        for k, net in enumerate(self.test_nets):
            sums = collections.OrderedDict()
            for _ in range(self.param.test_iter[k]):
                out = net()
                for name in net.output_names:
                    value = out[name].detach().double().cpu().reshape(-1)
                    sums[name] = sums[name] + value if name in sums else value
            means = {name: (v / self.param.test_iter[k]) for name, v in sums.items()}
            self.log(f"Iteration {self.iter}, Testing net (#{k})")
            self._log_outputs("Test", net, means)
            record = {"iter": self.iter, "net": k,
                      "outputs": {n: v.tolist() if v.numel() > 1 else float(v) for n, v in means.items()}}
            self.on_test(record)
            results.append(record)
        return results

    def _log_outputs(self, kind, net, values):
        index = 0
        for name, value in values.items():
            flat = value.detach().double().cpu().reshape(-1)
            weight = net.blob_loss_weight(name)
            for v in flat.tolist():
                line = f"    {kind} net output #{index}: {name} = {v:g}"
                if weight:
                    line += f" (* {weight:g} = {weight * v:g} loss)"
                self.log(line)
                index += 1

    # ------------------------------------------------------------ snapshots

    def snapshot_paths(self):
        prefix = self.param.snapshot_prefix or "snapshot"
        base = f"{prefix}_iter_{self.iter}"
        return base + ".caffemodel", base + ".solverstate", base + ".pt"

    def snapshot(self):
        """<prefix>_iter_<N>.caffemodel and .solverstate (as Caffe writes them) and .pt,
        written as a set: each to a temporary file (fsync'd), all three renamed into
        place, then the record <prefix>_latest naming the set, so that a kill at
        any moment leaves the previous complete set as the latest one."""
        model_path, state_path, pt_path = self.snapshot_paths()
        if not self.ranks.root:
            return model_path, state_path, pt_path  # only rank 0 writes them
        state = pb.SolverState(iter=self.iter, learned_net=model_path,
                               current_step=self.rate.current_step)
        for lp in self.params:
            state.history.add().CopyFrom(caffe_io.array_to_blob(lp.history[0].detach().cpu().numpy()))
        if self.updater.kind in ("AdaDelta", "Adam"):
            for lp in self.params:
                state.history.add().CopyFrom(caffe_io.array_to_blob(lp.history[1].detach().cpu().numpy()))
        payload = {"iter": self.iter, "current_step": self.rate.current_step,
                   "params": {lp.key: lp.tensor.detach().cpu() for lp in self.params},
                   "history": {lp.key: [h.cpu() for h in lp.history] for lp in self.params},
                   "torch_rng": torch.get_rng_state(), "numpy_rng": _numpy_state(),
                   "data_rng": self._data_rng_states(), "data_position": self._data_positions(),
                   "losses": list(self.losses)}
        with snapshot_set(self.param.snapshot_prefix or "snapshot", self.iter) as temp:
            with temp(model_path) as f:
                self.net.write_caffemodel(f)
            with temp(state_path) as f:
                f.write(state.SerializeToString())
            with temp(pt_path) as f:
                torch.save(payload, f)
        self.log(f"Snapshotting to binary proto file {model_path}")
        self.log(f"Snapshotting solver state to binary proto file {state_path}")
        return model_path, state_path, pt_path

    def _data_positions(self):
        return {f"{i}/{m.name}": m.data_state()
                for i, net in enumerate([self.net] + self.test_nets)
                for m in net.layers if hasattr(m, "data_state")}

    def _data_rng_states(self):
        return {f"{i}/{m.name}": m.transformer.rng.bit_generator.state
                for i, net in enumerate([self.net] + self.test_nets)
                for m in net.layers if hasattr(m, "transformer")}

    def restore(self, path):
        """Resume from a .solverstate (Caffe) or .pt snapshot (adds the RNG states)."""
        path = resolve_snapshot(path, self.param.snapshot_prefix or "snapshot")
        if path.endswith(".pt"):
            payload = read_pt_snapshot(path)
            missing = [lp.key for lp in self.params if lp.key not in payload["params"]]
            if missing:
                raise SolverError(f"{path}: the snapshot has no blobs for {missing[:4]} (another net?)")
            with torch.no_grad():
                for lp in self.params:
                    saved = payload["params"][lp.key]
                    if tuple(saved.shape) != tuple(lp.tensor.shape):
                        raise SolverError(f"{path}: blob {lp.key} has shape {tuple(saved.shape)}, the net's "
                                          f"{tuple(lp.tensor.shape)}")
                    lp.tensor.copy_(saved)
                    for h, saved in zip(lp.history, payload["history"][lp.key]):
                        h.copy_(saved)
            torch.set_rng_state(payload["torch_rng"])
            _set_numpy_state(payload["numpy_rng"])
            states = payload.get("data_rng", {})
            positions = payload.get("data_position", {})
            for i, net in enumerate([self.net] + self.test_nets):
                for m in net.layers:
                    if hasattr(m, "transformer") and f"{i}/{m.name}" in states:
                        m.transformer.rng.bit_generator.state = states[f"{i}/{m.name}"]
                    if hasattr(m, "load_data_state") and f"{i}/{m.name}" in positions:
                        m.load_data_state(positions[f"{i}/{m.name}"])
            self.losses.extend(payload.get("losses", []))
            self.iter, self.rate.current_step = payload["iter"], payload["current_step"]
            return
        state = caffe_io.read_binary_proto(path, pb.SolverState(), "solverstate (SolverState)")
        if state.learned_net:
            learned = state.learned_net
            if not os.path.exists(learned):
                learned = os.path.join(os.path.dirname(path), os.path.basename(learned))
            self.net.copy_from(learned)
        histories = [caffe_io.blob_to_array(b) for b in state.history]
        per_param = len(histories) // max(1, len(self.params))
        if per_param not in (1, 2) or len(histories) != per_param * len(self.params):
            raise SolverError(f"{path}: {len(histories)} history blobs for {len(self.params)} parameters")
        with torch.no_grad():
            for slot in range(per_param):
                for lp, array in zip(self.params, histories[slot * len(self.params):]):
                    lp.history[slot].copy_(torch.from_numpy(array).reshape(lp.tensor.shape))
        self.iter, self.rate.current_step = state.iter, state.current_step


def _numpy_state():
    """NumPy's global RNG state with its key array as a tensor (a .pt that
    torch.load(weights_only=True) reads)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)]


def _set_numpy_state(state):
    name, keys, position, has_gauss, cached = state
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), int(position), int(has_gauss), float(cached)))


def read_pt_snapshot(path):
    """A training snapshot .pt (weights, histories, RNG states, data positions);
    an unreadable file is a SolverError that names it."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SolverError(f"{path}: no such snapshot") from None
    except Exception:  # noqa: BLE001 - any unreadable file is reported the same way
        raise SolverError(f"{path}: not a readable training snapshot: {pt_problem(path)}") from None
    if not isinstance(payload, dict) or not {"params", "history", "iter"} <= set(payload):
        raise SolverError(f"{path}: not a training snapshot (.pt weights go to --weights)")
    return payload


@contextlib.contextmanager
def snapshot_set(prefix, iteration):
    """Write a snapshot set atomically: yields temp(path) -> an open temporary
    file (fileio's one naming scheme) to write path's content to; on success
    every file is fsync'd and renamed into place, then <prefix>_latest records the
    set, by names relative to the record (a run folder can be moved or copied).
    On failure the temporaries go."""
    temporaries = {}

    def temp(path):
        fd, temporaries[path] = temporary_beside(path)
        return os.fdopen(fd, "wb")

    try:
        yield temp
        for final, partial in temporaries.items():
            with open(partial, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(partial, 0o666 & ~_umask())
        for final, partial in temporaries.items():
            os.replace(partial, final)
        folder = os.path.dirname(os.path.abspath(prefix))
        record = {"iter": iteration,
                  "files": sorted(os.path.relpath(os.path.abspath(p), folder) for p in temporaries)}
        with caffe_io.atomic_write(prefix + "_latest", "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_folder(folder)
    except BaseException:
        for partial in temporaries.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder):
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temporaries(prefix):
    """Temporary files of snapshot sets (and of their _latest record) that a
    killed run left beside the prefix; returns the paths removed."""
    folder, base = os.path.split(os.path.abspath(prefix))
    removed = []
    for path in stale_temporaries(folder, f"{base}_iter_") + stale_temporaries(folder, f"{base}_latest."):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed


def resolve_snapshot(path, prefix):
    """"latest" (the solver's <prefix>_latest record), a folder (its one *_latest
    record), a record file, or a snapshot path -> the snapshot to resume from (the
    .pt of the set, which is exact, else its .solverstate)."""
    record = None
    if path == "latest":
        record = prefix + "_latest"
    elif os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith("_latest"))
        if len(found) != 1:
            raise SolverError(f"{path}: expected one *_latest snapshot record, found {found or 'none'}")
        record = os.path.join(path, found[0])
    elif path.endswith("_latest"):
        record = path
    if record is None:
        return path
    try:
        with open(record) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as err:
        raise SolverError(f"{record}: no readable snapshot record ({err})") from None
    # Names relative to the record's folder (older records hold absolute paths).
    files = [os.path.join(os.path.dirname(os.path.abspath(record)), name) for name in files]
    for suffix in (".pt", ".solverstate"):
        for name in files:
            if name.endswith(suffix) and os.path.isfile(name):
                return name
    raise SolverError(f"{record}: the snapshot set it names is gone ({files})")


def _scalars(outputs, names):
    result = {}
    for name in names:
        value = outputs[name].detach()
        result[name] = float(value) if value.numel() == 1 else value.double().mean().item()
    return result


def read_solver(path):
    """SolverParameter from a Caffe solver.prototxt or a solver.yaml (the same
    field names; enum values as names, repeated fields as lists)."""
    path = os.fspath(path)
    if path.endswith((".yaml", ".yml")):
        import yaml
        from google.protobuf import json_format

        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except OSError as err:
            raise caffe_io.CaffeFileError(f"{path}: cannot read ({err.strerror})") from None
        except yaml.YAMLError as err:
            raise caffe_io.CaffeFileError(f"{path}: malformed YAML: {err}") from None
        if not isinstance(data, dict):
            raise caffe_io.CaffeFileError(f"{path}: a solver.yaml holds a mapping of SolverParameter fields")
        unknown = [key for key in data if key not in pb.SolverParameter.DESCRIPTOR.fields_by_name]
        if unknown:
            raise caffe_io.CaffeFileError(f"{path}: {unknown_solver_field(unknown[0])}")
        try:
            return json_format.ParseDict(data, pb.SolverParameter())
        except json_format.ParseError as err:
            raise caffe_io.CaffeFileError(f"{path}: {err}") from None
    try:
        return caffe_io.read_solver_prototxt(path)
    except caffe_io.CaffeFileError as err:
        match = re.search(r'has no field named "([^"]+)"', str(err))
        if match:
            raise caffe_io.CaffeFileError(f"{err}; {unknown_solver_field(match.group(1))}") from None
        raise


def unknown_solver_field(name):
    """'unknown solver field X' with the nearest valid SolverParameter field."""
    import difflib

    valid = list(pb.SolverParameter.DESCRIPTOR.fields_by_name)
    near = difflib.get_close_matches(name, valid, n=1, cutoff=0.0)
    return f"unknown solver field '{name}' (did you mean '{near[0]}'?)"
