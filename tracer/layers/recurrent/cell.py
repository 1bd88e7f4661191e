"""The maths every recurrent cell shares (rnn, lstm, gru): shapes, running sums, the activation of a
gate, the gradients as sums over time.

Design note: what the recurrent cells record
========================================================
Arrays are batch first, float64: x (B, T, F) for B samples, T time steps, F features; a cell of
U units with G gates (rnn 1, lstm 4, gru 3) has
    W  (F, G·U)   input → hidden, torch's weight_ih transposed      parameter names W{l}[i,j]
    Wh (U, G·U)   hidden → hidden, torch's weight_hh transposed     Wh{l}[i,j]
    b  (G·U,)     torch's bias_ih                                     b{l}[j]
    bh (G·U,)     torch's bias_hh                                     bh{l}[j]
Column m = k·U + j of W, Wh, b, bh belongs to gate k (in torch's order) and unit j. The initial
states are h₋₁ = 0 (and c₋₁ = 0 for lstm). Time is indexed from 0: x_t, h_t for t = 0 … T−1.

`forward(x, W, Wh, b, bh, ...)` returns a record: a dict of arrays (B, T, U) indexed
[sample, time, unit] — in the CSV one row per (step, sample, quantity, layer, row = unit j,
time = t). `backward(record, dE_dh, W, Wh)` adds the backward quantities to a copy of it.

    kind  forward quantities (B, T, U)                      backward quantities (B, T, U)
    rnn   u, h, slope                                       e, e_time, delta
    lstm  u_i u_f u_g u_o, i f g o, slope_i … slope_o,      e, e_time, ec, ec_time,
          c, tanh_c, slope_c, h                             delta_i delta_f delta_g delta_o
    gru   u_r u_z u_n, r z n, slope_r slope_z slope_n,      e, e_time,
          hn, h                                             delta_r delta_z delta_n delta_hn

    u…        pre-activation of a gate (rnn: of the cell)         u_t = x_t·W + b + h_{t−1}·Wh + bh
    h         hidden state h_t, what a layer above (or the loss) reads
    slope…    local slope f'(u_t) of the gate's activation
    c, tanh_c, slope_c   lstm cell state c_t, tanh(c_t), and tanh'(c_t) = 1 − tanh²(c_t)
    hn        gru: the recurrent part of the candidate, W_hn·h_{t−1} + b_hn
    e         the error through time ∂E/∂h_t (in full): from above + from step t+1
    e_time    its part arriving from step t+1 (0 at the last time step)
    ec, ec_time  lstm: ∂E/∂c_t in full, and its part arriving from step t+1
    delta…    ∂E/∂u of the gate (gru: delta_hn = ∂E/∂hn)
The array of per-gate deltas in column order is kept as well (`delta_x`, (B, T, G·U): the delta
each input-side column W[:, m], b[m] sees, and `delta_h`, the delta of each recurrent column
Wh[:, m], bh[m]; they differ only for gru, where the n column of Wh sees delta_hn). They, the
inputs `x` and the states `h_prev` read by each step (and `c_prev` for lstm) are working arrays,
not CSV quantities.

Gradients (the backward record; "per sample" as the dense layer's grad_W, before the batch
reduction). Per time step, for each sample:
    grad_W_time[s,t,i,m]  = x_t[i] · delta_x_t[m]        grad_b_time[s,t,m]  = delta_x_t[m]
    grad_Wh_time[s,t,k,m] = h_{t−1}[k] · delta_h_t[m]    grad_bh_time[s,t,m] = delta_h_t[m]
and their sums over time, summed left to right from t = 0 to T−1:
    grad_W[s] = Σ_t grad_W_time[s,t]   (likewise grad_Wh, grad_b, grad_bh), shapes (B, F, G·U) …
    dx[s,t,i] = ∂E/∂x_t[i] = Σ_m W[i,m] delta_x_t[m]   the error passed down to a layer below (B, T, F)
In the CSV: grad_W etc. with their `time` per time step, and the sums with `time` empty.

Order of arithmetic (so a spreadsheet writing the same terms in the same order gets the same
bits): every sum runs left to right, one term after the other, as in
    u_t[m] = x_t[0]·W[0,m] + x_t[1]·W[1,m] + … + b[m] + h_{t−1}[0]·Wh[0,m] + … + bh[m]
(one running sum, as the formula written in one cell evaluates; at t = 0 the same sum runs with
h₋₁ = 0, so a non-finite Wh poisons u₀ as it does in torch and in a sheet reading h₋₁ cells of 0).
Sums over the columns m of the error (e_time, dx) run left to right over m, gate by gate; sums
over time from t = 0. Products are evaluated left to right as written in each docstring. The
error at the last step has no through-time term: e_{T−1} = dE_dh_{T−1} (not + 0).

Overflow never raises: inf/NaN propagate as IEEE arithmetic gives them, and an activation whose
input is non-finite gives NaN (ieee.propagate_nonfinite), as a spreadsheet error cell would.
"""
import numpy as np

from tracer.layers.passes import sum_over_time  # noqa: F401  (the cells' sums over time)
from tracer.maths import activations
from tracer.maths.ieee import propagate_nonfinite

def check_shapes(x, W, Wh, b, bh, gates):
    """Return (B, T, F, U) after checking the shapes of the scenario contract; ValueError otherwise."""
    x, W, Wh, b, bh = (np.asarray(v) for v in (x, W, Wh, b, bh))
    if x.ndim != 3:
        raise ValueError(f"inputs must be samples × time × features, got shape {x.shape}")
    batch, steps, features = x.shape
    if W.ndim != 2 or W.shape[0] != features or W.shape[1] % gates:
        raise ValueError(f"weights must be features × {gates}·units ({features} × {gates}·U), got {W.shape}")
    units = W.shape[1] // gates
    columns = gates * units
    if Wh.shape != (units, columns):
        raise ValueError(f"recurrent_weights must be {units} × {columns}, got {Wh.shape}")
    for name, vector in (("bias", b), ("recurrent_bias", bh)):
        if vector.shape != (columns,):
            raise ValueError(f"{name} must have {columns} entries, got shape {vector.shape}")
    return batch, steps, features, units


def as_float(*arrays):
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


def running_sum(start, a, M):
    """start + a[..., 0]·M[0] + a[..., 1]·M[1] + …, one term at a time (start None: from the first term).

    a (..., n) against M (n, m): the sum for every column of M and every leading index of a.
    """
    total = start
    for i in range(M.shape[0]):
        term = a[..., i:i + 1] * M[i]
        total = term if total is None else total + term
    return total


def input_sums(x, W, b):
    """x_t·W + b for every sample and time step: Σ_i x_t[i] W[i,m] left to right, then + b[m]. (B, T, G·U)"""
    return running_sum(None, x, W) + b


def back_sum(delta, M):
    """Σ_m M[k,m] delta[..., m], summed left to right over m, for every leading index (the error
    passed back through the columns of M: through W to the input, through Wh to h_{t−1})."""
    return running_sum(None, delta, M.T)


def activate(name, u, params=None):
    """(f(u), f'(u)) of an elementwise activation of tracer.maths.activations, non-finite u giving NaN."""
    definition = activations.get(name)
    if not definition.elementwise:
        raise ValueError(f"a recurrent cell needs an elementwise activation, not {name!r}")
    params = dict(definition.params, **(params or {}))
    value = propagate_nonfinite(definition.forward(u, params), u)
    return value, propagate_nonfinite(definition.slope(u, value, params), u, value)


def split_gates(array, gates):
    """The column blocks of (…, G·U) as G arrays (…, U), in gate order."""
    units = array.shape[-1] // len(gates)
    return {gate: array[..., k * units:(k + 1) * units] for k, gate in enumerate(gates)}


def parameter_gradients(record, W, delta_x, delta_h):
    """Per-sample, per-time-step gradient contributions, their sums over time, and ∂E/∂x.

      grad_W_time[s,t,i,m]  = x_t[i]·delta_x_t[m]        grad_b_time  = delta_x
      grad_Wh_time[s,t,k,m] = h_{t−1}[k]·delta_h_t[m]    grad_bh_time = delta_h
      grad_θ = Σ_t grad_θ_time (left to right from t = 0),  dx_t[i] = Σ_m W[i,m]·delta_x_t[m]
    """
    x, h_prev = record["x"], record["h_prev"]
    out = {
        "delta_x": delta_x,
        "delta_h": delta_h,
        "grad_W_time": x[..., :, None] * delta_x[..., None, :],
        "grad_Wh_time": h_prev[..., :, None] * delta_h[..., None, :],
        "grad_b_time": delta_x,
        "grad_bh_time": delta_h,
        "dx": back_sum(delta_x, W),
    }
    for name in ("W", "Wh", "b", "bh"):
        out[f"grad_{name}"] = sum_over_time(out[f"grad_{name}_time"])
    return out


def previous_states(h):
    """h_{t−1} for t = 0 … T−1 with h₋₁ = 0: h shifted one step later along time (axis 1)."""
    return np.concatenate([np.zeros_like(h[:, :1]), h[:, :-1]], axis=1)
