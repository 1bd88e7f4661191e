"""The gradient of a recurrent layer's parameter as a sum over time steps (`tracer chain` for a
recurrent layer, and for a dense layer run at every time step): the TimeChain of one parameter at
one step for one sample, with its symbolic form, its numbers per time step and its report in
Unicode or LaTeX. Read from the trace through the through-time faces (through_time.py)."""
from dataclasses import dataclass, field

import numpy as np

from tracer import layers
from tracer.layers.recurrent.through_time import (TimeNames, _only_last, contributions, factors, record, scalar,
                                                  step_factors, sum_over_time, symbolic, sympy_value, time_values,
                                                  unroll)
from tracer.maths import notation
from tracer.maths.symbolic import sympy as sp


@dataclass
class TimeChain:
    """∂E/∂θ of one recurrent parameter at one step for one sample, as a sum over time steps."""

    name: str                  # Wh1[0,0]
    step: int
    sample: int
    which: str
    layer: int
    index: tuple
    cell: str                  # the layer's kind name (dense: a dense layer run at every time step)
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
    sympy_total: float | None = None
    update_lines: list = field(default_factory=list)
    only_last: bool = True     # only the last time step receives an error from above
    hand_rules: bool = False   # the Elman recursion: slopes and e written out (the kind's hand_rules)
    per_time_dense: bool = False   # a dense layer run at every time step (targets per time step)

    def __repr__(self):
        from tracer import notebook
        return notebook.chain_repr(self)

    def _repr_html_(self):
        from tracer import notebook
        return notebook.chain_html(render_latex(self), render(self))

    def report(self, latex=False):
        """The report in Unicode, or as a LaTeX fragment."""
        return render_latex(self) if latex else render(self)


def explain(trace, which, l, index, step, slot, name, latex=False, evaluate=False, update_lines=()):
    """The TimeChain of parameter which[index] of recurrent layer l (built by chain.explain);
    `evaluate`: also evaluate the symbolic expression by sympy with the trace's numbers."""
    rec = record(trace, l, step, slot)
    sample = int(trace.samples(step)[slot])
    input_name, inputs, delta_name_, delta = factors(rec, which, index)
    parts = contributions(rec, which, index)
    gate, j = rec.gate_of(index[-1])
    phi = step_factors(rec)[:, j, j] if rec.kind.hand_rules else None
    rows = []
    for t in range(rec.steps):
        rows.append({"t": t, "input": None if inputs is None else float(inputs[t]),
                     "slope": float(rec.values["slope"][t, j]) if rec.kind.hand_rules else None,
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
                      update_lines=list(update_lines), only_last=_only_last(rec), hand_rules=rec.kind.hand_rules)
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
        below = layers.of(s.layers[l - 2]).output_quantity(s.layers[l - 2])
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
    chain = TimeChain(name, step, sample, which, l, tuple(index), s.layers[l - 1].kind, T, input_name, "δ", j, rows, sum_over_time(parts),
                      engine, batch, parts.copy(), expression, definitions, False, None, None, update_lines=list(update_lines),
                      per_time_dense=True)
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
    if chain.per_time_dense:
        out.append("a dense layer after a recurrent one with targets at every time step runs at every time step t: "
                   "its input a_t (the hidden states h_t below), δ_t = f'(u_t)·e_t, e_t = ∂E/∂a_t")
    elif chain.hand_rules:
        out.append("f'[t] is the local slope f'(u_t) of the cell's activation; g[t] = ∂E/∂h_t arriving from the layer "
                   "above" + (" (at the last time step only)" if chain.only_last else " (at every time step)"))
        out.append("e[t] = ∂E/∂h_t, the error through time; δ[t] = ∂E/∂u_t")
    else:
        out.append(f"{chain.delta_name}[t, j] is the delta of the column's gate ∂E/∂u at time step t, as the engine "
                   f"records it (the {chain.cell} cell's equations: tracer/layers/recurrent/)")
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
        below = "a" if chain.per_time_dense else "x"
        header.append((f"{below}_{{t}}[{index}]" if chain.which == "W" else f"h_{{t-1}}[{index}]") if latex else chain.input_name)
    if chain.hand_rules or chain.per_time_dense:
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
        if chain.hand_rules or chain.per_time_dense:
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


