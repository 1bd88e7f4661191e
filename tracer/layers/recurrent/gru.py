"""The GRU cell (kind "gru"), in PyTorch's gate order and equations (torch.nn.GRU).

Per sample and time step t, with h₋₁ = 0 (column blocks of W, Wh, b, bh in the order r, z, n;
see the design note in cell.py for shapes, names and the order of arithmetic):
    u_r = x_t·W_r + b_r + h_{t−1}·Wh_r + bh_r,   r = σ(u_r)       one running sum each
    u_z = x_t·W_z + b_z + h_{t−1}·Wh_z + bh_z,   z = σ(u_z)
    hn  = h_{t−1}·Wh_n + bh_n                                      (torch's W_hn h + b_hn)
    u_n = x_t·W_n + b_n + r·hn,                  n = tanh(u_n)
    h_t = (1 − z)·n + z·h_{t−1}
slopes σ' = a(1−a), tanh' = 1 − a². Backward through time, given e_t = ∂E/∂h_t in full:
    delta_n  = e·(1 − z)·slope_n               ∂E/∂u_n
    delta_z  = e·(h_{t−1} − n)·slope_z         ∂E/∂u_z
    delta_r  = delta_n·hn·slope_r              ∂E/∂u_r
    delta_hn = delta_n·r                       ∂E/∂hn: what the n columns of Wh and bh see
    e_time_t = Σ_m Wh[k,m]·delta_h_{t+1}[m] + e_{t+1}·z_{t+1}    (∂E/∂h_t arriving from t+1)
with delta_x = [delta_r, delta_z, delta_n] (the columns of W, b) and delta_h = [delta_r, delta_z,
delta_hn] (the columns of Wh, bh); products left to right as written.
"""
import sys

import numpy as np

from tracer.layers.excel import ExcelColumns
from tracer.layers.recurrent.base import Recurrent
from tracer.layers.recurrent.cell import (activate, as_float, back_sum, check_shapes, input_sums, parameter_gradients,
                                          previous_states, running_sum, split_gates)
from tracer.layers.recurrent.excel import RecurrentExcel
from tracer.maths import activations

GATES = ("r", "z", "n")
FORWARD_QUANTITIES = (
    ("u_r", "u_r", "pre-activation of the reset gate: x_t·W_r + b_r + h_(t−1)·Wh_r + bh_r"),
    ("u_z", "u_z", "pre-activation of the update gate: x_t·W_z + b_z + h_(t−1)·Wh_z + bh_z"),
    ("u_n", "u_n", "pre-activation of the candidate: x_t·W_n + b_n + r·hn"),
    ("r", "r", "reset gate σ(u_r)"),
    ("z", "z", "update gate σ(u_z)"),
    ("n", "n", "candidate tanh(u_n)"),
    *((f"slope_{k}", f"{k}'", f"local slope of gate {k}") for k in GATES),
    ("hn", "W_hn·h + b_hn", "recurrent part of the candidate: h_(t−1)·Wh_n + bh_n"),
    ("h", "h", "hidden state h_t = (1 − z)·n + z·h_(t−1)"),
)
BACKWARD_QUANTITIES = (
    ("e", "∂E/∂h", "error through time e_t = ∂E/∂h_t: from above + from t+1"),
    ("e_time", "∂E/∂h (t+1)", "part of e_t arriving from step t+1: Σ_m Wh[k,m] δh_{t+1}[m] + e_{t+1}·z_{t+1}"),
    *((f"delta_{k}", f"δ_{k}", f"∂E/∂u_{k}") for k in GATES),
    ("delta_hn", "δ_hn", "∂E/∂hn = δ_n·r"),
)


def forward(x, W, Wh, b, bh):
    """Forward through time of torch.nn.GRU (W = weight_ih_l0ᵀ, Wh = weight_hh_l0ᵀ, b = bias_ih_l0,
    bh = bias_hh_l0, batch_first=True). Returns the record of the module docstring's quantities
    (B, T, U) and the working arrays x, h_prev."""
    check_shapes(x, W, Wh, b, bh, len(GATES))
    x, W, Wh, b, bh = as_float(x, W, Wh, b, bh)
    from_input = split_gates(input_sums(x, W, b), GATES)
    Wh_gates, bh_gates = split_gates(Wh, GATES), split_gates(bh, GATES)
    batch, steps, units = from_input["r"].shape
    names = ["u_r", "u_z", "u_n", "r", "z", "n", "slope_r", "slope_z", "slope_n", "hn", "h"]
    record = {name: np.empty((batch, steps, units)) for name in names}
    h_prev = np.zeros((batch, units))
    for t in range(steps):
        for k in ("r", "z"):
            record[f"u_{k}"][:, t] = running_sum(from_input[k][:, t], h_prev, Wh_gates[k]) + bh_gates[k]
            record[k][:, t], record[f"slope_{k}"][:, t] = activate("sigmoid", record[f"u_{k}"][:, t])
        record["hn"][:, t] = running_sum(None, h_prev, Wh_gates["n"]) + bh_gates["n"]
        record["u_n"][:, t] = from_input["n"][:, t] + record["r"][:, t] * record["hn"][:, t]
        record["n"][:, t], record["slope_n"][:, t] = activate("tanh", record["u_n"][:, t])
        z = record["z"][:, t]
        record["h"][:, t] = (1.0 - z) * record["n"][:, t] + z * h_prev
        h_prev = record["h"][:, t]
    record.update(x=x, h_prev=previous_states(record["h"]))
    return record


def backward(record, dE_dh, W, Wh):
    """Backpropagation through time, given dE_dh (B, T, U): ∂E/∂h_t arriving from above at each
    time step (0 where nothing above reads step t).

      e_{T−1} = dE_dh_{T−1};  e_t = dE_dh_t + e_time_t
    then the deltas of the module docstring, step by step from T−1 down to 0, and the gradients
    of cell.parameter_gradients. Returns a new dict: the record and e, e_time, delta_r, delta_z,
    delta_n, delta_hn, delta_x, delta_h, grad_*_time, grad_*, dx.
    """
    W, Wh, dE_dh = as_float(W, Wh, dE_dh)
    shape = record["h"].shape
    steps = shape[1]
    e, e_time = np.zeros(shape), np.zeros(shape)
    delta_x = np.zeros(shape[:2] + (len(GATES) * shape[2],))
    delta_h = np.zeros_like(delta_x)
    into_x, into_h = split_gates(delta_x, GATES), split_gates(delta_h, GATES)   # views
    for t in range(steps - 1, -1, -1):
        if t == steps - 1:
            e[:, t] = dE_dh[:, t]
        else:
            e_time[:, t] = back_sum(delta_h[:, t + 1], Wh) + e[:, t + 1] * record["z"][:, t + 1]
            e[:, t] = dE_dh[:, t] + e_time[:, t]
        r, z, n, hn, h_prev = (record[name][:, t] for name in ("r", "z", "n", "hn", "h_prev"))
        delta_n = e[:, t] * (1.0 - z) * record["slope_n"][:, t]
        delta_z = e[:, t] * (h_prev - n) * record["slope_z"][:, t]
        delta_r = delta_n * hn * record["slope_r"][:, t]
        into_x["r"][:, t], into_x["z"][:, t], into_x["n"][:, t] = delta_r, delta_z, delta_n
        into_h["r"][:, t], into_h["z"][:, t], into_h["n"][:, t] = delta_r, delta_z, delta_n * r
    out = {"e": e, "e_time": e_time, **{f"delta_{k}": into_x[k] for k in GATES}, "delta_hn": into_h["n"]}
    return dict(record, **out, **parameter_gradients(record, W, delta_x, delta_h))


class GruExcel(RecurrentExcel):
    """The GRU's columns at time t (formulas in the module docstring's order of arithmetic):
    forward u_r, r, u_z, z, hn = h_{t−1}·Wh_n + bh_n, u_n = x_t·W_n + b_n + r·hn, n, h_t = (1 − z)·n +
    z·h_{t−1} (h₋₁ = 0 written as 0), the slopes r', z', n'; backward e_time = Σ_m Wh[k,m]·δh_{t+1}[m]
    + e_{t+1}·z_{t+1} (t < T−1), e_t, δ_n = e·(1 − z)·n', δ_z = e·(h_{t−1} − n)·z', δ_r = δ_n·hn·r',
    δ_hn = δ_n·r (what the n columns of Wh and bh see)."""

    def excel_step_forward(self, layer, x, t):
        l, group = x.l, f"layer {x.l} forward, t = {t}"
        at = lambda name, j: x.ref((name, l, (t, j)))  # noqa: E731
        name = lambda symbol, j: self.excel_timed(x, symbol, l, j, t)  # noqa: E731
        sigmoid, tanh = activations.get("sigmoid"), activations.get("tanh")
        h_prev = lambda j: self.excel_previous(x, "h", t, j)  # noqa: E731

        def gate(k):
            return [ExcelColumns(group, f"u_{k}", f"u_{k}", self.excel_u_meaning(x, f"u_{k}", k, t),
                                 sample=lambda j: self.excel_preactivation(x, t, k, j), time=t),
                    ExcelColumns(group, k, k, lambda j: f"{name(k, j)} = σ({name('u_' + k, j)})",
                                 sample=lambda j: sigmoid.excel_value(at(f"u_{k}", j), {}), time=t)]

        def candidate_input(j):
            return f"{self.excel_input_terms(x, t, self.excel_column(x, 'n', j))}+{at('r', j)}*{at('hn', j)}"
        slopes = [ExcelColumns(group, f"slope_{k}", f"{k}'", f"local slope of gate {k}",
                               sample=lambda j, k=k, act=act: act.excel_slope(at(f"u_{k}", j), at(k, j), {}), time=t)
                  for k, act in (("r", sigmoid), ("z", sigmoid), ("n", tanh))]
        return gate("r") + gate("z") + [
            ExcelColumns(group, "hn", "hn", lambda j: f"recurrent part of the candidate: Σₖ h(t−1)ₖ·Wh{l}[k,{self.excel_column(x, 'n', j)}] + "
                         f"bh{l}[{self.excel_column(x, 'n', j)}]" + (" (h₋₁ = 0)" if t == 0 else ""),
                         sample=lambda j: self.excel_recurrent_terms(x, t, self.excel_column(x, "n", j)), time=t),
            ExcelColumns(group, "u_n", "u_n", lambda j: f"{name('u_n', j)} = Σᵢ xᵢ·W{l}[i,{self.excel_column(x, 'n', j)}] + "
                         f"b{l}[{self.excel_column(x, 'n', j)}] + r·hn", sample=candidate_input, time=t),
            ExcelColumns(group, "n", "n", lambda j: f"candidate {name('n', j)} = tanh({name('u_n', j)})",
                         sample=lambda j: tanh.excel_value(at("u_n", j), {}), time=t),
            ExcelColumns(group, "h", "h", lambda j: f"hidden state {name('h', j)} = (1 − z)·n + z·h(t−1)" + (" (h₋₁ = 0)" if t == 0 else ""),
                         sample=lambda j: f"(1-{at('z', j)})*{at('n', j)}+{at('z', j)}*{h_prev(j)}", time=t),
        ] + slopes

    def excel_back_terms(self, x, t, k):
        """Σ_m Wh[k,m]·δh_{t+1}[m] + e_{t+1}·z_{t+1}: through Wh, and through the z·h_{t−1} path."""
        through = super().excel_back_terms(x, t, k)
        return f"{through}+{x.ref(('e', x.l, (t + 1, k)))}*{x.ref(('z', x.l, (t + 1, k)))}"

    def excel_step_backward(self, layer, x, t):
        l, group = x.l, f"layer {x.l} backward, t = {t}"
        at = lambda name, j: x.ref((name, l, (t, j)))  # noqa: E731
        columns = self.excel_error_columns(x, t, lambda j: f"Σₘ Wh{l}[{j},m]·δhₘ(t={t + 1}) + e(t+1)·z(t+1)")
        h_prev = lambda j: self.excel_previous(x, "h", t, j)  # noqa: E731
        return columns + [
            ExcelColumns(group, "delta_n", "δ_n", "δ_n = ∂E/∂u_n = e·(1 − z)·n'",
                         sample=lambda j: f"{at('e', j)}*(1-{at('z', j)})*{at('slope_n', j)}", time=t),
            ExcelColumns(group, "delta_z", "δ_z", "δ_z = ∂E/∂u_z = e·(h(t−1) − n)·z'" + (" (h₋₁ = 0)" if t == 0 else ""),
                         sample=lambda j: f"{at('e', j)}*({h_prev(j)}-{at('n', j)})*{at('slope_z', j)}", time=t),
            ExcelColumns(group, "delta_r", "δ_r", "δ_r = ∂E/∂u_r = δ_n·hn·r'",
                         sample=lambda j: f"{at('delta_n', j)}*{at('hn', j)}*{at('slope_r', j)}", time=t),
            ExcelColumns(group, "delta_hn", "δ_hn", "δ_hn = ∂E/∂hn = δ_n·r (what the n columns of Wh, bh see)",
                         sample=lambda j: f"{at('delta_n', j)}*{at('r', j)}", time=t),
        ]


class Gru(GruExcel, Recurrent):
    """torch.nn.GRU's cell through time (see Recurrent for the scenario, parameters and records)."""

    name = "gru"
    description = "GRU cell (gates r, z, n as torch.nn.GRU) through time"
    gates = GATES

    def delta_key(self, gate, recurrent_side=False):
        """The n columns of Wh and bh see δ_hn = ∂E/∂hn; every other column its gate's δ."""
        return "delta_hn" if recurrent_side and gate == "n" else f"delta_{gate}"


Gru.cell = sys.modules[__name__]
