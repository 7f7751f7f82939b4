"""Blob and weight shapes of the collected nets, by real BVLC Caffe (master 9b891540).

    source ../shared/tools/caffe-cpu/env.sh
    $CAFFE_PY tests/zoo/make_shapes.py           # rewrites tests/zoo/shapes.json

For each net: the shapes at its declared inputs, then after reshaping its inputs
(net.blobs[...].reshape, net.reshape()) to the sizes in RESHAPES. Tests compare the
port's shapes with these; they never run Caffe.
"""
import glob
import json
import os

import caffe

HERE = os.path.dirname(os.path.abspath(__file__))
RESHAPES = {
    "fcn8s_voc.deploy": [{"data": [1, 3, 64, 64]}, {"data": [2, 3, 50, 77]}],
    "hed.deploy": [{"data": [1, 3, 64, 64]}, {"data": [1, 3, 45, 33]}],
    "lrcn_word_to_preds.deploy": [{"cont_sentence": [1, 2], "input_sentence": [1, 2], "image_features": [2, 1000]}],
    "caffenet_spp.deploy": [{"data": [2, 3, 180, 240]}, {"data": [1, 3, 300, 200]}],
}


def shapes(net):
    return {"blobs": {name: list(blob.shape) for name, blob in net.blobs.items()},
            "params": {name: [list(b.shape) for b in blobs] for name, blobs in net.params.items()}}


def main():
    caffe.set_mode_cpu()
    out = {}
    for path in sorted(glob.glob(os.path.join(HERE, "*.prototxt"))):
        name = os.path.basename(path)[:-len(".prototxt")]
        net = caffe.Net(path, caffe.TEST)
        record = {"declared": shapes(net), "reshaped": []}
        for inputs in RESHAPES.get(name, []):
            for blob, shape in inputs.items():
                net.blobs[blob].reshape(*shape)
            net.reshape()
            record["reshaped"].append({"inputs": inputs, **shapes(net)})
        out[name] = record
        del net
        print(name, "ok")
    with open(os.path.join(HERE, "shapes.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
