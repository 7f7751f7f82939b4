"""The `ssdh` executable itself: each command answers --help in a process of its
own; the README's commands name real commands and options, its Python example
runs, its curl line is tested with the server (tests/test_server.py); a wheel
built from the tree carries the recipes, specs and demo data and works outside
the checkout."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ssdh_port.commands import COMMANDS
from ssdh_port.pipeline.report import read_table
from tests.commands import ssdh, ssdh_process
from tests.shared_data import ROOT

README = open(os.path.join(ROOT, "README.md")).read()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_answers_help_in_its_own_process(command):
    done = ssdh_process(command, "--help", timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: ssdh {command}") and "Traceback" not in done.stderr


def test_the_executable_lists_its_commands_and_refuses_unknown_ones():
    listed = subprocess.run([sys.executable, "-m", "ssdh_port"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 2 and all(f"  {name} " in listed.stdout for name in COMMANDS)
    unknown = subprocess.run([sys.executable, "-m", "ssdh_port", "trian"], capture_output=True, text=True,
                             timeout=120)
    assert unknown.returncode == 2 and unknown.stderr.startswith("ssdh: unknown command 'trian'")


def _readme_commands():
    """Every `ssdh COMMAND ...` the README shows (code spans and code blocks)."""
    spans = re.findall(r"`([^`\n]*)`", README) + re.findall(r"^    (.*)$", README, re.M)
    found = []
    for text in spans:
        for match in re.finditer(r"(?:^|\s|/)ssdh (\S+)((?: [^#|]*)?)", text):
            found.append((match.group(1), match.group(2)))
    return found


def test_readme_commands_name_real_commands_and_options():
    commands = _readme_commands()
    assert len(commands) >= 15
    helps = {}
    for name, rest in commands:
        name = name.rstrip(",`:")
        if name == "COMMAND":  # the placeholder of the usage lines
            continue
        assert name in COMMANDS, f"README names `ssdh {name}`, which is not a command"
        if name not in helps:
            helps[name] = ssdh(name, "--help").stdout
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
            assert flag in helps[name], f"README: `ssdh {name}` has no option {flag}"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    import cv2
    import torch

    from ssdh_port.caffe.net import CaffeNet
    from ssdh_port.data import mnist
    from ssdh_port.data.datasets import write_array_db

    code = README[README.index("```python\n") + len("```python\n"):]
    code = code[:code.index("```")]
    images, labels = mnist.load_split("test")
    write_array_db(tmp_path / "runs" / "mnist" / "train_lmdb", images[:120, None], labels[:120])
    shutil.copy(os.path.join(ROOT, "prototxt", "lenet_ssdh", "deploy.prototxt"), tmp_path / "deploy.prototxt")
    torch.manual_seed(0)
    CaffeNet(str(tmp_path / "deploy.prototxt")).save_caffemodel(str(tmp_path / "model.caffemodel"))
    cv2.imwrite(str(tmp_path / "q.png"), images[7])
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["ids"].shape == (5, 10) and np.array_equal(scope["ids"][:, 0].numpy(), np.arange(5))
    assert scope["hits"][0][0].id == 7 and scope["hits"][0][0].distance == 0


@pytest.mark.slow
def test_a_wheel_of_the_tree_works_outside_the_checkout(tmp_path):
    """The wheel (built without compiling: the compiled extension of this tree is added
    to the installed package as the wheel's build would) runs `ssdh` from a folder
    that is no checkout: the specs, recipes and MNIST files come from the package.
    The main job and the backbone comparison run there, end to end."""
    import ssdh_port

    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                            "-w", str(wheels), ROOT], capture_output=True, text=True, timeout=600,
                           env={**os.environ, "SSDH_NO_EXTENSION": "1"})
    assert built.returncode == 0, built.stderr[-3000:]
    wheel, = glob.glob(str(wheels / "ssdh_port-*.whl"))
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                                "--target", str(site), wheel], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    package = os.path.dirname(ssdh_port.__file__)
    for built_file in glob.glob(os.path.join(package, "_C*.so")) + [os.path.join(package, "_build_info.py")]:
        shutil.copy(built_file, site / "ssdh_port")
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "SSDH_PROGRESS": "0"}
    script = site / "bin" / "ssdh"
    assert script.exists() and "ssdh_port.commands" in script.read_text()

    def run(*args):
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=away,
                              env=env, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import ssdh_port; print(ssdh_port.__file__)"],
                           capture_output=True, text=True, cwd=away, env=env)
    assert where.stdout.startswith(str(site)), where
    dry = run("run", "mnist_table3", "--dry-run")
    assert dry.returncode == 0 and 'recipe = "lenet_ssdh"' in dry.stdout, dry.stderr
    # The main job from the wheel (short): its report, plots, the spec as run and the provenance.
    demo = run("demo", "--iterations", "20", "--bits", "12", "--solver-set", "test_iter=5", "--out-dir", "demo")
    assert demo.returncode == 0, demo.stderr[-3000:]
    report = read_table(away / "demo" / "report.json")[0]
    assert report.method == "LeNet-SSDH-12" and report.bits == 12 and report.topk == 1000
    assert 0 < report.map_at_topk <= 1 and 0 < report.classification_accuracy <= 1 and report.queries == 10000
    assert report.extra["iterations"] == 20 and "LeNet-SSDH-12: accuracy" in demo.stdout
    for name in ("train_loss.png", "retrieval_curves.png", "retrieval_examples.png"):
        assert os.path.getsize(away / "demo" / name) > 5000
        assert f"{name}: {away / 'demo' / name}" in demo.stdout
    solver = (away / "demo" / "solver.prototxt").read_text()
    assert "test_iter: 5" in solver and "max_iter: 20" in solver and "test_interval: 4" in solver
    provenance = json.load(open(away / "demo" / "provenance.json"))
    assert provenance["spec"]["model"]["bits"] == 12 and provenance["spec"]["model"]["solver"]["max_iter"] == 20
    assert set(provenance["seconds"][""]) >= {"prepare", "train", "encode", "evaluate", "wall"}
    assert "bits = 12" in (away / "demo" / "spec.toml").read_text()
    # The README's serve line after the demo (its folders as this run named them).
    line = re.search(r"ssdh serve --index runs/demo/train.ssdh --db runs/mnist/train_lmdb", README)
    assert line, "the README shows how to serve the demo's codes"
    served = subprocess.Popen([sys.executable, str(script), "serve", "--index", "demo/train.ssdh", "--db",
                               "runs/mnist/train_lmdb", "--port", "0"], cwd=away, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = served.stdout.readline()
        assert "serving 60000 items on http://127.0.0.1:" in first, (first, served.stderr.read())
        import urllib.request

        base = first.split(" on ")[1].strip()
        health = json.load(urllib.request.urlopen(base + "health", timeout=30))
        assert health["items"] == 60000 and health["bits"] == 12 and health["images"]
    finally:
        served.terminate()
        served.wait(30)
    bad = run("demo", "--solver-set", "test_itr=5")
    assert bad.returncode == 1 and "unknown solver field 'test_itr' (did you mean 'test_iter'?)" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    # The same run without the latent layer: same solver, a table of both accuracies.
    backbone = run("compare-backbone", "--run", "demo", "--name", "LeNet smoke", "--out-dir", "backbone")
    assert backbone.returncode == 0, backbone.stderr[-2000:]
    row = json.load(open(away / "backbone" / "table.json"))["rows"][0]
    assert row["name"] == "LeNet smoke" and row["iterations"] == 20
    assert 0 <= row["ssdh_accuracy"] <= 1 and 0 <= row["backbone_accuracy"] <= 1
    variant = (away / "backbone" / "runs" / "LeNet_smoke" / "train_val.prototxt").read_text()
    assert "latent" not in variant and 'bottom: "ip1"' in variant
    assert "| LeNet smoke | 20 |" in (away / "backbone" / "table.md").read_text()
