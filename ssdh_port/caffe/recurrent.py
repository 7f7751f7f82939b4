"""Caffe's recurrent layers: LSTMUnit, RNN and LSTM (docs/SPEC.md section 3).

Caffe builds RNN and LSTM as an unrolled internal net over the T time steps of a
T x N x ... bottom; here the same steps run as a loop over t, with the same
parameters in Caffe's blob order, so a trained caffemodel loads as is:

    RNN:  W_xh (D x I), b_h (D), [W_xh_static (D x S)], W_hh (D x D), W_ho (D x D), b_o (D)
          h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])
          o_t = tanh(W_ho h_t + b_o)                       top: o (T x N x D)
    LSTM: W_xc (4D x I), b_c (4D), [W_xc_static (4D x S)], W_hc (4D x D)
          gates_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]
          (c_t, h_t) = LSTMUnit(c_{t-1}, gates_t, cont_t)  top: h (T x N x D)

Bottoms: x (T x N x ...), cont (T x N; 0 starts a sequence), an optional static
input (N x ...), then with expose_hidden the initial states (1 x N x D: h_0, and c_0
for the LSTM), which add the final states as tops (h_T [, c_T]). Without
expose_hidden the final state of one forward is the initial state of the next, as
in Caffe (zeros at first; no gradient crosses calls). cont gets no gradient; nor,
in Caffe master, do the exposed initial states, and the diffs of the exposed final
states reach nothing (checked against real Caffe: tests/caffe_refs).
"""
import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.nn import functional as F

from ssdh_port.caffe.layers import CaffeLayer, register


class _LSTMUnitFunction(torch.autograd.Function):
    """Caffe's LSTMUnit forward and backward: gates i, f, o, g from the 4D inputs
    (sigmoid, sigmoid, sigmoid, tanh), f taken as cont * f (0 where cont is 0),
    c = f c_prev + i g, h = o tanh(c). The backward is Caffe's, whose forget-gate
    term is c_prev f (1 - f) with that cont-scaled f."""

    @staticmethod
    def forward(ctx, c_prev, gates, cont):
        d = c_prev.shape[-1]
        i = torch.sigmoid(gates[..., :d])
        f = torch.sigmoid(gates[..., d:2 * d]) * cont[..., None]
        f = torch.where(cont[..., None] == 0, torch.zeros_like(f), f)
        o = torch.sigmoid(gates[..., 2 * d:3 * d])
        g = torch.tanh(gates[..., 3 * d:])
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        ctx.save_for_backward(c_prev, cont, i, f, o, g, tanh_c)
        return c, o * tanh_c

    @staticmethod
    def backward(ctx, c_diff, h_diff):
        c_prev, cont, i, f, o, g, tanh_c = ctx.saved_tensors
        c_diff = torch.zeros_like(c_prev) if c_diff is None else c_diff
        h_diff = torch.zeros_like(c_prev) if h_diff is None else h_diff
        c_term = c_diff + h_diff * o * (1 - tanh_c * tanh_c)
        f_diff = torch.where(cont[..., None] == 0, torch.zeros_like(f), c_term * c_prev * f * (1 - f))
        gates_diff = torch.cat([c_term * g * i * (1 - i), f_diff, h_diff * tanh_c * o * (1 - o),
                                c_term * i * (1 - g * g)], -1)
        return c_term * f, gates_diff, None


def lstm_unit(c_prev, gates, cont):
    return _LSTMUnitFunction.apply(c_prev, gates, cont.detach())


@register("LSTMUnit")
class LSTMUnit(CaffeLayer):
    """One LSTM step: bottoms c_{t-1} (1 x N x D), the gate inputs (1 x N x 4D) and
    cont (1 x N); tops c_t and h_t (1 x N x D)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(3)
        if len(param.top) != 2:
            raise self.error(f"makes 2 tops (c_t, h_t), the prototxt names {len(param.top)}")
        self.check(self.bottom_shapes)

    def check(self, shapes):
        c_prev, gates, cont = shapes
        if len(c_prev) != 3 or len(gates) != 3 or len(cont) != 2:
            raise self.error(f"needs bottoms 1 x N x D, 1 x N x 4D and 1 x N, got {c_prev}, {gates}, {cont}")
        if c_prev[0] != 1 or gates[0] != 1 or cont[0] != 1 or not c_prev[1] == gates[1] == cont[1]:
            raise self.error(f"needs bottoms 1 x N x D, 1 x N x 4D and 1 x N, got {c_prev}, {gates}, {cont}")
        if gates[2] != 4 * c_prev[2]:
            raise self.error(f"the gate inputs have {gates[2]} values per item, 4 x {c_prev[2]} expected")

    def top_shapes(self):
        return [self.bottom_shapes[0]] * 2

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2  # not to cont

    def forward(self, c_prev, gates, cont):
        self.check([tuple(c_prev.shape), tuple(gates.shape), tuple(cont.shape)])
        return lstm_unit(c_prev, gates, cont)


class _Recurrent(CaffeLayer):
    gates = 1  # gate inputs per unit: 1 (RNN) or 4 (LSTM)
    states = ("h",)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.recurrent_param
        if not p.num_output:
            raise self.error("recurrent_param.num_output must be set")
        self.units = p.num_output
        self.expose = p.expose_hidden
        shapes = self.bottom_shapes
        extra = len(self.states) if self.expose else 0
        if len(shapes) not in (2 + extra, 3 + extra):
            raise self.error(f"takes x, cont, an optional static input{' and the initial states' if extra else ''}: "
                             f"{2 + extra} or {3 + extra} bottoms, got {len(shapes)}")
        self.static = len(shapes) == 3 + extra
        tops = 1 + extra
        if len(param.top) != tops:
            raise self.error(f"makes {tops} top(s), the prototxt names {len(param.top)}")
        self.time_steps = shapes[0][0] if len(shapes[0]) >= 2 else None
        self.check(shapes)
        inputs = self._count(shapes[0][2:])
        rows = self.gates * self.units
        self.layout = []  # blob names, Caffe's order
        self._blob("W_x", (rows, inputs), p.weight_filler)
        self._blob("b", (rows,), p.bias_filler)
        if self.static:
            self._blob("W_static", (rows, self._count(shapes[2][1:])), p.weight_filler)
        self._blob("W_h", (rows, self.units), p.weight_filler)
        self._more_blobs(p)
        self.carried = None  # the state the next forward starts from (no expose_hidden)

    @staticmethod
    def _count(shape):
        n = 1
        for d in shape:
            n *= d
        return n

    def _blob(self, name, shape, filler):
        self.layout.append(name)
        self.add_blob(shape, filler)

    def _more_blobs(self, p):
        pass

    def check(self, shapes):
        x, cont = shapes[0], shapes[1]
        if len(x) < 2:
            raise self.error(f"x must be T x N x ..., got shape {x}")
        if x[0] != self.time_steps:
            raise self.error(f"the number of time steps changed: built for {self.time_steps}, x is {x} "
                             "(Caffe unrolls the net once; the batch may change)")
        if tuple(cont) != tuple(x[:2]):
            raise self.error(f"cont must be T x N = {x[0]} x {x[1]} (x is {x}), got shape {cont}")
        if self.static and (not shapes[2] or shapes[2][0] != x[1]):
            raise self.error(f"the static input must be N x ... with N = {x[1]}, got shape {shapes[2]}")
        if self.expose:
            for name, shape in zip(self.states, shapes[-len(self.states):]):
                if tuple(shape) != (1, x[1], self.units):
                    raise self.error(f"the initial state {name}_0 must be 1 x {x[1]} x {self.units}, got {shape}")

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1  # not to cont

    def top_shapes(self):
        t, n = self.bottom_shapes[0][:2]
        return [(t, n, self.units)] + [(1, n, self.units)] * (len(self.states) if self.expose else 0)

    def forward(self, x, cont, *rest):
        shapes = [tuple(b.shape) for b in (x, cont) + rest]
        self.check(shapes)
        t_steps, n = x.shape[:2]
        cont = cont.detach().to(x.dtype)
        w = dict(zip(self.layout, (self.blob(i) for i in range(len(self.blobs)))))
        # The input transform of every step at once (Caffe's x_transform, axis 2).
        x_in = F.linear(x.reshape(t_steps, n, -1), w["W_x"], w["b"])
        if self.static:
            x_in = x_in + F.linear(rest[0].reshape(n, -1), w["W_static"])
        if self.expose:
            # Caffe passes no gradient to the initial states and none from the final ones.
            state = tuple(r.detach() for r in rest[-len(self.states):])
        else:
            state = self._carried(n, x)
        outs = []
        for t in range(t_steps):
            state, out = self.step(w, x_in[t:t + 1], cont[t:t + 1], state)
            outs.append(out)
        if not self.expose and not isinstance(x, FakeTensor):
            self.carried = tuple(s.detach() for s in state)
        top = torch.cat(outs, 0)
        return (top,) + (tuple(st.detach() for st in state) if self.expose else ())

    def _carried(self, n, like):
        shape = (1, n, self.units)
        if (self.carried is None or tuple(self.carried[0].shape) != shape
                or self.carried[0].device != like.device or self.carried[0].dtype != like.dtype):
            return tuple(like.new_zeros(shape) for _ in self.states)
        return self.carried

    def reset_state(self):
        """Start the next forward from zero states (Caffe: a fresh net)."""
        self.carried = None


@register("RNN")
class RNN(_Recurrent):
    def _more_blobs(self, p):
        self._blob("W_o", (self.units, self.units), p.weight_filler)
        self._blob("b_o", (self.units,), p.bias_filler)

    def step(self, w, x_in, cont, state):
        (h_prev,) = state
        h = torch.tanh(F.linear(h_prev * cont[..., None], w["W_h"]) + x_in)
        return (h,), torch.tanh(F.linear(h, w["W_o"], w["b_o"]))


@register("LSTM")
class LSTM(_Recurrent):
    gates = 4
    states = ("h", "c")

    def step(self, w, x_in, cont, state):
        h_prev, c_prev = state
        gates = F.linear(h_prev * cont[..., None], w["W_h"]) + x_in
        c, h = lstm_unit(c_prev, gates, cont)
        return (h, c), h
