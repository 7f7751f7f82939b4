"""The layers of the project point one way (docs/DESIGN.md): generic utilities
and the hashing / model packages import nothing of Caffe's package; nothing
below the pipeline imports it; the service imports no training module, neither
in its source nor when it is loaded."""
import ast
import json
import os
import subprocess
import sys

import pytest

from tests.shared_data import ROOT

PACKAGE = os.path.join(ROOT, "ssdh_port")


def _modules(part):
    """Python files of ssdh_port/<part> (a package folder or one module)."""
    path = os.path.join(PACKAGE, part)
    if path.endswith(".py"):
        return [path]
    return [os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names
            if name.endswith(".py") and "proto" not in folder]


def _imports(path):
    """Every module a file imports, at any depth (function-level imports included)."""
    tree = ast.parse(open(path).read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args \
                and isinstance(node.args[0], ast.Constant):
            found.add(node.args[0].value)
    return found


def _violations(parts, forbidden):
    out = []
    for part in parts:
        for path in _modules(part):
            for name in _imports(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    out.append(f"{os.path.relpath(path, ROOT)} imports {name}")
    return sorted(out)


GENERIC = ("fileio.py", "distributed.py", "fillers.py", "device.py", "progress.py", "errors.py", "allocator.py",
           "precision.py", "ops.py")
TRAINING = ("ssdh_port.pipeline", "ssdh_port.caffe.solver", "ssdh_port.models", "ssdh_port.runner",
            "ssdh_port.trainer", "ssdh_port.spec", "ssdh_port.commands", "ssdh_port.allocator")


def test_generic_utilities_hashing_and_models_import_nothing_of_caffe():
    assert _violations(("hashing", "models") + GENERIC, ("ssdh_port.caffe",)) == []


def test_nothing_below_the_application_layer_imports_it():
    above = ("ssdh_port.pipeline", "ssdh_port.service", "ssdh_port.runner", "ssdh_port.trainer",
             "ssdh_port.spec", "ssdh_port.commands", "ssdh_port.cli")
    assert _violations(("caffe", "data", "hashing", "models") + GENERIC, above) == []


def test_the_service_imports_no_training_module_in_its_source():
    assert _violations(("service",), TRAINING) == []


def test_loading_the_service_loads_no_training_module():
    probe = ("import json, sys\n"
             "import ssdh_port.service\n"
             "from ssdh_port.service import ImageSearch, create_app, read_card, page  # noqa\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ssdh_port'))))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert "ssdh_port.service.server" in loaded and "ssdh_port.service.search" in loaded
    assert [m for m in loaded if any(m == t or m.startswith(t + ".") for t in TRAINING)] == []


def test_the_rules_see_a_violation(tmp_path):
    # The checker itself: a function-level import below the top is found.
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ssdh_port.caffe.io import atomic_write\n    return atomic_write\n")
    assert _imports(str(bad)) >= {"ssdh_port.caffe.io"}


@pytest.mark.parametrize("folder", ["tools", "experiments"])
def test_programs_import_the_library_never_each_other(folder):
    root = os.path.join(ROOT, folder)
    if not os.path.isdir(root):
        pytest.skip(f"no {folder}/")
    siblings = {name[:-3] for name in os.listdir(root) if name.endswith(".py")}
    bad = [f"{folder}/{name}: {m}" for name in sorted(os.listdir(root)) if name.endswith(".py")
           for m in _imports(os.path.join(root, name))
           if m.split(".")[0] in ({"tools", "experiments"} | (siblings - {"plain_nets", "legacy_server"}))]
    assert bad == []
