"""The steps of one experiment variant, for ssdh_port.runner: train and encode
(a Caffe recipe, DNNH's triplet nets, or a torch model of the registry), then the
protocol and the spec's extra metrics.

Extra metrics ([protocol] metrics = [...], options in [protocol.options]):
    curves          P@k and precision-recall plot (retrieval_curves.png)
    picture         queries and their top 10 (MNIST; retrieval_examples.png)
    label_accuracy  multi-label: labels predicted where the scores blob passes 0.5;
                    per label and per whole label set
    dnnh_map        caffe-dnnh's evaluate_map (clean and compat) over the first
                    options.dnnh_top ranks (default 10,000)
    coarse_to_fine  the CVPRW search: a Hamming shortlist (options.shortlist) re-ranked
                    by l2 on options.feature_blob; one more row
    baselines       LSH / ITQ / CCA-ITQ / l2 on real-valued features: of a pre-trained
                    net (options.baseline_net, baseline_weights, baseline_blob), or of
                    the torch model's pooled features; more rows
    instance        cross-domain instance search (pipeline.instance): the trained net
                    codes an unlabelled gallery by patches at levels 1..options.
                    instance_levels (3) and is scored by instance ground truth: global
                    codes, spatial search, l2 on the latent activations (whole and
                    spatial), mean AP and ms per query; four rows. options.instance:
                    "cifar10-scenes" (data.instances' benchmark made from the CIFAR-10
                    test images: instance_seed, instance_gallery, instance_per_class,
                    instance_positives, instance_sides) or a folder with images/ and gt/
                    (Oxford, Paris)
"""
import dataclasses
import os

import numpy as np

from ssdh_port.errors import SSDHError
from ssdh_port.progress import logger

METRICS = ("curves", "picture", "label_accuracy", "dnnh_map", "coarse_to_fine", "baselines", "instance")


@dataclasses.dataclass
class Outcome:
    """What training and encoding made for one variant."""
    query: object = None               # EncodedSplit of the queries (test split)
    database: object = None            # EncodedSplit of the database (training split)
    weights: str | None = None
    train_seconds: float | None = None
    iterations: int | None = None
    extra: dict = dataclasses.field(default_factory=dict)   # what the trainer records beside the row
    trained: object = None             # the torch trainer's TrainResult
    deploy: str | None = None          # caffe: the deploy net that encodes


def _check_metrics(spec):
    unknown = sorted(set(spec.protocol.metrics) - set(METRICS))
    if unknown:
        raise SSDHError(f"[protocol] metrics {unknown}: expected some of {list(METRICS)}")


# ------------------------------------------------------------------ training and encoding


def _check_finished(trained, solver):
    """A signal that stopped training stops the run: the partial model is neither
    encoded nor evaluated (a snapshot was written; the message says how to go on)."""
    if trained.stopped_early:
        raise SSDHError(f"training stopped at iteration {trained.iterations} by a signal, with a snapshot; "
                        f"nothing was encoded or evaluated (continue the training with `ssdh train {solver} "
                        "--resume latest`, or run again)")


def train_and_encode(spec, data, run_dir, phases, device=None):
    _check_metrics(spec)
    model = spec.model
    if model.kind == "torch":
        if model.precision != "fp32":
            raise SSDHError(f"[model] precision {model.precision!r}: the torch trainer's precision is "
                            "model.train.precision (model.precision is the Caffe path's)")
        return _torch(spec, data, run_dir, phases, device)
    if model.kind != "caffe":
        raise SSDHError(f"[model] kind {model.kind!r}: expected caffe or torch")
    if model.precision not in ("fp32", "bf16"):
        raise SSDHError(f"[model] precision {model.precision!r}: expected fp32 or bf16")
    from ssdh_port.pipeline.recipe import recipe_dir

    folder = recipe_dir(model.recipe)
    if not os.path.isfile(os.path.join(folder, "train_val.prototxt")):
        return _dnnh(spec, data, folder, run_dir, phases, device)
    return _caffe(spec, data, folder, run_dir, phases, device)


def _caffe(spec, data, folder, run_dir, phases, device):
    from ssdh_port.pipeline.encode import encode_batches, encode_split
    from ssdh_port.pipeline.features import array_batches, load_net
    from ssdh_port.pipeline.recipe import prepare_recipe
    from ssdh_port.pipeline.train import train_caffe

    model, encoding = spec.model, spec.encoding
    weights_name = model.weights_name.format(bits=model.bits) if model.weights_name else None
    with phases("prepare"):
        recipe = prepare_recipe(folder, run_dir, bits=model.bits, p=model.p,
                                loss_weights=tuple(model.loss_weights) if model.loss_weights else None,
                                sources=data.sources, mean_file=data.mean_file, weights_name=weights_name,
                                **model.solver)
    with phases("train"):
        trained = train_caffe(recipe.solver, weights=os.path.abspath(model.weights) if model.weights else None,
                              log_dir=run_dir, device=device, amp=model.precision == "bf16")
    _check_finished(trained, recipe.solver)
    encoded = {}
    with phases("encode"):
        # Arrays held in memory (mosaics) go through the deploy net directly, scaled as its data layers scale.
        net = load_net(recipe.deploy, trained.weights, encoding.batch_size) if data.arrays is not None else None
        for split in ("test", "train"):
            logger.info("encoding %s", split)
            if net is not None:
                images, labels = data.arrays[split]
                arrays = {net.input_names[0]: (images.astype(np.float32) * np.float32(data.transform.scale))[:, None]}
                encoded[split] = encode_batches(net, array_batches(arrays, encoding.batch_size),
                                                latent_blob=encoding.latent_blob, features=tuple(encoding.features),
                                                labels=labels, device=device or "cpu", precision=model.precision)
            else:
                encoded[split] = encode_split(recipe.deploy, trained.weights, data.encode[split],
                                              transform=data.transform, features=tuple(encoding.features),
                                              latent_blob=encoding.latent_blob, batch_size=encoding.batch_size,
                                              device=device or "cpu", precision=model.precision)
            encoded[split] = encoded[split].save(os.path.join(run_dir, f"{split}.ssdh"))
            for warning in encoded[split].health["warnings"]:
                logger.warning("%s codes: %s", split, warning)
    return Outcome(encoded["test"], encoded["train"], trained.weights, round(trained.seconds, 1), trained.iterations,
                   deploy=recipe.deploy)


def _dnnh(spec, data, folder, run_dir, phases, device):
    """DNNH's nets (pipeline.dnnh made them from the author's): the triplet net
    trains; the author's test nets (stream 1) encode queries and pool from their
    own 9-channel databases; the labels come from the label files."""
    from ssdh_port.caffe import io as caffe_io
    from ssdh_port.pipeline.encode import encode_batches
    from ssdh_port.pipeline.features import load_net
    from ssdh_port.pipeline.recipe import point_data_layers, write_solver
    from ssdh_port.pipeline.train import train_caffe

    if data.name != "cifar10-dnnh":
        raise SSDHError(f"recipe {spec.model.recipe}: DNNH's nets read the cifar10-dnnh databases, "
                        f"not {data.name}")
    files = data.files
    nets = {}
    with phases("prepare"):
        for name, source in (("train", "triplet_lmdb"), ("test_query", "query_lmdb"), ("test_pool", "pool_lmdb")):
            net = caffe_io.read_net_prototxt(os.path.join(folder, f"{name}.prototxt"))
            point_data_layers(net, {"TRAIN" if name == "train" else "TEST": files[source]},
                              files["triplet_mean.binaryproto"])
            nets[name] = os.path.join(run_dir, f"{name}.prototxt")
            caffe_io.write_text_proto(net, nets[name])
        fields = {"net": nets["train"], "snapshot_prefix": os.path.join(run_dir, os.path.basename(folder)),
                  **spec.model.solver}
        solver = write_solver(os.path.join(folder, spec.model.solver_file), os.path.join(run_dir, "solver.prototxt"),
                              **fields)
    with phases("train"):
        trained = train_caffe(solver, log_dir=run_dir, device=device, amp=spec.model.precision == "bf16")
    _check_finished(trained, solver)
    encoded = {}
    with phases("encode"):
        for split, name in (("test", "query"), ("train", "pool")):
            labels = np.loadtxt(files[f"{name}_label.txt"], dtype=np.int64)
            batch = caffe_io.read_net_prototxt(nets[f"test_{name}"]).layer[0].data_param.batch_size
            if len(labels) % batch:
                raise SSDHError(f"{files[f'{name}_label.txt']}: {len(labels)} images are not whole batches of "
                                f"{batch}")
            split_codes = encode_batches(load_net(nets[f"test_{name}"], trained.weights), None,
                                         iterations=len(labels) // batch, labels=labels, device=device or "cpu",
                                         precision=spec.model.precision)
            encoded[split] = split_codes.save(os.path.join(run_dir, f"{name}.ssdh"))
    return Outcome(encoded["test"], encoded["train"], trained.weights, round(trained.seconds, 1), trained.iterations)


def _torch(spec, data, run_dir, phases, device):
    """A model of the registry trained by the plain-PyTorch trainer on the dataset's
    images; its codes come back as the Caffe path's do (EncodedSplits with the class
    scores kept as "scores")."""
    from ssdh_port.pipeline import trainer

    model = spec.model
    alpha, beta, gamma = model.loss_weights or (1.0, 1.0, 1.0)
    clash = sorted(set(model.train) & {"arch", "train_db", "test_db", "out_dir", "bits", "p", "alpha", "beta",
                                       "gamma"})
    if clash:
        raise SSDHError(f"[model] train: {clash} are set by [data] and [model] (arch, bits, p, loss_weights)")
    config = trainer.recipe(model.arch, train_db=data.encode["train"], test_db=data.encode["test"], out_dir=run_dir,
                            bits=model.bits, p=model.p, alpha=alpha, beta=beta, gamma=gamma,
                            **({"device": device} if device else {}), **model.train)
    with phases("train"):
        result = trainer.fit(config)
    if result is None:
        return None  # a rank other than 0
    phases.seconds["train"], phases.seconds["encode"] = result.seconds["train"], result.seconds["encode"]
    for split, encoded in (("test", result.query), ("train", result.database)):
        encoded.save(os.path.join(run_dir, f"{split}.ssdh"))
    return Outcome(result.query, result.database, result.weights, result.seconds["train"],
                   extra=result.extra, trained=result)


# ------------------------------------------------------------------ evaluation


def evaluate(spec, data, outcome, run_dir, *, method):
    """[RetrievalReport]: one per relevance, then the extra metrics' rows."""
    from ssdh_port.pipeline.evaluate import retrieval_report
    from ssdh_port.pipeline.plots import retrieval_curves

    protocol, metrics = spec.protocol, spec.protocol.metrics
    reports, evaluations = [], []
    query, database = outcome.query, outcome.database
    scores = spec.encoding.scores_blob or ("scores" if outcome.trained is not None else None)
    accuracy = query.accuracy(scores) if scores and data.arrays is None else None
    for relevance in protocol.relevance:
        evaluation = retrieval_report(query.index.codes, database.index.codes, query.labels, database.labels,
                                      method=method, bits=query.index.bits, topk=protocol.topk,
                                      radius=protocol.radius, relevance=relevance, curves=True,
                                      classification_accuracy=accuracy,
                                      extra={"p": spec.model.p, "iterations": outcome.iterations, **outcome.extra})
        evaluations.append(evaluation)
        reports.append(evaluation.report)
    if "curves" in metrics:
        retrieval_curves(evaluations, {}, os.path.join(run_dir, "retrieval_curves.png"))
    extra = {}
    if "label_accuracy" in metrics:
        scores = outcome.query.features[spec.encoding.scores_blob]
        predicted, truth = scores > 0.5, data.arrays["test"][1] > 0
        extra.update(dont_care=data.files.get("dont_care", 0.0), label_accuracy=float((predicted == truth).mean()),
                     set_accuracy=float((predicted == truth).all(axis=1).mean()))
    if "dnnh_map" in metrics:
        extra.update(_dnnh_metric(outcome, data, protocol.options.get("dnnh_top", 10000)))
    if "picture" in metrics:
        _mnist_picture(outcome.database, outcome.query, os.path.join(run_dir, "retrieval_examples.png"))
    for report in reports:
        report.extra.update(extra)
    if "coarse_to_fine" in metrics:
        shortlist = protocol.options.get("shortlist", 2000)
        blob = protocol.options["feature_blob"]
        reports.append(coarse_to_fine_report(
            outcome.query, outcome.database, blob, shortlist=shortlist, topk=protocol.topk,
            method=f"KevinNet-{spec.model.bits} coarse-to-fine (Hamming top {shortlist}, l2 on {blob})"))
    if "baselines" in metrics:
        reports += _baselines(spec, data, outcome)
    if "instance" in metrics:
        reports += _instance(spec, data, outcome, method, accuracy)
    return reports


def _instance(spec, data, outcome, method, accuracy):
    from ssdh_port.pipeline.instance import evaluate_instances, instance_reports
    from ssdh_port.pipeline.patches import CaffeLatent, PatchCoder, TorchLatent

    options = spec.protocol.options
    folder = _instance_benchmark(options.get("instance", "cifar10-scenes"), spec.data.dir, data, options)
    if outcome.trained is not None:
        latent = TorchLatent(outcome.weights)
    elif outcome.deploy:
        latent = CaffeLatent(outcome.deploy, outcome.weights, data.transform, spec.encoding.latent_blob)
    else:
        raise SSDHError("instance: the model has no deploy net to code patches with")
    coder = PatchCoder(latent, batch_size=spec.encoding.batch_size)
    evaluation = evaluate_instances(coder, os.path.join(folder, "images"), os.path.join(folder, "gt"),
                                    levels=int(options.get("instance_levels", 3)))
    logger.info("instance search on %s: %s", folder, ", ".join(
        f"{r.method} {100 * r.map:.2f}" for r in evaluation.results))
    return instance_reports(evaluation, method, accuracy)


def _instance_benchmark(name, data_dir, data, options):
    """The folder of the instance benchmark (made here for "cifar10-scenes")."""
    if name != "cifar10-scenes":
        if not (os.path.isdir(os.path.join(name, "images")) and os.path.isdir(os.path.join(name, "gt"))):
            raise SSDHError(f"[protocol.options] instance {name!r}: expected cifar10-scenes or a folder with "
                            "images/ and gt/ (the ground-truth files)")
        return name
    if data.name != "cifar10":
        raise SSDHError(f"instance cifar10-scenes is made from the cifar10 test images, not {data.name}")
    from ssdh_port.data.instances import CIFAR10_CLASSES, make_instance_benchmark, read_benchmark
    from ssdh_port.pipeline.patches import read_source_images

    fields = {"seed": int(options.get("instance_seed", 0)), "gallery": int(options.get("instance_gallery", 1000)),
              "per_class": int(options.get("instance_per_class", 5)),
              "positives": int(options.get("instance_positives", 6)),
              "sides": [int(v) for v in options.get("instance_sides", [56, 88])]}
    folder = os.path.join(data_dir, "instances_" + "_".join(
        f"{k}{'-'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in fields.items()))
    made = read_benchmark(folder)
    if made is None or any(made.get(k) != v for k, v in fields.items()):
        items = list(read_source_images(data.encode["test"]))
        logger.info("making the instance benchmark in %s", folder)
        make_instance_benchmark([image for _, _, image in items], [label for _, label, _ in items],
                                CIFAR10_CLASSES, folder, **fields)
    return folder


def _dnnh_metric(outcome, data, top):
    from ssdh_port.hashing.metrics import dnnh_map

    query, database = outcome.query, outcome.database
    q_labels, d_labels = np.asarray(query.labels), np.asarray(database.labels)
    if data.name != "cifar10-dnnh" or outcome.trained is not None:
        # evaluate_map reads labels 1..10; any one-to-one relabelling gives the same AP.
        q_labels, d_labels = q_labels + 1, d_labels + 1
    out = {}
    for compat in (False, True):
        metric = dnnh_map(query.index.codes, database.index.codes, q_labels, d_labels, top=top, compat=compat)
        key = "dnnh_map_compat" if compat else "dnnh_map"
        out[key] = metric["map"]
        out[key + "_per_class"] = {str(k): v for k, v in metric["per_class"].items()}
    return out


def _mnist_picture(db, query, path):
    """Each digit's hardest test query (the most wrong results at ranks 1 .. 1000)
    with its results at ranks 1, 2, 3, 10, 50, 100, 500, 1000 and their distances."""
    from ssdh_port.data import mnist
    from ssdh_port.pipeline.plots import EXAMPLE_RANKS, pick_examples, retrieval_picture

    test_images, test_labels = mnist.load_split("test")
    train_images, train_labels = mnist.load_split("train")
    top = min(max(EXAMPLE_RANKS), len(db.index))
    distances, ids = db.index.search(query.index.codes, top)
    # Database ids are record positions here: the images come by position.
    rows, ranks = pick_examples(test_labels, train_labels, ids.numpy())
    retrieval_picture(test_images[rows], test_labels[rows], train_images, train_labels, ids.numpy()[rows], path,
                      ranks, distances=distances.numpy()[rows])


def coarse_to_fine_report(query, database, feature_blob, *, method, shortlist=2000, topk=1000, **known):
    """The CVPRW search on two EncodedSplits: a Hamming shortlist of `shortlist`
    codes re-ranked by l2 distance on feature_blob (kept by the encoder); mAP@topk
    and P@k of the re-ranked list (the whole-ranking mAP and the radius do not
    apply)."""
    import torch

    from ssdh_port.hashing.index import coarse_to_fine
    from ssdh_port.hashing.metrics import average_precision
    from ssdh_port.pipeline.evaluate import P_AT, RetrievalReport

    if feature_blob not in query.features:
        raise SSDHError(f"coarse_to_fine: blob {feature_blob!r} was not kept: add it to [encoding] features")
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
    from ssdh_port.pipeline.evaluate import retrieval_report

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


def _baselines(spec, data, outcome):
    options, bits = spec.protocol.options, spec.model.bits
    if outcome.trained is not None:
        from ssdh_port.pipeline.trainer import feature_baselines

        return feature_baselines(outcome.weights, bits)
    from ssdh_port.pipeline.features import batch_source, extract, load_net

    for key in ("baseline_net", "baseline_weights", "baseline_blob"):
        if key not in options:
            raise SSDHError(f"baselines: give [protocol.options] {key} (the net whose features are hashed)")
    net = load_net(options["baseline_net"], options["baseline_weights"], spec.encoding.batch_size)
    out = []
    for split in ("train", "test"):
        features, labels = extract(net, [options["baseline_blob"]],
                                   batch_source(data.encode[split], net, spec.encoding.batch_size, data.transform))
        out += [features[options["baseline_blob"]], labels]
    return hashing_baseline_reports(*out, bits=bits, source=options["baseline_blob"])
