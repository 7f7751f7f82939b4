"""The Caffe solver: update rules and lr policies against hand-written Caffe
formulas, and a 12-iteration run against real Caffe's trajectory
(../shared/data/caffe-oracle/e_solver)."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from ssdh_port import allocator
from ssdh_port.caffe.net import load_weights
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.caffe.solver import LearnableParam, LearningRate, Solver, SolverError, Updater, read_solver
from tests.shared_data import ROOT, needs_shared, oracle


def _param(**fields):
    p = pb.SolverParameter()
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(p, key).extend(value)
        else:
            setattr(p, key, value)
    return p


@pytest.mark.parametrize("policy, fields, expected", [
    ("fixed", {}, lambda it: 0.1),
    ("step", {"gamma": 0.5, "stepsize": 3}, lambda it: 0.1 * 0.5 ** (it // 3)),
    ("exp", {"gamma": 0.9}, lambda it: 0.1 * 0.9 ** it),
    ("inv", {"gamma": 0.01, "power": 0.75}, lambda it: 0.1 * (1 + 0.01 * it) ** -0.75),
    ("multistep", {"gamma": 0.1, "stepvalue": [2, 5]},
     lambda it: 0.1 * 0.1 ** (0 if it < 2 else 1 if it < 5 else 2)),
    ("poly", {"power": 2.0, "max_iter": 10}, lambda it: 0.1 * (1 - it / 10) ** 2),
    ("sigmoid", {"gamma": -0.5, "stepsize": 4}, lambda it: 0.1 / (1 + math.exp(0.5 * (it - 4)))),
])
def test_lr_policies(policy, fields, expected):
    rate = LearningRate(_param(base_lr=0.1, lr_policy=policy, **fields))
    for it in range(10):
        assert rate(it) == pytest.approx(expected(it), rel=1e-6)


def _run_updates(kind, steps=3, **fields):
    """Our updater over a fixed gradient sequence, and the same by Caffe's formulas."""
    p = _param(type=kind, weight_decay=0.01, momentum=0.9, **fields)
    w0 = np.array([0.5, -1.0, 2.0])
    grads = [np.array([0.1, 0.2, -0.3]), np.array([-0.2, 0.05, 0.1]), np.array([0.3, -0.1, 0.2])]
    lp = LearnableParam("ip", 0, torch.tensor(w0.copy()), lr_mult=2.0, decay_mult=0.5)
    updater = Updater(p)
    for it in range(steps):
        updater(lp, torch.tensor(grads[it]), 0.1, it)
    return lp.tensor.numpy(), w0, grads


def _caffe_reference(kind, w0, grads, steps, p):
    w = w0.copy()
    h = np.zeros(3)
    h2 = np.zeros(3)
    rate, decay = 0.1 * 2.0, 0.01 * 0.5
    for it in range(steps):
        g = grads[it] + decay * w
        if kind == "SGD":
            h = 0.9 * h + rate * g
            upd = h
        elif kind == "Nesterov":
            prev = h.copy()
            h = 0.9 * h + rate * g
            upd = 1.9 * h - 0.9 * prev
        elif kind == "AdaGrad":
            h += g * g
            upd = rate * g / (np.sqrt(h) + p["delta"])
        elif kind == "RMSProp":
            h = p["rms_decay"] * h + (1 - p["rms_decay"]) * g * g
            upd = rate * g / (np.sqrt(h) + p["delta"])
        elif kind == "AdaDelta":
            h = 0.9 * h + 0.1 * g * g
            step = g * np.sqrt(h2 + p["delta"]) / np.sqrt(h + p["delta"])
            h2 = 0.9 * h2 + 0.1 * step * step
            upd = rate * step
        else:
            h = 0.9 * h + 0.1 * g
            h2 = p["momentum2"] * h2 + (1 - p["momentum2"]) * g * g
            t = it + 1
            upd = rate * math.sqrt(1 - p["momentum2"] ** t) / (1 - 0.9 ** t) * h / (np.sqrt(h2) + p["delta"])
        w = w - upd
    return w


@pytest.mark.parametrize("kind", ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_update_rules(kind):
    extra = {"delta": 1e-6, "rms_decay": 0.95, "momentum2": 0.99}
    fields = {k: v for k, v in extra.items() if k in ("delta",) or kind in ("RMSProp", "Adam")}
    ours, w0, grads = _run_updates(kind, **fields)
    reference = _caffe_reference(kind, w0, grads, 3, {**{"delta": 1e-6, "rms_decay": 0.95,
                                                         "momentum2": 0.99}, **fields})
    np.testing.assert_allclose(ours, reference, rtol=1e-6)


def test_sgd_keeps_the_rate_inside_the_history():
    # With a rate change, Caffe's v = m v + lr g differs from torch's v = m v + g; w -= lr v.
    lp = LearnableParam("ip", 0, torch.tensor([1.0]))
    updater = Updater(_param(momentum=0.9))
    updater(lp, torch.tensor([1.0]), 1.0, 0)
    updater(lp, torch.tensor([1.0]), 0.1, 1)
    assert lp.tensor.item() == pytest.approx(1.0 - 1.0 - (0.9 * 1.0 + 0.1))


def test_l1_regularisation_and_bad_fields():
    lp = LearnableParam("ip", 0, torch.tensor([2.0, -3.0]))
    Updater(_param(weight_decay=0.5, regularization_type="L1"))(lp, torch.zeros(2), 1.0, 0)
    np.testing.assert_allclose(lp.tensor.numpy(), [1.5, -2.5])
    with pytest.raises(SolverError, match="regularization_type must be L1 or L2"):
        Updater(_param(regularization_type="L3"))
    with pytest.raises(SolverError, match="solver type must be one of"):
        Updater(_param(type="LBFGS"))
    with pytest.raises(SolverError, match="lr_policy must be one of"):
        LearningRate(_param(lr_policy="cosine"))


@pytest.fixture
def e_solver(tmp_path):
    target = tmp_path / "e_solver"
    shutil.copytree(oracle("e_solver"), target)
    for folder, _, files in os.walk(target):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    return target


def _solver_in(folder, monkeypatch, modes=None, **changes):
    monkeypatch.chdir(folder)
    param = read_solver("sgd_step/solver.prototxt")
    for key, value in changes.items():
        setattr(param, key, value)
    solver = Solver(param, log=lambda line: None, **(modes or {}))
    solver.net.copy_from("sgd_step/init.caffemodel")
    return solver


@needs_shared
def test_trajectory_matches_caffe_every_iteration(e_solver, monkeypatch):
    solver = _solver_in(e_solver, monkeypatch)
    trajectory = np.load("sgd_step/trajectory.npz")
    losses = json.load(open("sgd_step/losses.json"))["losses"]
    for it in range(1, 13):
        solver.step(1)
        for lp in solver.params:
            expected = trajectory[f"iter{it:02d}/param/{lp.key}"]
            np.testing.assert_allclose(lp.tensor.detach().numpy(), expected, rtol=1e-5, atol=1e-7)
    assert solver.iter == 12
    assert len(losses) == 12


@needs_shared
def test_channels_last_keeps_caffes_trajectory(e_solver, monkeypatch):
    solver = _solver_in(e_solver, monkeypatch, modes={"channels_last": True})
    conv = solver.net.layers[1].blobs[0]
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.shape[1] > 1
    trajectory = np.load("sgd_step/trajectory.npz")
    solver.step(12)
    for lp in solver.params:
        np.testing.assert_allclose(lp.tensor.detach().numpy(), trajectory[f"iter12/param/{lp.key}"],
                                   rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@needs_shared
def test_compiled_layers_keep_caffes_trajectory(e_solver, monkeypatch):
    """Solver(compile=True): torch.compile of the TRAIN net's layers, the same 12
    iterations as real Caffe; the net then returns its outputs only."""
    solver = _solver_in(e_solver, monkeypatch, modes={"compile": True})
    trajectory = np.load("sgd_step/trajectory.npz")
    losses = json.load(open("sgd_step/losses.json"))["losses"]
    seen = []
    solver.on_iteration = seen.append
    solver.step(12)
    assert solver.net._compiled is not None
    for lp in solver.params:
        np.testing.assert_allclose(lp.tensor.detach().numpy(), trajectory[f"iter12/param/{lp.key}"],
                                   rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose([r["loss"] for r in seen], [r["total_weighted_loss"] for r in losses], rtol=1e-5)
    assert set(solver.net().keys()) == set(solver.net.output_names)


@needs_shared
def test_bf16_autocast_stays_near_the_float32_run(e_solver, monkeypatch):
    exact = _solver_in(e_solver, monkeypatch)
    fast = _solver_in(e_solver, monkeypatch, modes={"amp": True, "channels_last": True})
    start = [lp.tensor.detach().clone() for lp in exact.params]
    exact.step(12)
    fast.step(12)
    for a, b, a0 in zip(exact.params, fast.params, start):
        assert b.tensor.dtype == torch.float32  # master weights stay float32
        change = (a.tensor - a0).abs().max()
        # bf16 keeps 8 bits of mantissa: the runs part by a small fraction of the change.
        assert (a.tensor - b.tensor).abs().max() <= 0.05 * change + 1e-6
    assert not torch.equal(exact.params[0].tensor, fast.params[0].tensor)  # autocast did act


@pytest.mark.slow
@needs_shared
def test_train_net_tool_reproduces_caffe(e_solver):
    script = os.path.join(ROOT, "tools", "train_net.py")
    result = subprocess.run([sys.executable, script, "sgd_step/solver.prototxt", "--weights",
                             "sgd_step/init.caffemodel"], cwd=e_solver, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # Caffe's own display line at the last iteration.
    assert "loss_forcing_binary = 0.341202 (* -0.0833333 = -0.0284335 loss)" in result.stdout
    final = load_weights(str(e_solver / "unused_iter_12.caffemodel"))
    trajectory = np.load(e_solver / "sgd_step" / "trajectory.npz")
    for layer, blobs in final.items():
        for i, blob in enumerate(blobs):
            np.testing.assert_allclose(blob, trajectory[f"iter12/param/{layer}/{i}"], rtol=1e-5, atol=1e-7)
    for suffix in (".solverstate", ".pt"):
        assert (e_solver / f"unused_iter_12{suffix}").exists()
    assert (e_solver / "train_log.jsonl").exists() and (e_solver / "train_loss.png").exists()


@needs_shared
@pytest.mark.parametrize("snapshot_kind", [".solverstate", ".pt"])
def test_resume_continues_the_same_run(e_solver, monkeypatch, snapshot_kind):
    straight = _solver_in(e_solver, monkeypatch)
    straight.step(12)
    first = _solver_in(e_solver, monkeypatch, snapshot_prefix="half")
    first.step(6)
    first.snapshot()
    resumed = _solver_in(e_solver, monkeypatch)
    resumed.restore(f"half_iter_6{snapshot_kind}")
    assert resumed.iter == 6
    resumed.step(6)
    for a, b in zip(straight.params, resumed.params):
        # Bit for bit on the CPU.
        assert torch.equal(a.tensor.detach(), b.tensor.detach())


@needs_shared
def test_iter_size_accumulates_like_a_larger_batch(e_solver, monkeypatch):
    whole = _solver_in(e_solver, monkeypatch)
    whole.step(2)
    text = open("train.prototxt").read().replace("batch_size: 8", "batch_size: 4").replace(
        "dim: 8 ", "dim: 4 ")
    open("train_half.prototxt", "w").write(text)
    param = read_solver("sgd_step/solver.prototxt")
    param.net = "train_half.prototxt"
    param.iter_size = 2
    halves = Solver(param, log=lambda line: None)
    halves.net.copy_from("sgd_step/init.caffemodel")
    halves.step(2)
    for a, b in zip(whole.params, halves.params):
        np.testing.assert_allclose(a.tensor.detach().numpy(), b.tensor.detach().numpy(), rtol=1e-5, atol=1e-7)


@needs_shared
def test_solver_yaml_equals_prototxt(e_solver, monkeypatch):
    monkeypatch.chdir(e_solver)
    (e_solver / "solver.yaml").write_text(
        "net: train.prototxt\ntype: SGD\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: step\n"
        "gamma: 0.1\nstepsize: 5\nweight_decay: 0.0005\nmax_iter: 12\nsolver_mode: CPU\n"
        "random_seed: 1701\nstepvalue: [3, 4]\n")
    from_yaml = read_solver("solver.yaml")
    from_proto = read_solver("sgd_step/solver.prototxt")
    for field in ("net", "base_lr", "momentum", "lr_policy", "gamma", "stepsize", "weight_decay",
                  "max_iter", "solver_mode", "random_seed"):
        assert getattr(from_yaml, field) == getattr(from_proto, field), field
    assert list(from_yaml.stepvalue) == [3, 4]
    (e_solver / "bad.yaml").write_text("base_lr: 0.1\nmomentun: 0.9\n")
    with pytest.raises(Exception, match="bad.yaml: unknown solver field 'momentun' .did you mean 'momentum'"):
        read_solver("bad.yaml")
    (e_solver / "bad.prototxt").write_text("base_lr: 0.1\nweight_decy: 0.1\n")
    with pytest.raises(Exception, match="bad.prototxt:2:.*did you mean 'weight_decay'"):
        read_solver("bad.prototxt")


@needs_shared
def test_divergence_stops_with_the_iteration_and_the_loss(e_solver, monkeypatch):
    solver = _solver_in(e_solver, monkeypatch, base_lr=1e6, snapshot_prefix="diverged")
    solver.step(1)
    solver.snapshot()
    with pytest.raises(SolverError, match=r"iteration \d+: the loss is (nan|inf)"):
        solver.step(20)
    assert os.path.exists("diverged_iter_1.caffemodel")
    assert solver.iter > 1 and solver.iter <= 21


def test_tf32_switch_sets_both_backends():
    from ssdh_port.precision import set_tf32

    conv, matmul = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    try:
        set_tf32(False)
        assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("ieee", "ieee")
        set_tf32(True)
        assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("tf32", "tf32")
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul


def _twelve_steps(folder, monkeypatch, kind, perturb):
    """12 iterations of the e_solver net with solver `kind`, each gradient given
    rounding-sized noise: perturb * max |g| * N(0, 1) per element (what a sum of
    terms computed in another order changes; absolute, so near-zero gradients
    get it too)."""
    fields = {"type": kind} if kind == "SGD" else {"type": kind, "momentum": 0.0, "base_lr": 0.001,
                                                   "delta": 1e-8, "rms_decay": 0.98}
    solver = _solver_in(folder, monkeypatch, **fields)
    update_all = solver.updater.update_all
    generator = torch.Generator().manual_seed(11)

    def noisy(lps, grads, rate, it):
        grads = [grad + torch.randn(grad.shape, generator=generator) * (perturb * float(grad.abs().max()))
                 for grad in grads]
        return update_all(lps, grads, rate, it)

    solver.updater.update_all = noisy
    solver.step(12)
    return {lp.key: lp.tensor.detach().clone() for lp in solver.params}


@needs_shared
def test_rmsprop_drift_is_float_noise_amplified(e_solver, monkeypatch):
    """RMSProp divides each gradient element by its own running RMS (+ delta):
    where a gradient is near zero (dead ReLU units, where Caffe's and our sums
    differ by rounding), noise of one float32 rounding in the gradients moves the
    weights by orders of magnitude more than under SGD. The update rule
    itself is Caffe's to float precision (test_update_rules, and the first update
    below)."""
    eps = 2.0 ** -23
    drift = {}
    for kind in ("SGD", "RMSProp"):
        base = _twelve_steps(e_solver, monkeypatch, kind, 0.0)
        moved = _twelve_steps(e_solver, monkeypatch, kind, eps)
        drift[kind] = max(float((base[k] - moved[k]).abs().max()) for k in base)
    # Measured: SGD 9e-8, RMSProp 1.5e-3 (the size of the drift seen against Caffe, 4e-4).
    assert drift["SGD"] < 1e-6
    assert drift["RMSProp"] > 1e-4 and drift["RMSProp"] > 1000 * drift["SGD"]
    # The first RMSProp update equals Caffe's formula in float64 on the same gradient.
    solver = _solver_in(e_solver, monkeypatch, type="RMSProp", momentum=0.0, base_lr=0.001, delta=1e-8,
                        rms_decay=0.98)
    solver.forward_backward()
    lp = solver.params[0]
    grad = lp.tensor.grad.double() + 5e-4 * lp.tensor.detach().double()
    h = (1 - 0.98) * grad * grad
    expected = 0.001 * lp.lr_mult * grad / (h.sqrt() + 1e-8)
    update = solver.updater(lp, lp.tensor.grad, 0.001, 0)
    torch.testing.assert_close(update.double(), expected, rtol=2e-6, atol=1e-9)


def test_freed_memory_is_kept_by_the_entry_point_not_the_solver(monkeypatch):
    """The glibc setting is process-wide: a command sets it once at its entry point
    (cli.run); constructing a Solver leaves it alone. Without glibc the call is a
    no-op that says False."""
    import platform

    from google.protobuf import text_format

    from ssdh_port import cli

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("library") or True)
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("entry") or True)
    param = _param(base_lr=0.1)
    text_format.Parse(
        'name: "n" layer { name: "x" type: "DummyData" top: "x" dummy_data_param { shape { dim: 2 dim: 3 } } } '
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 1 } } '
        'layer { name: "l" type: "EuclideanLoss" bottom: "y" bottom: "y" top: "l" }', param.net_param)
    Solver(param, log=lambda line: None)
    assert calls == []
    assert cli.run(lambda argv: 0, [], name="t") == 0
    assert calls == ["entry"]
    monkeypatch.undo()
    assert allocator.keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
