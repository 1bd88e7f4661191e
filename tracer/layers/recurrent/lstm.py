"""The LSTM cell (kind "lstm"), in PyTorch's gate order and equations (torch.nn.LSTM).

Per sample and time step t, with h₋₁ = 0 and c₋₁ = 0 (column blocks of W, Wh, b, bh in the
order i, f, g, o; see the design note in cell.py for shapes, names and the order of arithmetic):
    u_k = x_t·W_k + b_k + h_{t−1}·Wh_k + bh_k        one running sum, for each gate k ∈ {i, f, g, o}
    i = σ(u_i),  f = σ(u_f),  g = tanh(u_g),  o = σ(u_o)      slopes σ' = a(1−a), tanh' = 1 − a²
    c_t = f·c_{t−1} + i·g
    tanh_c = tanh(c_t),  slope_c = 1 − tanh_c·tanh_c
    h_t = o·tanh_c
Backward through time, given e_t = ∂E/∂h_t in full (see `backward`):
    delta_o = e·tanh_c·slope_o
    ec_t    = e·o·slope_c + ec_time_t,      ec_time_t = ec_{t+1}·f_{t+1}   (∂E/∂c_t; none at T−1)
    delta_i = ec·g·slope_i,  delta_f = ec·c_{t−1}·slope_f,  delta_g = ec·i·slope_g
    e_time_t = Σ_m Wh[k,m]·delta_{t+1}[m]   over the 4U columns, left to right
(products left to right as written: e·tanh_c·slope_o is (e·tanh_c)·slope_o).
"""
import sys

import numpy as np

from tracer.layers.excel import ExcelColumns
from tracer.layers.recurrent.base import Recurrent
from tracer.layers.recurrent.cell import (activate, as_float, back_sum, check_shapes, input_sums, parameter_gradients,
                                          previous_states, running_sum, split_gates)
from tracer.layers.recurrent.excel import RecurrentExcel
from tracer.maths import activations

GATES = ("i", "f", "g", "o")
GATE_ACTIVATIONS = {"i": "sigmoid", "f": "sigmoid", "g": "tanh", "o": "sigmoid"}
FORWARD_QUANTITIES = (
    *((f"u_{k}", f"u_{k}", f"pre-activation of gate {k}: x_t·W_{k} + b_{k} + h_(t−1)·Wh_{k} + bh_{k}") for k in GATES),
    ("i", "i", "input gate σ(u_i)"),
    ("f", "f", "forget gate σ(u_f)"),
    ("g", "g", "cell candidate tanh(u_g)"),
    ("o", "o", "output gate σ(u_o)"),
    *((f"slope_{k}", f"{k}'", f"local slope of gate {k}") for k in GATES),
    ("c", "c", "cell state c_t = f·c_(t−1) + i·g"),
    ("tanh_c", "tanh(c)", "tanh(c_t)"),
    ("slope_c", "tanh'(c)", "1 − tanh²(c_t)"),
    ("h", "h", "hidden state h_t = o·tanh(c_t)"),
)
BACKWARD_QUANTITIES = (
    ("e", "∂E/∂h", "error through time e_t = ∂E/∂h_t: from above + from t+1"),
    ("e_time", "∂E/∂h (t+1)", "part of e_t arriving from step t+1: Σ_m Wh[k,m] δ_{t+1}[m]"),
    ("ec", "∂E/∂c", "∂E/∂c_t = e·o·tanh'(c_t) + ec_time"),
    ("ec_time", "∂E/∂c (t+1)", "part of ∂E/∂c_t arriving from step t+1: ec_{t+1}·f_{t+1}"),
    *((f"delta_{k}", f"δ_{k}", f"∂E/∂u_{k}") for k in GATES),
)


def forward(x, W, Wh, b, bh):
    """Forward through time of torch.nn.LSTM (W = weight_ih_l0ᵀ, Wh = weight_hh_l0ᵀ, b = bias_ih_l0,
    bh = bias_hh_l0, batch_first=True). Returns the record of the module docstring's quantities
    (B, T, U) and the working arrays x, h_prev, c_prev."""
    check_shapes(x, W, Wh, b, bh, len(GATES))
    x, W, Wh, b, bh = as_float(x, W, Wh, b, bh)
    from_input = input_sums(x, W, b)
    batch, steps, columns = from_input.shape
    units = columns // len(GATES)
    names = [f"u_{k}" for k in GATES] + list(GATES) + [f"slope_{k}" for k in GATES] + ["c", "tanh_c", "slope_c", "h"]
    record = {name: np.empty((batch, steps, units)) for name in names}
    h_prev, c_prev = np.zeros((batch, units)), np.zeros((batch, units))
    for t in range(steps):
        u = split_gates(running_sum(from_input[:, t], h_prev, Wh) + bh, GATES)
        for k in GATES:
            record[f"u_{k}"][:, t] = u[k]
            record[k][:, t], record[f"slope_{k}"][:, t] = activate(GATE_ACTIVATIONS[k], u[k])
        i, f, g, o = (record[k][:, t] for k in GATES)
        c = f * c_prev + i * g
        tanh_c, slope_c = activate("tanh", c)
        record["c"][:, t], record["tanh_c"][:, t], record["slope_c"][:, t] = c, tanh_c, slope_c
        record["h"][:, t] = o * tanh_c
        h_prev, c_prev = record["h"][:, t], c
    record.update(x=x, h_prev=previous_states(record["h"]), c_prev=previous_states(record["c"]))
    return record


def backward(record, dE_dh, W, Wh):
    """Backpropagation through time, given dE_dh (B, T, U): ∂E/∂h_t arriving from above at each
    time step (0 where nothing above reads step t).

      e_{T−1} = dE_dh_{T−1};  e_t = dE_dh_t + e_time_t
    then the deltas and ec of the module docstring, step by step from T−1 down to 0, and the
    gradients of cell.parameter_gradients (delta_x = delta_h = [delta_i, delta_f, delta_g, delta_o]).
    Returns a new dict: the record and e, e_time, ec, ec_time, delta_i … delta_o, delta_x,
    delta_h, grad_*_time, grad_*, dx.
    """
    W, Wh, dE_dh = as_float(W, Wh, dE_dh)
    r = record
    shape = r["h"].shape
    steps = shape[1]
    out = {name: np.zeros(shape) for name in ("e", "e_time", "ec", "ec_time")}
    delta = np.zeros(shape[:2] + (len(GATES) * shape[2],))
    deltas = split_gates(delta, GATES)   # views into delta
    for t in range(steps - 1, -1, -1):
        at = {name: r[name][:, t] for name in ("i", "f", "g", "o", "slope_i", "slope_f", "slope_g", "slope_o",
                                                "tanh_c", "slope_c", "c_prev")}
        if t == steps - 1:
            e = dE_dh[:, t]
            ec = e * at["o"] * at["slope_c"]
        else:
            out["e_time"][:, t] = back_sum(delta[:, t + 1], Wh)
            e = dE_dh[:, t] + out["e_time"][:, t]
            out["ec_time"][:, t] = out["ec"][:, t + 1] * r["f"][:, t + 1]
            ec = e * at["o"] * at["slope_c"] + out["ec_time"][:, t]
        out["e"][:, t], out["ec"][:, t] = e, ec
        deltas["i"][:, t] = ec * at["g"] * at["slope_i"]
        deltas["f"][:, t] = ec * at["c_prev"] * at["slope_f"]
        deltas["g"][:, t] = ec * at["i"] * at["slope_g"]
        deltas["o"][:, t] = e * at["tanh_c"] * at["slope_o"]
    out.update({f"delta_{k}": deltas[k] for k in GATES})
    return dict(record, **out, **parameter_gradients(record, W, delta, delta))


class LstmExcel(RecurrentExcel):
    """The LSTM's columns at time t (formulas in the module docstring's order of arithmetic):
    forward u_i u_f u_g u_o, i f g o, their slopes, c_t = f·c_{t−1} + i·g (c₋₁ = 0 written as 0),
    tanh(c_t), tanh'(c_t), h_t = o·tanh(c_t); backward e_time (t < T−1), e_t, ec_time (t < T−1),
    ec_t = e·o·tanh'(c_t) + ec_time, δ_i = ec·g·i', δ_f = ec·c_{t−1}·f', δ_g = ec·i·g', δ_o = e·tanh(c)·o'."""

    def excel_step_forward(self, layer, x, t):
        l, group = x.l, f"layer {x.l} forward, t = {t}"
        at = lambda name, j: x.ref((name, l, (t, j)))  # noqa: E731
        name = lambda symbol, j: self.excel_timed(x, symbol, l, j, t)  # noqa: E731
        columns = [ExcelColumns(group, f"u_{k}", f"u_{k}", self.excel_u_meaning(x, f"u_{k}", k, t),
                                sample=lambda j, k=k: self.excel_preactivation(x, t, k, j), time=t) for k in GATES]
        for k in GATES:
            act = activations.get(GATE_ACTIVATIONS[k])
            columns.append(ExcelColumns(group, k, k, lambda j, k=k, act=act: f"{name(k, j)} = {act.symbol}({name('u_' + k, j)})",
                                        sample=lambda j, k=k, act=act: act.excel_value(at(f"u_{k}", j), {}), time=t))
        for k in GATES:
            act = activations.get(GATE_ACTIVATIONS[k])
            columns.append(ExcelColumns(group, f"slope_{k}", f"{k}'", f"local slope {act.symbol}'(u_{k}) of gate {k}",
                                        sample=lambda j, k=k, act=act: act.excel_slope(at(f"u_{k}", j), at(k, j), {}), time=t))
        tanh = activations.get("tanh")
        c_prev = lambda j: self.excel_previous(x, "c", t, j)  # noqa: E731
        columns += [
            ExcelColumns(group, "c", "c", lambda j: f"cell state {name('c', j)} = f·c(t−1) + i·g" + (" (c₋₁ = 0)" if t == 0 else ""),
                         sample=lambda j: f"{at('f', j)}*{c_prev(j)}+{at('i', j)}*{at('g', j)}", time=t),
            ExcelColumns(group, "tanh_c", "tanh(c)", "tanh(c_t)", sample=lambda j: tanh.excel_value(at("c", j), {}), time=t),
            ExcelColumns(group, "slope_c", "tanh'(c)", "tanh'(c_t) = 1 − tanh²(c_t)",
                         sample=lambda j: tanh.excel_slope(at("c", j), at("tanh_c", j), {}), time=t),
            ExcelColumns(group, "h", "h", lambda j: f"hidden state {name('h', j)} = o·tanh(c_t)",
                         sample=lambda j: f"{at('o', j)}*{at('tanh_c', j)}", time=t),
        ]
        return columns

    def excel_step_backward(self, layer, x, t):
        l, T, group = x.l, x.steps, f"layer {x.l} backward, t = {t}"
        at = lambda name, j, s=t: x.ref((name, l, (s, j)))  # noqa: E731
        last = t == T - 1
        columns = self.excel_error_columns(x, t, lambda j: f"Σₘ Wh{l}[{j},m]·δₘ(t={t + 1}) over the 4U gate columns")
        if not last:
            columns.append(ExcelColumns(group, "ec_time", "ec→", "the part of ∂E/∂c_t from step t+1: ec(t+1)·f(t+1)",
                                        sample=lambda j: f"{at('ec', j, t + 1)}*{at('f', j, t + 1)}", time=t))
        ec = lambda j: f"{at('e', j)}*{at('o', j)}*{at('slope_c', j)}" + ("" if last else f"+{at('ec_time', j)}")  # noqa: E731
        c_prev = lambda j: self.excel_previous(x, "c", t, j)  # noqa: E731
        columns += [
            ExcelColumns(group, "ec", "ec", "ec_t = ∂E/∂c_t = e·o·tanh'(c_t)" + ("" if last else " + ec_time"),
                         sample=ec, time=t),
            ExcelColumns(group, "delta_i", "δ_i", "δ_i = ec·g·i'", sample=lambda j: f"{at('ec', j)}*{at('g', j)}*{at('slope_i', j)}", time=t),
            ExcelColumns(group, "delta_f", "δ_f", "δ_f = ec·c(t−1)·f'" + (" (c₋₁ = 0)" if t == 0 else ""),
                         sample=lambda j: f"{at('ec', j)}*{c_prev(j)}*{at('slope_f', j)}", time=t),
            ExcelColumns(group, "delta_g", "δ_g", "δ_g = ec·i·g'", sample=lambda j: f"{at('ec', j)}*{at('i', j)}*{at('slope_g', j)}", time=t),
            ExcelColumns(group, "delta_o", "δ_o", "δ_o = e·tanh(c_t)·o'",
                         sample=lambda j: f"{at('e', j)}*{at('tanh_c', j)}*{at('slope_o', j)}", time=t),
        ]
        return columns


class Lstm(LstmExcel, Recurrent):
    """torch.nn.LSTM's cell through time (see Recurrent for the scenario, parameters and records)."""

    name = "lstm"
    description = "LSTM cell (gates i, f, g, o as torch.nn.LSTM) through time"
    gates = GATES


Lstm.cell = sys.modules[__name__]
