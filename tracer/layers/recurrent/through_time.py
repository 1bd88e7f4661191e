"""The through-time faces of the recurrent kinds, once for every cell: one sample's values of a
recurrent layer (TimeRecord), its gradient as a sum over time steps and its symbolic form (read by
`tracer chain`, chain.py here), the norm of ∂E/∂h_t per time step and the first non-finite value
(`tracer diagnose`), the values a hand check at one time step reads (`tracer check`, names with ~k).

For one sample and one training step, a recurrent layer of U units over T time steps (t = 0 … T−1,
h₋₁ = 0) holds the cell's record (cell.py: x, h_prev, u, h, slope, e, e_time, delta,
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

from tracer import layers
from tracer.maths import activations, notation

WHICH = ("W", "Wh", "b", "bh")


@dataclass
class TimeRecord:
    """One sample's values of one recurrent layer at one training step.

    kind        the layer's recurrent LayerKind (its gates, delta keys and hand_rules)
    activation  the cell's activation of u (the Elman cell's f, its `params`; lstm and gru: tanh)
    W, Wh, b, bh  the parameters used at the step: (F, G·U), (U, G·U), (G·U,), (G·U,)
    values      {name: array (T, ·)}: the cell's record for the sample (x (T, F), h_prev, u, h, slope,
                e, e_time, delta… (T, U), delta_x, delta_h (T, G·U)) and `above` (T, U), g_t = ∂E/∂h_t
                arriving from above at each time step (0 where nothing above reads it)
    """

    kind: object
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
    def cell(self):
        return self.kind.name

    @property
    def gates(self):
        return self.kind.gates

    def parameter(self, which):
        return {"W": self.W, "Wh": self.Wh, "b": self.b, "bh": self.bh}[which]

    def gate_of(self, m):
        """(gate name, unit j) of column m = k·U + j."""
        return self.gates[m // self.units], m % self.units


def from_cell(kind, record, slot, W, Wh, b, bh, above, activation="identity", params=None):
    """The TimeRecord of the sample in batch slot `slot` of a cell's batch record (arrays (B, T, ·));
    `above` (B, T, U) is ∂E/∂h_t from above, as given to the cell's backward."""
    values = {name: np.asarray(array)[slot] for name, array in record.items()
              if isinstance(array, np.ndarray) and array.ndim == 3}
    values["above"] = np.asarray(above, dtype=float)[slot]
    definition = activations.get(activation)
    return TimeRecord(kind, activation, dict(definition.params, **(params or {})),
                      *(np.asarray(p, dtype=float) for p in (W, Wh, b, bh)), values)


# ---------------------------------------------------------------- the gradient as a sum over time

def delta_name(record, which, m):
    """The name of the delta column m of parameter `which` sees: δ (rnn), δ_f (lstm), δ_hn (gru's n
    column of Wh and bh)."""
    gate, _ = record.gate_of(m)
    return "δ" + record.kind.delta_key(gate, recurrent_side=which in ("Wh", "bh"))[len("delta"):]


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
    return record.kind.hand_rules and record.units == 1


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
    act = activations.get(record.activation) if record.kind.hand_rules else None
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
    if record.kind.hand_rules:
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
    if record.kind.hand_rules:
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
    (the kind's delta_key of each gate) and g_t = ∂E/∂h_t from above (e_t − e_time_t; exactly
    e_{T−1} at the last time step)."""
    s = trace.scenario
    layer = s.layers[l - 1]
    kind = layers.of(layer)
    names = [name for name, _, _ in kind.cell.FORWARD_QUANTITIES + kind.cell.BACKWARD_QUANTITIES]
    values = {name: _time_array(trace, name, l, step, slot) for name in names}
    sample = int(trace.samples(step)[slot])
    values["x"] = np.asarray(s.inputs[sample], dtype=float) if l == 1 else _time_array(trace, "h", l - 1, step, slot)
    h = values["h"]
    values["h_prev"] = np.concatenate([np.zeros_like(h[:1]), h[:-1]], axis=0)
    values["delta_x"] = np.concatenate([values[kind.delta_key(k)] for k in kind.gates], axis=1)
    values["delta_h"] = np.concatenate([values[kind.delta_key(k, recurrent_side=True)] for k in kind.gates], axis=1)
    with np.errstate(invalid="ignore"):
        above = values["e"] - values["e_time"]
    above[-1] = values["e"][-1]
    values["above"] = above
    params = [trace.parameters(step)[name][l - 1] if hasattr(trace, "parameters") else getattr(trace, name)[l - 1][step]
              for name in ("W", "Wh", "b", "bh")]
    activation, activation_params = kind.cell_activation(layer)
    return TimeRecord(kind, activation, dict(activations.get(activation).params, **activation_params),
                      *(np.asarray(p, dtype=float) for p in params), values)


def is_recurrent(layer):
    """True for a layer of a recurrent kind: its gradients are sums over time."""
    return layers.of(layer).recurrent


def gates_of(layer):
    """The gates of a recurrent layer's kind, in column order: ("",) for the Elman cell (one block of
    columns), i f g o (lstm), r z n (gru)."""
    return tuple(layers.of(layer).gates)


def elman(layer):
    """True for a recurrent kind with hand rules (the Elman cell: one gate, an elementwise
    activation): the error through time is the recursion of e and δ that `tracer check` recomputes
    from a person's numbers."""
    kind = layers.of(layer)
    return kind.recurrent and kind.hand_rules


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
    kind = layers.of(trace.scenario.layers[l - 1])
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
