"""Recipe variants: the shipped prototxts with another code length, loss
weights or p, written to a run folder (the shipped files stay as they are)."""
import os

from google.protobuf import text_format

from ssdh_port.caffe import io as caffe_io


def latent_layer(net, name=None):
    """The SSDH latent layer: the one named `name`, or else the InnerProduct whose
    output feeds a Sigmoid (the recipes name it latent or latent_layer)."""
    sigmoid_inputs = {layer.bottom[0] for layer in net.layer if layer.type == "Sigmoid" and layer.bottom}
    for layer in net.layer:
        if (layer.name == name if name else
                layer.type == "InnerProduct" and any(t in sigmoid_inputs for t in layer.top)):
            return layer
    raise ValueError(f"no latent layer ({name or 'an InnerProduct feeding a Sigmoid'}) in net "
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
        raise ValueError(f"latent layer '{code_layer.name}' has {len(code_layer.bottom)} inputs, expected 1")
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


def write_variant(prototxt, out_path, **changes):
    """Read prototxt, apply set_code_length(bits=), set_exponent(p=),
    set_loss_weights(alpha=, beta=, gamma=) or remove_latent (latent=False);
    write out_path."""
    net = caffe_io.read_net_prototxt(prototxt)
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
        raise ValueError(f"unknown recipe changes {sorted(changes)}")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    caffe_io.write_text_proto(net, out_path)
    return out_path


def write_solver(solver, out_path, **fields):
    """A solver with some fields replaced (net, max_iter, snapshot_prefix, ...)."""
    from ssdh_port.caffe.solver import read_solver

    param = read_solver(solver)
    for key, value in fields.items():
        if isinstance(value, (list, tuple)):
            getattr(param, key)[:] = value
        else:
            setattr(param, key, value)
    caffe_io.write_text_proto(param, out_path)
    with open(out_path) as f:  # keep it readable as a Caffe solver.prototxt
        text_format.Parse(f.read(), type(param)())
    return out_path
