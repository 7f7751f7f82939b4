"""The nets of the speed comparison with real Caffe, written as Caffe prototxt text from
their published architectures (layer for layer as the model-zoo deploy nets: the same
layer types, shapes, in-place ReLUs and BatchNorm + Scale pairs), so that caffe.bin and
the port read the same file.

    write_net(name, batch, path)   name: lenet, alexnet, googlenet, resnet50,
                                   squeezenet11, mobilenet; force_backward: true

Weights are Caffe's fillers (xavier / msra / constant), the same kind in both.
"""


class Net:
    def __init__(self, name, shape):
        self.lines = [f'name: "{name}"', "force_backward: true",
                      'layer { name: "data" type: "Input" top: "data" '
                      f'input_param {{ shape {{ {" ".join(f"dim: {d}" for d in shape)} }} }} }}']

    def layer(self, name, kind, bottoms, tops, params=""):
        bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
        tops = [tops] if isinstance(tops, str) else tops
        text = f'layer {{ name: "{name}" type: "{kind}" '
        text += " ".join(f'bottom: "{b}"' for b in bottoms) + " " + " ".join(f'top: "{t}"' for t in tops)
        self.lines.append(text + (f" {params}" if params else "") + " }")
        return tops[0]

    def conv(self, name, bottom, out, kernel, stride=1, pad=0, group=1, bias=True, filler="xavier"):
        params = (f"convolution_param {{ num_output: {out} kernel_size: {kernel} stride: {stride} pad: {pad} "
                  + (f"group: {group} " if group > 1 else "") + ("" if bias else "bias_term: false ")
                  + f'weight_filler {{ type: "{filler}" }}'
                  + (' bias_filler { type: "constant" value: 0.1 }' if bias else "") + " }")
        return self.layer(name, "Convolution", bottom, name, params)

    def relu(self, name, blob):
        return self.layer(name, "ReLU", blob, blob)

    def pool(self, name, bottom, kind, kernel=0, stride=1, pad=0, global_pool=False):
        size = "global_pooling: true" if global_pool else f"kernel_size: {kernel} stride: {stride} pad: {pad}"
        return self.layer(name, "Pooling", bottom, name, f"pooling_param {{ pool: {kind} {size} }}")

    def lrn(self, name, bottom, size=5):
        return self.layer(name, "LRN", bottom, name, f"lrn_param {{ local_size: {size} alpha: 0.0001 beta: 0.75 }}")

    def fc(self, name, bottom, out):
        return self.layer(name, "InnerProduct", bottom, name,
                          f'inner_product_param {{ num_output: {out} weight_filler {{ type: "xavier" }} '
                          'bias_filler { type: "constant" value: 0.1 } }')

    def dropout(self, name, blob, ratio=0.5):
        return self.layer(name, "Dropout", blob, blob, f"dropout_param {{ dropout_ratio: {ratio} }}")

    def bn_scale(self, name, blob):
        """ResNet's and MobileNet's BatchNorm + Scale, in place. Batch statistics (the
        TRAIN phase's default, what training runs): the deploy nets' global statistics
        would divide by the unfilled variance, 0."""
        self.layer(f"bn_{name}", "BatchNorm", blob, blob)
        return self.layer(f"scale_{name}", "Scale", blob, blob, "scale_param { bias_term: true }")

    def text(self):
        return "\n".join(self.lines) + "\n"


def lenet(batch):
    n = Net("LeNet", [batch, 1, 28, 28])
    x = n.pool("pool1", n.conv("conv1", "data", 20, 5), "MAX", 2, 2)
    x = n.pool("pool2", n.conv("conv2", x, 50, 5), "MAX", 2, 2)
    x = n.relu("relu1", n.fc("ip1", x, 500))
    n.layer("prob", "Softmax", n.fc("ip2", x, 10), "prob")
    return n


def alexnet(batch):
    n = Net("AlexNet", [batch, 3, 227, 227])
    x = n.relu("relu1", n.conv("conv1", "data", 96, 11, 4))
    x = n.pool("pool1", n.lrn("norm1", x), "MAX", 3, 2)
    x = n.relu("relu2", n.conv("conv2", x, 256, 5, pad=2, group=2))
    x = n.pool("pool2", n.lrn("norm2", x), "MAX", 3, 2)
    x = n.relu("relu3", n.conv("conv3", x, 384, 3, pad=1))
    x = n.relu("relu4", n.conv("conv4", x, 384, 3, pad=1, group=2))
    x = n.pool("pool5", n.relu("relu5", n.conv("conv5", x, 256, 3, pad=1, group=2)), "MAX", 3, 2)
    x = n.dropout("drop6", n.relu("relu6", n.fc("fc6", x, 4096)))
    x = n.dropout("drop7", n.relu("relu7", n.fc("fc7", x, 4096)))
    n.layer("prob", "Softmax", n.fc("fc8", x, 1000), "prob")
    return n


def googlenet(batch):
    n = Net("GoogleNet", [batch, 3, 224, 224])
    x = n.relu("conv1/relu_7x7", n.conv("conv1/7x7_s2", "data", 64, 7, 2, 3))
    x = n.lrn("pool1/norm1", n.pool("pool1/3x3_s2", x, "MAX", 3, 2))
    x = n.relu("conv2/relu_3x3_reduce", n.conv("conv2/3x3_reduce", x, 64, 1))
    x = n.lrn("conv2/norm2", n.relu("conv2/relu_3x3", n.conv("conv2/3x3", x, 192, 3, pad=1)))
    x = n.pool("pool2/3x3_s2", x, "MAX", 3, 2)

    def inception(name, x, c1, c3r, c3, c5r, c5, pp):
        a = n.relu(f"{name}/relu_1x1", n.conv(f"{name}/1x1", x, c1, 1))
        b = n.relu(f"{name}/relu_3x3_reduce", n.conv(f"{name}/3x3_reduce", x, c3r, 1))
        b = n.relu(f"{name}/relu_3x3", n.conv(f"{name}/3x3", b, c3, 3, pad=1))
        c = n.relu(f"{name}/relu_5x5_reduce", n.conv(f"{name}/5x5_reduce", x, c5r, 1))
        c = n.relu(f"{name}/relu_5x5", n.conv(f"{name}/5x5", c, c5, 5, pad=2))
        d = n.pool(f"{name}/pool", x, "MAX", 3, 1, 1)
        d = n.relu(f"{name}/relu_pool_proj", n.conv(f"{name}/pool_proj", d, pp, 1))
        return n.layer(f"{name}/output", "Concat", [a, b, c, d], f"{name}/output")

    x = inception("inception_3a", x, 64, 96, 128, 16, 32, 32)
    x = inception("inception_3b", x, 128, 128, 192, 32, 96, 64)
    x = n.pool("pool3/3x3_s2", x, "MAX", 3, 2)
    for name, widths in (("4a", (192, 96, 208, 16, 48, 64)), ("4b", (160, 112, 224, 24, 64, 64)),
                         ("4c", (128, 128, 256, 24, 64, 64)), ("4d", (112, 144, 288, 32, 64, 64)),
                         ("4e", (256, 160, 320, 32, 128, 128))):
        x = inception(f"inception_{name}", x, *widths)
    x = n.pool("pool4/3x3_s2", x, "MAX", 3, 2)
    x = inception("inception_5a", x, 256, 160, 320, 32, 128, 128)
    x = inception("inception_5b", x, 384, 192, 384, 48, 128, 128)
    x = n.dropout("pool5/drop_7x7_s1", n.pool("pool5/7x7_s1", x, "AVE", 7, 1), 0.4)
    n.layer("prob", "Softmax", n.fc("loss3/classifier", x, 1000), "prob")
    return n


def resnet50(batch):
    n = Net("ResNet-50", [batch, 3, 224, 224])
    x = n.bn_scale("conv1", n.conv("conv1", "data", 64, 7, 2, 3, bias=False, filler="msra"))
    x = n.pool("pool1", n.relu("conv1_relu", x), "MAX", 3, 2)
    for stage, blocks, width in ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512)):
        for block in range(blocks):
            name = f"{stage}{'abcdef'[block]}"
            stride = 2 if block == 0 and stage > 2 else 1
            if block == 0:
                shortcut = n.bn_scale(f"{name}_branch1", n.conv(f"res{name}_branch1", x, 4 * width, 1, stride,
                                                                bias=False, filler="msra"))
            else:
                shortcut = x
            y = n.conv(f"res{name}_branch2a", x, width, 1, stride, bias=False, filler="msra")
            y = n.relu(f"res{name}_branch2a_relu", n.bn_scale(f"{name}_branch2a", y))
            y = n.conv(f"res{name}_branch2b", y, width, 3, 1, 1, bias=False, filler="msra")
            y = n.relu(f"res{name}_branch2b_relu", n.bn_scale(f"{name}_branch2b", y))
            y = n.bn_scale(f"{name}_branch2c", n.conv(f"res{name}_branch2c", y, 4 * width, 1, bias=False,
                                                      filler="msra"))
            x = n.relu(f"res{name}_relu", n.layer(f"res{name}", "Eltwise", [shortcut, y], f"res{name}"))
    x = n.pool("pool5", x, "AVE", 7, 1)
    n.layer("prob", "Softmax", n.fc("fc1000", x, 1000), "prob")
    return n


def squeezenet11(batch):
    n = Net("SqueezeNet-1.1", [batch, 3, 227, 227])
    x = n.pool("pool1", n.relu("relu_conv1", n.conv("conv1", "data", 64, 3, 2)), "MAX", 3, 2)

    def fire(name, x, squeeze, expand):
        s = n.relu(f"{name}/relu_squeeze1x1", n.conv(f"{name}/squeeze1x1", x, squeeze, 1))
        a = n.relu(f"{name}/relu_expand1x1", n.conv(f"{name}/expand1x1", s, expand, 1))
        b = n.relu(f"{name}/relu_expand3x3", n.conv(f"{name}/expand3x3", s, expand, 3, pad=1))
        return n.layer(f"{name}/concat", "Concat", [a, b], f"{name}/concat")

    x = fire("fire3", fire("fire2", x, 16, 64), 16, 64)
    x = n.pool("pool3", x, "MAX", 3, 2)
    x = fire("fire5", fire("fire4", x, 32, 128), 32, 128)
    x = n.pool("pool5", x, "MAX", 3, 2)
    for name, squeeze, expand in (("fire6", 48, 192), ("fire7", 48, 192), ("fire8", 64, 256), ("fire9", 64, 256)):
        x = fire(name, x, squeeze, expand)
    x = n.dropout("drop9", x)
    x = n.relu("relu_conv10", n.conv("conv10", x, 1000, 1, filler="gaussian"))
    n.layer("prob", "Softmax", n.pool("pool10", x, "AVE", global_pool=True), "prob")
    return n


def mobilenet(batch):
    n = Net("MobileNet", [batch, 3, 224, 224])
    x = n.relu("relu1", n.bn_scale("conv1", n.conv("conv1", "data", 32, 3, 2, 1, bias=False, filler="msra")))
    channels = 32
    for i, (out, stride) in enumerate(((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
                                       (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))):
        name = f"conv{i + 2}"
        x = n.conv(f"{name}_1/dw", x, channels, 3, stride, 1, group=channels, bias=False, filler="msra")
        x = n.relu(f"relu{i + 2}_1", n.bn_scale(f"{name}_1/dw", x))
        x = n.conv(f"{name}_2/sep", x, out, 1, bias=False, filler="msra")
        x = n.relu(f"relu{i + 2}_2", n.bn_scale(f"{name}_2/sep", x))
        channels = out
    x = n.pool("pool6", x, "AVE", global_pool=True)
    x = n.conv("fc7", x, 1000, 1, filler="msra")
    n.layer("prob", "Softmax", x, "prob")
    return n


NETS = {"lenet": lenet, "alexnet": alexnet, "googlenet": googlenet, "resnet50": resnet50,
        "squeezenet11": squeezenet11, "mobilenet": mobilenet}


def write_net(name, batch, path):
    with open(path, "w") as f:
        f.write(NETS[name](batch).text())
    return path
