"""CaffeNet: a Caffe NetParameter (prototxt) as a torch.nn.Module.

Caffe's net semantics: include/exclude rules by phase, level and stages;
layers run in file order; in-place layers (top == bottom) overwrite the blob;
one blob read by several layers gets the gradients added (autograd does that;
the blob dictionary also carries Caffe's split-blob names for comparison with
Caffe's own dumps); ``loss_weight`` on any top (loss layers default to 1);
``propagate_down: false`` stops the gradient to that bottom.
"""
import collections
import math
import os

import numpy as np
import torch
from torch import nn

from ssdh_port.caffe import (
    data_layers,  # noqa: F401  (registers Data, ImageData, HDF5Data, WindowData)
    recurrent,  # noqa: F401  (registers LSTMUnit, RNN, LSTM)
    wire,
)
from ssdh_port.caffe import io as caffe_io
from ssdh_port.caffe.layers import LAYERS, CaffeLayer, Input, LayerError
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.errors import SSDHError
from ssdh_port.fileio import pt_problem
from ssdh_port.progress import logger

PHASES = ("TRAIN", "TEST")


class NetOutput(collections.OrderedDict):
    """Blobs by Caffe name, in the order Caffe creates them; ``loss`` holds the
    weighted sum of the loss tops (None when the net has none)."""

    loss = None


def state_meets_rule(phase, level, stages, rule):
    """Caffe's Net::StateMeetsRule."""
    if rule.HasField("phase") and pb.Phase.Name(rule.phase) != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(stage not in stages for stage in rule.stage):
        return False
    return not any(stage in stages for stage in rule.not_stage)


def layer_included(layer, phase, level=0, stages=()):
    """Caffe's Net::FilterNet decision for one layer."""
    if layer.include and layer.exclude:
        raise LayerError(f"layer '{layer.name}' gives both include and exclude rules")
    if layer.include:
        return any(state_meets_rule(phase, level, stages, r) for r in layer.include)
    return not any(state_meets_rule(phase, level, stages, r) for r in layer.exclude)


def load_net_parameter(net):
    """A NetParameter, a prototxt path, or prototxt text -> upgraded NetParameter."""
    if isinstance(net, pb.NetParameter):
        copy = pb.NetParameter()
        copy.CopyFrom(net)
        return caffe_io.upgrade_net(copy)
    if isinstance(net, (str, os.PathLike)) and os.path.exists(net):
        return caffe_io.read_net_prototxt(os.fspath(net))
    if isinstance(net, str) and ("layer" in net or "input" in net):
        return caffe_io.parse_net_prototxt(net)
    raise caffe_io.CaffeFileError(f"{net}: no such prototxt file")


class CaffeNet(nn.Module):
    """Build a Caffe net for one phase; optionally load trained weights.

    net: prototxt path, prototxt text or NetParameter. phase: "TRAIN" or "TEST".
    weights: .caffemodel / .caffemodel.h5 / .pt path, or a NetParameter with blobs.
    input_shapes: {blob: shape} overriding the shapes of Input layers.
    """

    def __init__(self, net, phase="TEST", weights=None, stages=(), level=0, input_shapes=None):
        super().__init__()
        if phase not in PHASES:
            raise SSDHError(f"phase must be one of {PHASES}, got {phase!r}")
        self.net_param = load_net_parameter(net)
        # The prototxt file, to name it in errors (None for text or a NetParameter).
        self.source = os.fspath(net) if isinstance(net, (str, os.PathLike)) and os.path.exists(net) else None
        self.phase = phase
        self.name = self.net_param.name
        self.layers = nn.ModuleList()
        self.bottoms, self.tops, self.loss_weights, self.propagate = [], [], [], []
        self.blob_shapes = collections.OrderedDict()
        overrides = dict(input_shapes or {})
        self._owners, self._given = {}, {}  # param sharing while layers are added
        self.param_owner = collections.OrderedDict()
        for layer in self.net_param.layer:
            if layer_included(layer, phase, level, stages):
                self._add_layer(layer, overrides)
        data_layers.check_paired_databases(self.layers)
        self._resolve_params()
        del self._owners, self._given
        self.forced_only = self._forced_only_bottoms()
        self.split_names = self._split_names()
        # Net::Reshape: the shapes of every blob per set of input shapes (see reshape()).
        self._shape_sets = {self._input_key(): self._current_shapes()}
        # Follows .to()/.cuda(): data layers read on the CPU, their batches move here.
        self.register_buffer("_device_marker", torch.zeros(0), persistent=False)
        # 4-D blobs from data and input layers take this layout (see use_channels_last).
        self.memory_format = torch.contiguous_format
        self.load_report = None
        self._compiled = None  # set by compile_layers()
        if weights is not None:
            self.load_report = self.copy_from(weights)

    # ------------------------------------------------------------ building

    def _add_layer(self, param, overrides):
        cls = LAYERS.get(param.type)
        if cls is None:
            raise LayerError(f"{self.source + ': ' if self.source else ''}layer '{param.name}': "
                             + unknown_type(param.type))
        for bottom in param.bottom:
            if bottom not in self.blob_shapes:
                raise LayerError(
                    f"layer '{param.name}': bottom '{bottom}' is not produced by any earlier layer")
        for top in param.top:
            if top in self.blob_shapes and top not in param.bottom:
                raise LayerError(
                    f"layer '{param.name}': top '{top}' is produced twice (only in-place "
                    "layers, whose top is also their bottom, may reuse a name)")
        if param.propagate_down and len(param.propagate_down) != len(param.bottom):
            raise LayerError(
                f"layer '{param.name}': {len(param.propagate_down)} propagate_down values "
                f"for {len(param.bottom)} bottoms")
        bottom_shapes = [self.blob_shapes[b] for b in param.bottom]
        if not param.top and cls.is_loss:
            # Caffe's AutoTopBlobs: a loss layer without a top (old nets) gets one.
            name, k = "(automatic)", 1
            while name in self.blob_shapes:
                name, k = f"(automatic)#{k}", k + 1
            param = _with_top(param, name)
        module = cls(param, bottom_shapes, self.phase)
        self._share_params(module)  # Caffe's AppendParam, as the layer is set up
        top_shapes = self._top_shapes(module, bottom_shapes, overrides)
        if len(top_shapes) != len(param.top):
            raise LayerError(
                f"layer '{param.name}' ({param.type}) makes {len(top_shapes)} tops, the "
                f"prototxt names {len(param.top)}")
        for top, shape in zip(module.param.top, top_shapes):
            self.blob_shapes[top] = tuple(shape)
        self.layers.append(module)
        self.bottoms.append(list(param.bottom))
        self.tops.append(list(module.param.top))
        self.propagate.append(list(param.propagate_down) or [True] * len(param.bottom))
        self.loss_weights.append(self._top_loss_weights(module, param))

    def _top_shapes(self, module, bottom_shapes, overrides):
        if isinstance(module, Input):
            shapes = module.top_shapes()
            return [tuple(overrides.get(t, s)) for t, s in zip(module.param.top, shapes)]
        if hasattr(module, "top_shapes"):
            module.check_bottoms(bottom_shapes)
            return module.top_shapes()
        return infer_top_shapes(module, bottom_shapes)

    @staticmethod
    def _top_loss_weights(module, param):
        weights = list(param.loss_weight)
        if weights and len(weights) != len(param.top):
            raise LayerError(
                f"layer '{param.name}': {len(weights)} loss_weight values for "
                f"{len(param.top)} tops")
        if not weights:
            weights = [0.0] * len(param.top)
            if module.is_loss and weights:
                weights[0] = 1.0
        return weights

    def _share_params(self, module):
        """Caffe's Net::AppendParam for every blob: a param spec with a name seen
        before makes the layer use the owner's blob (same shape; share_mode
        PERMISSIVE: same count, viewed in this layer's shape); lr_mult / decay_mult
        given by the owner and a sharer must agree (one given alone is adopted).
        A layer computes no gradient for a blob whose own lr_mult is 0 (unless the
        net has force_backward, which in Caffe sets every param_propagate_down),
        and a blob none of its layers computes a gradient for does not require one.

        Fills self.param_owner {(layer, index): (owner layer, owner index)} for
        the sharers."""
        owners = self._owners
        given = self._given  # owner key -> [lr_mult or None, decay_mult or None]
        specs = list(module.param.param)
        for i in range(len(module.blobs)):
            spec = specs[i] if i < len(specs) else pb.ParamSpec()
            if not module.blobs[i].requires_grad:
                module.frozen_blobs.add(i)  # statistics (BatchNorm): never learned
            elif spec.lr_mult == 0 and not self.net_param.force_backward:
                # (force_backward: Caffe computes every param's diff, lr_mult 0 too.)
                module.frozen_blobs.add(i)
            lr = spec.lr_mult if spec.HasField("lr_mult") else None
            decay = spec.decay_mult if spec.HasField("decay_mult") else None
            if not spec.name or spec.name not in owners:
                if spec.name:
                    owners[spec.name] = (module, i)
                given[(module.name, i)] = [lr, decay]
                continue
            owner, j = owners[spec.name]
            self._check_shared_shape(spec, module, i, owner, j)
            merged = given[(owner.name, j)]
            for k, (field, value) in enumerate((("lr_mult", lr), ("decay_mult", decay))):
                if value is None:
                    continue
                if merged[k] is not None and merged[k] != value:
                    raise LayerError(
                        f"shared param '{spec.name}': {field} {value:g} in layer '{module.name}' "
                        f"differs from {merged[k]:g} in its owner layer '{owner.name}'")
                merged[k] = value
            shape = tuple(module.blobs[i].shape)
            module.blobs[i] = owner.blobs[j]
            if shape != tuple(owner.blobs[j].shape):
                module.blob_views[i] = shape
            self.param_owner[(module.name, i)] = (owner.name, j)

    def _resolve_params(self):
        """After every layer: self.param_multipliers {(layer, index): (lr_mult,
        decay_mult)} for the owners (the blobs the solver updates, in Caffe's
        order), and no gradient work for a blob no layer learns."""
        self.param_multipliers = collections.OrderedDict()
        for (name, i), (lr, decay) in self._given.items():
            module = self.layer(name)
            if not module.blobs[i].requires_grad:
                lr = 0.0
            self.param_multipliers[(name, i)] = (1.0 if lr is None else lr, 1.0 if decay is None else decay)
        # A blob that no layer computes a gradient for costs no backward work.
        users = collections.defaultdict(list)
        for module in self.layers:
            for i, blob in enumerate(module.blobs):
                users[id(blob)].append((module, i))
        for uses in users.values():
            if all(i in module.frozen_blobs for module, i in uses):
                uses[0][0].blobs[uses[0][1]].requires_grad_(False)

    def _forced_only_bottoms(self):
        """{(layer index, bottom index)} of the bottoms that force_backward alone
        would give a gradient and that the layer refuses it (Caffe's
        AllowForceBackward: a loss's labels, an LSTM's cont, ...): a bottom needs a
        gradient without force_backward when some layer with learned blobs lies
        upstream of it (Caffe's blob_need_backward)."""
        needs = {}
        refused = set()
        for i, module in enumerate(self.layers):
            bottom_needs = [needs.get(b, False) and propagate
                            for b, propagate in zip(self.bottoms[i], self.propagate[i])]
            for k, need in enumerate(bottom_needs):
                if not need and not module.allow_force_backward(k):
                    refused.add((i, k))
            learned = any(blob.requires_grad and j not in module.frozen_blobs
                          for j, blob in enumerate(module.blobs))
            for top in self.tops[i]:
                needs[top] = learned or any(bottom_needs)
        return refused

    @staticmethod
    def _check_shared_shape(spec, module, i, owner, j):
        mine, theirs = tuple(module.blobs[i].shape), tuple(owner.blobs[j].shape)
        if spec.share_mode == pb.ParamSpec.PERMISSIVE:
            if math.prod(mine) != math.prod(theirs):
                raise LayerError(
                    f"cannot share param '{spec.name}' owned by layer '{owner.name}' with layer "
                    f"'{module.name}': count mismatch (owner shape {theirs}, sharing layer shape {mine})")
        elif mine != theirs:
            raise LayerError(
                f"cannot share param '{spec.name}' owned by layer '{owner.name}' with layer "
                f"'{module.name}': shape mismatch (owner shape {theirs}, sharing layer expects {mine}; "
                "share_mode: PERMISSIVE accepts a shape of the same count)")

    def _split_names(self):
        """Caffe's InsertSplits names: a top read by more than one consumer (a loss
        weight counts as one) gets '<top>_<layer>_<index>_split_<k>' copies."""
        consumers = collections.defaultdict(list)
        producer = {}
        for i, (bottoms, tops) in enumerate(zip(self.bottoms, self.tops)):
            for b in bottoms:
                consumers[producer[b]].append(b)
            for j, t in enumerate(tops):
                producer[t] = (i, j)
                consumers[(i, j)] = []
        names = {}
        for (i, j), readers in consumers.items():
            count = len(readers) + (1 if self.loss_weights[i][j] else 0)
            if count > 1:
                top, layer = self.tops[i][j], self.layers[i].name
                names[(i, j)] = [f"{top}_{layer}_{j}_split_{k}" for k in range(count)]
        return names

    def accumulate_diffs(self, enabled=True):
        """Caffe's parameter diffs: the layers that can (InnerProduct) add their
        weight gradient into the blob's existing .grad in place instead of handing
        autograd a fresh tensor, so a solver that zeroes the gradients (Caffe's
        ClearParamDiffs) reuses their memory. The blob's autograd hooks are then
        skipped for those layers: training with a Caffe solver only."""
        for module in self.layers:
            module.accumulate_diffs = bool(enabled)
        return self

    def use_channels_last(self, enabled=True):
        """Opt-in NHWC layout for the GPU's tensor cores: 4-D weights and the
        batches of data and input layers become channels_last. The values and
        the blob shapes stay Caffe's (N x C x H x W); only the strides change."""
        self.memory_format = torch.channels_last if enabled else torch.contiguous_format
        return self.to(memory_format=self.memory_format)

    def start_prefetch(self, depth=3):
        """Data layers read `depth` batches ahead on threads (page-locked when the
        net is on a GPU); the batches are the same as without."""
        pin = self._device_marker.device.type == "cuda"
        for module in self.layers:
            if hasattr(module, "start_prefetch"):
                module.start_prefetch(depth, pin_memory=pin)

    def stop_prefetch(self):
        for module in self.layers:
            if hasattr(module, "stop_prefetch"):
                module.stop_prefetch()

    def _laid_out(self, tensor):
        return tensor.contiguous(memory_format=self.memory_format) if tensor.dim() == 4 else tensor

    # ------------------------------------------------------------ reshaping

    def _input_key(self, shapes=None):
        shapes = shapes or {}
        return tuple((name, tuple(shapes.get(name, self.blob_shapes[name]))) for name in self.input_names)

    def _current_shapes(self):
        return dict(self.blob_shapes), [list(m.bottom_shapes) for m in self.layers]

    def reshape(self, **shapes):
        """Caffe's Net::Reshape after blobs[input].reshape(...): new shapes for
        input blobs (whole shapes, batch included), carried through every layer
        in order; each layer checks its new bottoms as Caffe's Reshape does (an
        InnerProduct whose input count changed is an error naming it). The
        shapes of each set of inputs are kept, so nets that take images of
        several sizes switch between them at no cost. forward() calls this
        itself when an input's shape other than its batch axis changes.
        Returns self."""
        unknown = sorted(set(shapes) - set(self.input_names))
        if unknown:
            raise LayerError(f"cannot reshape {unknown}: not inputs of net '{self.name}' "
                             f"(inputs: {self.input_names})")
        key = self._input_key({k: tuple(int(d) for d in v) for k, v in shapes.items()})
        table = self._shape_sets.get(key)
        if table is None:
            table = self._shape_sets[key] = self._infer_shapes(dict(key))
        blob_shapes, bottom_shapes = table
        self.blob_shapes = collections.OrderedDict(blob_shapes)
        for module, bottoms in zip(self.layers, bottom_shapes):
            module.bottom_shapes = list(bottoms)
        return self

    def _infer_shapes(self, inputs):
        """(blob shapes, per-layer bottom shapes) for these input shapes; the
        layers are left as they were, whatever happens."""
        saved = [m.bottom_shapes for m in self.layers]
        shapes = collections.OrderedDict()
        try:
            for i, module in enumerate(self.layers):
                bottoms = [shapes[b] for b in self.bottoms[i]]
                if isinstance(module, Input):
                    tops = [inputs[t] for t in self.tops[i]]
                elif not self.bottoms[i]:
                    tops = [self.blob_shapes[t] for t in self.tops[i]]
                else:
                    module.bottom_shapes = [tuple(b) for b in bottoms]
                    tops = self._top_shapes(module, bottoms, {})
                for top, shape in zip(self.tops[i], tops):
                    shapes[top] = tuple(shape)
            return shapes, [list(m.bottom_shapes) for m in self.layers]
        finally:
            for module, bottoms in zip(self.layers, saved):
                module.bottom_shapes = bottoms

    # ------------------------------------------------------------ running

    @property
    def output_names(self):
        """Blobs no later layer reads, sorted by name (Caffe's net outputs)."""
        available = set()
        for bottoms, tops in zip(self.bottoms, self.tops):
            available.difference_update(bottoms)
            available.update(tops)
        return sorted(available)

    def blob_loss_weight(self, name):
        """The loss_weight of the top that last wrote blob name (0 if none)."""
        weight = 0.0
        for tops, weights in zip(self.tops, self.loss_weights):
            for top, w in zip(tops, weights):
                if top == name:
                    weight = w
        return weight

    @property
    def input_names(self):
        return [t for m, tops in zip(self.layers, self.tops) if isinstance(m, Input) for t in tops]

    def forward(self, *args, **inputs):
        """Run the net. Input blobs come positionally (in Input-layer order) or by
        name; returns a NetOutput of every blob (of the net's outputs only when
        compiled, see compile_layers()), with .loss set when the phase has loss tops."""
        feeds = dict(zip(self.input_names, args))
        feeds.update(inputs)
        # Input and data layers first (they read no blob: running them ahead keeps
        # every result; the data layers' reads stay outside a compiled graph).
        sources = {}
        fed = {name: self._fed(name, feeds) for name in self.input_names}
        changed = {name: tuple(t.shape) for name, t in fed.items()
                   if tuple(t.shape[1:]) != tuple(self.blob_shapes[name][1:])}
        if changed:
            try:
                self.reshape(**changed)
            except LayerError as err:
                name, shape = next(iter(changed.items()))
                declared = " x ".join(map(str, self.blob_shapes[name][1:]))
                raise LayerError(f"net input '{name}' has shape {shape}; the net is declared for N x {declared} "
                                 f"and cannot take it: {err}") from None
        for i, module in enumerate(self.layers):
            if isinstance(module, Input):
                sources[i] = tuple(self._laid_out(fed[name]) for name in self.tops[i])
            elif not self.bottoms[i]:
                device = self._device_marker.device
                if hasattr(module, "transform_device"):
                    module.transform_device = device
                sources[i] = tuple(self._laid_out(t.to(device, non_blocking=True)) for t in module())
        compute = self._compiled if self._compiled is not None else self._compute
        values, loss = compute(sources)
        blobs = NetOutput(values)
        blobs.loss = loss
        return blobs

    def _compute(self, sources, keep=None):
        """The layers in file order over the source layers' tops: ({blob: tensor}, loss).
        keep: the blob names to return (None: all, in Caffe's order, split names too)."""
        blobs = {}
        loss = None
        # force_backward: every blob gets a gradient (Caffe computes every bottom's
        # diff); without it only what the losses need, as autograd does anyway.
        force_backward = self.net_param.force_backward and torch.is_grad_enabled()
        for i, module in enumerate(self.layers):
            if i in sources:
                outs = sources[i]
            else:
                bottoms = [blobs[b] if propagate and not (force_backward and (i, k) in self.forced_only)
                           else blobs[b].detach()
                           for k, (b, propagate) in enumerate(zip(self.bottoms[i], self.propagate[i]))]
                outs = module(*bottoms)
            if force_backward:
                outs = _with_gradients(outs, leaf=i in sources)
            for j, (name, value) in enumerate(zip(self.tops[i], outs)):
                blobs[name] = value
                weight = self.loss_weights[i][j]
                if weight:
                    term = weight * value.sum()
                    loss = term if loss is None else loss + term
            # Caffe's Split layers follow their producer: their blobs come after all its tops.
            for j, value in enumerate(outs):
                for alias in self.split_names.get((i, j), ()):
                    blobs[alias] = value
        if keep is not None:
            blobs = {name: blobs[name] for name in keep}
        return blobs, loss

    def compile_layers(self, enabled=True, **options):
        """Run the layers (not the data layers' reads) through torch.compile; the
        net then returns its output blobs only (the intermediate ones stay inside
        the compiled graph, where they can be fused away). Random layers (Dropout)
        draw from torch's generator as in eager mode (inductor's fallback_random),
        so a compiled run follows the eager one's trajectory to float tolerance.
        options go to torch.compile (e.g. mode="max-autotune")."""
        if not enabled:
            self._compiled = None
            return self
        import functools

        import torch._inductor.config as inductor_config
        inductor_config.fallback_random = True
        # Inductor's own channels_last choice for convolutions gives wrong weight
        # gradients on the CPU when a ceil-mode max pooling follows (torch 2.13,
        # conv -> relu -> max_pool2d(ceil_mode=True) -> linear with the weights as
        # module parameters: conv grads off by 5 %); the layout stays the net's.
        inductor_config.layout_optimization = False
        keep = tuple(self.output_names)
        self._compiled = torch.compile(functools.partial(self._compute, keep=keep), **options)
        return self

    def _fed(self, name, feeds):
        if name not in feeds:
            raise LayerError(f"net input '{name}' was not given (inputs: {self.input_names})")
        value = feeds[name]
        tensor = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
        tensor = tensor.to(self._device_marker.device)
        return tensor.float() if not tensor.is_floating_point() else tensor

    # ------------------------------------------------------------ weights

    def layer(self, name):
        for module in self.layers:
            if module.name == name:
                return module
        raise KeyError(f"no layer named '{name}' in net '{self.name}'")

    def caffe_params(self):
        """{layer name: [blob tensors in Caffe order]} for layers that have blobs."""
        return collections.OrderedDict(
            (m.name, list(m.blobs)) for m in self.layers if len(m.blobs))

    def copy_from(self, weights, allow_shape_mismatch=False):
        """Copy blobs by layer name (Caffe's CopyTrainedLayersFrom). Returns a
        report {loaded, not_in_weights, unused, skipped}; a shape mismatch is an
        error unless allow_shape_mismatch (then the layer is skipped and named)."""
        source = load_weights(weights)
        own = {m.name: m for m in self.layers}
        report = {"loaded": [], "not_in_weights": [], "unused": [], "skipped": []}
        loaded_by = {}  # id(shared blob) -> (layer that filled it, its values)
        for name, arrays in source.items():
            module = own.get(name)
            if module is None or not len(module.blobs):
                if arrays:
                    report["unused"].append(name)
                continue
            problem = _blob_mismatch(module, arrays)
            if problem:
                if not allow_shape_mismatch:
                    raise LayerError(f"weights for layer '{name}': {problem}")
                report["skipped"].append(f"{name} ({problem})")
                continue
            with torch.no_grad():
                for k, (blob, array) in enumerate(zip(module.blobs, arrays)):
                    # One blob at a time: a mapped caffemodel is read-only, so copy it in.
                    values = torch.from_numpy(np.array(array, dtype=np.float32)).reshape(blob.shape)
                    self._check_shared_copy(loaded_by, module, k, blob, values)
                    blob.copy_(values)
            report["loaded"].append(name)
        report["not_in_weights"] = [m.name for m in self.layers
                                    if len(m.blobs) and m.name not in source]
        return report

    def _check_shared_copy(self, loaded_by, module, k, blob, values):
        """A caffemodel repeats a shared blob under every layer that uses it; the
        copies should agree. When they do not, Caffe's loading order decides (the
        last copy wins), and a warning names the layers."""
        if (module.name, k) not in self.param_owner and not any(
                owner == (module.name, k) for owner in self.param_owner.values()):
            return
        previous = loaded_by.get(id(blob))
        if previous is not None and not torch.equal(previous[1], values):
            logger.warning("weights: the copies of a shared blob differ between layer '%s' and layer "
                           "'%s' (blob %d); the later one ('%s') is kept, as Caffe does",
                           previous[0], module.name, k, module.name)
        loaded_by[id(blob)] = (module.name, values)

    def _layers_and_blobs(self):
        for module in self.layers:
            layer = pb.LayerParameter()
            layer.CopyFrom(module.param)
            del layer.blobs[:]
            yield layer, [blob.detach().cpu().numpy() for blob in module.blobs]

    def save_caffemodel(self, path):
        """A .caffemodel Caffe loads, written blob by blob (no whole-model copy)."""
        with caffe_io.atomic_write(path) as f:
            self.write_caffemodel(f)

    def write_caffemodel(self, f):
        """The .caffemodel bytes into an open binary file."""
        wire.write_net(f, self.name, self._layers_and_blobs())

    def save_pt(self, path):
        """A .pt file: the net definition and {layer: [blobs]} in Caffe order."""
        from google.protobuf import text_format

        payload = {"prototxt": text_format.MessageToString(self.net_param),
                   "blobs": {k: [t.detach().cpu() for t in v] for k, v in self.caffe_params().items()}}
        with caffe_io.atomic_write(path) as f:
            torch.save(payload, f)


def unknown_type(type_name):
    """The error text for a layer type the port does not have: the closest known
    type, and why Python layers are not run."""
    import difflib

    if type_name == "Python":
        return ("layer type 'Python' runs a Python class inside Caffe's own interpreter; write the layer as a "
                "torch module (ssdh_port.caffe.layers.register) instead")
    by_lower = {name.lower(): name for name in LAYERS}
    near = ([by_lower[type_name.lower()]] if type_name.lower() in by_lower
            else [by_lower[n] for n in difflib.get_close_matches(type_name.lower(), by_lower, n=1, cutoff=0.6)])
    hint = f"did you mean '{near[0]}'? " if near else ""
    return f"unknown layer type '{type_name}' ({hint}known types: {', '.join(sorted(LAYERS))})"


def _with_gradients(outs, leaf):
    """Tops whose .grad the backward pass fills: the net's inputs become leaves
    that require a gradient, other floating-point tops keep theirs."""
    result = []
    for value in outs:
        if value.is_floating_point():
            if leaf and not value.requires_grad:
                value = value.detach().requires_grad_(True)
            elif value.requires_grad and not value.is_leaf:
                value.retain_grad()
        result.append(value)
    return tuple(result)


def _with_top(param, name):
    copy = pb.LayerParameter()
    copy.CopyFrom(param)
    copy.top.append(name)
    return copy


def _blob_mismatch(module, arrays):
    if len(arrays) != len(module.blobs):
        return f"{len(arrays)} blobs in the weights, the layer has {len(module.blobs)}"
    for k, (blob, array) in enumerate(zip(module.blobs, arrays)):
        shape = tuple(np.shape(array))
        target = tuple(blob.shape)
        if shape == target:
            continue
        # Legacy 4-D blobs (num, channels, height, width) match Caffe's
        # LegacyShape: the target shape padded on the left with 1s.
        if len(shape) == 4 and len(target) <= 4 and shape == (1,) * (4 - len(target)) + target:
            continue
        return f"blob {k} has shape {shape}, the layer expects {target}"
    return None


ZIP_MAGIC, HDF5_MAGIC = b"PK\x03\x04", b"\x89HDF\r\n\x1a\n"


def load_weights(weights):
    """Weights -> {layer: [arrays]}, whatever file holds them, told by its content:
    a .caffemodel (protobuf), a .caffemodel.h5 (Caffe's HDF5 snapshot), a .pt of
    weights (save_pt, convert_caffemodel) or a training snapshot .pt; or a
    NetParameter with blobs. Anything else is a CaffeFileError naming the file."""
    if isinstance(weights, pb.NetParameter):
        return {layer.name: [caffe_io.blob_to_array(b, f"{layer.name}/{k}")
                             for k, b in enumerate(layer.blobs)] for layer in weights.layer}
    path = os.fspath(weights)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        raise caffe_io.CaffeFileError(f"{path}: cannot read ({err.strerror})") from None
    if head.startswith(ZIP_MAGIC):
        return _pt_weights(path)
    if head == HDF5_MAGIC:
        return load_weights(caffe_io.read_caffemodel(path))
    try:
        return wire.read_blobs(path)  # memory-mapped, no copy of the file
    except wire.WireError as err:
        raise caffe_io.CaffeFileError(str(err)) from None


def _pt_weights(path):
    """{layer: [arrays]} of a .pt of weights ({"blobs": ...}) or of a training
    snapshot ({"params": {"layer/index": tensor}, ...})."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - report any unreadable .pt the same way
        raise caffe_io.CaffeFileError(f"{path}: not a readable .pt weights file: {pt_problem(path)}") from None
    if isinstance(payload, dict) and "blobs" in payload:
        return {k: [t.numpy() for t in v] for k, v in payload["blobs"].items()}
    if isinstance(payload, dict) and "params" in payload:
        layers = collections.defaultdict(dict)
        for key, tensor in payload["params"].items():
            layer, _, index = key.rpartition("/")
            layers[layer][int(index)] = tensor.numpy()
        return {layer: [blobs[i] for i in sorted(blobs)] for layer, blobs in layers.items()}
    raise caffe_io.CaffeFileError(f"{path}: a .pt file without weights (expected 'blobs' or a training "
                                  "snapshot's 'params')")


def infer_top_shapes(module, bottom_shapes):
    """Top shapes of a layer by running it on fake tensors (no memory, no compute)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        fakes = [torch.empty(shape) for shape in bottom_shapes]
        try:
            outs = module(*fakes)
        except LayerError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure here is a shape error
            raise LayerError(
                f"layer '{module.name}' ({module.type}) cannot take bottoms of shapes "
                f"{[tuple(s) for s in bottom_shapes]}: {err}") from None
    return [tuple(o.shape) for o in outs]


__all__ = ["CaffeNet", "NetOutput", "CaffeLayer", "load_weights", "layer_included"]


def find_latent_blob(net):
    """The latent activations: a Concat of Sigmoid outputs (DNNH's divide-and-encode),
    else the Sigmoid top named like '*latent*', else the last Sigmoid top."""
    tops = [t for m, ts in zip(net.layers, net.tops) if m.type == "Sigmoid" for t in ts]
    concatenated = [ts[0] for m, bs, ts in zip(net.layers, net.bottoms, net.tops)
                    if m.type == "Concat" and bs and all(b in tops for b in bs)]
    if concatenated:
        return concatenated[-1]
    named = [t for t in tops if "latent" in t]
    if not (named or tops):
        raise SSDHError(f"net '{net.name}' has no Sigmoid layer: name the latent blob")
    return (named or tops)[-1]
