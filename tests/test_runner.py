"""Experiments as specs: reading, checking and setting a spec (ssdh_port.spec),
and the runner's variants, table, provenance, --only and --resume
(ssdh_port.runner) on a small dataset."""
import glob
import json
import os
import tomllib

import pytest

from ssdh_port import runner, spec
from ssdh_port.pipeline.recipe import recipe_dir
from ssdh_port.pipeline.registry import DATASETS
from ssdh_port.spec import SpecError
from tests.commands import ssdh
from tests.test_pipeline import _colour_cifar


def _write(tmp_path, text, name="x.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_every_shipped_spec_reads_and_names_what_exists():
    names = spec.shipped()
    assert {"mnist_demo", "mnist_table3", "multilabel", "cifar10_finetune", "cifar10_fast", "cifar10_fast_sweep",
            "cifar10_resnet18", "dnnh"} <= set(names)
    for name in names:
        loaded = spec.load(spec.find(name))
        assert loaded.name == name and loaded.title
        for variant, expanded in loaded.expanded():
            assert expanded.data.dataset in DATASETS, (name, variant)
            if expanded.model.kind == "caffe":
                assert os.path.isdir(recipe_dir(expanded.model.recipe)), (name, variant)
            else:
                assert expanded.model.arch in ("fastnet", "resnet18", "lenet"), (name, variant)
        # The spec as written beside a run reads back as the same spec.
        again = spec.from_dict(tomllib.loads(spec.to_toml(loaded)), source=name)
        assert again.to_dict() == loaded.to_dict()


@pytest.mark.parametrize("text, message", [
    ('[data]\ndataset = "mnist"\ncolour = 1\n', r"x.toml: \[data\]: unknown field\(s\) \['colour'\]"),
    ('[modle]\nbits = 1\n', r"x.toml: unknown section\(s\) or field\(s\) \['modle'\]"),
    ('[model]\nbits = "many"\n', r"x.toml: \[model\].bits: expected int, got 'many'"),
    ('[model]\nbits = true\n', r"x.toml: \[model\].bits: expected int, got True"),
    ('[[variants]]\nname = "a"\nset = {"model.bitz" = 3}\n', r"variant 'a': model.bitz: \[model\] has no field 'bitz'"),
    ('[[variants]]\nname = "a"\n[[variants]]\nname = "a"\n', r"x.toml: variant names repeat: \['a', 'a'\]"),
    ('name = \n', r"x.toml: not a valid spec file"),
    ('columns = [["p", "p"]]\n', r"x.toml: columns\[0\]: expected \[header, extra key, format\]"),
])
def test_spec_errors_name_the_file_and_the_field(tmp_path, text, message):
    with pytest.raises(SpecError, match=message):
        spec.load(_write(tmp_path, text))


def test_set_fields_by_dotted_name():
    demo = spec.load(spec.find("mnist_demo"))
    sets = spec.parse_sets(["model.bits=32", "model.solver.max_iter=20", "model.loss_weights=[1.0, 0.0, 0.0]",
                            "data.dir=/tmp/somewhere", "title=Hello"])
    changed = demo.with_fields(sets)
    assert (changed.model.bits, changed.model.solver["max_iter"], changed.model.solver["test_interval"]) == (32, 20, 1000)
    assert changed.model.loss_weights == [1.0, 0.0, 0.0] and changed.data.dir == "/tmp/somewhere"
    assert changed.title == "Hello" and demo.model.bits == 48  # the original is untouched
    assert runner.method_name(changed, None) == "LeNet-SSDH-32"
    # The command line wins over a variant's own setting of the same field, or of a table above it.
    table3 = spec.load(spec.find("mnist_table3")).with_fields({"model.bits": 16, "model.solver.max_iter": 50})
    assert {expanded.model.bits for _, expanded in table3.expanded()} == {16}
    assert {expanded.model.solver["max_iter"] for _, expanded in table3.expanded()} == {50}
    dnnh = spec.load(spec.find("dnnh")).with_fields({"model.train.epochs": 1.0})
    ssdh12 = next(expanded for variant, expanded in dnnh.expanded() if variant.name == "ssdh12")
    assert ssdh12.model.train == {"epochs": 1.0, "widths": "64,256,256", "tta": 1}
    again = spec.from_dict(tomllib.loads(spec.to_toml(table3)), source="written")
    assert {expanded.model.bits for _, expanded in again.expanded()} == {16}
    with pytest.raises(SpecError, match=r"--set model.bits: expected int, got 'x'"):
        demo.with_fields(spec.parse_sets(["model.bits=x"]))
    with pytest.raises(SpecError, match="expected FIELD=VALUE"):
        spec.parse_sets(["model.bits"])
    with pytest.raises(SpecError, match="no such field"):
        demo.with_fields({"bits": 3})
    with pytest.raises(SpecError, match="no such spec file, nor a shipped spec"):
        spec.find("no_such_experiment")


SMALL = """
name = "small"
title = "colour classes"
method = "{arch}-SSDH-{bits} {{{loss_weights}}}"
columns = [["epochs", "epochs", "{}"]]

[data]
dataset = "cifar10"
dir = "DATA"

[model]
kind = "torch"
arch = "fastnet"
bits = 16
train = {epochs = 3.0, batch_size = 128, widths = "16,32,32", tta = 0, precision = "fp32"}

[protocol]
metrics = ["curves"]

[[variants]]
name = "b16"
[[variants]]
name = "b8"
set = {"model.bits" = 8}
extra = {note = "shorter"}
"""


@pytest.mark.slow
def test_runner_runs_variants_writes_the_table_and_its_provenance(tmp_path):
    _colour_cifar(str(tmp_path / "data"))
    small = spec.load(_write(tmp_path, SMALL.replace("DATA", str(tmp_path / "data"))))
    result = runner.run(small, tmp_path / "out", argv=["ssdh", "run", "small"])
    assert [r.method for r in result.reports] == ["fastnet-SSDH-16 {1,1,1}", "fastnet-SSDH-8 {1,1,1}"]
    assert [r.bits for r in result.reports] == [16, 8] and result.reports[1].extra["note"] == "shorter"
    assert all(r.classification_accuracy > 0.5 and r.map_at_topk > 0.3 for r in result.reports), result.table
    assert "| epochs |" in result.table and (tmp_path / "out" / "table.md").read_text().startswith("# colour classes")
    for name in ("b16", "b8"):
        run_dir = tmp_path / "out" / "runs" / name
        assert os.path.getsize(run_dir / "retrieval_curves.png") > 5000 and (run_dir / "test.ssdh").exists()
        assert (run_dir / "test.ssdh.scores.npy").exists() and (run_dir / "report.json").exists()
    provenance = json.load(open(tmp_path / "out" / "provenance.json"))
    assert provenance["argv"] == ["ssdh", "run", "small"] and provenance["spec"]["model"]["bits"] == 16
    assert set(provenance["seconds"]["b8"]) >= {"prepare", "train", "encode", "evaluate", "wall"}
    assert provenance["commit"] is None or len(provenance["commit"].split("+")[0]) == 40
    assert spec.load(str(tmp_path / "out" / "spec.toml")).to_dict() == small.to_dict()
    readme = (tmp_path / "out" / "README.md").read_text()
    assert readme.startswith("# colour classes") and "Made by `ssdh run small` at commit" in readme

    # --only reruns a variant and keeps the other rows; --resume keeps what has run.
    before = json.load(open(tmp_path / "out" / "table.json"))["rows"][0]
    (tmp_path / "out" / "runs" / "b8" / "report.json").unlink()
    again = runner.run(small, tmp_path / "out", only=["b8"])
    rows = json.load(open(tmp_path / "out" / "table.json"))["rows"]
    assert [r["extra"]["variant"] for r in rows] == ["b16", "b8"] and rows[0] == before
    assert (tmp_path / "out" / "runs" / "b8" / "report.json").exists() and len(again.runs) == 1
    kept = runner.run(small, tmp_path / "out", resume=True)
    assert kept.seconds == {} and [r.map_at_topk for r in kept.reports] == [r["map_at_topk"] for r in rows]
    with pytest.raises(Exception, match=r"no variant\(s\) \['b99'\]"):
        runner.run(small, tmp_path / "out", only=["b99"])


def test_run_command_dry_run_and_errors(tmp_path):
    shown = ssdh("run", "mnist_table3", "--dry-run", "--set", "model.solver.max_iter=50")
    assert shown.returncode == 0, shown.stderr
    assert "max_iter\" = 50" in shown.stdout and "# variant lenet_ssdh12_p1:" in shown.stdout
    bad = ssdh("run", "mnist_demo", "--set", "model.bitz=3")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("ssdh run: --set model.bitz: ")
    missing = ssdh("run", str(tmp_path / "none.toml"))
    assert missing.returncode == 1 and "none.toml: no such spec file" in missing.stderr


def test_committed_results_readmes_are_made_from_their_tables_and_notes(tmp_path):
    """results/<experiment>/README.md is write_readme's output for the folder as committed."""
    import shutil

    from ssdh_port.pipeline.report import write_readme
    from tests.shared_data import ROOT

    readmes = sorted(glob.glob(os.path.join(ROOT, "results", "*", "README.md")))
    assert len(readmes) >= 7
    for readme in readmes:
        folder = os.path.dirname(readme)
        copy = tmp_path / os.path.basename(folder)
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("runs", "*.png", "*.jsonl", "*.ssdh*"))
        assert open(write_readme(str(copy))).read() == open(readme).read(), f"{readme} is not current"


def test_model_precision_reaches_the_caffe_solver_and_encoder(monkeypatch, tmp_path):
    """model.precision = "bf16": the Caffe path trains under autocast (the solver's
    amp) and encodes under it; fp32 by default; other values and the torch kind's
    own field are errors that say where to look."""
    import contextlib
    import types

    from ssdh_port.errors import SSDHError
    from ssdh_port.pipeline import encode, experiment, recipe, train

    seen = {}
    monkeypatch.setattr(recipe, "prepare_recipe", lambda *a, **k: types.SimpleNamespace(
        solver="solver.yaml", deploy="deploy.prototxt"))
    monkeypatch.setattr(train, "train_caffe", lambda solver, **k: seen.update(train=k) or types.SimpleNamespace(
        stopped_early=False, weights="w.caffemodel", seconds=1.0, iterations=1))

    def fake_encode_split(*a, **k):
        seen.setdefault("encode", []).append(k["precision"])
        raise RuntimeError("encoded")

    monkeypatch.setattr(encode, "encode_split", fake_encode_split)
    data = types.SimpleNamespace(sources={}, mean_file=None, arrays=None, encode={"test": "t", "train": "t"},
                                 transform=None)
    phases = lambda name: contextlib.nullcontext()  # noqa: E731
    for precision, amp in (("fp32", False), ("bf16", True)):
        seen.clear()
        s = spec.load(spec.find("mnist_demo")).with_fields({"model.precision": precision})
        with pytest.raises(RuntimeError, match="encoded"):
            experiment.train_and_encode(s, data, str(tmp_path), phases)
        assert seen["train"]["amp"] is amp and seen["encode"] == [precision]
    with pytest.raises(SSDHError, match=r"\[model\] precision 'fp16': expected fp32 or bf16"):
        experiment.train_and_encode(spec.load(spec.find("mnist_demo")).with_fields({"model.precision": "fp16"}), data,
                                    str(tmp_path), phases)
    torch_spec = spec.load(spec.find("cifar10_fast")).with_fields({"model.precision": "bf16"})
    with pytest.raises(SSDHError, match=r"model.train.precision \(model.precision is the Caffe path's\)"):
        experiment.train_and_encode(torch_spec, data, str(tmp_path), phases)
