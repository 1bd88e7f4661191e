"""The Elman recurrent cell (kind "rnn"): h_t = f(x_t·W + b + h_{t−1}·Wh + bh), h₋₁ = 0, with any
elementwise activation f (default tanh), as torch.nn.RNN. Shapes, names and the order of
arithmetic: the design note in cell.py.

  forward   u_t = x_t·W + b + h_{t−1}·Wh + bh (one running sum),  h_t = f(u_t),  slope_t = f'(u_t)
  backward  e_{T−1} = g_{T−1};  e_t = g_t + Σ_m Wh[k,m]·δ_{t+1}[m];  δ_t = f'(u_t)·e_t
            (g_t = ∂E/∂h_t arriving from above at time step t)
"""
import sys

import numpy as np

from tracer.errors import ScenarioError
from tracer.layers.excel import ExcelColumns
from tracer.layers.parsing import parse_activation
from tracer.layers.recurrent.base import RECURRENT_KEYS, Recurrent
from tracer.layers.recurrent.cell import (activate, as_float, back_sum, check_shapes, input_sums, parameter_gradients,
                                          previous_states, running_sum)
from tracer.layers.recurrent.excel import RecurrentExcel
from tracer.maths import activations

GATES = ("",)    # one block of columns, no gate name (lstm: i f g o; gru: r z n)
FORWARD_QUANTITIES = (
    ("u", "u", "pre-activation u_t = x_t·W + b + h_{t−1}·Wh + bh"),
    ("h", "h", "hidden state h_t = f(u_t)"),
    ("slope", "f'(u)", "local slope f'(u_t)"),
)
BACKWARD_QUANTITIES = (
    ("e", "∂E/∂h", "error through time e_t = ∂E/∂h_t: from above + from t+1"),
    ("e_time", "∂E/∂h (t+1)", "part of e_t arriving from step t+1: Σ_m Wh[k,m] δ_{t+1}[m]"),
    ("delta", "δ", "δ_t = ∂E/∂u_t = f'(u_t)·e_t"),
)



def forward(x, W, Wh, b, bh, activation="tanh", params=None):
    """Forward through time of h_t = f(x_t·W + b + h_{t−1}·Wh + bh), h₋₁ = 0.

    Like torch.nn.RNN(nonlinearity=tanh|relu) with W = weight_ih_l0ᵀ, Wh = weight_hh_l0ᵀ,
    b = bias_ih_l0, bh = bias_hh_l0, batch_first=True; any elementwise activation of
    tracer.maths.activations (identity included), with its `params` (defaults of the activation).
    Returns the record: u, h, slope (B, T, U), and the working arrays x, h_prev.
    """
    check_shapes(x, W, Wh, b, bh, len(GATES))
    x, W, Wh, b, bh = as_float(x, W, Wh, b, bh)
    from_input = input_sums(x, W, b)
    batch, steps, units = from_input.shape
    u, h, slope = (np.empty((batch, steps, units)) for _ in range(3))
    h_prev = np.zeros((batch, units))
    for t in range(steps):
        u[:, t] = running_sum(from_input[:, t], h_prev, Wh) + bh
        h[:, t], slope[:, t] = activate(activation, u[:, t], params)
        h_prev = h[:, t]
    return {"x": x, "h_prev": previous_states(h), "u": u, "h": h, "slope": slope}


def backward(record, dE_dh, W, Wh):
    """Backpropagation through time, given dE_dh (B, T, U): ∂E/∂h_t arriving from above at each
    time step (0 where nothing above reads step t).

      e_{T−1} = dE_dh_{T−1};   e_t = dE_dh_t + e_time_t,  e_time_t = Σ_m Wh[k,m]·δ_{t+1}[m]
      δ_t = f'(u_t)·e_t                                            (delta = delta_x = delta_h)
    then the gradients of `parameter_gradients`. Returns a new dict: the record and e, e_time,
    delta, delta_x, delta_h, grad_*_time, grad_*, dx.
    """
    W, Wh, dE_dh = as_float(W, Wh, dE_dh)
    slope = record["slope"]
    e, e_time, delta = (np.zeros_like(slope) for _ in range(3))
    for t in range(slope.shape[1] - 1, -1, -1):
        if t == slope.shape[1] - 1:
            e[:, t] = dE_dh[:, t]
        else:
            e_time[:, t] = back_sum(delta[:, t + 1], Wh)
            e[:, t] = dE_dh[:, t] + e_time[:, t]
        delta[:, t] = slope[:, t] * e[:, t]
    return dict(record, e=e, e_time=e_time, delta=delta, **parameter_gradients(record, W, delta, delta))


def step_factors(record, Wh):
    """∂h_t[j]/∂h_{t−1}[k] = Wh[k,j]·f'(u_t[j]) per sample and time step: (B, T, U, U) [s, t, k, j].

    For a scalar cell the factor each time step multiplies into the error through time
    (Wh·f'(u_t)); ∂h_t/∂h_0 is the product of the factors of steps 1 … t (1.1¹⁰⁰ for the
    articles' linear cell with Wh = 1.1).
    """
    return np.asarray(Wh, dtype=np.float64)[None, None] * record["slope"][:, :, None, :]


class RnnExcel(RecurrentExcel):
    """The Elman cell's columns at time t: u_t, h_t = f(u_t), f'(u_t); backward e_time (t < T−1),
    e_t, δ_t = f'(u_t)·e_t."""

    def excel_step_forward(self, layer, x, t):
        l, act = x.l, activations.get(layer.activation)
        params = x.activation_params or {}
        group = f"layer {l} forward, t = {t}"
        u = lambda j: x.ref(("u", l, (t, j)))  # noqa: E731
        return [
            ExcelColumns(group, "u", "u", self.excel_u_meaning(x, "u", "", t),
                         sample=lambda j: self.excel_preactivation(x, t, "", j), time=t),
            ExcelColumns(group, "h", "h", lambda j: f"{self.excel_timed(x, 'h', l, j, t)} = {act.symbol}({self.excel_timed(x, 'u', l, j, t)})",
                         sample=lambda j: act.excel_value(u(j), params), time=t),
            ExcelColumns(group, "slope", f"{act.symbol}'", f"local slope f'(u_t) of {act.name}",
                         sample=lambda j: act.excel_slope(u(j), x.ref(("h", l, (t, j))), params), time=t),
        ]

    def excel_step_backward(self, layer, x, t):
        l = x.l
        return self.excel_error_columns(x, t, lambda j: f"Σₘ Wh{l}[{j},m]·δₘ(t={t + 1})") + [
            ExcelColumns(f"layer {l} backward, t = {t}", "delta", "δ", "δ_t = ∂E/∂u_t = f'(u_t)·e_t",
                         sample=lambda j: f"{x.ref(('slope', l, (t, j)))}*{x.ref(('e', l, (t, j)))}", time=t),
        ]


class Rnn(RnnExcel, Recurrent):
    name = "rnn"
    description = "Elman cell h_t = f(x_t·W + b + h_{t−1}·Wh + bh) through time"
    keys = RECURRENT_KEYS + ("activation", "slope", "alpha")
    gates = GATES
    hand_rules = True

    def parse_activation(self, v, raw, key, units):
        """Any elementwise activation (default tanh), with its parameters; softmax is refused."""
        name = v.choice(raw, "activation", key, activations.ACTIVATIONS, default="tanh")
        if not activations.get(name).elementwise:
            raise ScenarioError(v.source, f"{key}.activation", f"{name} is not elementwise: an rnn cell needs an "
                                "elementwise activation (tanh, relu, identity, ...)")
        return parse_activation(v, raw, key, units, False, "tanh")

    def cell_forward(self, layer, below, W, b, Wh, bh):
        return forward(below, W, Wh, b, bh, layer.activation, layer.activation_params)

    def describe(self, layer):
        return f"{self.name} {layer.units} {layer.activation}"

    def cell_activation(self, layer):
        """The cell's own activation f and its parameters."""
        return layer.activation, layer.activation_params


Rnn.cell = sys.modules[__name__]
