"""Caffe compatibility: fillers (and, as it grows, the proto schema, prototxt
and caffemodel I/O, the network builder and the solver)."""
