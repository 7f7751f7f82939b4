"""The `ssdh` executable itself: each command answers --help in a process of its
own; the README's commands name real commands and options, its Python example
runs, its curl line is tested with the server (tests/test_server.py); a wheel
built from the tree carries the recipes, specs and demo data and works outside
the checkout."""
import glob
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ssdh_port.commands import COMMANDS
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
    that is no checkout: the specs, recipes and MNIST files come from the package."""
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
    demo = run("demo", "--iterations", "2", "--bits", "8", "--solver-set", "test_iter=1", "--out-dir", "demo")
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (away / "demo" / "report.json").exists() and (away / "demo" / "retrieval_examples.png").exists()
    assert "LeNet-SSDH-8: accuracy" in demo.stdout
