"""The error through time of a recurrent layer (rnn, lstm, gru): one parameter's gradient as a sum
over time steps (`tracer chain`), the norm of ∂E/∂h_t per time step (`tracer diagnose`) and the
scalar rules of a hand check at one time step (`tracer check`, names with ~k).

For one sample and one training step, a recurrent layer of U units over T time steps (t = 0 … T−1,
h₋₁ = 0) holds the cell's record (tracer/layers/rnn.py: x, h_prev, u, h, slope, e, e_time, delta,
delta_x, delta_h, and the gates of lstm/gru). Every parameter's gradient is a sum over time:

  ∂E/∂W[i,m]  = Σ_t x_t[i]·δx_t[m]          ∂E/∂b[m]  = Σ_t δx_t[m]
  ∂E/∂Wh[k,m] = Σ_t h_{t−1}[k]·δh_t[m]      ∂E/∂bh[m] = Σ_t δh_t[m]

with δx, δh the delta of column m (rnn: δ_t = f'(u_t)·e_t for both; gru: the n column of Wh sees
δ_hn). For the Elman cell the error through time is the recursion

  e_t[j] = g_t[j] + Σ_m Wh[j,m]·δ_{t+1}[m],    δ_t[j] = f'(u_t[j])·e_t[j],    e_{T−1} = g_{T−1}

with g_t = ∂E/∂h_t arriving from above (the loss or the layer above) at time step t. For a scalar
cell (U = 1) it unrolls into products of one factor per time step, φ_s = Wh·f'(u_s):

  e_t = Σ_{τ=t}^{T−1} g_τ · Π_{s=t+1}^{τ} φ_s,   so   ∂E/∂Wh = Σ_t h_{t−1}·f'(u_t)·Σ_τ g_τ·Π_{s=t+1}^{τ} φ_s

and ∂h_{T−1}/∂h₋₁ = Π_{t=0}^{T−1} φ_t: 1.1¹⁰⁰ ≈ 13,780.6 for the articles' linear cell with
Wh = 1.1 over 100 time steps.
"""
from dataclasses import dataclass, field

import numpy as np
from tracer.maths.symbolic import sympy as sp

from tracer.maths import activations, notation

GATES = {"rnn": ("",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
WHICH = ("W", "Wh", "b", "bh")


@dataclass
class TimeRecord:
    """One sample's values of one recurrent layer at one training step.

    cell        "rnn", "lstm" or "gru"
    activation  the Elman cell's f (its `params`); lstm and gru have fixed gate activations
    W, Wh, b, bh  the parameters used at the step: (F, G·U), (U, G·U), (G·U,), (G·U,)
    values      {name: array (T, ·)}: the cell's record for the sample (x (T, F), h_prev, u, h, slope,
                e, e_time, delta… (T, U), delta_x, delta_h (T, G·U)) and `above` (T, U), g_t = ∂E/∂h_t
                arriving from above at each time step (0 where nothing above reads it)
    """

    cell: str
    activation: str
    params: dict
    W: np.ndarray
    Wh: np.ndarray
    b: np.ndarray
    bh: np.ndarray
    values: dict = field(default_factory=dict)

    @property
    def steps(self):
        return self.values["h"].shape[0]

    @property
    def units(self):
        return self.values["h"].shape[1]

    @property
    def gates(self):
        return GATES[self.cell]

    def parameter(self, which):
        return {"W": self.W, "Wh": self.Wh, "b": self.b, "bh": self.bh}[which]

    def gate_of(self, m):
        """(gate name, unit j) of column m = k·U + j."""
        return self.gates[m // self.units], m % self.units


def from_cell(cell, record, slot, W, Wh, b, bh, above, activation="identity", params=None):
    """The TimeRecord of the sample in batch slot `slot` of a cell's batch record (arrays (B, T, ·));
    `above` (B, T, U) is ∂E/∂h_t from above, as given to the cell's backward."""
    values = {name: np.asarray(array)[slot] for name, array in record.items()
              if isinstance(array, np.ndarray) and array.ndim == 3}
    values["above"] = np.asarray(above, dtype=float)[slot]
    definition = activations.get(activation)
    return TimeRecord(cell, activation, dict(definition.params, **(params or {})),
                      *(np.asarray(p, dtype=float) for p in (W, Wh, b, bh)), values)


# ---------------------------------------------------------------- the gradient as a sum over time

def delta_name(record, which, m):
    """The name of the delta column m of parameter `which` sees: δ (rnn), δ_f (lstm), δ_hn (gru's n
    column of Wh and bh)."""
    gate, _ = record.gate_of(m)
    if record.cell == "rnn":
        return "δ"
    if record.cell == "gru" and gate == "n" and which in ("Wh", "bh"):
        return "δ_hn"
    return f"δ_{gate}"


def factors(record, which, index):
    """(input name, input values (T,) or None, delta name, delta values (T,)) of ∂E/∂which[index]:
    the input factor x_t[i] (W), h_{t−1}[k] (Wh), none (b, bh) and the column's delta at each t."""
    m = index[-1]
    delta = record.values["delta_x" if which in ("W", "b") else "delta_h"][:, m]
    name = delta_name(record, which, m)
    if which == "W":
        return f"x_t[{index[0]}]", record.values["x"][:, index[0]], name, delta
    if which == "Wh":
        return f"h_(t−1)[{index[0]}]", record.values["h_prev"][:, index[0]], name, delta
    return None, None, name, delta


def contributions(record, which, index):
    """The contribution of every time step to ∂E/∂which[index], input·δ (δ for a bias), (T,)."""
    _, inputs, _, delta = factors(record, which, index)
    return delta.copy() if inputs is None else inputs * delta


def sum_over_time(values):
    """Σ_t values[t], left to right from t = 0 (the engine's order)."""
    total = values[0]
    for value in values[1:]:
        total = total + value
    return float(total)


def step_factors(record):
    """φ_t[k,j] = ∂h_t[j]/∂h_{t−1}[k] through the Elman cell: Wh[k,j]·f'(u_t[j]), (T, U, U)."""
    return record.Wh[None] * record.values["slope"][:, None, :]


def scalar(record):
    """True for a scalar Elman cell (one unit): the error through time is a product of one factor
    per time step."""
    return record.cell == "rnn" and record.units == 1


# ---------------------------------------------------------------- symbols

class TimeNames:
    """The indexed symbols of the recursion, in Unicode or LaTeX: h⁽ˡ⁾[t], f'[t], δ⁽ˡ⁾[t], e⁽ˡ⁾[t], g⁽ˡ⁾[t]."""

    def __init__(self, l, latex=False):
        self.l, self.latex = l, latex
        sup = f"^{{({l})}}" if latex else notation.layer(l)
        base = lambda text, tex: sp.IndexedBase(f"{tex}{sup}" if latex else f"{text}{sup}")  # noqa: E731
        self.h, self.x = base("h", "h"), base("x", "x")
        self.slope, self.delta = base("f'", "f'"), base("δ", "\\delta")
        self.e, self.above = base("e", "e"), base("g", "g")
        self.t, self.s, self.tau, self.m, self.j = sp.symbols("t s tau m j", integer=True)
        if not latex:
            self.tau = sp.Symbol("τ", integer=True)

    def parameter(self, which, l, index):
        text = f"{which}{l}[{','.join(map(str, index))}]"
        return sp.Symbol(notation.latex_parameter(text) if self.latex else text)

    def recurrent_matrix(self, l):
        return sp.IndexedBase(f"{{W^{{h}}_{{{l}}}}}" if self.latex else f"Wh{l}")


def symbolic(record, which, l, index, names):
    """(∂E/∂θ as a sympy expression, definitions [(symbol, expression)], the indexed δ it sums) of
    parameter which[index].

    Scalar Elman cell: the unrolled sum over time of products of the factors Wh·f'(u_s) (one Σ when
    only the last time step receives an error from above, a double Σ otherwise). Otherwise: Σ_t
    input_t·δ_t[j] with the recursion of e and δ as definitions (the Elman cell's; lstm and gru: the
    gate's δ as the engine recorded it)."""
    T, t, s, tau, j = record.steps, names.t, names.s, names.tau, names.j
    m = index[-1]
    act = activations.get(record.activation) if record.cell == "rnn" else None
    if scalar(record):
        Wh = names.parameter("Wh", l, (0, 0))
        inputs = {"W": names.x[t, index[0]], "Wh": names.h[t - 1], "b": sp.Integer(1), "bh": sp.Integer(1)}[which]
        g = names.above
        if _only_last(record):
            expression = sp.Sum(inputs * names.slope[t] * sp.Product(Wh * names.slope[s], (s, t + 1, T - 1)),
                                (t, 0, T - 1)) * g[T - 1]
        else:
            expression = sp.Sum(inputs * names.slope[t] * sp.Sum(g[tau] * sp.Product(Wh * names.slope[s], (s, t + 1, tau)),
                                                                 (tau, t, T - 1)), (t, 0, T - 1))
        u = sp.Symbol("u_{t}" if names.latex else "u_t")
        slope = sp.diff(act.symbolic(u, record.params), u) if act.symbolic else sp.Symbol("f'(u_{t})")
        return expression, [(names.slope[t], slope), (names.h[-1], sp.Integer(0))], None
    inputs = {"W": names.x[t, index[0]], "Wh": names.h[t - 1, index[0]], "b": sp.Integer(1), "bh": sp.Integer(1)}[which]
    gate = delta_name(record, which, m)[2:]
    column = names.delta if not gate else sp.IndexedBase(
        f"\\delta_{{{gate.replace('_', '')}}}^{{({l})}}" if names.latex else f"δ_{gate}{notation.layer(l)}")
    expression = sp.Sum(inputs * column[t, record.gate_of(m)[1]], (t, 0, T - 1))
    definitions = []
    if record.cell == "rnn":
        Whm, delta, e = names.recurrent_matrix(l), names.delta, names.e
        definitions = [(delta[t, j], names.slope[t, j] * e[t, j]),
                       (e[t, j], names.above[t, j] + sp.Sum(Whm[j, names.m] * delta[t + 1, names.m], (names.m, 0, record.units - 1))),
                       (e[T - 1, j], names.above[T - 1, j])]
    return expression, definitions, column


def _only_last(record):
    """True when only the last time step receives an error from above (a target after the last step)."""
    above = record.values["above"]
    return bool(np.all(above[:-1] == 0))


def unroll(expression):
    """`expression` with every Σ and Π of numeric limits written out term by term (sympy's own
    doit, with its simplification heuristics, takes seconds for 100 time steps)."""
    if isinstance(expression, (sp.Sum, sp.Product)) and len(expression.limits) == 1:
        (variable, low, high), = expression.limits
        terms = [unroll(expression.function.xreplace({variable: sp.Integer(k)})) for k in range(int(low), int(high) + 1)]
        return sp.Add(*terms) if isinstance(expression, sp.Sum) else sp.Mul(*terms)
    if expression.args and not isinstance(expression, (sp.Indexed, sp.Symbol)):
        return expression.func(*[unroll(argument) for argument in expression.args])
    return expression


def sympy_value(record, which, l, index, names):
    """∂E/∂which[index] evaluated by sympy from `symbolic`'s expression and definitions with the
    record's numbers: the sums and products expanded (doit), every indexed symbol replaced by its
    value; for an Elman cell of several units the recursion of δ and e is evaluated by sympy from its
    definitions, time step by time step from the last; lstm and gru: the sum of input·δ with the
    engine's δ."""
    expression, definitions, column = symbolic(record, which, l, index, names)
    T, U = record.steps, record.units
    number = lambda v: sp.Float(repr(float(v)), 30)  # noqa: E731
    values = {}
    x = record.values["x"]
    for t in range(T):
        for i in range(x.shape[1]):
            values[names.x[t, i]] = number(x[t, i])
    if scalar(record):
        values[names.parameter("Wh", l, (0, 0))] = number(record.Wh[0, 0])
        for t in range(T):
            values[names.slope[t]] = number(record.values["slope"][t, 0])
            values[names.h[t]] = number(record.values["h"][t, 0])
            values[names.above[t]] = number(record.values["above"][t, 0])
        values[names.h[-1]] = sp.Integer(0)
        return float(unroll(expression).xreplace(values))
    for t in range(T):
        for k in range(U):
            values[names.h[t - 1, k]] = number(record.values["h_prev"][t, k])
    if record.cell == "rnn":
        Whm = names.recurrent_matrix(l)
        values.update({Whm[k, n]: number(record.Wh[k, n]) for k in range(U) for n in range(U)})
        rule = dict(definitions[:2])
        delta_rule, error_rule = rule[names.delta[names.t, names.j]], rule[names.e[names.t, names.j]]
        for t in range(T - 1, -1, -1):
            for unit in range(U):
                values[names.slope[t, unit]] = number(record.values["slope"][t, unit])
                values[names.above[t, unit]] = number(record.values["above"][t, unit])
            for unit in range(U):
                at = {names.t: t, names.j: unit}
                if t == T - 1:
                    values[names.e[t, unit]] = values[names.above[t, unit]]
                else:
                    values[names.e[t, unit]] = unroll(error_rule.xreplace(at)).xreplace(values)
                values[names.delta[t, unit]] = delta_rule.xreplace(at).xreplace(values)
    else:
        key = "delta_x" if which in ("W", "b") else "delta_h"
        j = record.gate_of(index[-1])[1]
        values.update({column[t, j]: number(record.values[key][t, index[-1]]) for t in range(T)})
    return float(unroll(expression).xreplace(values))


# ---------------------------------------------------------------- the error through time, for diagnose

def error_norms(records, name="e"):
    """‖∂E/∂h_t‖ per time step: the root of the sum of squares over the units and the given samples'
    records (T,); name "ec": lstm's ‖∂E/∂c_t‖."""
    squares = sum((np.asarray(r.values[name], dtype=float) ** 2).sum(axis=1) for r in records)
    with np.errstate(over="ignore"):
        return np.sqrt(squares)


def through_time(norms, thresholds):
    """How the norm of the error changes going back in time from the last time step.

    ratio_t = ‖e_t‖/‖e_{T−1}‖; the factor per time step is the geometric mean of ‖e_t‖/‖e_{t+1}‖,
    (‖e_0‖/‖e_{T−1}‖)^(1/(T−1)); the finding is "exploding" when some ratio_t > thresholds["exploding"],
    "vanishing" when some ratio_t < thresholds["vanishing"], with the first time step (counting back
    from the last) where it crosses. Returns a dict or None (one time step, or ‖e_{T−1}‖ = 0 or not finite)."""
    norms = np.asarray(norms, dtype=float)
    T = len(norms)
    last = norms[-1]
    if T < 2 or not np.isfinite(last) or last == 0:
        return None
    with np.errstate(all="ignore"):
        ratio = norms / last
        factor = float((norms[0] / last) ** (1.0 / (T - 1))) if norms[0] > 0 else 0.0
    found = {"ratio": ratio, "factor": factor, "kind": "", "time": None}
    for t in range(T - 2, -1, -1):
        if not np.isfinite(ratio[t]) or ratio[t] > thresholds["exploding"]:
            found.update(kind="exploding", time=t)
            break
        if ratio[t] < thresholds["vanishing"]:
            found.update(kind="vanishing", time=t)
            break
    return found


# ---------------------------------------------------------------- a recurrent layer of a run

def _time_array(trace, name, l, step, slot):
    """The engine's (time, ·) values of the recurrent layer l's quantity `name` (its record key: h,
    e, delta_f, ...) for the sample in batch `slot` at `step`."""
    for f, array in trace.arrays.items():
        if f.layer == l and f.group == "sample" and f.key == name and f.index.startswith("time-"):
            return np.asarray(array[step, slot], dtype=float)
    raise KeyError(f"no time-indexed quantity {name!r} of layer {l}")


def record(trace, l, step, slot):
    """The TimeRecord of recurrent layer l at `step` for the sample in batch `slot`, from the trace:
    the cell's recorded quantities, the parameters used at the step, the layer's input sequence
    (the data, or the hidden states of the recurrent layer below), h_{t−1}, the per-column deltas
    and g_t = ∂E/∂h_t from above (e_t − e_time_t; exactly e_{T−1} at the last time step)."""
    s = trace.scenario
    layer = s.layers[l - 1]
    kind = _kind(layer)
    cell = kind.name
    sample = int(trace.samples(step)[slot])
    names = [name for name, _, _ in kind.cell.FORWARD_QUANTITIES + kind.cell.BACKWARD_QUANTITIES]
    values = {name: _time_array(trace, name, l, step, slot) for name in names}
    values["x"] = np.asarray(s.inputs[sample], dtype=float) if l == 1 else _time_array(trace, "h", l - 1, step, slot)
    h = values["h"]
    values["h_prev"] = np.concatenate([np.zeros_like(h[:1]), h[:-1]], axis=0)
    if elman(layer):
        values["delta_x"] = values["delta_h"] = values["delta"]
    else:
        gates = gates_of(layer)
        values["delta_x"] = np.concatenate([values[f"delta_{k}"] for k in gates], axis=1)
        values["delta_h"] = np.concatenate([values["delta_hn" if k == "n" else f"delta_{k}"] for k in gates], axis=1)
    with np.errstate(invalid="ignore"):
        above = values["e"] - values["e_time"]
    above[-1] = values["e"][-1]
    values["above"] = above
    params = [trace.parameters(step)[name][l - 1] if hasattr(trace, "parameters") else getattr(trace, name)[l - 1][step]
              for name in ("W", "Wh", "b", "bh")]
    activation = layer.activation if elman(layer) else "tanh"
    return TimeRecord(cell, activation, dict(activations.get(activation).params, **layer.activation_params),
                      *(np.asarray(p, dtype=float) for p in params), values)


def _kind(layer):
    from tracer import layers
    return layers.of(layer)


def is_recurrent(layer):
    """True for a layer of a recurrent kind (rnn, lstm, gru): its gradients are sums over time."""
    return bool(getattr(_kind(layer), "recurrent", False))


def gates_of(layer):
    """The gates of a recurrent layer's kind, in column order: ("",) for the Elman cell (one block of
    columns), i f g o (lstm), r z n (gru)."""
    return tuple(_kind(layer).gates)


def elman(layer):
    """True for the Elman cell (one gate, an elementwise activation): the error through time is the
    recursion of e and δ that `tracer check` recomputes from a person's numbers."""
    return is_recurrent(layer) and gates_of(layer) == ("",)


# ---------------------------------------------------------------- tracer chain

@dataclass
class TimeChain:
    """∂E/∂θ of one recurrent parameter at one step for one sample, as a sum over time steps."""

    name: str                  # Wh1[0,0]
    step: int
    sample: int
    which: str
    layer: int
    index: tuple
    cell: str
    steps: int                 # time steps T
    input_name: str | None     # x_t[i], h_(t−1)[k] (None for a bias)
    delta_name: str            # δ, δ_f, δ_hn
    unit: int                  # the unit j of the column
    rows: list                 # per time step: dict(t, input, slope, factor, error, delta, contribution)
    total: float               # Σ_t contributions, left to right
    engine: float              # the engine's per-sample gradient
    batch: float               # the engine's batch gradient
    engine_times: np.ndarray   # the engine's per-time contributions (grad_θ with a time)
    symbolic: object           # sympy expression
    definitions: list          # (symbol, expression)
    scalar: bool               # a scalar Elman cell: one factor per time step
    power: float | None        # Π_{t=1}^{T−1} Wh·f'(u_t) = ∂h_{T−1}/∂h_0 (scalar cell): e_0 = power·e_{T−1}
                               # when only the last time step receives an error from above
    constant: float | None     # the factor when it is the same at every time step

    def __repr__(self):
        from tracer import notebook
        return notebook.chain_repr(self)

    def _repr_html_(self):
        from tracer import notebook
        return notebook.chain_html(render_latex(self), render(self))
    sympy_total: float | None = None
    update_lines: list = field(default_factory=list)
    only_last: bool = True     # only the last time step receives an error from above


def explain(trace, which, l, index, step, slot, name, latex=False, evaluate=False, update_lines=()):
    """The TimeChain of parameter which[index] of recurrent layer l (built by chain.explain);
    `evaluate`: also evaluate the symbolic expression by sympy with the trace's numbers."""
    rec = record(trace, l, step, slot)
    sample = int(trace.samples(step)[slot])
    input_name, inputs, delta_name_, delta = factors(rec, which, index)
    parts = contributions(rec, which, index)
    gate, j = rec.gate_of(index[-1])
    phi = step_factors(rec)[:, j, j] if rec.cell == "rnn" else None
    rows = []
    for t in range(rec.steps):
        rows.append({"t": t, "input": None if inputs is None else float(inputs[t]),
                     "slope": float(rec.values["slope"][t, j]) if rec.cell == "rnn" else None,
                     "factor": None if phi is None else float(phi[t]),
                     "error": float(rec.values["e"][t, j]), "delta": float(delta[t]), "contribution": float(parts[t])})
    engine = float(trace.values((f"grad_{which}", l, index), "sample", step, slot, sample))
    batch = float(trace.values((f"grad_{which}", l, index), "total", step, slot, sample))
    times = np.array([float(trace.values((f"grad_{which}_time", l, (t,) + tuple(index)), "sample", step, slot, sample))
                      for t in range(rec.steps)])
    names = TimeNames(l, latex)
    expression, definitions, _ = symbolic(rec, which, l, index, names)
    power = constant = None
    if scalar(rec):
        with np.errstate(all="ignore"):
            power = float(np.prod(phi[1:]))
        constant = float(phi[0]) if np.all(phi == phi[0]) else None
    chain = TimeChain(name, step, sample, which, l, tuple(index), rec.cell, rec.steps, input_name, delta_name_, j, rows,
                      sum_over_time(parts), engine, batch, times, expression, definitions, scalar(rec), power, constant,
                      update_lines=list(update_lines), only_last=_only_last(rec))
    if evaluate:
        chain.sympy_total = sympy_value(rec, which, l, index, names)
    return chain


def explain_per_time(trace, which, l, index, step, slot, name, latex=False, evaluate=False, update_lines=()):
    """The TimeChain of W[i,j] or b[j] of a dense layer that runs at every time step (targets per time
    step): ∂E/∂W[i,j] = Σ_t a⁽ˡ⁻¹⁾_t[i]·δ_t[j] (the input the last recurrent layer's h_t, or the dense
    layer below's a_t), ∂E/∂b[j] = Σ_t δ_t[j]."""
    s = trace.scenario
    sample = int(trace.samples(step)[slot])
    j = index[-1]
    T = s.inputs.shape[1]
    delta = time_values(trace, "delta", l)[step, slot, :, j]
    slope = time_values(trace, "slope", l)[step, slot, :, j]
    error = None
    for key in ("e", "output_error"):     # ∂E/∂a_t: from the layer above, or the loss's on the output layer
        try:
            error = time_values(trace, key, l)[step, slot, :, j]
            break
        except KeyError:
            continue
    if which == "W":
        below = "h" if is_recurrent(s.layers[l - 2]) else "a"
        inputs = time_values(trace, below, l - 1)[step, slot, :, index[0]]
        input_name = f"{below}{l - 1}_t[{index[0]}]"
        parts = inputs * delta
    else:
        inputs, input_name, parts = None, None, delta.copy()
    rows = [{"t": t, "input": None if inputs is None else float(inputs[t]), "slope": float(slope[t]), "factor": None,
             "error": float("nan") if error is None else float(error[t]), "delta": float(delta[t]),
             "contribution": float(parts[t])} for t in range(T)]
    engine = float(trace.values((f"grad_{which}", l, index), "sample", step, slot, sample))
    batch = float(trace.values((f"grad_{which}", l, index), "total", step, slot, sample))
    names = TimeNames(l, latex)
    t = names.t
    factor = sp.IndexedBase(f"a^{{({l - 1})}}" if latex else f"a{notation.layer(l - 1)}")[t, index[0]] if which == "W" else 1
    expression = sp.Sum(factor * names.delta[t, j], (t, 0, T - 1))
    definitions = [(names.delta[t, j], names.slope[t, j] * names.e[t, j])]
    chain = TimeChain(name, step, sample, which, l, tuple(index), "dense", T, input_name, "δ", j, rows, sum_over_time(parts),
                      engine, batch, parts.copy(), expression, definitions, False, None, None, update_lines=list(update_lines))
    if evaluate:
        values = {names.delta[k, j]: sp.Float(repr(float(delta[k])), 30) for k in range(T)}
        if which == "W":
            values.update({factor.base[k, index[0]]: sp.Float(repr(float(inputs[k])), 30) for k in range(T)})
        chain.sympy_total = float(unroll(expression).xreplace(values))
    return chain


def _close(a, b):
    if not (np.isfinite(a) and np.isfinite(b)):
        return bool(np.isfinite(a) == np.isfinite(b))
    return abs(a - b) <= 1e-12 * max(abs(a), abs(b)) or a == b


def render(chain):
    """The report of a TimeChain in Unicode."""
    show = lambda e: sp.pretty(e, use_unicode=True, order="none")  # noqa: E731
    T = chain.steps
    lines = [f"∂E/∂{chain.name} at step {chain.step}, sample {chain.sample}: a sum over the {T} time steps "
             f"of the {chain.cell} layer {chain.layer} (backpropagation through time)", ""]
    lines += _indent(show(sp.Eq(sp.Symbol(f"∂E/∂{chain.name}"), chain.symbolic, evaluate=False)))
    lines.append("where")
    for symbol, expression in chain.definitions:
        lines += _indent(show(sp.Eq(symbol, expression, evaluate=False)))
    lines += [f"  {line}" for line in _legend(chain)]
    if chain.scalar:
        lines.append("")
        lines += _power_lines(chain)
    lines.append("")
    lines.append("with the numbers of the trace, per time step t:")
    header, cells = _table(chain)
    widths = [max(len(h), *(len(row[k]) for row in cells)) for k, h in enumerate(header)]
    lines.append("  " + "  ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    for row in cells:
        lines.append("  " + "  ".join(f"{c:>{w}}" for c, w in zip(row, widths)))
    lines += [f"  {line}" for line in _totals(chain)]
    return "\n".join(lines)


def render_latex(chain):
    """The report of a TimeChain as a LaTeX fragment (ASCII, amsmath)."""
    text = notation.latex_text
    math = lambda e: sp.latex(e, order="none")  # noqa: E731
    name = notation.latex_parameter(chain.name)
    blocks = notation.latex_chain_opening(
        name, f"∂E/∂{chain.name} at step {chain.step}, sample {chain.sample}: a sum over the {chain.steps} time "
              f"steps of the {chain.cell} layer {chain.layer} (backpropagation through time)",
        math(chain.symbolic), [(math(symbol), math(expression)) for symbol, expression in chain.definitions])
    blocks += [text(line) for line in _legend(chain)]
    if chain.scalar:
        blocks += [text(line) for line in _power_lines(chain)]
    blocks.append("with the numbers of the trace, per time step $t$:")
    header, cells = _table(chain, latex=True)
    rows = []
    for row in cells:
        parts = [f"{h} = {_latex_cell(c)}" for h, c in zip(header[1:], row[1:])]
        rows.append(f"  t = {row[0]} &: \\quad " + ", \\quad ".join(parts))
    blocks.append(notation.latex_align(rows))
    blocks += [text(line) for line in _totals(chain)]
    return "\n\n".join(blocks)


def _latex_cell(text):
    try:
        return notation.latex_number(float(text))
    except ValueError:
        return f"\\text{{{text}}}"


def _legend(chain):
    """What the indexed symbols hold."""
    out = []
    if chain.input_name and chain.which == "Wh":
        out.append("h[t] is the hidden state at time step t (h[−1] = 0, the initial state)")
    if chain.input_name and chain.which == "W":
        out.append("x[t, i] is the layer's input at time step t")
    if chain.cell == "dense":
        out.append("a dense layer after a recurrent one with targets at every time step runs at every time step t: "
                   "its input a_t (the hidden states h_t below), δ_t = f'(u_t)·e_t, e_t = ∂E/∂a_t")
    elif chain.cell == "rnn":
        out.append("f'[t] is the local slope f'(u_t) of the cell's activation; g[t] = ∂E/∂h_t arriving from the layer "
                   "above" + (" (at the last time step only)" if chain.only_last else " (at every time step)"))
        out.append("e[t] = ∂E/∂h_t, the error through time; δ[t] = ∂E/∂u_t")
    else:
        out.append(f"{chain.delta_name}[t, j] is the delta of the column's gate ∂E/∂u at time step t, as the engine "
                   f"records it (the {chain.cell} cell's equations: tracer/layers/{chain.cell}.py)")
    return out


def _power_lines(chain):
    """The factor per time step of a scalar Elman cell, and its power."""
    T = chain.steps
    out = []
    if chain.constant is not None:
        out.append(f"the factor per time step is Wh·f'(u_t) = {chain.constant:.10g} at every time step "
                   f"(∂h_t/∂h_(t−1)); the error through time is multiplied by it once per time step:")
        out.append(f"  ∂h_{T - 1}/∂h_0 = ({chain.constant:.10g})^{T - 1} = {chain.power:.10g} over the {T - 1} time steps "
                   f"from h_0 to h_{T - 1}; the error reaching time step 0 is e_0 = ({chain.constant:.10g})^{T - 1}·e_{T - 1} "
                   f"= {chain.rows[0]['error']:.10g}")
    else:
        factors = [row["factor"] for row in chain.rows]
        with np.errstate(all="ignore"):
            mean = float(np.abs(chain.power) ** (1.0 / max(T - 1, 1))) if chain.power is not None else float("nan")
        out.append(f"the factor per time step Wh·f'(u_t) = ∂h_t/∂h_(t−1) varies from {min(factors):.6g} to "
                   f"{max(factors):.6g} (column 'Wh·f'(u_t)' below); their product over the time steps 1 … {T - 1} is "
                   f"∂h_{T - 1}/∂h_0 = {chain.power:.10g} (about {mean:.6g} per time step)")
    return out


def _table(chain, latex=False):
    """(header, rows of text) of the per-time-step table; the header in math mode for LaTeX."""
    j = chain.unit
    header = ["t"]
    if chain.input_name:
        index = chain.index[0]
        below = "x" if chain.cell != "dense" else "a"
        header.append((f"{below}_{{t}}[{index}]" if chain.which == "W" else f"h_{{t-1}}[{index}]") if latex else chain.input_name)
    if chain.cell in ("rnn", "dense"):
        header += (["f'(u_{t})"] + (["W^{h} f'(u_{t})"] if chain.scalar else [])) if latex else \
            (["f'(u_t)"] + (["Wh·f'(u_t)"] if chain.scalar else []))
    gate = chain.delta_name[2:]
    delta = (f"\\delta_{{{gate.replace('_', '')},t}}[{j}]" if gate else f"\\delta_{{t}}[{j}]") if latex else f"{chain.delta_name}_t[{j}]"
    header += [f"e_{{t}}[{j}]" if latex else f"e_t[{j}]", delta, "\\text{contribution}" if latex else "contribution"]
    cells = []
    for row in chain.rows:
        cell = [str(row["t"])]
        if chain.input_name:
            cell.append(f"{row['input']:.10g}")
        if chain.cell in ("rnn", "dense"):
            cell.append(f"{row['slope']:.10g}")
            if chain.scalar:
                cell.append(f"{row['factor']:.10g}")
        cell += [f"{row['error']:.10g}", f"{row['delta']:.10g}", f"{row['contribution']:.17g}"]
        cells.append(cell)
    return header, cells


def _totals(chain):
    input_part = f"{chain.input_name}·" if chain.input_name else ""
    out = [f"(contribution = {input_part}{chain.delta_name}_t[{chain.unit}], the time step's part of the gradient)",
           f"sum of the {chain.steps} contributions = {chain.total:.10g}"]
    if chain.sympy_total is not None:
        out.append(f"the expression above evaluated by sympy with these numbers = {chain.sympy_total:.10g}")
    agree = _close(chain.total, chain.engine)
    out.append(f"engine's ∂E/∂{chain.name} for this sample = {chain.engine:.10g} ({'equal' if agree else 'DIFFERENT'})")
    out.append(f"batch gradient at step {chain.step} ({chain.name}, over the step's samples) = {chain.batch:.10g}")
    out += chain.update_lines
    return out


def _indent(text):
    return ["  " + line for line in str(text).splitlines()]


def time_values(trace, name, l):
    """The engine's values of recurrent layer l's time-indexed quantity `name` (its record key),
    array (steps, B, time, ·)."""
    for f, array in trace.arrays.items():
        if f.layer == l and f.group == "sample" and f.key == name and f.index.startswith("time-"):
            return array
    raise KeyError(f"no time-indexed quantity {name!r} of layer {l}")


# ---------------------------------------------------------------- the first non-finite value (diagnose)

def _first_bad(array):
    bad = np.argwhere(~np.isfinite(np.asarray(array, dtype=float)))
    return tuple(int(i) for i in bad[0]) if bad.size else None


def producer(trace, l, step, phase):
    """The first non-finite value of recurrent layer l at `step` in computation order, or None:
    phase "forward" (time steps 0 … T−1, the cell's forward quantities in order), "backward" (from
    T−1 down: the error through time, then the deltas) or "gradient" (the time steps'
    contributions). Returns (name with ~t, slot, value, operation, [(name, value)] of finite
    operands)."""
    layer = trace.scenario.layers[l - 1]
    kind = _kind(layer)
    n = len(trace.samples(step))
    if phase == "gradient":
        names = [f"grad_{p}_time" for p in ("W", "b", "Wh", "bh")]
        order = range(trace.scenario.inputs.shape[1])
    else:
        table = kind.cell.FORWARD_QUANTITIES if phase == "forward" else kind.cell.BACKWARD_QUANTITIES
        names = [name for name, _, _ in table]
        order = range(trace.scenario.inputs.shape[1]) if phase == "forward" else range(trace.scenario.inputs.shape[1] - 1, -1, -1)
    arrays = {name: time_values(trace, name, l)[step, :n] for name in names}
    for t in order:
        for name in names:
            hit = _first_bad(arrays[name][:, t])
            if hit is None:
                continue
            slot, rest = hit[0], hit[1:]
            value = float(arrays[name][(slot, t) + rest])
            return _explain_bad(trace, l, step, slot, name, t, rest, value)
    return None


def _explain_bad(trace, l, step, slot, name, t, index, value):
    """(name, slot, value, operation, finite operands) of a non-finite value of a recurrent layer."""
    rec = record(trace, l, step, slot)
    where = f"{name.replace('_time', '')}{l}[{','.join(map(str, index))}]~{t}"
    finite = lambda pairs: [(k, float(v)) for k, v in pairs if np.isfinite(v)]  # noqa: E731
    j = index[-1]
    if name.startswith("u"):
        operands = []
        for k in range(rec.units):
            operands += [(f"h{l}[{k}]~{t - 1}", rec.values["h_prev"][t, k]), (f"Wh{l}[{k},{j}]", rec.Wh[k, j])]
        for i in range(rec.values["x"].shape[1]):
            operands += [(f"x[{i}]~{t}", rec.values["x"][t, i]), (f"W{l}[{i},{j}]", rec.W[i, j])]
        return where, slot, value, "the recurrent sum x_t·W + b + h_(t−1)·Wh + bh", finite(operands)[:8]
    if name.startswith("grad_"):
        return where, slot, value, "the product of the time step's input and δ (a contribution to the gradient)", []
    if name in ("e", "e_time", "ec", "ec_time"):
        above = [(f"δ{l}[{m}]~{t + 1}", rec.values["delta_h"][t + 1, m]) for m in range(rec.values["delta_h"].shape[1])] \
            if t + 1 < rec.steps else []
        return where, slot, value, "the error through time e_t = g_t + Σ_m Wh[j,m]·δ_{t+1}[m], which overflows", finite(above)[:8]
    if name.startswith("delta"):
        return where, slot, value, "δ = f'(u)·e (the error through time times the local slope), which overflows", \
            finite([(f"e{l}[{j}]~{t}", rec.values["e"][t, j])])
    operand = [(f"u{l}[{j}]~{t}", rec.values["u"][t, j])] if "u" in rec.values else []
    return where, slot, value, f"the cell's {name} from finite inputs", finite(operand)
