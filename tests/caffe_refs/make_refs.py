"""Make the layer references in this folder with real BVLC Caffe (master 9b891540).

    source ../shared/tools/caffe-cpu/env.sh
    $CAFFE_PY tests/caffe_refs/make_refs.py          # rewrites tests/caffe_refs/*.npz

Each case is a small net: Input layers, the layer under test, force_backward. Caffe
fills the weights (its own fillers), runs forward on seeded inputs, then backward from
seeded top diffs (loss tops keep their loss weight as diff). Written per case to
<case>.npz:
    input/<blob>      what was fed               param/<layer>/<i>   Caffe's weights
    blob/<blob>       every blob after forward   topdiff/<blob>      diffs fed to backward
    diff/<blob>       the inputs' diffs          paramdiff/<layer>/<i>
    again/<blob>      (recurrent cases) every blob after a second forward on the same inputs
    reshaped/<k>/...  (reshape cases) input, blobs and input diffs after
                      net.blobs[...].reshape(...) and net.reshape() to the k-th other shape
and cases.json: {case: {"prototxt": text, "outputs": [...], "shapes": {blob: shape}}}.
Tests read these files; they never run Caffe.
"""
import json
import os
import sys
import tempfile

import numpy as np

import caffe

HERE = os.path.dirname(os.path.abspath(__file__))


def net_text(inputs, body, force_backward=True):
    shapes = "".join(f" shape {{ {' '.join(f'dim: {d}' for d in s)} }}" for s in inputs.values())
    tops = "".join(f' top: "{n}"' for n in inputs)
    return (f'name: "ref"{" force_backward: true" if force_backward else ""}\n'
            f'layer {{ name: "input" type: "Input"{tops} input_param {{{shapes} }} }}\n{body}\n')


G = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def rand(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def cases():
    """name -> (inputs {blob: array}, layer text, extra): extra may hold
    'again' (run forward twice) and 'reshape' (a list of {blob: array})."""
    rng = np.random.default_rng(29)
    c = {}
    c["crop_fcn"] = ({"x": rand(rng, (2, 3, 11, 13)), "ref": rand(rng, (2, 5, 7, 8))},
                     'layer { name: "crop" type: "Crop" bottom: "x" bottom: "ref" top: "y" '
                     'crop_param { axis: 2 offset: 2 } }', {})
    c["crop_offsets"] = ({"x": rand(rng, (2, 4, 9, 6)), "ref": rand(rng, (1, 2, 5, 3))},
                         'layer { name: "crop" type: "Crop" bottom: "x" bottom: "ref" top: "y" '
                         'crop_param { axis: 1 offset: 1 offset: 3 offset: 2 } }', {})
    c["crop_default"] = ({"x": rand(rng, (2, 3, 6, 6)), "ref": rand(rng, (7, 1, 4, 5))},
                         'layer { name: "crop" type: "Crop" bottom: "x" bottom: "ref" top: "y" }', {})
    x = rand(rng, (2, 3, 4, 5))
    x[0, 0, 0, :2] = 0.0  # ASUM's sign at exactly 0
    c["reduction"] = ({"x": x}, "\n".join([
        'layer { name: "sum" type: "Reduction" bottom: "x" top: "sum" }',
        'layer { name: "asum" type: "Reduction" bottom: "x" top: "asum" '
        'reduction_param { operation: ASUM axis: 1 coeff: 2 } }',
        'layer { name: "sumsq" type: "Reduction" bottom: "x" top: "sumsq" '
        'reduction_param { operation: SUMSQ axis: 2 } }',
        'layer { name: "mean" type: "Reduction" bottom: "x" top: "mean" '
        'reduction_param { operation: MEAN axis: -1 coeff: -0.5 } }',
        'layer { name: "all" type: "Reduction" bottom: "x" top: "all" '
        'reduction_param { operation: MEAN axis: 0 coeff: 3 } }']), {})
    c["tile"] = ({"x": rand(rng, (2, 3, 4))}, "\n".join([
        'layer { name: "t1" type: "Tile" bottom: "x" top: "t1" tile_param { tiles: 3 } }',
        'layer { name: "t2" type: "Tile" bottom: "x" top: "t2" tile_param { axis: -1 tiles: 2 } }',
        'layer { name: "t0" type: "Tile" bottom: "x" top: "t0" tile_param { axis: 0 tiles: 2 } }']), {})
    for height, method in ((3, "MAX"), (2, "AVE"), (1, "MAX")):
        c[f"spp_{height}_{method.lower()}"] = (
            {"x": rand(rng, (2, 3, 7, 9))},
            f'layer {{ name: "spp" type: "SPP" bottom: "x" top: "y" '
            f'spp_param {{ pyramid_height: {height} pool: {method} }} }}', {})
    # MAX pooling: ties (small integers) and NaN / -inf that never win; every window
    # rule: ceil rounding with and without pad, stride 1, rectangular, FLOOR, global,
    # the mask as a second top.
    x = rng.integers(-2, 3, (2, 3, 9, 11)).astype(np.float32)
    x[0, 0, 0, 0] = x[1, 2, 4, 5] = x[0, 1, 8, 9] = np.nan
    x[0, 2, 3, 3] = x[1, 0, 0, 1] = -np.inf
    pool = 'layer {{ name: "{0}" type: "Pooling" bottom: "x" top: "{0}"{2} pooling_param {{ pool: MAX {1} }} }}'
    c["max_pool"] = ({"x": x}, "\n".join([
        pool.format("k3s2", "kernel_size: 3 stride: 2", ""),
        pool.format("k3s1p1", "kernel_size: 3 stride: 1 pad: 1", ""),
        pool.format("k2s2", "kernel_size: 2 stride: 2", ""),
        pool.format("k3s2p1", "kernel_size: 3 stride: 2 pad: 1", ' top: "k3s2p1_mask"'),
        pool.format("rect", "kernel_h: 4 kernel_w: 2 stride_h: 3 stride_w: 1 pad_h: 2 pad_w: 1", ""),
        pool.format("floor", "kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR", ""),
        pool.format("global", "global_pooling: true", ' top: "global_mask"')]), {})
    # Ceil rounding with a stride above the kernel: the last windows start past the
    # map (Caffe's top there is -FLT_MAX, mask -1; its backward would write before the
    # map, so this case is forward only).
    c["max_pool_past_end"] = ({"x": rand(rng, (2, 2, 5, 7))}, "\n".join([
        pool.format("k1s3", "kernel_size: 1 stride: 3", ' top: "k1s3_mask"'),
        pool.format("k2s4", "kernel_h: 2 kernel_w: 1 stride_h: 4 stride_w: 3", "")]),
        {"force_backward": False})
    # Caffe refuses a gradient to Embed's input (so no force_backward): a loss drives it.
    loss = 'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "target" top: "loss" }'
    c["embed"] = ({"i": rng.integers(0, 7, (2, 3)).astype(np.float32), "target": rand(rng, (2, 3, 4))},
                  f'layer {{ name: "embed" type: "Embed" bottom: "i" top: "y" '
                  f'embed_param {{ input_dim: 7 num_output: 4 {G} }} }}\n{loss}', {"force_backward": False})
    c["embed_nobias"] = ({"i": np.array([6, 0, 6, 2], np.float32), "target": rand(rng, (4, 3))},
                         'layer { name: "embed" type: "Embed" bottom: "i" top: "y" '
                         'embed_param { input_dim: 7 num_output: 3 bias_term: false '
                         f'weight_filler {{ type: "uniform" min: -1 max: 1 }} }} }}\n{loss}',
                         {"force_backward": False})
    x = rand(rng, (3, 4, 5))
    x.flat[:4] = [-0.5, 0.7, -0.50001, 0.70001]
    c["clip"] = ({"x": x}, 'layer { name: "clip" type: "Clip" bottom: "x" top: "y" '
                           'clip_param { min: -0.5 max: 0.7 } }', {})
    c["swish"] = ({"x": rand(rng, (2, 3, 4)) * 3}, "\n".join([
        'layer { name: "s1" type: "Swish" bottom: "x" top: "s1" }',
        'layer { name: "s2" type: "Swish" bottom: "x" top: "s2" swish_param { beta: 1.7 } }']), {})
    c["parameter"] = ({"x": rand(rng, (1,))}, "\n".join([
        'layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 3 } } }',
        'layer { name: "silence" type: "Silence" bottom: "x" }']), {})
    # Index and selector bottoms take no gradient (Caffe refuses force_backward there).
    c["batch_reindex"] = ({"x": rand(rng, (4, 3, 2)), "idx": np.array([3, 0, 3, 1, 3], np.float32),
                           "target": rand(rng, (5, 3, 2))},
                          'layer { name: "reindex" type: "BatchReindex" bottom: "x" bottom: "idx" top: "y" }\n'
                          + loss, {"force_backward": False})
    c["filter"] = ({"a": rand(rng, (5, 3)), "b": rand(rng, (5, 2, 2)),
                    "sel": np.array([1, 0, 1, 1, 0], np.float32)},
                   'layer { name: "filter" type: "Filter" bottom: "a" bottom: "b" bottom: "sel" '
                   'top: "fa" top: "fb" }\n'
                   'layer { name: "la" type: "Reduction" bottom: "fa" top: "la" loss_weight: 1 '
                   'reduction_param { operation: SUMSQ } }\n'
                   'layer { name: "lb" type: "Reduction" bottom: "fb" top: "lb" loss_weight: 0.5 }',
                   {"force_backward": False})
    c["im2col"] = ({"x": rand(rng, (2, 3, 7, 6))}, "\n".join([
        'layer { name: "i1" type: "Im2col" bottom: "x" top: "c1" '
        'convolution_param { kernel_size: 3 stride: 2 pad: 1 } }',
        'layer { name: "i2" type: "Im2col" bottom: "x" top: "c2" '
        'convolution_param { kernel_h: 2 kernel_w: 3 dilation: 2 pad_h: 0 pad_w: 2 } }']), {})
    c["lstm_unit"] = ({"c_prev": rand(rng, (1, 3, 4)), "gates": rand(rng, (1, 3, 16)),
                       "cont": np.array([[1, 0, 1]], np.float32)},
                      'layer { name: "unit" type: "LSTMUnit" bottom: "c_prev" bottom: "gates" '
                      'bottom: "cont" top: "c" top: "h" }', {})
    cont = np.array([[0, 0, 1], [1, 1, 1], [1, 0, 1], [1, 1, 0]], np.float32)  # T x N
    for kind in ("RNN", "LSTM"):
        low = kind.lower()
        rp = f'recurrent_param {{ num_output: 5 {G} }}'
        c[low] = ({"x": rand(rng, (4, 3, 6)), "cont": cont},
                  f'layer {{ name: "{low}" type: "{kind}" bottom: "x" bottom: "cont" top: "y" {rp} }}',
                  {"again": True})
        c[f"{low}_static"] = ({"x": rand(rng, (4, 3, 6)), "cont": cont, "xs": rand(rng, (3, 2))},
                              f'layer {{ name: "{low}" type: "{kind}" bottom: "x" bottom: "cont" '
                              f'bottom: "xs" top: "y" {rp} }}', {})
        hidden = {"h0": rand(rng, (1, 3, 5))}
        tops = ' top: "hT"'
        if kind == "LSTM":
            hidden["c0"] = rand(rng, (1, 3, 5))
            tops += ' top: "cT"'
        bottoms = "".join(f' bottom: "{b}"' for b in hidden)
        rp_hidden = f'recurrent_param {{ num_output: 5 expose_hidden: true {G} }}'
        c[f"{low}_hidden"] = ({"x": rand(rng, (4, 3, 6)), "cont": cont, **hidden},
                              f'layer {{ name: "{low}" type: "{kind}" bottom: "x" bottom: "cont"{bottoms} '
                              f'top: "y"{tops} {rp_hidden} }}', {})
    # Two-bottom layers on bottoms of one count and different shapes (flat arithmetic).
    c["euclidean_flat"] = ({"pred": rand(rng, (6, 1)), "label": rand(rng, (6,))},
                           'layer { name: "loss" type: "EuclideanLoss" bottom: "pred" bottom: "label" top: "loss" }',
                           {})
    c["contrastive_flat"] = ({"a": rand(rng, (4, 3)), "b": rand(rng, (4, 3, 1, 1)),
                              "sim": np.array([1, 0, 0, 1], np.float32).reshape(4, 1, 1, 1)},
                             'layer { name: "loss" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim" '
                             'top: "loss" contrastive_loss_param { margin: 2 } }', {})
    c["sigmoid_ce_flat"] = ({"x": rand(rng, (3, 4)), "t": (rng.random((3, 2, 2)) > 0.5).astype(np.float32)},
                            'layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" '
                            'top: "loss" }', {})
    c["softmax_loss_label_shape"] = (
        {"x": rand(rng, (4, 5)), "label": np.array([1, 4, 0, 2], np.float32).reshape(4, 1, 1, 1)},
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" }', {})
    c["accuracy_label_shape"] = (  # Accuracy has no backward: no force_backward
        {"x": rand(rng, (6, 5)), "label": np.array([1, 4, 0, 2, 2, 3], np.float32).reshape(2, 3)},
        'layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" '
        'accuracy_param { top_k: 2 } }', {"force_backward": False})
    c["scale_bias_bottoms"] = ({"x": rand(rng, (2, 3, 4)), "s": rand(rng, (3, 4)), "b": rand(rng, (3,))}, "\n".join([
        'layer { name: "scale" type: "Scale" bottom: "x" bottom: "s" top: "scaled" }',
        'layer { name: "bias" type: "Bias" bottom: "scaled" bottom: "b" top: "y" }']), {})
    c["concat_axis"] = ({"a": rand(rng, (2, 3, 4)), "b": rand(rng, (2, 5, 4))},
                        'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "y" }', {})
    c["hinge_label_shape"] = (
        {"x": rand(rng, (4, 5)), "label": np.array([1, 4, 0, 2], np.float32).reshape(4, 1, 1, 1)},
        'layer { name: "loss" type: "HingeLoss" bottom: "x" bottom: "label" top: "loss" '
        'hinge_loss_param { norm: L2 } }', {})
    prob = rng.random((4, 5)).astype(np.float32) + 0.1
    c["multinomial_label_shape"] = (
        {"p": prob / prob.sum(1, keepdims=True), "label": np.array([3, 0, 4, 4], np.float32).reshape(4, 1, 1, 1)},
        'layer { name: "loss" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label" top: "loss" }', {})
    # Caffe refuses force_backward into H: a learned layer before the loss drives the backward.
    c["infogain_label_shape"] = (
        {"f": rand(rng, (4, 3)), "label": np.array([[2], [0], [4], [1]], np.float32),
         "h": rng.random((1, 1, 5, 5)).astype(np.float32)},
        f'layer {{ name: "ip" type: "InnerProduct" bottom: "f" top: "x" inner_product_param {{ num_output: 5 {G} }} }}\n'
        'layer { name: "loss" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "h" top: "loss" }',
        {"force_backward": False})
    # The layer types the SSDH nets use or that older tests cover by hand, here against Caffe too.
    x = rand(rng, (2, 3, 4, 5))
    x.flat[:3] = [0.0, 1.0, -1.0]  # kinks of AbsVal, ReLU, Threshold
    c["neurons"] = ({"x": x, "p": np.abs(rand(rng, (2, 3, 4, 5))) + 0.1}, "\n".join([
        'layer { name: "abs" type: "AbsVal" bottom: "x" top: "abs" }',
        'layer { name: "bnll" type: "BNLL" bottom: "x" top: "bnll" }',
        'layer { name: "elu" type: "ELU" bottom: "x" top: "elu" elu_param { alpha: 0.7 } }',
        'layer { name: "exp" type: "Exp" bottom: "x" top: "exp" exp_param { base: 2 scale: 0.5 shift: 0.1 } }',
        'layer { name: "exp_e" type: "Exp" bottom: "x" top: "exp_e" }',
        'layer { name: "log" type: "Log" bottom: "p" top: "log" log_param { base: 10 scale: 2 shift: 0.5 } }',
        'layer { name: "log_e" type: "Log" bottom: "p" top: "log_e" }',
        'layer { name: "power" type: "Power" bottom: "p" top: "power" power_param { power: 1.5 scale: 2 shift: 0.5 } }',
        'layer { name: "tanh" type: "TanH" bottom: "x" top: "tanh" }',
        'layer { name: "sigmoid" type: "Sigmoid" bottom: "x" top: "sigmoid" }',
        'layer { name: "relu" type: "ReLU" bottom: "x" top: "relu" relu_param { negative_slope: 0.1 } }',
        'layer { name: "prelu" type: "PReLU" bottom: "x" top: "prelu" prelu_param { filler { type: "uniform" } } }',
        'layer { name: "prelu1" type: "PReLU" bottom: "x" top: "prelu1" prelu_param { channel_shared: true } }',
        'layer { name: "drop" type: "Dropout" bottom: "x" top: "drop" }']), {})
    c["shapes_and_blocks"] = ({"x": rand(rng, (2, 6, 3, 2)), "y": rand(rng, (2, 6, 3, 2))}, "\n".join([
        'layer { name: "flat" type: "Flatten" bottom: "x" top: "flat" flatten_param { axis: 1 end_axis: 2 } }',
        'layer { name: "split" type: "Split" bottom: "x" top: "s1" top: "s2" }',
        'layer { name: "slice" type: "Slice" bottom: "s1" top: "a" top: "b" top: "c" '
        'slice_param { axis: 1 slice_point: 1 slice_point: 4 } }',
        'layer { name: "concat" type: "Concat" bottom: "c" bottom: "a" top: "cat" }',
        'layer { name: "sum" type: "Eltwise" bottom: "s2" bottom: "y" top: "sum" '
        'eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }',
        'layer { name: "prod" type: "Eltwise" bottom: "x" bottom: "y" top: "prod" eltwise_param { operation: PROD } }',
        'layer { name: "max" type: "Eltwise" bottom: "x" bottom: "y" top: "max" eltwise_param { operation: MAX } }',
        'layer { name: "softmax" type: "Softmax" bottom: "y" top: "softmax" softmax_param { axis: 2 } }',
        'layer { name: "mvn" type: "MVN" bottom: "y" top: "mvn" }',
        'layer { name: "lrn" type: "LRN" bottom: "y" top: "lrn" '
        'lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }',
        'layer { name: "lrn_x" type: "LRN" bottom: "y" top: "lrn_x" lrn_param { local_size: 5 alpha: 0.3 beta: 0.6 k: 2 } }',
        'layer { name: "dummy" type: "DummyData" top: "dummy" '
        'dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "constant" value: 0.25 } } }']), {})
    c["affine_and_norm"] = ({"x": rand(rng, (4, 3, 2, 2))}, "\n".join([
        'layer { name: "scale" type: "Scale" bottom: "x" top: "scaled" '
        'scale_param { bias_term: true filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }',
        'layer { name: "bias" type: "Bias" bottom: "x" top: "biased" bias_param { axis: 1 num_axes: 2 '
        'filler { type: "gaussian" std: 1 } } }',
        'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "bn" batch_norm_param { use_global_stats: false } }',
        'layer { name: "bn_global" type: "BatchNorm" bottom: "x" top: "bn_global" }']),
        {"init": {"bn_global/0": np.array([0.5, -1.0, 2.0], np.float32) * 4,
                  "bn_global/1": np.array([1.0, 2.0, 0.5], np.float32) * 4,
                  "bn_global/2": np.array([4.0], np.float32)}})
    c["argmax"] = ({"x": np.round(rand(rng, (3, 7)), 1)}, "\n".join([  # ties on rounded values
        'layer { name: "top2" type: "ArgMax" bottom: "x" top: "top2" argmax_param { top_k: 2 } }',
        'layer { name: "vals" type: "ArgMax" bottom: "x" top: "vals" argmax_param { top_k: 3 out_max_val: true } }',
        'layer { name: "axis" type: "ArgMax" bottom: "x" top: "axis1" argmax_param { axis: 1 top_k: 2 } }',
        'layer { name: "threshold" type: "Threshold" bottom: "x" top: "threshold" threshold_param { threshold: 0.2 } }']),
        {"force_backward": False})  # ArgMax and Threshold have no backward in Caffe
    # A fully convolutional net given inputs of other sizes after construction.
    fcn = "\n".join([
        f'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        f'convolution_param {{ num_output: 4 kernel_size: 3 stride: 2 pad: 1 {G} }} }}',
        'layer { name: "relu" type: "ReLU" bottom: "conv" top: "relu" }',
        'layer { name: "pool" type: "Pooling" bottom: "relu" top: "pool" '
        'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }',
        'layer { name: "score" type: "Convolution" bottom: "pool" top: "score" '
        f'convolution_param {{ num_output: 3 kernel_size: 1 {G} }} }}',
        'layer { name: "up" type: "Deconvolution" bottom: "score" top: "up" '
        'convolution_param { num_output: 3 group: 3 kernel_size: 8 stride: 4 bias_term: false '
        'weight_filler { type: "bilinear" } } param { lr_mult: 0 } }',
        'layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "out" crop_param { axis: 2 offset: 2 } }',
        'layer { name: "sum" type: "Reduction" bottom: "out" top: "total" reduction_param { axis: 1 } }',
        'layer { name: "flat" type: "Reshape" bottom: "total" top: "flat" reshape_param { shape { dim: -1 } } }'])
    c["fcn_reshape"] = ({"data": rand(rng, (2, 3, 20, 24))}, fcn,
                        {"reshape": [{"data": rand(rng, (1, 3, 33, 17))}, {"data": rand(rng, (3, 3, 12, 12))}]})
    return c


WINDOWS = os.path.join(HERE, "window_data")


def window_data_cases():
    """WindowData on three small PPM images (written here once) with one
    foreground and one background window per file, so that the batch does not
    depend on Caffe's random draws (except the mirror case, which tests compare
    as a set): {case: (window file text, layer text)}."""
    os.makedirs(WINDOWS, exist_ok=True)
    rng = np.random.default_rng(7)
    for i, (h, w) in enumerate(((40, 50), (37, 29), (64, 48))):
        path = os.path.join(WINDOWS, f"im{i}.ppm")
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(b"P6\n%d %d\n255\n" % (w, h) + pixels.tobytes())
    mean = rng.uniform(0, 255, (1, 3, 24, 24)).astype(np.float32)
    path = os.path.join(WINDOWS, "mean.binaryproto")
    if not os.path.exists(path):
        blob = caffe.proto.caffe_pb2.BlobProto(num=1, channels=3, height=24, width=24)
        blob.data.extend(mean.ravel().tolist())
        with open(path, "wb") as f:
            f.write(blob.SerializeToString())

    def windows(fg, bg, image=0):
        size = {0: "3 40 50", 1: "3 37 29", 2: "3 64 48"}
        other = (image + 1) % 3
        return (f"# 0\nim{image}.ppm\n{size[image]}\n2\n3 0.8 {' '.join(map(str, fg))}\n"
                f"5 0.6 0 0 3 3\n"  # between the thresholds: unused
                f"# 1\nim{other}.ppm\n{size[other]}\n1\n1 0.1 {' '.join(map(str, bg))}\n")

    def layer(window_param, transform):
        return (f'layer {{ name: "win" type: "WindowData" top: "data" top: "label" '
                f'window_data_param {{ source: "{{source}}" root_folder: "{{root}}/" batch_size: 6 fg_fraction: 0.5 '
                f'fg_threshold: 0.7 bg_threshold: 0.3 {window_param} }} transform_param {{ {transform} }} }}')
    return {
        "window_warp": (windows((5, 4, 30, 20), (2, 3, 20, 30)), layer("", "crop_size: 16")),
        "window_context": (windows((1, 2, 40, 30), (0, 0, 28, 36)),
                           layer("context_pad: 3 scale: 0.5", "crop_size: 20")),
        "window_square": (windows((10, 2, 20, 38), (3, 20, 27, 33), image=2),
                          layer('crop_mode: "square" context_pad: 2 cache_images: true', "crop_size: 18")),
        "window_mean_file": (windows((4, 6, 44, 30), (1, 1, 12, 30)),
                             layer("context_pad: 4", 'crop_size: 20 mean_file: "{root}/mean.binaryproto"')),
        "window_mean_value": (windows((0, 0, 49, 39), (5, 5, 9, 9)),
                              layer("scale: 0.25", "crop_size: 12 mean_value: 100 mean_value: 120 mean_value: 90")),
        "window_mirror": (windows((1, 2, 40, 30), (0, 0, 28, 36)),
                          layer("context_pad: 3", "crop_size: 20 mirror: true")),
    }


def make_window_refs(only, index):
    for name, (windows, layer) in window_data_cases().items():
        if only and name not in only:
            continue
        source = os.path.join(WINDOWS, f"{name}.txt")
        with open(source, "w") as f:
            f.write(windows)
        text = 'name: "ref"\n' + layer.replace("{source}", source).replace("{root}", WINDOWS) + "\n"
        with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
            f.write(text)
        net = caffe.Net(f.name, caffe.TRAIN)
        os.unlink(f.name)
        record = {}
        for k in range(2):
            net.forward()
            record[f"batch/{k}/data"] = net.blobs["data"].data.copy()
            record[f"batch/{k}/label"] = net.blobs["label"].data.copy()
        np.savez_compressed(os.path.join(HERE, f"{name}.npz"), **record)
        index[name] = {"prototxt": layer + "\n", "window_file": f"{name}.txt"}
        print(name, "ok")


def run(net, inputs, rng, outputs, prefix, record):
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
        record[f"{prefix}input/{name}"] = value
    net.forward()
    for name in net.blobs:
        record[f"{prefix}blob/{name}"] = net.blobs[name].data.copy()
    diffs = {}
    for name in outputs:
        loss_weight = net.blob_loss_weights[name]
        if loss_weight:
            diffs[name] = np.full(net.blobs[name].shape, loss_weight, np.float32)
        else:
            diffs[name] = rng.standard_normal(net.blobs[name].shape).astype(np.float32)
        record[f"{prefix}topdiff/{name}"] = diffs[name]
    # Blob diffs are left as forward left them (HingeLoss keeps its margins there for
    # its backward, as in a real training step); param diffs start from 0.
    for layer in net.params:
        for blob in net.params[layer]:
            blob.diff[...] = 0
    for name, value in diffs.items():
        net.blobs[name].diff[...] = value
    net.backward()
    for name in inputs:
        record[f"{prefix}diff/{name}"] = net.blobs[name].diff.copy()
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            record[f"{prefix}paramdiff/{layer}/{i}"] = blob.diff.copy()


def schema_and_types():
    """master_schema.json: every message of Caffe's caffe.proto with each field's
    number, label, type, type name and default (from pycaffe's caffe_pb2), and the
    layer types Caffe registers (caffe.layer_type_list())."""
    from schema import describe  # beside this script

    messages = describe(caffe.proto.caffe_pb2)
    with open(os.path.join(HERE, "master_schema.json"), "w") as f:
        json.dump({"messages": messages, "layer_types": sorted(caffe.layer_type_list())}, f, indent=1,
                  sort_keys=True)


def main(only=()):
    caffe.set_mode_cpu()
    schema_and_types()
    caffe.set_random_seed(29)
    index = {}
    for name, (inputs, body, extra) in cases().items():
        if only and name not in only:
            continue
        text = net_text({k: v.shape for k, v in inputs.items()}, body, extra.get("force_backward", True))
        with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
            f.write(text)
        net = caffe.Net(f.name, caffe.TEST)
        os.unlink(f.name)
        rng = np.random.default_rng(sum(map(ord, name)))
        for key, value in extra.get("init", {}).items():
            layer, i = key.split("/")
            net.params[layer][int(i)].data[...] = value
        record = {}
        for layer, blobs in net.params.items():
            for i, blob in enumerate(blobs):
                record[f"param/{layer}/{i}"] = blob.data.copy()
        outputs = list(net.outputs)
        run(net, inputs, rng, outputs, "", record)
        if extra.get("again"):
            net.forward()
            for blob in net.blobs:
                record[f"again/{blob}"] = net.blobs[blob].data.copy()
        for k, other in enumerate(extra.get("reshape", ())):
            for blob, value in other.items():
                net.blobs[blob].reshape(*value.shape)
            net.reshape()
            run(net, other, rng, outputs, f"reshaped/{k}/", record)
        np.savez_compressed(os.path.join(HERE, f"{name}.npz"), **record)
        if name in ("rnn_static", "lstm_static"):  # trained weights as Caffe writes them
            net.save(os.path.join(HERE, f"{name}.caffemodel"))
        index[name] = {"prototxt": text, "outputs": outputs,
                       "shapes": {b: list(net.blobs[b].shape) for b in net.blobs}}
        print(name, "ok")
    make_window_refs(only, index)
    path = os.path.join(HERE, "cases.json")
    if only and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        old.update(index)
        index = old
    with open(path, "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
