"""Whole experiments as functions: prepare -> train -> encode -> evaluate -> report.

mnist_ssdh() is the main job (`make demo`): MNIST -> LMDBs -> LeNet-SSDH trained
with Caffe's solver -> codes of the test (queries) and training (database)
images -> the protocol -> report.json / report.md with plots. encode_splits()
and splits_report() are the steps every experiment shares.
"""
import dataclasses
import os
import time

from ssdh_port.fileio import atomic_write
from ssdh_port.data import datasets, mnist
from ssdh_port.errors import SSDHError
from ssdh_port.pipeline.encode import encode_batches, encode_split
from ssdh_port.pipeline.evaluate import retrieval_report
from ssdh_port.data.transformer import transform_param
from ssdh_port.pipeline.features import load_net
from ssdh_port.pipeline.plots import retrieval_curves, retrieval_picture
from ssdh_port.pipeline.recipe import prepare_recipe, recipe_dir
from ssdh_port.pipeline.report import write_report
from ssdh_port.pipeline.train import train_caffe
from ssdh_port.progress import logger

MNIST_SCALE = 0.00390625  # LeNet's 1/256


@dataclasses.dataclass
class JobResult:
    """The report of an experiment run and the files behind it."""
    report: object           # RetrievalReport
    train: object            # TrainResult
    files: dict


def encode_splits(deploy, weights, sources, out_dir, *, transform=None, features=(), batch_size=500,
                  device="cpu"):
    """Encode each split of sources ({"test": db, "train": db}) with the deploy net
    into out_dir/<split>.ssdh (kept blobs beside: <split>.ssdh.<blob>.npy)."""
    encoded = {}
    for split, source in sources.items():
        logger.info("encoding %s (%s)", split, source)
        encoded[split] = encode_split(deploy, weights, source, transform=transform, features=features,
                                      batch_size=batch_size, device=device)
        encoded[split].save(os.path.join(out_dir, f"{split}.ssdh"))
        for warning in encoded[split].health["warnings"]:
            logger.warning("%s codes: %s", split, warning)
    return encoded


def splits_report(query, database, *, method, scores_blob=None, curves=False, **known):
    """The protocol on two EncodedSplits (queries, database), with the
    classification accuracy of scores_blob on the queries when given."""
    if scores_blob:
        known["classification_accuracy"] = query.accuracy(scores_blob)
    return retrieval_report(query.index.codes, database.index.codes, query.labels, database.labels,
                            method=method, bits=query.index.bits, curves=curves, **known)


def mnist_ssdh(out_dir, *, data_dir="runs/mnist", bits=48, iterations=5000, p=2, solver_fields=None,
               device=None):
    """The main job on MNIST with the LeNet-SSDH recipe; returns a JobResult."""
    start = time.time()
    out_dir = os.path.abspath(out_dir)
    lmdbs = datasets.prepare_mnist(data_dir)
    name = f"lenet_ssdh{bits}"
    fields = {"max_iter": iterations, "test_interval": max(1, iterations // 5), **(solver_fields or {})}
    recipe = prepare_recipe(recipe_dir("lenet_ssdh"), out_dir, bits=bits, p=p, weights_name=name,
                            sources={"TRAIN": lmdbs["train"], "TEST": lmdbs["test"]}, **fields)
    trained = train_caffe(recipe.solver, log_dir=out_dir, device=device)
    encoded = encode_splits(recipe.deploy, trained.weights, {"test": lmdbs["test"], "train": lmdbs["train"]},
                            out_dir, transform=transform_param(scale=MNIST_SCALE), features=("ip2",),
                            device=device or "cpu")
    query, db = encoded["test"], encoded["train"]
    evaluation = splits_report(query, db, method=f"LeNet-SSDH-{bits}", scores_blob="ip2", curves=True,
                               extra={"p": p, "iterations": trained.iterations})
    files = {"weights": trained.weights, "codes": {s: e.path for s, e in encoded.items()},
             "log": trained.log, "loss_plot": trained.plot,
             "pk_pr_plot": os.path.join(out_dir, "retrieval_curves.png"),
             "retrieval_examples": os.path.join(out_dir, "retrieval_examples.png")}
    retrieval_curves([evaluation], {}, files["pk_pr_plot"])
    _mnist_picture(db, query, files["retrieval_examples"])
    report = evaluation.report
    report.seconds = round(time.time() - start, 1)
    report.extra["files"] = files
    write_report(report, os.path.join(out_dir, "report.json"))
    _write_markdown(report, os.path.join(out_dir, "report.md"))
    return JobResult(report, trained, files)


def _mnist_picture(db, query, path, rows=8, top=10):
    """Eight queries spread over the test set (not its first eight, which repeat a
    digit) with their top 10 and the Hamming distances."""
    test_images, test_labels = mnist.load_split("test")
    train_images, train_labels = mnist.load_split("train")
    picks = [int(i * len(test_images) / rows) for i in range(rows)]
    distances, ids = db.index.search(query.index.codes[picks], top)
    # Database ids are record positions here: the images come by position.
    retrieval_picture(test_images[picks], test_labels[picks], train_images, train_labels, ids.numpy(), path,
                      rows=rows, distances=distances.numpy())


def _write_markdown(report, path):
    lines = [f"# {report.method} on MNIST", "",
             f"- classification accuracy ({report.queries:,} test images): {report.classification_accuracy:.4f}",
             f"- mAP@{report.topk} ({report.queries:,} test queries vs {report.database:,} training images): "
             f"{report.map_at_topk:.4f}",
             f"- mAP over the whole ranking: {report.map_whole_ranking:.4f}",
             f"- precision@1000: {report.precision_at_1000:.4f}; within Hamming radius {report.radius}: "
             f"{report.precision_within_radius:.4f}",
             f"- {report.extra['iterations']} iterations, {report.seconds} s in all", ""]
    lines += [f"- {key}: {value}" for key, value in report.extra["files"].items()]
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def coarse_to_fine_report(query, database, feature_blob, *, method, shortlist=2000, topk=1000, **known):
    """The CVPRW search on two EncodedSplits: a Hamming shortlist of `shortlist`
    codes re-ranked by l2 distance on feature_blob (kept by the encoder); mAP@topk
    and P@k of the re-ranked list (the whole-ranking mAP and the radius do not
    apply)."""
    import torch

    from ssdh_port.hashing.index import coarse_to_fine
    from ssdh_port.hashing.metrics import average_precision
    from ssdh_port.pipeline.evaluate import P_AT, RetrievalReport

    results = coarse_to_fine(database.index, query.index.codes, query.features[feature_blob],
                             database.features[feature_blob], k=topk, shortlist=shortlist)
    q_labels, d_labels = torch.as_tensor(query.labels), torch.as_tensor(database.labels)
    ranked = torch.stack([ids for ids, _ in results])
    hits = d_labels[ranked] == q_labels[:, None]
    precision = hits.double().cumsum(dim=1).mean(dim=0) / torch.arange(1, hits.shape[1] + 1)
    return RetrievalReport(method=method, bits=query.index.bits, queries=len(q_labels),
                           database=len(d_labels), topk=hits.shape[1],
                           map_at_topk=float(average_precision(hits).mean()),
                           precision_at={str(k): float(precision[k - 1]) for k in P_AT if k <= len(precision)},
                           **known)


def hashing_baseline_reports(train_features, train_labels, test_features, test_labels, *, bits, source):
    """LSH, ITQ and CCA-ITQ codes of real-valued features (fitted on the training
    features, the database) and l2 on the features themselves, under the protocol."""
    from ssdh_port.hashing.baselines import CCAITQ, ITQ, LSH

    reports = []
    for name, cls in (("CCA-ITQ", CCAITQ), ("ITQ", ITQ), ("LSH", LSH)):
        hasher = cls(bits).fit(train_features, train_labels)
        reports.append(retrieval_report(hasher.encode(test_features), hasher.encode(train_features),
                                        test_labels, train_labels, method=f"{name}-{bits} on {source}",
                                        bits=bits))
    reports.append(retrieval_report(test_features, train_features, test_labels, train_labels,
                                    method=f"l2 on {source} ({train_features.shape[1]} floats)",
                                    mode="euclidean"))
    return reports


def dnnh_run(bits, out_dir, *, data_dir="runs/cifar10_dnnh", solver="solver_cpu.yaml", solver_fields=None,
             device=None, top=10000):
    """DNNH on CIFAR-10 with prototxt/dnnh<bits>: train with `solver` (the CPU-scale
    one by default), encode the 1,000 queries and the 59,000 pool images with the
    author's test nets (stream 1), evaluate with the project's protocol and with
    caffe-dnnh's evaluate_map (clean and compat) -> JobResult."""
    import numpy as np

    from ssdh_port.caffe import io as caffe_io
    from ssdh_port.hashing.metrics import dnnh_map
    from ssdh_port.pipeline.recipe import point_data_layers, write_solver

    start = time.time()
    out_dir = os.path.abspath(out_dir)
    recipe = recipe_dir(f"dnnh{bits}")
    data = {name: os.path.abspath(os.path.join(data_dir, name)) for name in (
        "triplet_lmdb", "query_lmdb", "pool_lmdb", "triplet_mean.binaryproto", "query_label.txt", "pool_label.txt")}
    nets = {}
    for name, source in (("train", "triplet_lmdb"), ("test_query", "query_lmdb"), ("test_pool", "pool_lmdb")):
        net = caffe_io.read_net_prototxt(os.path.join(recipe, f"{name}.prototxt"))
        phase = "TRAIN" if name == "train" else "TEST"
        point_data_layers(net, {phase: data[source]}, data["triplet_mean.binaryproto"])
        nets[name] = os.path.join(out_dir, f"{name}.prototxt")
        os.makedirs(out_dir, exist_ok=True)
        caffe_io.write_text_proto(net, nets[name])
    fields = {"net": nets["train"], "snapshot_prefix": os.path.join(out_dir, f"dnnh{bits}"), **(solver_fields or {})}
    solver_path = write_solver(os.path.join(recipe, solver), os.path.join(out_dir, "solver.prototxt"), **fields)
    trained = train_caffe(solver_path, log_dir=out_dir, device=device)
    labels = {split: np.loadtxt(data[f"{split}_label.txt"], dtype=np.int64) for split in ("query", "pool")}
    encoded = {}
    for split in ("query", "pool"):
        count = len(labels[split])
        batch = caffe_io.read_net_prototxt(nets[f"test_{split}"]).layer[0].data_param.batch_size
        if count % batch:
            raise SSDHError(f"{split}: {count} images are not whole batches of {batch}")
        # The test nets read their own 9-channel databases; the labels come from the label files.
        split_codes = encode_batches(load_net(nets[f"test_{split}"], trained.weights), None,
                                     iterations=count // batch, labels=labels[split], device=device or "cpu")
        encoded[split] = split_codes.save(os.path.join(out_dir, f"{split}.ssdh"))
    query, pool = encoded["query"], encoded["pool"]
    report = splits_report(query, pool, method=f"DNNH-{bits}", seconds=round(time.time() - start, 1))
    for compat in (False, True):
        metric = dnnh_map(query.index.codes, pool.index.codes, query.labels, pool.labels, top=top, compat=compat)
        key = "dnnh_map_compat" if compat else "dnnh_map"
        report.extra[key] = metric["map"]
        report.extra[key + "_per_class"] = {str(k): v for k, v in metric["per_class"].items()}
    report.extra.update(iterations=trained.iterations, train_seconds=round(trained.seconds, 1), solver=solver)
    write_report(report, os.path.join(out_dir, "report.json"))
    return JobResult(report, trained, {"log": trained.log, "plot": trained.plot,
                                       "codes": {s: e.path for s, e in encoded.items()}})


def ssdh_on_dnnh_split(bits, out_dir, *, data_dir="runs/cifar10_dnnh", top=10000, **config_fields):
    """SSDH on DNNH's images and split, the comparison the SSDH paper makes: the
    FastNet-SSDH recipe (pipeline.fast_cifar; by default 8 epochs of the 64/256/256
    net, one test-time flip) trained from scratch on the 59,000 pool images with
    their labels, the 1,000 queries searched in the pool, with the project's
    protocol and caffe-dnnh's evaluate_map (clean and compat) -> the
    FastCifarResult, its report carrying both. config_fields: FastCifarConfig's."""
    from ssdh_port.data.dnnh import split_image_dbs
    from ssdh_port.hashing.index import HammingIndex
    from ssdh_port.hashing.metrics import dnnh_map
    from ssdh_port.pipeline.fast_cifar import FastCifarConfig, train_fast_cifar

    images = os.path.join(data_dir, "ssdh_split")
    split_image_dbs(data_dir, images)
    fields = {"epochs": 8.0, "widths": "64,256,256", "tta": 1, **config_fields}
    result = train_fast_cifar(FastCifarConfig(data=images, out_dir=out_dir, bits=bits, **fields))
    query, pool = (HammingIndex.load(result.codes[split]) for split in ("test", "train"))
    report = result.report
    report.method = f"SSDH-{bits} (FastNet, scratch) on DNNH's split"
    for compat in (False, True):
        # evaluate_map reads labels 1..10; any one-to-one relabelling gives the same AP.
        metric = dnnh_map(query.codes, pool.codes, query.labels.long() + 1, pool.labels.long() + 1, top=top,
                          compat=compat)
        key = "dnnh_map_compat" if compat else "dnnh_map"
        report.extra[key] = metric["map"]
        report.extra[key + "_per_class"] = {str(k): v for k, v in metric["per_class"].items()}
    write_report(report, os.path.join(out_dir, "report.json"))
    return result
