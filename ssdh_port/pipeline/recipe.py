"""Recipes for a run: a shipped prototxt folder (train_val.prototxt, deploy.prototxt,
solver.yaml) turned into the files one training run uses, in its own folder.

prepare_recipe() writes the variant (code length, exponent p, loss weights, the
latent layer removed), points every data layer (Data, ImageData, HDF5Data) of
each phase at the run's sources and mean file, and writes the solver with the
run's iterations and snapshot prefix. The shipped files stay as they are.
"""
import dataclasses
import os

from google.protobuf import text_format

from ssdh_port.caffe import io as caffe_io
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.errors import SSDHError

DATA_LAYERS = ("Data", "ImageData", "HDF5Data")
# The shipped recipes: package data (prototxt/ in a checkout is a link to them).
RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


def recipe_dir(name):
    """The folder of a shipped recipe (prototxt/<name>), or name itself if it is a folder."""
    path = name if os.path.isdir(name) else os.path.join(RECIPES, name)
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("train_val.prototxt", "train.prototxt")):
        raise SSDHError(f"recipe {name!r}: no train_val.prototxt or train.prototxt in {path}")
    return path


@dataclasses.dataclass
class PreparedRecipe:
    """The files of one training run."""
    folder: str
    train_val: str
    deploy: str | None
    solver: str
    snapshot_prefix: str
    max_iter: int

    @property
    def final_weights(self):
        """The .caffemodel the solver writes at its last iteration."""
        return f"{self.snapshot_prefix}_iter_{self.max_iter}.caffemodel"


def _phases(layer):
    """The phases a layer's include rules admit (both when it has none)."""
    phases = {pb.Phase.Name(rule.phase) for rule in layer.include if rule.HasField("phase")}
    return phases or {"TRAIN", "TEST"}


def point_data_layers(net, sources, mean_file=None, batch_size=None):
    """Set the source of every data layer by phase: sources = {"TRAIN": path,
    "TEST": path} (a database folder for Data, a list file for ImageData and
    HDF5Data). mean_file replaces the transform's mean file where one is used (or
    sets it where given); batch_size = {"TRAIN": n, "TEST": n} the batch sizes.
    A data layer whose phase has no source is an error naming it."""
    for layer in net.layer:
        if layer.type not in DATA_LAYERS:
            continue
        phases = _phases(layer)
        phase = "TRAIN" if "TRAIN" in phases else "TEST"
        if phase not in sources:
            raise SSDHError(f"data layer '{layer.name}' ({phase}): no source given for phase {phase}")
        source = os.path.abspath(sources[phase])
        param = {"Data": layer.data_param, "ImageData": layer.image_data_param,
                 "HDF5Data": layer.hdf5_data_param}[layer.type]
        param.source = source
        if batch_size and phase in batch_size:
            param.batch_size = int(batch_size[phase])
        if mean_file and layer.type != "HDF5Data":
            layer.transform_param.mean_file = os.path.abspath(mean_file)
    return net


def latent_layer(net, name=None):
    """The SSDH latent layer: the one named `name`, or else the InnerProduct whose
    output feeds a Sigmoid (the recipes name it latent or latent_layer)."""
    sigmoid_inputs = {layer.bottom[0] for layer in net.layer if layer.type == "Sigmoid" and layer.bottom}
    for layer in net.layer:
        if (layer.name == name if name else
                layer.type == "InnerProduct" and any(t in sigmoid_inputs for t in layer.top)):
            return layer
    raise SSDHError(f"no latent layer ({name or 'an InnerProduct feeding a Sigmoid'}) in net "
                     f"'{net.name}'")


def set_code_length(net, bits, latent=None):
    """Latent layer num_output and the 1 x K fire-rate pooling kernel -> bits."""
    latent_layer(net, latent).inner_product_param.num_output = bits
    for layer in net.layer:
        if layer.type == "Pooling" and layer.pooling_param.kernel_h == 1 and layer.pooling_param.kernel_w > 1:
            layer.pooling_param.kernel_w = bits
    net.name = net.name.rsplit("-", 1)[0] + f"-{bits}" if net.name else f"SSDH-{bits}"
    return net


def set_loss_weights(net, alpha=1.0, beta=1.0, gamma=1.0):
    """loss_weight of E1 (SoftmaxWithLoss / max-margin), E2 (K1) and E3 (K2);
    a weight of 0 removes the layer, as the ablation {1,0,0} / {1,1,0} does."""
    weights = {"SoftmaxWithLoss": alpha, "MaxMarginMultiLabelLoss": alpha,
               "K1_EuclideanLoss": beta, "K2_EuclideanLoss": gamma}
    keep = []
    for layer in net.layer:
        weight = weights.get(layer.type)
        if weight is None:
            keep.append(layer)
        elif weight:
            del layer.loss_weight[:]
            layer.loss_weight.append(weight)
            keep.append(layer)
    del net.layer[:]
    net.layer.extend(keep)
    return net


def set_exponent(net, p):
    """p of the forcing-binary and fire-rate layers (and of a max-margin loss)."""
    for layer in net.layer:
        if layer.type in ("K1_EuclideanLoss", "K2_EuclideanLoss"):
            layer.ssdh_loss_param.p = p
        elif layer.type == "MaxMarginMultiLabelLoss":
            layer.max_margin_multilabel_loss_param.p = p
    return net


# Layers that only carry the latent code to the SSDH losses.
_LATENT_BRANCH = ("Sigmoid", "K1_EuclideanLoss", "K2_EuclideanLoss", "Reshape", "Pooling", "Split")


def remove_latent(net, latent=None):
    """The same backbone without the SSDH latent layer: the latent InnerProduct,
    its Sigmoid and the E2/E3 branch go, and the classifier reads the latent
    layer's input instead (the paper's "classification is not sacrificed"
    comparison)."""
    code_layer = latent_layer(net, latent)
    if len(code_layer.bottom) != 1:
        raise SSDHError(f"latent layer '{code_layer.name}' has {len(code_layer.bottom)} inputs, expected 1")
    name, source = code_layer.name, code_layer.bottom[0]
    gone = set(code_layer.top)
    keep = []
    for layer in net.layer:
        if layer.name == name or (layer.type in _LATENT_BRANCH and layer.bottom
                                    and all(b in gone for b in layer.bottom)):
            gone.update(layer.top)
            continue
        for i, bottom in enumerate(layer.bottom):
            if bottom in gone:
                layer.bottom[i] = source
        keep.append(layer)
    del net.layer[:]
    net.layer.extend(keep)
    net.name = (net.name or "net").replace("SSDH", "backbone")
    return net


def variant(net, **changes):
    """Apply set_code_length(bits=), set_exponent(p=), set_loss_weights(alpha=,
    beta=, gamma=) or remove_latent (latent=False) to a NetParameter."""
    if changes.pop("latent", True) is False:
        remove_latent(net)
    if "p" in changes:
        set_exponent(net, changes.pop("p"))
    if "bits" in changes:
        set_code_length(net, changes.pop("bits"))
    weight_keys = {k: changes.pop(k) for k in ("alpha", "beta", "gamma") if k in changes}
    if weight_keys:
        set_loss_weights(net, **weight_keys)
    if changes:
        raise SSDHError(f"unknown recipe changes {sorted(changes)}")
    return net


def write_variant(prototxt, out_path, **changes):
    """Read prototxt, apply variant(**changes), write out_path."""
    net = variant(caffe_io.read_net_prototxt(prototxt), **changes)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    caffe_io.write_text_proto(net, out_path)
    return out_path


def set_solver_fields(param, fields):
    """Replace fields of a SolverParameter ({name: value}, lists for repeated fields)."""
    for key, value in fields.items():
        if key not in pb.SolverParameter.DESCRIPTOR.fields_by_name:
            from ssdh_port.caffe.solver import unknown_solver_field

            raise SSDHError(unknown_solver_field(key))
        if isinstance(value, (list, tuple)):
            getattr(param, key)[:] = value
        else:
            setattr(param, key, value)
    return param


def write_solver(solver, out_path, **fields):
    """A solver with some fields replaced (net, max_iter, snapshot_prefix, ...)."""
    from ssdh_port.caffe.solver import read_solver

    param = set_solver_fields(read_solver(solver), fields)
    caffe_io.write_text_proto(param, out_path)
    with open(out_path) as f:  # keep it readable as a Caffe solver.prototxt
        text_format.Parse(f.read(), type(param)())
    return out_path


def prepare_recipe(recipe, run_dir, *, sources=None, mean_file=None, batch_size=None, bits=None,
                   p=None, loss_weights=None, latent=True, weights_name=None, **solver_fields):
    """Write one run's train_val.prototxt, deploy.prototxt (when the recipe has
    one) and solver.prototxt into run_dir and return their paths.

    recipe: a folder with train_val.prototxt, solver.yaml and optionally
    deploy.prototxt. sources / mean_file / batch_size: see point_data_layers.
    bits, p, loss_weights=(alpha, beta, gamma), latent=False: the variant (see
    write_variant). solver_fields: SolverParameter fields to replace (max_iter,
    test_interval, lr_policy, ...); snapshot_prefix defaults to
    run_dir/<weights_name or the recipe's folder name>."""
    run_dir = os.path.abspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    changes = {}
    if bits is not None:
        changes["bits"] = bits
    if p is not None:
        changes["p"] = p
    if loss_weights is not None:
        changes.update(zip(("alpha", "beta", "gamma"), loss_weights))
    if latent is False:
        changes["latent"] = False
    net = variant(caffe_io.read_net_prototxt(os.path.join(recipe, "train_val.prototxt")), **changes)
    if sources:
        point_data_layers(net, sources, mean_file, batch_size)
    train_val = os.path.join(run_dir, "train_val.prototxt")
    caffe_io.write_text_proto(net, train_val)
    deploy = None
    shipped_deploy = os.path.join(recipe, "deploy.prototxt")
    if os.path.isfile(shipped_deploy):
        deploy_changes = {k: v for k, v in changes.items() if k in ("bits", "latent")}
        deploy = write_variant(shipped_deploy, os.path.join(run_dir, "deploy.prototxt"), **deploy_changes)
    name = weights_name or os.path.basename(os.path.normpath(recipe))
    fields = {"net": train_val, "snapshot_prefix": os.path.join(run_dir, name), **solver_fields}
    solver_source = os.path.join(recipe, "solver.yaml")
    if not os.path.isfile(solver_source):
        solver_source = os.path.join(recipe, "solver.prototxt")
    solver = write_solver(solver_source, os.path.join(run_dir, "solver.prototxt"), **fields)
    from ssdh_port.caffe.solver import read_solver

    param = read_solver(solver)
    return PreparedRecipe(run_dir, train_val, deploy, solver, param.snapshot_prefix, param.max_iter)


def solver_overrides(items):
    """["lr_policy=multistep", "stepvalue=20000,26000"] -> {field: value}, typed by
    the SolverParameter schema (comma-separated values for a repeated field)."""
    fields = {}
    for item in items:
        key, sep, value = item.partition("=")
        field = pb.SolverParameter.DESCRIPTOR.fields_by_name.get(key)
        if not sep:
            raise SSDHError(f"solver override {item!r}: expected FIELD=VALUE with a SolverParameter field")
        if field is None:
            from ssdh_port.caffe.solver import unknown_solver_field

            raise SSDHError(f"solver override {item!r}: {unknown_solver_field(key)}")
        cast = {field.TYPE_STRING: str, field.TYPE_FLOAT: float, field.TYPE_DOUBLE: float,
                field.TYPE_BOOL: lambda v: v.lower() in ("1", "true")}.get(field.type, int)
        try:
            values = [cast(v) for v in value.split(",")]
        except ValueError:
            raise SSDHError(f"solver override {item!r}: {value!r} is not a valid {key}") from None
        fields[key] = values if field.is_repeated else values[0]
    return fields
