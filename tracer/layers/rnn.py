"""The Elman recurrent cell (kind "rnn"), and the through-time machinery the lstm and gru share.

Design note: what the recurrent cells record (issue 12)
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

from tracer.maths import activations
from tracer.maths.ieee import propagate_nonfinite

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


# ---- shared by rnn, lstm and gru -------------------------------------------------------------

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


def sum_over_time(per_time):
    """Σ_t per_time[:, t], left to right from t = 0 (axis 1 is time)."""
    total = per_time[:, 0]
    for t in range(1, per_time.shape[1]):
        total = total + per_time[:, t]
    return total


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


# ---- the Elman cell ----------------------------------------------------------------------------

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


# ---- the Excel face (the Trace sheet unrolled through time) --------------------------------------

class RecurrentExcel:
    """The Excel face of a recurrent cell, unrolled through time (mixed into the rnn, lstm and gru kinds).

    Every sample row holds the whole sequence: per time step t = 0 … T−1 (time outer, unit inner) the
    forward columns of the cell (`excel_step_forward`), then, after the loss, per time step the
    backward ones (`excel_step_backward`): the error through time e_t = ∂E/∂h_t as its own columns
    (from above + from t+1) and the deltas. Keys (quantity, l, (t, j)), as the Trace keeps them.
    The formulas write the engine's sums term by term in its order (see the design note above):
      u_t[m] = x_t[0]·W[0,m] + … + b[m] + h_{t−1}[0]·Wh[0,m] + … + bh[m]
    with h₋₁ = 0 written as the number 0 in the t = 0 terms (0·Wh[k,m], as the engine sums them:
    a non-finite Wh gives an error there too), and the gradients summed over time from t = 0:
      ∂E/∂W[i,m] = Σ_t x_t[i]·δx_t[m]        ∂E/∂Wh[k,m] = Σ_t h_{t−1}[k]·δh_t[m]   (t = 0: 0·δh_0[m])
      ∂E/∂b[m]   = Σ_t δx_t[m]               ∂E/∂bh[m]   = Σ_t δh_t[m]
    δx_t[m] / δh_t[m] are the delta column m = k·U + j of gate k sees (`excel_delta_x`/`excel_delta_h`).
    The error a recurrent layer above passes down at time t is Σ_m W[i,m]·δx_t[m] (its dx_t[i]).
    """

    excel_gate_names = GATES      # the gate blocks of the columns of W, Wh, b, bh, in order

    def excel_unrolled(self, layer):
        return True

    def excel_output(self, layer, l, i, steps):
        """A dense layer above reads the last hidden state h⁽ˡ⁾ᵢ at t = T−1."""
        return ("h", l, (steps - 1, i))

    # ---- the pieces every cell's formulas use

    @staticmethod
    def excel_input(x, t, i):
        """The key of the cell's input i at time t: xᵢ on layer 1, the hidden state of the recurrent layer below."""
        return ("x", 0, (t, i)) if x.l == 1 else ("h", x.l - 1, (t, i))

    @staticmethod
    def excel_timed(x, symbol, l, j, t):
        """A unit's symbol at time step t in header notation: h₀⁽¹⁾(t=3)."""
        return f"{x.unit(symbol, l, j)}(t={t})"

    def excel_input_symbol(self, x, i, t):
        """The cell's input i at time t in header notation: xᵢ(t=3), or h of the layer below (t a
        number, or a letter: xᵢ(t))."""
        when = f"t={t}" if isinstance(t, int) else t
        return f"x{i}({when})" if x.l == 1 else f"{x.unit('h', x.l - 1, i)}({when})"

    def excel_column(self, x, gate, j):
        """The column m = k·U + j of W, Wh, b, bh of gate `gate` (its index k) and unit j."""
        return self.excel_gate_names.index(gate) * x.units + j

    def excel_previous(self, x, quantity, t, k):
        """The cell of quantity (h, c) at t − 1 for unit k: the number 0 at t = 0 (h₋₁ = c₋₁ = 0)."""
        return "0" if t == 0 else x.ref((quantity, x.l, (t - 1, k)))

    def excel_input_terms(self, x, t, m):
        """x_t·W[:,m] + b[m] as its terms: 'x0*W0m+x1*W1m+b_m' (the engine's input sum, left to right)."""
        l = x.l
        terms = [f"{x.ref(self.excel_input(x, t, i))}*{x.ref(('W', l, (i, m)), 'p')}" for i in range(x.fan_in)]
        return "+".join(terms + [x.ref(("b", l, (m,)), "p")])

    def excel_recurrent_terms(self, x, t, m):
        """h_{t−1}·Wh[:,m] + bh[m] as its terms (h₋₁ = 0 written as 0 at t = 0)."""
        l = x.l
        terms = [f"{self.excel_previous(x, 'h', t, k)}*{x.ref(('Wh', l, (k, m)), 'p')}" for k in range(x.units)]
        return "+".join(terms + [x.ref(("bh", l, (m,)), "p")])

    def excel_preactivation(self, x, t, gate, j):
        """u_t of column m: the input sum then the recurrent sum, one running sum as the engine's."""
        m = self.excel_column(x, gate, j)
        return f"{self.excel_input_terms(x, t, m)}+{self.excel_recurrent_terms(x, t, m)}"

    def excel_u_meaning(self, x, symbol, gate, t):
        """The text of a pre-activation u_t = x_t·W + b + h_{t−1}·Wh + bh for gate `gate`."""
        l, block = x.l, (f" (gate {gate}: columns m = {self.excel_gate_names.index(gate)}·U + j)" if gate else "")

        def meaning(j):
            m = self.excel_column(x, gate, j)
            below = self.excel_input_symbol(x, "ᵢ", t)
            h_prev = "h₋₁" if t == 0 else f"{self.excel_timed(x, 'h', l, 'ₖ', t - 1)}"
            return (f"{self.excel_timed(x, symbol, l, j, t)} = Σᵢ {below}·W{l}[i,{m}] + b{l}[{m}] + "
                    f"Σₖ {h_prev}·Wh{l}[k,{m}] + bh{l}[{m}]{block}" + (" (h₋₁ = 0: written 0)" if t == 0 else ""))
        return meaning

    def excel_back_terms(self, x, t, k):
        """Σ_m Wh[k,m]·δh_{t+1}[m], left to right over the columns m (gate by gate): the error that
        reaches h_t[k] from step t+1 through Wh."""
        l, U = x.l, x.units
        terms = []
        for gate in self.excel_gate_names:
            for j in range(U):
                m = self.excel_column(x, gate, j)
                terms.append(f"{x.ref(self.excel_delta_h(x, gate, t + 1, j))}*{x.ref(('Wh', l, (k, m)), 'p')}")
        return "+".join(terms)

    def excel_error_columns(self, x, t, carried):
        """The first columns of every recurrent kind's backward step t: e→ (below the last step: the
        error reaching h_t from step t+1, excel_back_terms; `carried(j)` states its sum in the header
        comment) and e_t = ∂E/∂h_t (excel_error, with e→ where there is one)."""
        from tracer.layers.base import ExcelColumns
        l, group, last = x.l, f"layer {x.l} backward, t = {t}", t == x.steps - 1
        columns = []
        if not last:
            columns.append(ExcelColumns(
                group, "e_time", "e→", lambda j: f"the error reaching h_t from step t+1: {carried(j)}",
                sample=lambda j: self.excel_back_terms(x, t, j), time=t))
        through = (lambda j: None) if last else (lambda j: x.ref(("e_time", l, (t, j))))  # noqa: E731
        columns.append(ExcelColumns(group, "e", "e", lambda j: "e_t = ∂E/∂h_t: " + self.excel_error(x, t, j, through(j))[1],
                                    sample=lambda j: self.excel_error(x, t, j, through(j))[0], time=t))
        return columns

    def excel_error(self, x, t, j, through_time):
        """(formula body, text) of e_t = ∂E/∂h_t: what arrives from above (a dense layer above: at
        t = T−1 only; a recurrent layer above: at every t) + `through_time` (the cell of the part
        from t+1; None at t = T−1)."""
        from_above = x.above(j, t) if x.above is not None else None
        if from_above is None and through_time is None:
            raise ValueError(f"layer {x.l}: nothing reaches h at the last time step")
        if from_above is None:
            return through_time, "nothing from above at this time step: e_t = the part from t+1"
        body, text = from_above
        if through_time is None:
            return body, f"from above: {text} (last time step: nothing from t+1)"
        return f"{body}+{through_time}", f"from above: {text}, + the part from t+1"

    def excel_error_down_time(self, layer, x, j, t):
        """(formula body, text) of the error passed to unit j of the recurrent layer below at time t:
        dx_t[j] = Σ_m W[j,m]·δx_t[m], left to right over m (gate by gate)."""
        l, terms = x.l, []
        for gate in self.excel_gate_names:
            for k in range(x.units):
                m = self.excel_column(x, gate, k)
                terms.append(f"{x.ref(self.excel_delta_x(x, gate, t, k))}*{x.ref(('W', l, (j, m)), 'p')}")
        return "+".join(terms), f"Σₘ W{l}[{j},m]·δₘ⁽{l}⁾(t={t})"

    def excel_error_down(self, layer, x, j):
        raise NotImplementedError("a recurrent layer passes its error down per time step (excel_error_down_time)")

    # ---- the deltas each parameter column sees (gate k of column m = k·U + j)

    def excel_delta_x(self, x, gate, t, j):
        """The key of the delta the input-side column (W[:, m], b[m]) of gate `gate`, unit j sees at t."""
        return ("delta", x.l, (t, j)) if not gate else (f"delta_{gate}", x.l, (t, j))

    def excel_delta_h(self, x, gate, t, j):
        """The key of the delta the recurrent column (Wh[:, m], bh[m]) of gate `gate`, unit j sees at t."""
        return self.excel_delta_x(x, gate, t, j)

    # ---- the layout's calls

    def excel_forward(self, layer, x):
        """Every forward column, time step by time step (t outer): the cell's `excel_step_forward`."""
        return [columns for t in range(x.steps) for columns in self.excel_step_forward(layer, x, t)]

    def excel_backward(self, layer, x):
        """Every backward column, time step by time step: the cell's `excel_step_backward`."""
        return [columns for t in range(x.steps) for columns in self.excel_step_backward(layer, x, t)]

    def excel_gradient(self, layer, x, which, index):
        """(formula body, text) of the per-sample gradient of W, b, Wh or bh summed over time from t = 0."""
        l, T, U = x.l, x.steps, x.units
        m = index[-1]
        gate, j = self.excel_gate_names[m // U], m % U
        if which in ("W", "b"):
            delta = [x.ref(self.excel_delta_x(x, gate, t, j)) for t in range(T)]
        else:
            delta = [x.ref(self.excel_delta_h(x, gate, t, j)) for t in range(T)]
        δ = "δ" + (f"_{gate}" if gate else "")
        if which == "W":
            i = index[0]
            terms = [f"{x.ref(self.excel_input(x, t, i))}*{delta[t]}" for t in range(T)]
            text = f"Σₜ {self.excel_input_symbol(x, i, 't')}·{x.unit(δ, l, j)}(t) (t = 0 … {T - 1})"
        elif which == "Wh":
            k = index[0]
            terms = [f"{self.excel_previous(x, 'h', t, k)}*{delta[t]}" for t in range(T)]
            text = f"Σₜ {x.unit('h', l, k)}(t−1)·{x.unit(δ, l, j)}(t) (h₋₁ = 0; t = 0 … {T - 1})"
        else:
            terms = delta
            text = f"Σₜ {x.unit(δ, l, j)}(t) (t = 0 … {T - 1})"
        return "+".join(terms), text


class RnnExcel(RecurrentExcel):
    """The Elman cell's columns at time t: u_t, h_t = f(u_t), f'(u_t); backward e_time (t < T−1),
    e_t, δ_t = f'(u_t)·e_t."""

    def excel_step_forward(self, layer, x, t):
        from tracer.layers.base import ExcelColumns
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
        from tracer.layers.base import ExcelColumns
        l = x.l
        return self.excel_error_columns(x, t, lambda j: f"Σₘ Wh{l}[{j},m]·δₘ(t={t + 1})") + [
            ExcelColumns(f"layer {l} backward, t = {t}", "delta", "δ", "δ_t = ∂E/∂u_t = f'(u_t)·e_t",
                         sample=lambda j: f"{x.ref(('slope', l, (t, j)))}*{x.ref(('e', l, (t, j)))}", time=t),
        ]
# ---- the layer kinds (registry faces) ----------------------------------------------------------
# Imported here, below the cells' maths, so that the cells stay importable on their own.
from tracer.errors import ScenarioError  # noqa: E402
from tracer.layers.base import LayerKind, Layer, Quantity, parse_activation, parse_bias, parse_init  # noqa: E402
from tracer.layers.protocol import LayerPass, Signal  # noqa: E402
from tracer.layers.sums import IN_ORDER  # noqa: E402
from tracer.maths import initialisers as inits  # noqa: E402

RECURRENT_KEYS = ("kind", "units", "init", "low", "high", "mean", "std", "value", "weights", "recurrent_weights",
                  "bias", "recurrent_bias", "bias_init", "bias_low", "bias_high", "bias_mean", "bias_std",
                  "bias_value", "train_bias")


class Recurrent(LayerKind):
    """A recurrent layer kind (rnn, lstm, gru): the cell's maths of its module, run through time.

    Scenario (issue 12): `[data] inputs` are samples × time × features; recurrent layers come first
    (a stack reads the hidden states h_t of the layer below at every time step) and a dense layer
    must follow: the first dense layer reads the last hidden state h_{T−1} (the Pass's `a` of the
    layer and the trace's store `a` hold h_{T−1}, B × units). Keys: units (required), init (default
    xavier_uniform, drawn for W then Wh from the seeded generator) or init = "explicit" with
    weights (features × gates·units) and recurrent_weights (units × gates·units); bias values (or
    bias_init, default constant 0), recurrent_bias values (default 0); train_bias (false freezes b
    and bh, as PyTorch's bias=False). rnn also takes activation (default tanh, elementwise only)
    and its slope/alpha; lstm and gru have their fixed gate activations.

    Parameters, stored (stored_params) in the order W, b, Wh, bh, shapes (F, G·U), (G·U,),
    (U, G·U), (G·U,): names W{l}[i,j], b{l}[j], Wh{l}[i,j], bh{l}[j] everywhere; CSV quantities
    W, b, Wh, bh, grad_Wh, update_Wh, m_Wh, ... (the parameter-shaped quantities of dense layers
    with the name of the parameter). In the Trace: trace.W, trace.b, trace.Wh, trace.bh (per layer
    lists, None on layers without them) and likewise grad_Wh, update_Wh, grad_Wh_sample, ....

    Records (the kind's own quantities, Trace store `norm`, keys = CSV names): the cell's forward
    and backward quantities of the module docstring (rnn: u, h, slope, e, e_time, delta), per
    "sample-time-unit": Trace.values key (name, l, (t, j)) — time step t first, then unit j; and
    the per-time-step gradient contributions, keys grad_W_time, grad_b_time, grad_Wh_time,
    grad_bh_time, Trace.values key (name, l, (t, i, j)) or (name, l, (t, j)), written to the CSV
    as grad_W, grad_b, grad_Wh, grad_bh with their time (the per-sample sums over time are the
    usual grad_W ... with the time empty).

    Time steps are t = 0 … T−1 for sequences of T time steps (T = scenario.time_steps); the CSV's
    `time` column holds t. The templates rnn-exploding and rnn-clipped have T = 101 (h₀ … h₁₀₀: 100
    steps of recurrence, ∂h₁₀₀/∂h₀ = 1.1¹⁰⁰); rnn-vanishing, lstm-long and gru-long T = 50.
    With targets per time step the dense layers above run at every t (records.py, "Time").
    The engine runs it through the protocol's pass faces (forward_pass, backward_pass,
    sample_gradients); the numpy faces keep the protocol's signatures: forward(layer, sequence, W, b,
    Wh, bh) -> (h, record); backward(layer, record, dE_dh, W, Wh) adds the backward quantities to the
    record; gradients(layer, record, ...) -> (grad_W, grad_b, grad_Wh, grad_bh) per sample;
    error_down(layer, record, ...) -> ∂E/∂x (B, T, F).
    """

    keys = RECURRENT_KEYS
    stored_params = ("W", "b", "Wh", "bh")
    bias_params = ("b", "bh")
    param_names = ("W", "b", "Wh", "bh")
    recurrent = True
    gates = GATES
    cell = None          # the module holding forward/backward and the quantity tables

    def parse(self, v, raw, key, fan_in, is_output):
        if is_output:
            raise ScenarioError(v.source, f"{key}.kind", f"a {self.name} layer cannot be the output layer: "
                                "add a dense layer after it (it reads the last hidden state)")
        v.require(raw, "units", key)
        units = v.integer(raw, "units", key, minimum=1)
        activation, activation_params = self.parse_activation(v, raw, key, units)
        columns = len(self.gates) * units
        init_name, init_params = parse_init(v, raw, key, "", default="xavier_uniform")
        weights = recurrent_weights = None
        if init_name == "explicit":
            v.require(raw, "weights", f"{key} (init = \"explicit\")")
            v.require(raw, "recurrent_weights", f"{key} (init = \"explicit\")")
            weights = self._matrix(v, raw, "weights", key, (fan_in, columns), "(features, gates·units)")
            recurrent_weights = self._matrix(v, raw, "recurrent_weights", key, (units, columns), "(units, gates·units)")
        else:
            for name in ("weights", "recurrent_weights"):
                if name in raw:
                    raise ScenarioError(v.source, f"{key}.{name}", f"explicit {name.replace('_', ' ')} need init = \"explicit\"")
        bias, bias_name, bias_params = parse_bias(v, raw, key, lambda: self._vector(v, raw, "bias", key, columns))
        recurrent_bias = self._vector(v, raw, "recurrent_bias", key, columns) if "recurrent_bias" in raw else np.zeros(columns)
        return Layer(
            units=units, activation=activation, activation_params=activation_params, init=init_name,
            init_params=init_params, weights=weights, bias_init=bias_name, bias_params=bias_params, bias=bias,
            train_bias=v.boolean(raw, "train_bias", key, default=True), kind=self.name,
            recurrent_weights=recurrent_weights, recurrent_bias=recurrent_bias,
        )

    def parse_activation(self, v, raw, key, units):
        """lstm/gru: fixed gate activations; the layer's `activation` names the output's (tanh)."""
        return "tanh", {}

    def _matrix(self, v, raw, name, key, shape, meaning):
        value = v.matrix(raw, name, key)
        if value.shape != shape:
            raise ScenarioError(v.source, f"{key}.{name}", f"shape {value.shape[0]}×{value.shape[1]} does not match "
                                f"{meaning} = ({shape[0]}, {shape[1]}) of a {self.name} layer")
        return value

    def _vector(self, v, raw, name, key, columns):
        value = v.vector(raw, name, key)
        if value.shape != (columns,):
            raise ScenarioError(v.source, f"{key}.{name}", f"{value.shape[0]} values for gates·units = {columns} "
                                f"of a {self.name} layer")
        return value

    def refuse_key(self, v, key, name, kinds_with_it):
        raise ScenarioError(v.source, f"{key}.{name}", f"'{name}' does not apply to a {self.name} layer "
                            + ("(its gates have fixed activations)" if name in ("activation", "slope", "alpha")
                               else f"(its keys: {', '.join(self.keys)})"))

    def param_shapes(self, fan_in, units):
        """W (F, G·U), b (G·U,), Wh (U, G·U), bh (G·U,)."""
        columns = len(self.gates) * units
        return (fan_in, columns), (columns,), (units, columns), (columns,)

    def initial_parameters(self, layer, fan_in, rng):
        """(W, b, Wh, bh): W then Wh drawn by the layer's init (fan_in, fan_out of each matrix),
        then b by bias_init; explicit values as given; bh the recurrent_bias (default 0)."""
        shapes = self.param_shapes(fan_in, layer.units)
        if layer.init == "explicit":
            W, Wh = np.array(layer.weights, dtype=float), np.array(layer.recurrent_weights, dtype=float)
        else:
            sampler = inits.INITS[layer.init][1]
            W = np.asarray(sampler(rng, shapes[0], fan_in, shapes[0][1], layer.init_params), dtype=float)
            Wh = np.asarray(sampler(rng, shapes[2], layer.units, shapes[2][1], layer.init_params), dtype=float)
        if layer.bias_init == "explicit":
            b = np.array(layer.bias, dtype=float)
        else:
            sampler = inits.INITS[layer.bias_init][1]
            b = np.asarray(sampler(rng, shapes[1], fan_in, shapes[1][0], layer.bias_params), dtype=float)
        bh = np.array(layer.recurrent_bias if layer.recurrent_bias is not None else np.zeros(shapes[3]), dtype=float)
        return W, b, Wh, bh

    def describe(self, layer):
        return f"{self.name} {layer.units}"

    # ------------------------------------------------------------ records face

    def records(self, layer):
        """The cell's quantities per (sample, time, unit), then the per-time-step gradient contributions."""
        per_time = tuple(Quantity(name, symbol, meaning, "sample-time-unit")
                         for name, symbol, meaning in self.cell.FORWARD_QUANTITIES + self.cell.BACKWARD_QUANTITIES)
        gradients = tuple(Quantity(f"grad_{p}", f"∂E/∂{p} (time step t)", f"the time step's contribution to ∂E/∂{p}",
                                   "sample-time-param", key=f"grad_{p}_time", param=p) for p in self.stored_params)
        return per_time + gradients

    # ------------------------------------------------------------ numpy face (through time)
    # The protocol's signatures; `below` is the sequence (B, time, F), `delta` the error reaching the
    # hidden states from above, ∂E/∂h_t (B, time, U).

    def forward(self, layer, below, W, b, Wh, bh, sums=IN_ORDER):
        """(h, record): the hidden states (B, time, U) and the cell's record through time."""
        record = self.cell_forward(layer, below, W, b, Wh, bh)
        return record["h"], record

    def cell_forward(self, layer, below, W, b, Wh, bh):
        """The cell module's forward (the Elman cell adds its activation)."""
        return self.cell.forward(below, W, Wh, b, bh)

    def output(self, layer, record):
        """The hidden states h (B, time, U): what a recurrent layer above reads (h[:, -1] a dense one)."""
        return record["h"]

    def backward(self, layer, record, delta, W, Wh):
        """Backpropagation through time given delta = ∂E/∂h_t (B, time, U) from above: the backward
        quantities and gradients added to `record`."""
        record.update(self.cell.backward(record, delta, W, Wh))

    def gradients(self, layer, record, below=None, delta=None):
        """Per-sample gradients summed over time, in the order of stored_params."""
        return tuple(record[f"grad_{p}"] for p in self.stored_params)

    def error_down(self, layer, record, delta=None, W=None, error_here=None, sums=IN_ORDER):
        """∂E/∂x_t (B, time, F): the error passed to a recurrent layer below."""
        return record["dx"]

    # ------------------------------------------------------------ the engine's pass faces

    def forward_pass(self, layer, below, params, sums=IN_ORDER, u=None, slopes=True):
        """The cell through time over below.sequence; up: the hidden states as the sequence, and as
        rows the last hidden state h_{T−1} (B × U), or every h_t ((B·time) × U) with per-time targets."""
        sequence, record = self.forward(layer, below.sequence, *params)
        rows = sequence.reshape(-1, sequence.shape[-1]) if below.per_time else sequence[:, -1]
        return LayerPass(below, Signal(rows, sequence, below.per_time), sequence[:, -1], record)

    def pre_activations(self, layer, u, record):
        """u at every time step."""
        return record["u"]

    def backward_pass(self, layer, state, error, params, sums=IN_ORDER, down=True):
        """Through time, given ∂E/∂h_t from a recurrent layer above (B, time, U), or the error rows of
        a row layer above: at the last time step only (0 before it), or at every time step with
        per-time targets. Returns ∂E/∂x_t for a recurrent layer below."""
        sequence = state.up.sequence
        if error.ndim == sequence.ndim:
            dE_dh = error
        else:
            state.e = error
            if state.below.per_time:
                dE_dh = error.reshape(sequence.shape)
            else:
                dE_dh = np.zeros_like(sequence)
                dE_dh[:, -1] = error
        W, _, Wh, _ = params
        self.backward(layer, state.record, dE_dh, W, Wh)
        return self.error_down(layer, state.record) if down else None

    def sample_gradients(self, layer, state, steps=None):
        """The per-sample sums over time of the record."""
        return self.gradients(layer, state.record)

    def finish_pass(self, layer, state, steps=None):
        """Its values stay per (sample, time) in the record."""

    def activated(self, layer):
        return "h"


class Rnn(RnnExcel, Recurrent):
    name = "rnn"
    description = "Elman cell h_t = f(x_t·W + b + h_{t−1}·Wh + bh) through time"
    keys = RECURRENT_KEYS + ("activation", "slope", "alpha")
    gates = GATES

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
        return f"rnn {layer.units} {layer.activation}"


import sys as _sys  # noqa: E402
Rnn.cell = _sys.modules[__name__]
