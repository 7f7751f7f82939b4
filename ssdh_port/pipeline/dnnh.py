"""DNNH recipes from the caffe-dnnh author's nets (docs/SPEC.md section 1, DNNH).

build_recipe() takes the author's runtime/<b>bit folder (train<b>.prototxt,
test<b>_query.prototxt, test<b>_pool.prototxt, train<b>_solver.prototxt) and
returns the nets of prototxt/dnnh<b>: the same layers, their data layers pointed
at the databases of `prepare_dataset.py cifar10-dnnh` (LMDB, the 9-channel
triplet mean), and a deploy net that encodes one 3-channel image with stream 1
(Input -> the first stream -> the concatenated sigmoid codes). A length the
author did not ship (the paper's 32 bits) is derived from the 48-bit nets:
the last 1 x 1 convolution of each stream gives 50 * b channels, the
divide-and-encode slice keeps b groups of 50 (one InnerProduct + Sigmoid each),
the concatenation b bits, the loss dim b.
"""
import os

from google.protobuf import text_format

from ssdh_port.caffe import io as caffe_io
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.caffe.solver import read_solver
from ssdh_port.errors import SSDHError
from ssdh_port.fileio import atomic_write

GROUP = 50  # channels per bit in divide-and-encode
SHIPPED = (12, 24, 48)


def _author_files(author_root, bits):
    source = bits if bits in SHIPPED else 48
    folder = os.path.join(author_root, f"{source}bit")
    names = {"train": f"train{source}.prototxt", "test_query": f"test{source}_query.prototxt",
             "test_pool": f"test{source}_pool.prototxt", "solver": f"train{source}_solver.prototxt"}
    paths = {k: os.path.join(folder, v) for k, v in names.items()}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise SSDHError(f"caffe-dnnh nets not found: {missing}")
    return source, paths


def resize_codes(net, source_bits, bits):
    """The divide-and-encode part of a DNNH net from source_bits to bits (<= source)."""
    if bits > source_bits or bits < 1:
        raise SSDHError(f"a {bits}-bit DNNH net cannot be derived from the {source_bits}-bit one")
    dropped = set()
    keep = []
    for layer in net.layer:
        if layer.type == "Convolution" and layer.convolution_param.num_output == GROUP * source_bits:
            layer.convolution_param.num_output = GROUP * bits
        if layer.type == "Slice" and len(layer.top) == source_bits and len(layer.slice_param.slice_point) == \
                source_bits - 1:
            dropped.update(layer.top[bits:])
            del layer.top[bits:]
            del layer.slice_param.slice_point[bits - 1:]
        if any(b in dropped for b in layer.bottom) and layer.type in ("InnerProduct", "Sigmoid"):
            dropped.update(layer.top)
            continue
        if layer.type == "Concat":
            kept = [b for b in layer.bottom if b not in dropped]
            del layer.bottom[:]
            layer.bottom.extend(kept)
        if layer.type == "TripletRankingHingeLoss":
            layer.triplet_ranking_hinge_loss_param.dim = bits
        keep.append(layer)
    del net.layer[:]
    net.layer.extend(keep)
    return net


def _point_data(net, source, mean_file):
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = source
            layer.data_param.backend = pb.DataParameter.LMDB
            layer.transform_param.mean_file = mean_file


def _deploy(test_net, bits):
    """Stream 1 on one 3-channel image: the test net without its Data and Slice layers."""
    data = next(layer for layer in test_net.layer if layer.type == "Data")
    sliced = next(layer for layer in test_net.layer if layer.type == "Slice" and data.top[0] in layer.bottom)
    deploy = pb.NetParameter(name=f"DNNH-{bits} deploy")
    entry = deploy.layer.add(name="input", type="Input", top=[sliced.top[0]])
    entry.input_param.shape.add().dim.extend([1, 3, 32, 32])
    for layer in test_net.layer:
        if layer.name not in (data.name, sliced.name):
            deploy.layer.add().CopyFrom(layer)
    return deploy


def build_recipe(author_root, bits, data_dir="runs/cifar10_dnnh", run_dir=None):
    """{"train", "test_query", "test_pool", "deploy": NetParameter, "solver": SolverParameter}."""
    source, paths = _author_files(author_root, bits)
    run_dir = run_dir or f"runs/dnnh{bits}"
    mean = os.path.join(data_dir, "triplet_mean.binaryproto")
    nets = {}
    for name, db in (("train", "triplet_lmdb"), ("test_query", "query_lmdb"), ("test_pool", "pool_lmdb")):
        net = caffe_io.read_net_prototxt(paths[name])
        if source != bits:
            resize_codes(net, source, bits)
        net.name = f"DNNH-{bits} ({name.replace('_', ' ')})"
        _point_data(net, os.path.join(data_dir, db), mean)
        nets[name] = net
    nets["deploy"] = _deploy(nets["test_query"], bits)
    solver = read_solver(paths["solver"])
    solver.net = f"prototxt/dnnh{bits}/train.prototxt"
    solver.snapshot_prefix = os.path.join(run_dir, f"dnnh{bits}")
    nets["solver"] = solver
    return nets


# The CPU-scale schedule. The author's rate (0.001) moves nothing in hundreds of
# steps: at the fillers' scale the codes start within 0.01 of 0.5, the hinge sits at
# the margin, and the gradients are 1e-4..5e-3 of the weights, about what weight
# decay takes back (measured: the loss 2.000 -> 1.971 in 600 steps). 50 times the
# rate leaves that point in about 60 steps; once the codes spread, the gradients
# grow 100-fold and at that rate without a bound the streams die (0.1 unclipped:
# the loss back at exactly 2.0, every code alike, by step 80), so the gradient's
# norm is clipped at 0.5 (Caffe's clip_gradients) and the rate divided by 10 at
# half and three quarters of the run, as the author's schedule does at 60 % and 70 %.
CPU_SCHEDULE = {"base_lr": 0.05, "clip_gradients": 0.5, "lr_policy": "multistep", "gamma": 0.1}


def cpu_solver_fields(iterations):
    """solver_cpu.yaml's changes to the author's solver for a run of `iterations`."""
    return dict(CPU_SCHEDULE, max_iter=iterations, snapshot=0, display=10,
                stepvalue=[iterations // 2, iterations * 3 // 4])


def write_recipe(author_root, bits, out_dir, cpu_iterations=600, **kwargs):
    """Write a recipe folder: train.prototxt, test_query.prototxt,
    test_pool.prototxt, deploy.prototxt, solver.yaml (the author's schedule) and
    solver_cpu.yaml (the same net for cpu_iterations iterations with the CPU
    schedule above: a run that ends in about 20 minutes on two CPU cores)."""
    import yaml
    from google.protobuf import json_format

    nets = build_recipe(author_root, bits, **kwargs)
    os.makedirs(out_dir, exist_ok=True)
    for name in ("train", "test_query", "test_pool", "deploy"):
        header = (f"# DNNH-{bits}: caffe-dnnh's {name.replace('_', ' ')} net"
                  f"{'' if bits in SHIPPED else ' (derived from the 48-bit one)'}, pointed at the databases of\n"
                  "# tools/prepare_dataset.py cifar10-dnnh (ssdh_port.pipeline.dnnh.build_recipe made this file).\n")
        with atomic_write(os.path.join(out_dir, f"{name}.prototxt"), "w") as f:
            f.write(header + text_format.MessageToString(nets[name]))
    solver = nets["solver"]
    for name, changes in (("solver.yaml", {}), ("solver_cpu.yaml", cpu_solver_fields(cpu_iterations))):
        fields = json_format.MessageToDict(solver, preserving_proto_field_name=True)
        fields.update(changes)
        with atomic_write(os.path.join(out_dir, name), "w") as f:
            what = ("the author's" if not changes else
                    "CPU scale: the author's, rate x50, gradient norm clipped at 0.5 (pipeline.dnnh.CPU_SCHEDULE)")
            f.write(f"# DNNH-{bits} solver ({what}); run from the repository root:\n"
                    f"# python tools/train_net.py prototxt/dnnh{bits}/{name}\n")
            yaml.safe_dump(fields, f, sort_keys=False)
    return out_dir
