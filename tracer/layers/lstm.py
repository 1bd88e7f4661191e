"""The LSTM cell (kind "lstm"), in PyTorch's gate order and equations (torch.nn.LSTM).

Per sample and time step t, with h₋₁ = 0 and c₋₁ = 0 (column blocks of W, Wh, b, bh in the
order i, f, g, o; see the design note in rnn.py for shapes, names and the order of arithmetic):
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
import numpy as np

from .rnn import (activate, as_float, back_sum, check_shapes, input_sums, parameter_gradients,
                  previous_states, running_sum, split_gates)

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
    gradients of rnn.parameter_gradients (delta_x = delta_h = [delta_i, delta_f, delta_g, delta_o]).
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


# ---- the layer kind ------------------------------------------------------------------------------
import sys as _sys  # noqa: E402

from .rnn import Recurrent  # noqa: E402


class Lstm(Recurrent):
    """torch.nn.LSTM's cell through time (see Recurrent for the scenario, parameters and records)."""

    name = "lstm"
    description = "LSTM cell (gates i, f, g, o as torch.nn.LSTM) through time"
    gates = GATES
    cell = _sys.modules[__name__]
