"""Upgrade of old Caffe net definitions to the current format, as Caffe's own
upgrade tools do on load:

* V0 (``layers { layer { type: "conv" ... } }``, separate "padding" layers) -> V1;
* V1 (``layers { type: CONVOLUTION ... }``, blobs_lr / weight_decay) -> current
  ``layer { type: "Convolution" param { lr_mult decay_mult } }``;
* deprecated transformation fields of data layers -> transform_param;
* deprecated net inputs (input / input_dim / input_shape) -> an Input layer.
"""
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.errors import SSDHError


class UpgradeError(SSDHError):
    """A net definition that cannot be upgraded; the message names the layer."""


# V1 enum name -> current type string.
V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax",
    "BNLL": "BNLL", "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution", "DATA": "Data", "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
    "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# V0 type string -> V1 enum name.
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN", "multinomial_logistic_loss":
    "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS", "split": "SPLIT",
    "tanh": "TANH", "window_data": "WINDOW_DATA",
}

# V1 message fields copied as they are into the current LayerParameter.
_V1_SHARED_FIELDS = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param",
    "convolution_param", "data_param", "dropout_param", "dummy_data_param", "eltwise_param",
    "exp_param", "hdf5_data_param", "hdf5_output_param", "hinge_loss_param",
    "image_data_param", "infogain_loss_param", "inner_product_param", "lrn_param",
    "memory_data_param", "mvn_param", "pooling_param", "power_param", "relu_param",
    "sigmoid_param", "softmax_param", "slice_param", "tanh_param", "threshold_param",
    "window_data_param", "transform_param", "loss_param",
)


def upgrade_net(net):
    """Upgrade a NetParameter in place to the current format; returns it."""
    if net.layers and net.layer:
        raise UpgradeError("net has both 'layer' and deprecated 'layers' fields; use one")
    if any(v1.HasField("layer") for v1 in net.layers):
        _upgrade_v0_to_v1(net)
    if net.layers:
        _upgrade_v1_to_v2(net)
        # Caffe moves these fields for V0/V1 nets only (NetNeedsDataUpgrade reads
        # the deprecated 'layers'): a 'layer' net keeps e.g. window_data_param.scale.
        _upgrade_data_transformation(net)
    _upgrade_inputs(net)
    return net


# ---------------------------------------------------------------- V0 -> V1


def _upgrade_v0_to_v1(net):
    if not all(v1.HasField("layer") for v1 in net.layers):
        raise UpgradeError("net mixes V0 layers (with a nested 'layer') and V1 layers")
    layers = _merge_padding_layers(list(net.layers))
    del net.layers[:]
    for old in layers:
        net.layers.add().CopyFrom(_v0_layer_to_v1(old))


def _merge_padding_layers(layers):
    """Fold each V0 "padding" layer into the conv/pool layer that reads its top."""
    padding = {}
    kept = []
    for old in layers:
        v0 = old.layer
        if v0.type == "padding":
            if len(old.bottom) != 1 or len(old.top) != 1:
                raise UpgradeError(f"padding layer '{v0.name}' must have one bottom and one top")
            padding[old.top[0]] = (old.bottom[0], v0.pad, v0.name)
            continue
        for i, bottom in enumerate(old.bottom):
            if bottom not in padding:
                continue
            source, pad, pad_name = padding[bottom]
            if v0.type not in ("conv", "pool"):
                raise UpgradeError(
                    f"padding layer '{pad_name}' feeds layer '{v0.name}' of type "
                    f"'{v0.type}'; only conv and pool layers can absorb padding")
            old.bottom[i] = source
            old.layer.pad = pad
        kept.append(old)
    return kept


def _v0_layer_to_v1(old):
    v0 = old.layer
    if v0.type not in V0_TYPES:
        raise UpgradeError(f"V0 layer '{v0.name}' has unknown type '{v0.type}'")
    new = pb.V1LayerParameter()
    new.name = v0.name
    new.type = pb.V1LayerParameter.LayerType.Value(V0_TYPES[v0.type])
    new.bottom.extend(old.bottom)
    new.top.extend(old.top)
    new.blobs.extend(v0.blobs)
    new.blobs_lr.extend(v0.blobs_lr)
    new.weight_decay.extend(v0.weight_decay)
    kind = v0.type
    if kind in ("conv", "innerproduct"):
        param = new.convolution_param if kind == "conv" else new.inner_product_param
        if v0.HasField("num_output"):
            param.num_output = v0.num_output
        if v0.HasField("biasterm"):
            param.bias_term = v0.biasterm
        if v0.HasField("weight_filler"):
            param.weight_filler.CopyFrom(v0.weight_filler)
        if v0.HasField("bias_filler"):
            param.bias_filler.CopyFrom(v0.bias_filler)
        if kind == "conv":
            if v0.HasField("pad"):
                param.pad.append(v0.pad)
            if v0.HasField("kernelsize"):
                param.kernel_size.append(v0.kernelsize)
            if v0.HasField("stride"):
                param.stride.append(v0.stride)
            if v0.HasField("group"):
                param.group = v0.group
    elif kind == "pool":
        param = new.pooling_param
        param.pool = v0.pool
        if v0.HasField("kernelsize"):
            param.kernel_size = v0.kernelsize
        if v0.HasField("stride"):
            param.stride = v0.stride
        if v0.HasField("pad"):
            param.pad = v0.pad
    elif kind == "dropout":
        if v0.HasField("dropout_ratio"):
            new.dropout_param.dropout_ratio = v0.dropout_ratio
    elif kind == "lrn":
        for field in ("local_size", "alpha", "beta", "k"):
            if v0.HasField(field):
                setattr(new.lrn_param, field, getattr(v0, field))
    elif kind in ("data", "images", "hdf5_data", "window_data"):
        _upgrade_v0_data(v0, new, kind)
    elif kind == "concat":
        if v0.HasField("concat_dim"):
            new.concat_param.concat_dim = v0.concat_dim
    elif kind == "hdf5_output" and v0.HasField("hdf5_output_param"):
        new.hdf5_output_param.CopyFrom(v0.hdf5_output_param)
    elif kind == "infogain_loss" and v0.HasField("source"):
        new.infogain_loss_param.source = v0.source
    if kind == "window_data":
        for old_name, new_name in (("det_fg_threshold", "fg_threshold"), ("det_bg_threshold", "bg_threshold"),
                                   ("det_fg_fraction", "fg_fraction"), ("det_context_pad", "context_pad"),
                                   ("det_crop_mode", "crop_mode")):
            if v0.HasField(old_name):
                setattr(new.window_data_param, new_name, getattr(v0, old_name))
    return new


def _upgrade_v0_data(v0, new, kind):
    param = {"data": new.data_param, "images": new.image_data_param,
             "hdf5_data": new.hdf5_data_param, "window_data": new.window_data_param}[kind]
    if v0.HasField("source"):
        param.source = v0.source
    if v0.HasField("batchsize"):
        param.batch_size = v0.batchsize
    if kind in ("data", "images") and v0.HasField("rand_skip"):
        param.rand_skip = v0.rand_skip
    if kind == "images":
        if v0.HasField("shuffle_images"):
            param.shuffle = v0.shuffle_images
        if v0.HasField("new_height"):
            param.new_height = v0.new_height
        if v0.HasField("new_width"):
            param.new_width = v0.new_width
    transform = new.transform_param
    if v0.HasField("scale"):
        transform.scale = v0.scale
    if v0.HasField("meanfile"):
        transform.mean_file = v0.meanfile
    if v0.HasField("cropsize"):
        transform.crop_size = v0.cropsize
    if v0.HasField("mirror"):
        transform.mirror = v0.mirror


# ---------------------------------------------------------------- V1 -> V2


def _upgrade_v1_to_v2(net):
    for v1 in net.layers:
        net.layer.add().CopyFrom(_v1_layer_to_v2(v1))
    del net.layers[:]


def _v1_layer_to_v2(v1):
    layer = pb.LayerParameter()
    layer.name = v1.name
    type_name = pb.V1LayerParameter.LayerType.Name(v1.type)
    layer.type = V1_TYPE_NAMES[type_name]
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    layer.blobs.extend(v1.blobs)
    layer.loss_weight.extend(v1.loss_weight)
    count = max(len(v1.blobs_lr), len(v1.weight_decay), len(v1.param), len(v1.blob_share_mode))
    for i in range(count):
        spec = layer.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    for field in _V1_SHARED_FIELDS:
        if v1.HasField(field):
            getattr(layer, field).CopyFrom(getattr(v1, field))
    return layer


# ---------------------------------------------------------------- data, inputs


def _upgrade_data_transformation(net):
    """Move data_param / image_data_param scale, mean_file, crop_size, mirror
    into transform_param, as Caffe's UpgradeNetDataTransformation does."""
    for layer in net.layer:
        for name in ("data_param", "image_data_param", "window_data_param"):
            if not layer.HasField(name):
                continue
            param = getattr(layer, name)
            for field in ("scale", "mean_file", "crop_size", "mirror"):
                if param.HasField(field):
                    setattr(layer.transform_param, field, getattr(param, field))
                    param.ClearField(field)


def _upgrade_inputs(net):
    """Deprecated net inputs -> a first Input layer. Inputs named without any
    dimensions are dropped, as Caffe's UpgradeNetInput drops them."""
    if not net.input:
        return
    if not net.input_dim and not net.input_shape:
        net.ClearField("input")
        return
    if net.input_dim and net.input_shape:
        raise UpgradeError("net gives both input_dim and input_shape; use one")
    if net.input_dim and len(net.input_dim) != 4 * len(net.input):
        raise UpgradeError(
            f"net has {len(net.input)} inputs but {len(net.input_dim)} input_dim values "
            "(4 per input expected)")
    if net.input_shape and len(net.input_shape) not in (1, len(net.input)):
        raise UpgradeError(
            f"net has {len(net.input)} inputs but {len(net.input_shape)} input_shape entries")
    layer = pb.LayerParameter(name="input", type="Input")
    layer.top.extend(net.input)
    for i in range(len(net.input)):
        shape = layer.input_param.shape.add()
        if net.input_shape:
            shape.CopyFrom(net.input_shape[min(i, len(net.input_shape) - 1)])
        elif net.input_dim:
            shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
    layers = [layer] + list(net.layer)
    del net.layer[:]
    net.layer.extend(layers)
    net.ClearField("input")
    net.ClearField("input_dim")
    net.ClearField("input_shape")
