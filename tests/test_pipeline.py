"""The pipeline layer: recipes for a run, the one report schema, the protocol row,
and the shape rules of tools/ and experiments/ (thin, importing the package only,
one-line errors)."""
import ast
import dataclasses
import glob
import json
import os
import sys

import numpy as np
import pytest
import torch

from ssdh_port import ops
from ssdh_port.caffe import io as caffe_io
from ssdh_port.data.db import DatumDBWriter
from ssdh_port.errors import SSDHError
from ssdh_port.hashing import evaluate
from ssdh_port.pipeline import (RetrievalReport, prepare_recipe, read_table, recipe_dir, retrieval_report,
                                solver_overrides, write_table)
from tests.commands import ssdh
from tests.shared_data import ROOT

COMMANDS_DIR = os.path.join(ROOT, "ssdh_port", "commands")


def test_every_command_is_registered_once_and_run_through_cli():
    """One table names every command module (Caffe's tools/caffe.cpp registry);
    each has main(argv) and a docstring whose first line is its description; the
    tools/ shims only hand a registered command to cli.run."""
    from ssdh_port.commands import COMMANDS, command_main

    modules = {name[:-3] for name in os.listdir(COMMANDS_DIR) if name.endswith(".py") and name != "__init__.py"}
    assert sorted(module for module, _ in COMMANDS.values()) == sorted(modules)
    for name in COMMANDS:
        main = command_main(name)
        assert callable(main) and sys.modules[main.__module__].__doc__.strip(), name
    for path in glob.glob(os.path.join(ROOT, "tools", "*.py")):
        text = open(path).read()
        assert "sys.path" not in text and "cli.run(command_main(" in text, path
        assert len([line for line in text.splitlines() if line.strip()]) < 15, f"{path} is more than a shim"


def test_tests_do_not_edit_sys_path():
    for path in glob.glob(os.path.join(ROOT, "tests", "*.py")):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Attribute) and node.attr in ("insert", "append", "extend"):
                target = node.value
                assert not (isinstance(target, ast.Attribute) and target.attr == "path"
                            and isinstance(target.value, ast.Name) and target.value.id == "sys"), path


def _random_codes(n, bits, seed):
    generator = torch.Generator().manual_seed(seed)
    return ops.pack_bits(torch.rand(n, bits, generator=generator))


def test_retrieval_report_is_the_protocol():
    query, db = _random_codes(40, 12, 0), _random_codes(300, 12, 1)
    q_labels, d_labels = np.arange(40) % 5, np.arange(300) % 5
    report = retrieval_report(query, db, q_labels, d_labels, method="m", bits=12, radius=3, topk=200,
                              classification_accuracy=0.5, extra={"p": 2})
    top = evaluate(query, db, q_labels, d_labels, topk=200, radius=3)
    whole = evaluate(query, db, q_labels, d_labels, topk=None)
    assert report.topk == 200 and report.map_at_topk == top["map"]
    assert report.map_whole_ranking == whole["map"] and report.radius == 3
    assert report.precision_within_radius == top["precision_within_radius"]
    assert report.precision_at == {str(k): float(top["precision_at_k"][k - 1]) for k in (100, 200)}
    assert (report.queries, report.database, report.extra) == (40, 300, {"p": 2})
    # topk=0 is the whole ranking: both mAPs are the same number.
    full = retrieval_report(query, db, q_labels, d_labels, method="m", topk=0)
    assert full.topk == 300 and full.map_at_topk == full.map_whole_ranking == whole["map"]


def test_results_table_round_trip_and_headers(tmp_path):
    a = RetrievalReport(method="A", bits=48, queries=10, database=100, topk=1000, map_at_topk=0.5,
                        map_whole_ranking=0.4, precision_at={"1000": 0.3}, radius=0,
                        precision_within_radius=0.2, extra={"acc": 0.25})
    b = RetrievalReport(method="l2", bits=None, queries=10, database=100, topk=1000, map_at_topk=0.1)
    text = write_table([a, b], str(tmp_path), title="T", extra_columns=(("acc.", "acc", "{:.1%}"),))
    assert "| method | bits | mAP@1000 | mAP (whole ranking) | P@1000 | P(r<=0) | acc. |" in text
    assert "| A | 48 | 50.00 | 40.00 | 30.00 | 20.00 | 25.0% |" in text
    assert "| l2 | - | 10.00 | - | - | - | - |" in text
    assert read_table(tmp_path / "table.json") == [a, b]
    assert (tmp_path / "table.md").read_text() == text
    payload = json.loads((tmp_path / "table.json").read_text())
    payload["rows"][0]["map_at_1000"] = 0.5
    (tmp_path / "bad.json").write_text(json.dumps(payload))
    with pytest.raises(SSDHError, match=r"\['map_at_1000'\] are not RetrievalReport fields"):
        read_table(tmp_path / "bad.json")


def test_committed_results_use_the_one_schema():
    tables = glob.glob(os.path.join(ROOT, "results", "**", "*.json"), recursive=True)
    checked = 0
    for path in tables:
        payload = json.load(open(path))
        if os.path.basename(path) in ("table.json", "report.json") or os.path.basename(path).startswith("eval_"):
            if payload.get("schema") == "ssdh_port.backbone/1":
                continue
            assert all(isinstance(r, RetrievalReport) for r in read_table(path)), path
            checked += 1
    assert checked >= 10


def test_prepare_recipe_points_every_data_layer_by_phase(tmp_path):
    recipe = prepare_recipe(recipe_dir("lenet_ssdh"), tmp_path / "run", bits=16, p=1, loss_weights=(1, 1, 0),
                            sources={"TRAIN": tmp_path / "tr", "TEST": tmp_path / "te"},
                            batch_size={"TRAIN": 32}, max_iter=7, test_interval=7)
    net = caffe_io.read_net_prototxt(recipe.train_val)
    data = {layer.include[0].phase: layer.data_param for layer in net.layer if layer.type == "Data"}
    assert data[0].source == str(tmp_path / "tr") and data[0].batch_size == 32
    assert data[1].source == str(tmp_path / "te") and data[1].batch_size == 100
    assert not any(layer.type == "K2_EuclideanLoss" for layer in net.layer)  # gamma = 0
    latent = next(layer for layer in net.layer if layer.name == "latent")
    assert latent.inner_product_param.num_output == 16
    deploy = caffe_io.read_net_prototxt(recipe.deploy)
    assert next(layer for layer in deploy.layer if layer.name == "latent").inner_product_param.num_output == 16
    assert recipe.max_iter == 7 and recipe.final_weights == str(tmp_path / "run" / "lenet_ssdh_iter_7.caffemodel")
    # HDF5Data of the multi-label recipe: its list files.
    multi = prepare_recipe(recipe_dir("lenet_ssdh_multilabel"), tmp_path / "ml",
                           sources={"TRAIN": tmp_path / "a.txt", "TEST": tmp_path / "b.txt"})
    sources = [layer.hdf5_data_param.source for layer in caffe_io.read_net_prototxt(multi.train_val).layer
               if layer.type == "HDF5Data"]
    assert sorted(sources) == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    with pytest.raises(SSDHError, match=r"data layer 'mnist' \(TEST\): no source given for phase TEST"):
        prepare_recipe(recipe_dir("lenet_ssdh"), tmp_path / "x", sources={"TRAIN": tmp_path / "tr"})
    with pytest.raises(SSDHError, match="recipe 'nope'"):
        recipe_dir("nope")
    assert recipe_dir("dnnh12").endswith("dnnh12")  # train.prototxt recipes (DNNH) too


def test_solver_overrides_are_typed():
    assert solver_overrides(["lr_policy=multistep", "stepvalue=20,30", "base_lr=0.5"]) == {
        "lr_policy": "multistep", "stepvalue": [20, 30], "base_lr": 0.5}
    with pytest.raises(SSDHError, match="expected FIELD=VALUE"):
        solver_overrides(["test_iter"])
    with pytest.raises(SSDHError, match=r"unknown solver field 'test_itr' \(did you mean 'test_iter'\?\)"):
        solver_overrides(["test_itr=5"])
    with pytest.raises(SSDHError, match="'x' is not a valid max_iter"):
        solver_overrides(["max_iter=x"])


def _run_tool(command, *args, cwd=None):
    return ssdh(command, *args, cwd=cwd)


def test_train_net_on_a_corrupt_record_is_one_line(tmp_path):
    with DatumDBWriter(str(tmp_path / "db")) as writer:
        for k in range(3):
            writer.put_raw(f"{k:08d}", b"\xff\xfe not a Datum")
    recipe = prepare_recipe(recipe_dir("lenet_ssdh"), tmp_path / "run",
                            sources={"TRAIN": tmp_path / "db", "TEST": tmp_path / "db"},
                            max_iter=2, test_interval=0, test_iter=[1])
    result = _run_tool("train", recipe.solver)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("ssdh train: ") and "db" in lines[-1]
    missing = _run_tool("extract", "--prototxt", recipe.deploy, "--input", tmp_path / "nodb",
                        "--blobs", "ip2", "--out", tmp_path / "f.npz")
    assert missing.returncode == 1 and missing.stderr.strip().splitlines()[-1].startswith("ssdh extract: ")
    assert "Traceback" not in missing.stderr and not (tmp_path / "f.npz").exists()


def test_extract_features_all_blobs_with_scalar_tops(tmp_path):
    """Losses and accuracies are one value per batch: a 1-D array of them."""
    from ssdh_port.data import mnist
    from ssdh_port.data.datasets import write_array_db

    images, labels = mnist.load_split("test")
    write_array_db(tmp_path / "db", images[:250, None], labels[:250])
    recipe = prepare_recipe(recipe_dir("lenet_ssdh"), tmp_path / "run",
                            sources={"TRAIN": tmp_path / "db", "TEST": tmp_path / "db"},
                            batch_size={"TEST": 50})
    result = _run_tool("extract", "--prototxt", recipe.train_val, "--blobs", "all",
                       "--iterations", "3", "--out", tmp_path / "all.npz")
    assert result.returncode == 0, result.stderr
    arrays = np.load(tmp_path / "all.npz")
    assert arrays["accuracy"].shape == (3,) and arrays["data"].shape == (150, 1, 28, 28)
    assert arrays["loss: classification-error"].shape == (3,) and arrays["latent_sigmoid"].shape == (150, 48)
    assert "one value per batch" in " ".join(_run_tool("extract", "--help").stdout.split())


def _colour_cifar(folder, n_train=1024, n_test=200):
    """32 x 32 images whose class sets their colour (plus noise): learnable in seconds."""
    from ssdh_port.data.datasets import write_array_db

    rng = np.random.default_rng(0)
    palette = rng.integers(30, 220, (10, 3))
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n)
        images = np.clip(palette[labels][:, :, None, None] + rng.normal(0, 40, (n, 3, 32, 32)), 0, 255)
        write_array_db(os.path.join(folder, f"{split}_lmdb_32"), images.astype(np.uint8), labels)


def _recipe(arch, tmp_path, **fields):
    from ssdh_port.pipeline import trainer

    data = str(tmp_path / "data")
    return trainer.recipe(arch, train_db=f"{data}/train_lmdb_32", test_db=f"{data}/test_lmdb_32",
                          out_dir=str(tmp_path / "run"), **fields)


def _protocol(result):
    report = retrieval_report(result.query.index.codes, result.database.index.codes, result.query.labels,
                              result.database.labels, method="x", bits=result.query.index.bits)
    return report.map_at_topk, result.query.accuracy("scores")


@pytest.mark.slow
def test_trainer_fastnet_learns_and_resumes(tmp_path):
    from ssdh_port.pipeline.trainer import feature_baselines, fit

    _colour_cifar(str(tmp_path / "data"))
    config = _recipe("fastnet", tmp_path, epochs=3, batch_size=128, widths="16,32,32", tta=1, precision="fp32",
                     bits=16)
    result = fit(config)
    history = [json.loads(line) for line in open(result.log)]
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"] and history == result.history
    map_at_topk, accuracy = _protocol(result)
    assert accuracy > 0.5 and map_at_topk > 0.3 and result.query.index.bits == 16
    assert len(result.query.index) == 200 and len(result.database.index) == 1024
    assert result.query.features["scores"].shape == (200, 10)
    assert set(result.seconds) == {"train", "encode", "wall"} and os.path.getsize(result.plot) > 5000
    # Resume from the last epoch's checkpoint: the log continues, nothing is redone.
    fit(dataclasses.replace(config, epochs=4, resume=str(tmp_path / "run" / "snapshot.pt")))
    assert [json.loads(line)["epoch"] for line in open(result.log)] == [1, 2, 3, 4]
    with pytest.raises(SSDHError, match="widths '1,2': expected three positive channel counts"):
        fit(dataclasses.replace(config, widths="1,2"))
    with pytest.raises(SSDHError, match="cutout 40: expected a square side from 0"):
        fit(dataclasses.replace(config, cutout=40))
    with pytest.raises(SSDHError, match="augment 'twist': expected one of"):
        fit(dataclasses.replace(config, augment="twist"))
    # The hash-function baselines on the same network's features.
    baselines = feature_baselines(result.weights)
    assert [r.method.split("-")[0] for r in baselines] == ["CCA", "ITQ", "LSH", "l2 on FastNet features (32 floats)"]
    assert all(0 <= r.map_at_topk <= 1 for r in baselines)


@pytest.mark.slow
def test_trainer_resnet18_learns_the_colour_classes(tmp_path):
    # ResNet-18-SSDH with its own recipe (plain SGD, warm-up, pad-crop-flip), narrow and short.
    from ssdh_port.device import describe
    from ssdh_port.pipeline.trainer import fit

    _colour_cifar(str(tmp_path / "data"))
    result = fit(_recipe("resnet18", tmp_path, bits=16, epochs=4, batch_size=64, width=8))
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4] and result.history[-1]["loss"] < result.history[0]["loss"]
    map_at_topk, accuracy = _protocol(result)
    assert accuracy > 0.5 and map_at_topk > 0.3
    assert result.extra["device"] == describe(torch.device("cpu")) and result.extra["train_images"] == 1024
    saved = torch.load(result.weights, weights_only=False)["config"]
    assert saved["width"] == 8 and saved["optimizer"] == "sgd" and saved["augment"] == "pad-crop-flip"


@pytest.mark.slow
def test_trainer_lenet_on_mnist_digits(tmp_path):
    # The registry's LeNet-SSDH on 1 x 28 x 28 images scaled by 1/256, no augmentation.
    from ssdh_port.data import mnist
    from ssdh_port.data.datasets import write_array_db
    from ssdh_port.pipeline import trainer

    images, labels = mnist.load_split("test")
    write_array_db(tmp_path / "train", images[:1000, None], labels[:1000])
    write_array_db(tmp_path / "test", images[1000:1200, None], labels[1000:1200])
    result = trainer.fit(trainer.recipe("lenet", train_db=str(tmp_path / "train"), test_db=str(tmp_path / "test"),
                                        out_dir=str(tmp_path / "run"), bits=16, epochs=6, lr=0.1))
    map_at_topk, accuracy = _protocol(result)
    assert accuracy > 0.6 and map_at_topk > 0.4
    with pytest.raises(SSDHError, match="FastNet-SSDH reads 3-channel images, not 1"):
        trainer.fit(trainer.recipe("fastnet", train_db=str(tmp_path / "train"), test_db=str(tmp_path / "test"),
                                   out_dir=str(tmp_path / "bad"), batch_size=100, epochs=1))


def test_lookahead_averages_weights_and_statistics():
    from torch import nn

    from ssdh_port.pipeline.trainer import Lookahead

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    lookahead = Lookahead(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()(torch.randn(8, 4))  # moves the running statistics
    moved = {k: v.clone() for k, v in model.state_dict().items()}
    lookahead.update(model, 0.75)
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.75 * start[name] + 0.25 * moved[name]), name
            assert torch.equal(value, lookahead.average[name])
        else:
            assert torch.equal(value, moved[name])  # num_batches_tracked is not averaged
    assert Lookahead.decay(0, 100) == 0 and abs(Lookahead.decay(100, 100) - 0.95 ** 5) < 1e-12


def test_cutout_erases_one_square_per_image():
    from ssdh_port.pipeline.trainer import cutout

    x = torch.ones(64, 3, 32, 32)
    out = cutout(x, 12, torch.Generator().manual_seed(0))
    erased = out[:, 0] == 0
    assert (erased.sum(dim=(1, 2)) == 144).all() and torch.equal(out[:, 0] == 0, out[:, 2] == 0)
    rows, cols = erased.any(dim=2), erased.any(dim=1)  # one contiguous 12-row and 12-column band each
    assert (rows.sum(1) == 12).all() and (cols.sum(1) == 12).all()
    assert len({tuple(r.nonzero()[0].tolist()) for r in rows}) > 5  # placed at random


@pytest.mark.slow
def test_trainer_lookahead_and_cutout_train_and_resume(tmp_path):
    from ssdh_port.pipeline.trainer import fit

    _colour_cifar(str(tmp_path / "data"))
    config = _recipe("fastnet", tmp_path, epochs=2, batch_size=128, widths="16,32,32", tta=0, precision="fp32",
                     bits=16, lookahead=True, cutout=8)
    result = fit(config)
    assert _protocol(result)[1] > 0.5
    assert result.extra["lookahead"] is True and result.extra["cutout"] == 8
    snapshot = torch.load(tmp_path / "run" / "snapshot.pt", weights_only=False)
    assert set(snapshot["lookahead"]) >= {"latent.linear.weight", "groups.0.norm1.running_mean"}
    fit(dataclasses.replace(config, epochs=3, resume=str(tmp_path / "run" / "snapshot.pt")))
    assert [json.loads(line)["epoch"] for line in open(result.log)] == [1, 2, 3]
    plain = dataclasses.replace(config, lookahead=False, out_dir=str(tmp_path / "plain"), epochs=1)
    fit(plain)
    with pytest.raises(SSDHError, match="no lookahead average"):
        fit(dataclasses.replace(config, epochs=2, resume=str(tmp_path / "plain" / "snapshot.pt")))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SSDHError, match="garbage.pt: not a checkpoint of this model"):
        fit(dataclasses.replace(config, resume=str(tmp_path / "garbage.pt")))


def test_pad_crop_flip_and_the_schedules():
    from ssdh_port.pipeline.trainer import learning_rate, pad_crop_flip

    batch = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    out = pad_crop_flip(batch, 4, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape
    # Each output is a 32 x 32 window of the reflect-padded image, mirrored or not.
    padded = torch.nn.functional.pad(batch, (4,) * 4, mode="reflect")
    for i in range(2):
        windows = [padded[i, :, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    rates = [learning_rate("warmup", 1.0, step, 100) for step in range(100)]
    assert rates[0] == pytest.approx(1 / 15) and max(rates) == pytest.approx(1.0)
    assert rates[14] == pytest.approx(1.0) and rates[-1] == pytest.approx(1 / 85)
    assert all(a <= b for a, b in zip(rates[:15], rates[1:15]))
    fast = [learning_rate("fast", 2.0, step, 100) for step in range(100)]
    assert fast[0] == pytest.approx(0.4) and fast[20] == pytest.approx(2.0) and fast[-1] == pytest.approx(2 / 80)


def test_retrieval_figures(tmp_path, caplog):
    import logging

    from ssdh_port.pipeline.plots import (pick_examples, retrieval_curves, retrieval_figure,
                                          retrieval_figure_examples, retrieval_picture, training_curves,
                                          training_figure)

    query, db = _random_codes(30, 12, 0), _random_codes(400, 12, 1)
    labels_q, labels_d = np.arange(30) % 4, np.arange(400) % 4
    ev = retrieval_report(query, db, labels_q, labels_d, method="SSDH-12", bits=12, topk=0, curves=True)
    references = {"LSH": np.array([[100, 0.2], [1000, 0.15]])}
    with caplog.at_level(logging.WARNING, logger="ssdh_port"):
        retrieval_curves([ev], references, tmp_path / "c.png")
    assert "measured on CIFAR-10 (a database of 50000 images)" in caplog.text and "400" in caplog.text
    assert os.path.getsize(tmp_path / "c.png") > 10000
    # One code length: two panels (no panel of text); precision axes from 0 to 1 (a flat curve looks flat).
    fig = retrieval_figure([ev], {})
    assert len(fig.axes) == 2 and all(ax.get_ylim() == (0, 1.02) for ax in fig.axes)

    # Examples: every class of the queries, its hardest query, ranks 1 .. 1000 that exist, failures marked.
    ids = np.tile(np.arange(12), (8, 1))
    db_labels = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    q_labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    ids[1] = [1, 3, 5, 7, 9, 11, 0, 2, 4, 6, 8, 10]  # query 1 (class 0): 3 of its 4 shown results wrong
    rows, ranks = pick_examples(q_labels, db_labels, ids)
    assert ranks == [1, 2, 3, 10] and sorted(q_labels[rows]) == [0, 1, 2] and 1 in rows
    images = np.zeros((12, 8, 8), np.uint8)
    fig = retrieval_figure_examples(images[rows], q_labels[rows], images, db_labels, ids[rows], ranks,
                                    distances=np.tile(np.arange(12), (len(rows), 1)))
    titles = [ax.get_title() for ax in fig.axes]
    assert "query: 2" in titles and "#10 d=9 (1)" in titles
    framed = [ax for ax in fig.axes if any(sp.get_visible() and sp.get_edgecolor()[:3] == (1.0, 0.0, 0.0)
                                           for sp in ax.spines.values())]
    assert len(framed) == sum(t.endswith(")") and t.startswith("#") for t in titles) > 0
    retrieval_picture(images[rows], q_labels[rows], images, db_labels, ids[rows], tmp_path / "p.png", ranks)

    # Training: one linear panel per curve, titles instead of legends; the test outputs apart.
    records = [{"iter": i, "smoothed_loss": 1.0 / (i + 1), "outputs": {"fire": 1e-4 * i, "bin": -0.1 + 0.01 * i}}
               for i in range(5)]
    tests = [{"iter": i, "outputs": {"accuracy": 0.5 + 0.1 * i, "loss": 0.01 / (i + 1)}} for i in (0, 4)]
    fig = training_figure(records, tests)
    drawn = [ax for ax in fig.axes if ax.lines]
    assert [ax.get_title() for ax in drawn] == ["train: total loss (smoothed)", "train: fire", "train: bin",
                                                "test: accuracy", "test: loss"]
    assert all(ax.get_yscale() == "linear" and ax.get_legend() is None for ax in drawn)
    training_curves(records, tests, tmp_path / "t.png")
    assert os.path.getsize(tmp_path / "p.png") > 2000 and os.path.getsize(tmp_path / "t.png") > 5000


def test_eval_retrieval_with_the_dnnh_metric(tmp_path):
    from ssdh_port.hashing import HammingIndex, dnnh_map

    rng = np.random.default_rng(8)
    q, d = rng.integers(0, 2, (30, 16)), rng.integers(0, 2, (200, 16))
    ql, dl = rng.integers(0, 4, 30), rng.integers(0, 4, 200)
    for name, codes, labels in (("q", q, ql), ("d", d, dl)):
        index = HammingIndex(16)
        index.add(codes, labels=labels)
        index.save(tmp_path / f"{name}.ssdh")
    result = _run_tool("eval", "--query", tmp_path / "q.ssdh", "--database", tmp_path / "d.ssdh",
                       "--dnnh", "--dnnh-top", "50", "--out-dir", tmp_path / "e")
    assert result.returncode == 0, result.stderr
    assert "DNNH mAP" in result.stdout
    row = read_table(tmp_path / "e" / "table.json")[0]
    assert row.extra["dnnh_map"] == pytest.approx(dnnh_map(q, d, ql, dl, top=50)["map"])
    assert set(row.extra["dnnh_per_class"]) == {"0", "1", "2", "3"}
