"""The chain rule behind one gradient, symbolic (sympy) and with the trace's numbers.

For W_l[i,j] (or b_l[j], whose input factor is 1) and one sample:
  ∂E/∂W_l[i,j] = a⁽ˡ⁻¹⁾_i · e⁽ˡ⁾_j · f_l'(u⁽ˡ⁾_j)
with the three factors of the write-up (seeds/002): ② the input a⁽ˡ⁻¹⁾_i, ④ the error
arriving from above e⁽ˡ⁾_j = Σ_k W_{l+1}[j,k]·δ⁽ˡ⁺¹⁾_k (for the output layer ∂E/∂a_j), and
⑤ the local slope f'(u). For bce / softmax_ce outputs the output factor is the loss's fused
δ = ∂E/∂u (a − t for bce, a·Σt − t for softmax_ce).
For deeper nets the delta recursion δ⁽ᵐ⁾ = f'(u⁽ᵐ⁾)·Σ W δ⁽ᵐ⁺¹⁾ unrolls into a sum over paths
j = j_l → j_{l+1} → … → j_L; one path's term is a_i · Π f'(u along the path) · Π W along it · ∂E/∂a.
"""
from __future__ import annotations   # sp.Symbol below: sympy is imported when first used (symbolic.py)

from dataclasses import dataclass
import re

import numpy as np
from tracer.maths.symbolic import sympy as sp

from tracer.maths import activations, losses
from tracer import layers
from tracer.errors import InputError, shorten
from tracer.training.trace import param_name
from tracer.maths import notation

_PARAMETER_NAMES = sorted({name for kind in layers.LAYERS.values() for name in kind.param_names}, key=lambda n: (-len(n), n))
_PARAM = re.compile(rf"^\s*({'|'.join(_PARAMETER_NAMES)})([0-9]{{1,9}})\[([0-9]{{1,9}})(?:,\s*([0-9]{{1,9}}))?\]\s*$")


@dataclass
class Factor:
    label: str        # ②, ④, ⑤
    meaning: str
    symbol: sp.Symbol
    value: float


@dataclass
class Chain:
    name: str
    step: int
    sample: int
    slot: int
    factors: list
    product: float
    engine: float           # the engine's per-sample gradient
    batch: float            # the engine's batch gradient
    symbolic: sp.Expr       # ∂E/∂θ as the product of the factor symbols
    definitions: list       # (symbol, sympy expression) that explain the factors
    path: list              # (unit per layer from l to L) of the shown path, deeper nets only
    path_slopes: list       # (symbol, value) of every local slope along the path
    path_weights: list      # (symbol, value)
    path_output: tuple | None
    path_term: float | None
    update_lines: list = None   # how the batch gradient became the update: clipping, lr, optimiser

    def __repr__(self):
        from tracer import notebook
        return notebook.chain_repr(self)

    def _repr_html_(self):
        from tracer import notebook
        return notebook.chain_html(render(self, latex=True), render(self))


def parse_parameter(text, widths, scenario=None, where=None):
    """'W1[0,2]', 'b2[1]' (or 'gamma2[1]', 'beta2[1]' of a normalisation layer: the names its kind
    gives its parameters) -> (kind, layer, index) with kind W or b; raise InputError with the valid
    ranges, each message starting with `where` (default: the --param option)."""
    where = where or f"--param {shorten(text, 60)}"
    match = _PARAM.match(text)
    if not match:
        raise InputError(f"{where}: write W<layer>[i,j] or b<layer>[j], e.g. W1[0,0]")
    given, layer, first, second = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
    count = len(widths) - 1
    if not 1 <= layer <= count:
        raise InputError(f"{where}: layer must be 1..{count}")
    kind = layers.DENSE if scenario is None else layers.of(scenario.layers[layer - 1])
    if getattr(kind, "recurrent", False):
        return _parse_recurrent(kind, given, layer, first, second, widths, where)
    w, b = kind.param_names
    pair = "," in kind.param_name("W", layer, (0, 0))        # W{l}[i,j], or gamma{l}[j] for (0, j)
    if given not in (w, b):
        raise InputError(f"{where}: layer {layer} is a {kind.name} layer: its parameters are "
                         f"{w}{layer}[{'i,j' if pair else 'j'}] and {b}{layer}[j]")
    if given == w and pair:
        if second is None:
            raise InputError(f"{where}: a weight needs two indices, {w}{layer}[i,j]")
        index = (first, int(second))
        if not (first < widths[layer - 1] and index[1] < widths[layer]):
            raise InputError(f"{where}: {w}{layer} has shape {widths[layer - 1]}×{widths[layer]}")
        return "W", layer, index
    if second is not None or first >= widths[layer]:
        if pair:
            raise InputError(f"{where}: {b}{layer} has {widths[layer]} entries, {b}{layer}[j]")
        raise InputError(f"{where}: layer {layer} has units 0..{widths[layer] - 1}")
    return ("W", layer, (0, first)) if given == w else ("b", layer, (first,))


def _parse_recurrent(kind, given, layer, first, second, widths, where):
    """A recurrent layer's W{l}[i,j], Wh{l}[i,j], b{l}[j], bh{l}[j] -> (which, layer, index), their
    shapes those the kind stores ((F, G·U), (U, G·U), (G·U,), (G·U,))."""
    shapes = dict(zip(kind.stored_params, kind.param_shapes(widths[layer - 1], widths[layer])))
    if given not in shapes:
        raise InputError(f"{where}: layer {layer} is a {kind.name} layer: its parameters are "
                         f"W{layer}[i,j], Wh{layer}[i,j], b{layer}[j] and bh{layer}[j]")
    shape = shapes[given]
    index = (first,) if second is None else (first, int(second))
    if len(index) != len(shape):
        raise InputError(f"{where}: {given}{layer} " + (f"needs two indices, {given}{layer}[i,j]" if len(shape) == 2
                                                        else f"has one index, {given}{layer}[j]"))
    if any(k >= n for k, n in zip(index, shape)):
        raise InputError(f"{where}: {given}{layer} has shape {'×'.join(map(str, shape))}")
    return given, layer, index


class Names:
    """Symbol names in Unicode (u₀⁽¹⁾, W1[0,0]) or LaTeX (u^{(1)}_{0}, W_{1}[0,0]), written one way."""

    def __init__(self, latex=False):
        self.latex = latex

    def unit(self, symbol, layer, j):
        if self.latex:
            return sp.Symbol(f"{notation.latex_symbol(symbol)}^{{({layer})}}_{{{j}}}")
        return sp.Symbol(notation.unit(symbol, layer, j))

    def weight(self, layer, i, j):
        return sp.Symbol(f"W_{{{layer}}}[{i},{j}]" if self.latex else f"W{layer}[{i},{j}]")

    def slope(self, act, layer, j):
        return sp.Symbol(f"{notation.latex_symbol(act.symbol)}'(u^{{({layer})}}_{{{j}}})" if self.latex
                         else f"{act.symbol}'({notation.unit('u', layer, j)})")

    def layer_scalar(self, symbol, layer):
        """A per-sample scalar of a layer (layernorm's σ², m1): σ²⁽²⁾ or {\\sigma^{2}}^{(2)}."""
        if self.latex:
            return sp.Symbol(f"{notation.latex_symbol(symbol)}^{{({layer})}}")
        return sp.Symbol(f"{symbol}{notation.layer(layer)}")

    def error(self, layer, j):
        return sp.Symbol(f"e^{{({layer})}}_{{{j}}}" if self.latex else notation.unit("e", layer, j))

    def plain(self, text, latex_text):
        return sp.Symbol(latex_text if self.latex else text)


def explain(trace, parameter, step=0, sample=None, path=None, latex=False, evaluate=False):
    """Build the Chain of `parameter` (e.g. 'W1[0,0]') at `step` for one sample of that step; for a
    parameter of a recurrent layer (W, Wh, b, bh) the kind's explain_through_time, its sum over time steps
    (`evaluate`: with the symbolic expression evaluated by sympy as well)."""
    s = trace.scenario
    widths, L = s.widths, len(s.layers)
    which, l, index = parse_parameter(parameter, widths, s)
    if not 0 <= step < trace.steps:
        raise InputError(f"--step {step}: the run has steps 0..{trace.steps - 1}")
    ids = trace.samples(step).tolist()
    sample = ids[0] if sample is None else sample
    if sample not in ids:
        raise InputError(f"--sample {sample}: step {step} uses samples {ids}")
    slot = ids.index(sample)
    layer = s.layers[l - 1]
    if layers.of(layer).time_parameter(layer, s) is not None:     # a gradient summed over time steps
        if path is not None:
            raise InputError(f"--path: {parameter.strip()}'s gradient is a sum over time steps (a recurrent network): "
                             "the path view is for networks of dense layers")
        batch = float(getattr(trace, f"grad_{which}")[l - 1][(step,) + tuple(index)])
        return layers.of(layer).explain_through_time(trace, which, l, index, step, slot, param_name(s, which, l, index),
                                                      latex=latex, evaluate=evaluate,
                                                      update_lines=_update_lines(trace, which, l, index, step, batch))
    names = Names(latex)
    j = index[-1]
    loss = losses.LOSSES[s.loss]
    act = activations.get(s.layers[l - 1].activation)
    factors, definitions = [], []
    if which == "W":
        symbol, meaning, value = layers.of(s.layers[l - 1]).chain_input(s.layers[l - 1], l, index[0], j, names, trace, step, slot)
        factors.append(Factor("②", meaning, symbol, value))
    if l == L and not loss.reads_output_slope:
        symbol = names.unit("δ", L, j)
        factors.append(Factor("④", f"output error δ = {loss.output_delta_text} ({s.loss} with {act.name}: fused, no separate slope)",
                              symbol, _fused_delta(trace, step, slot, sample, j)))
        ys = [names.unit("a", L, k) for k in range(widths[-1])]
        ts = [names.plain(f"t{k}", f"t_{{{k}}}") for k in range(widths[-1])]
        definitions.append((symbol, loss.symbolic_output_delta(ys, ts, j)))
    else:
        if l == L:
            value = trace.output_error[step, slot, j]
            symbol = names.plain(f"∂E/∂{notation.unit('a', L, j)}", f"\\partial E/\\partial a^{{({L})}}_{{{j}}}")
            factors.append(Factor("④", f"derivative of the {s.loss} loss by the output", symbol, float(value)))
            ys = [names.unit("a", L, k) for k in range(widths[-1])]
            ts = [names.plain(f"t{k}", f"t_{{{k}}}") for k in range(widths[-1])]
            definitions.append((symbol, sp.diff(loss.symbolic(ys, ts), ys[j])))
        else:
            above = s.layers[l]
            meaning, expression = layers.of(above).chain_error_down(above, l + 1, j, names)
            symbol = names.error(l, j)
            factors.append(Factor("④", meaning, symbol, float(error_from_above(trace, step, slot, l, j))))
            definitions.append((symbol, expression))
        slope_symbol = names.slope(act, l, j)
        factors.append(Factor("⑤", _slope_meaning(act, trace.u[l - 1][step, slot, j], trace.slope[l - 1][step, slot, j]),
                              slope_symbol, float(trace.slope[l - 1][step, slot, j])))
        definitions.append((slope_symbol, _symbolic_slope(act, s.layers[l - 1].activation_params, names, l, j)))
    product = 1.0
    for factor in factors:
        product = product * factor.value
    store = trace.grad_W_sample if which == "W" else trace.grad_b_sample
    total = trace.grad_W if which == "W" else trace.grad_b
    engine = float(store[l - 1][(step, slot) + index])
    batch = float(total[l - 1][(step,) + index])
    symbolic = sp.Mul(*[f.symbol for f in factors], evaluate=False)
    name = param_name(s, which, l, index)
    chain = Chain(name, step, sample, slot, factors, product, engine, batch, symbolic, definitions,
                  [], [], [], None, None, _update_lines(trace, which, l, index, step, batch))
    plain = all(layers.of(layer).dominant_path(layer) for layer in s.layers[l - 1:])
    if (l < L - 1 or path is not None) and plain:
        _add_path(chain, trace, step, slot, l, j, factors[0].value if which == "W" else 1.0, names, path)
    return chain


def _update_lines(trace, which, layer, index, step, batch):
    """From the batch gradient to the update: the clip factor, the clamp, lr and the optimiser."""
    s = trace.scenario
    if which in ("b", "bh") and not s.layers[layer - 1].train_bias:
        return ["(not trained: train_bias = false)"]
    lines, used = [], f"g = {batch:.10g}"
    if trace.clip_factor is not None:
        c = float(trace.clip_factor[step])
        lines.append(f"clip by norm: ‖g‖ = {trace.grad_norm[step]:.6g} over the trained parameters, clip factor c = {c:.6g}"
                     + (" (clipping: g is scaled)" if c < 1 else " (no clipping at this step)"))
        used = f"g·c = {batch * c:.10g}"
    if s.clip_value is not None:
        lines.append(f"clip by value: g clamped to ±{s.clip_value:g}")
    update = getattr(trace, f"update_{which}")[layer - 1][(step,) + tuple(index)]
    from tracer.maths import optim
    lines.append(f"update at step {step}: {s.optimizer} ({optim.OPTIMIZERS[s.optimizer].meaning}) with lr = "
                 f"{trace.lr[step]:.6g} and {used}: Δθ = {update:.10g}")
    return lines


def _fused_delta(trace, step, slot, sample, k):
    """δ⁽ᴸ⁾_k of the loss (its output_delta) from the trace's outputs, slopes and the sample's targets."""
    s = trace.scenario
    outputs, slopes = trace.a[len(s.layers) - 1][step, slot][None], trace.slope[len(s.layers) - 1][step, slot][None]
    return float(losses.LOSSES[s.loss].output_delta(outputs, s.targets[[sample]], slopes)[0, k])


def _slope_meaning(act, u, slope):
    text = f"local slope of {act.name} at u = {u:.6g}"
    if slope == 0 and act.saturates_at and np.isfinite(u):
        rounds = f"{max(act.saturates_at) if u > 0 else min(act.saturates_at):g}"
        text += f"; exactly 0 because u is far outside ±5 and {act.symbol}(u) rounds to {rounds}"
    elif slope == 0:
        text += "; exactly 0: the unit is off (u ≤ 0)"
    return text


def error_from_above(trace, step, slot, layer, j):
    """e⁽ˡ⁾_j = Σ_k W_{l+1}[j,k]·δ⁽ˡ⁺¹⁾_k (+ e⁽ˡ⁺¹⁾_j above a residual layer) at `step` for the
    sample in `slot`: the engine's recorded ∂E/∂a⁽ˡ⁾_j."""
    return trace.error[layer - 1][step, slot, j]


def _symbolic_slope(act, params, names, layer, j):
    """f'(u) by sympy's own differentiation of the activation's definition."""
    u = names.unit("u", layer, j)
    if act.symbolic is None:
        a = names.unit("a", layer, j)
        return a * (1 - a)
    return sp.diff(act.symbolic(u, params), u)


def _add_path(chain, trace, step, slot, layer, j, input_value, names, path):
    """The path from unit j of `layer` to an output: every local slope and weight along it."""
    s = trace.scenario
    widths, L = s.widths, len(s.layers)
    loss = losses.LOSSES[s.loss]
    if path is None:
        nodes = [np.ones(widths[layer])] + [trace.slope[m - 1][step, slot] for m in range(layer + 1, L)]
        path = dominant_path(trace, step, layer, nodes + [trace.delta[L - 1][step, slot]], start=j, slot=slot)
    elif len(path) != L - layer + 1 or path[0] != j or any(not 0 <= p < widths[m] for p, m in zip(path, range(layer, L + 1))):
        raise InputError(f"--path must list one unit per layer from layer {layer} (starting with {j}) to layer {L}")
    slopes, weights = [], []
    term = input_value
    for m, unit in zip(range(layer, L + 1), path):
        act = activations.get(s.layers[m - 1].activation)
        if m == L and not loss.reads_output_slope:
            output = (names.unit("δ", L, unit), _fused_delta(trace, step, slot, int(trace.samples(step)[slot]), unit))
        else:
            value = float(trace.slope[m - 1][step, slot, unit])
            slopes.append((names.slope(act, m, unit), value))
            term *= value
        if m > layer:
            value = float(trace.W[m - 1][step, path[m - layer - 1], unit])
            weights.append((names.weight(m, path[m - layer - 1], unit), value))
            term *= value
    if loss.records_output_error:
        output = (names.plain(f"∂E/∂{notation.unit('a', L, path[-1])}", f"\\partial E/\\partial a^{{({L})}}_{{{path[-1]}}}"),
                  float(trace.output_error[step, slot, path[-1]]))
    term *= output[1]
    chain.path, chain.path_slopes, chain.path_weights, chain.path_output, chain.path_term = path, slopes, weights, output, term


def dominant_path(trace, step, layer, nodes, start=None, slot=None):
    """The path p_l → p_{l+1} → … → p_L of units from `layer` to the output whose term
      Π_{l≤m≤L} nodes_m(p_m) · Π_{l<m≤L} link_m[p_{m−1}, p_m]
    has the largest magnitude (ties: the lowest units); `nodes` holds one array per layer l..L
    (local slopes, the output factor), link_m the magnitudes the kind of layer m passes the error
    down with (its diagnose_links: |W| for dense, + 1 on the diagonal with a residual skip,
    |γ|/√(σ² + ε) on the diagonal for normalisation), for the sample in `slot` or over the step's
    samples (`slot` None). `start` fixes p_l (else the best start).

    A term is a product of one factor per layer and edge, so the largest is found by dynamic
    programming over the layers from the output down, in O(depth·width²) (not by enumerating the
    width^depth paths):
      best_L(k) = log|nodes_L(k)|,  best_{m−1}(p) = log|nodes_{m−1}(p)| + max_k log|link_m[p,k]| + best_m(k).
    Logarithms keep deep products from under- or overflowing; a non-finite factor counts as the largest.
    """
    s = trace.scenario
    L = len(s.layers)
    best = _log_magnitude(nodes[-1])
    choices = []
    for m in range(L, layer, -1):
        above = s.layers[m - 1]
        links, _ = layers.of(above).diagnose_links(above, m, trace, step, slot)
        with np.errstate(invalid="ignore"):
            scores = _log_magnitude(links) + best[None, :]
        scores[np.isnan(scores)] = np.inf            # inf·0 along a path: as large as can be
        pick = np.argmax(scores, axis=1)             # the first maximum: the lowest unit on ties
        choices.append(pick)
        with np.errstate(invalid="ignore"):
            best = scores[np.arange(len(pick)), pick] + _log_magnitude(nodes[m - 1 - layer])
        best[np.isnan(best)] = np.inf
    path = [int(np.argmax(best)) if start is None else start]
    for pick in reversed(choices):
        path.append(int(pick[path[-1]]))
    return path


def _log_magnitude(values):
    """log|x| elementwise: −inf for 0, +inf for inf and NaN."""
    with np.errstate(all="ignore"):
        logs = np.log(np.abs(np.asarray(values, dtype=float)))
    logs[~np.isfinite(values)] = np.inf
    return logs


def render(chain, latex=False):
    """The report: symbolic expression, definitions, numbers, product vs engine (in LaTeX: a
    fragment for a document that loads amsmath, ASCII only; build `chain` with latex=True)."""
    if not isinstance(chain, Chain):      # a sum over time steps (the kind's explain_through_time)
        return chain.report(latex)
    if latex:
        return _render_latex(chain)
    # order="none" keeps the factors in the chain's order (②, ④, ⑤) instead of sympy's sort
    show = lambda e: sp.pretty(e, use_unicode=True, order="none")  # noqa: E731
    lines = [f"∂E/∂{chain.name} at step {chain.step}, sample {chain.sample} (chain rule):", ""]
    lines += _indent(show(sp.Eq(sp.Symbol(f"∂E/∂{chain.name}"), chain.symbolic, evaluate=False)))
    lines.append("where")
    for symbol, expression in chain.definitions:
        lines += _indent(show(sp.Eq(symbol, expression, evaluate=False)))
    lines.append("")
    lines.append("with the numbers of the trace:")
    for factor in chain.factors:
        lines.append(f"  {factor.label} {factor.symbol} = {factor.value:.10g}    ({factor.meaning})")
    numbers = sp.Mul(*[sp.Float(f.value, 10) for f in chain.factors], evaluate=False)
    lines += _indent(show(sp.Eq(sp.Symbol("product"), numbers, evaluate=False)) + f" = {chain.product:.10g}")
    agree = _close(chain.product, chain.engine)
    lines.append(f"  engine's ∂E/∂{chain.name} for this sample = {chain.engine:.10g}  "
                 f"({'equal' if agree else 'DIFFERENT'})")
    lines.append(f"  batch gradient at step {chain.step} ({chain.name}, over the step's samples) = {chain.batch:.10g}")
    lines += [f"  {line}" for line in chain.update_lines]
    if chain.path:
        lines.append("")
        lines.append(f"one path of the delta recursion: units {' → '.join(map(str, chain.path))}")
        lines.append(f"  {len(chain.path_slopes)} local slopes along it:")
        for symbol, value in chain.path_slopes:
            lines.append(f"    {symbol} = {value:.10g}")
        product_of_slopes = np.prod([v for _, v in chain.path_slopes]) if chain.path_slopes else 1.0
        lines.append(f"  product of the slopes = {product_of_slopes:.6g}")
        lines.append("  weights along it: " + ", ".join(f"{s} = {v:.6g}" for s, v in chain.path_weights))
        lines.append(f"  output factor {chain.path_output[0]} = {chain.path_output[1]:.10g}")
        lines.append(f"  this path's term = {chain.path_term:.10g} (the gradient is the sum over all paths)")
    return "\n".join(lines)


def _render_latex(chain):
    """The report of `render` as LaTeX: paragraphs of text with inline math, align* blocks for the
    expressions; every name written as the symbols are (W_{1}[0,0], u^{(1)}_{0})."""
    math = lambda e: sp.latex(e, order="none")  # noqa: E731
    text, number = notation.latex_text, notation.latex_number
    name = notation.latex_parameter(chain.name)
    blocks = notation.latex_chain_opening(
        name, f"∂E/∂{chain.name} at step {chain.step}, sample {chain.sample} (chain rule):", math(chain.symbolic),
        [(math(symbol), math(expression)) for symbol, expression in chain.definitions])
    blocks.append("with the numbers of the trace:")
    for factor in chain.factors:
        blocks.append(f"{text(factor.label)} ${math(factor.symbol)} = {number(factor.value)}$ ({text(factor.meaning)})")
    product = " \\cdot ".join(f"({number(f.value)})" if f.value < 0 else number(f.value) for f in chain.factors)
    blocks.append(f"\\[ \\text{{product}} = {product} = {number(chain.product)} \\]")
    agree = _close(chain.product, chain.engine)
    blocks.append(f"engine's $\\partial E/\\partial {name}$ for this sample $= {number(chain.engine)}$ "
                  f"({'equal' if agree else 'DIFFERENT'})")
    blocks.append(f"batch gradient at step {chain.step} (${name}$, over the step's samples) $= {number(chain.batch)}$")
    blocks += [text(line) for line in chain.update_lines]
    if chain.path:
        blocks.append(text(f"one path of the delta recursion: units {' → '.join(map(str, chain.path))}"))
        blocks.append(f"{len(chain.path_slopes)} local slopes along it:")
        blocks += [f"${math(symbol)} = {number(value)}$" for symbol, value in chain.path_slopes]
        product_of_slopes = np.prod([v for _, v in chain.path_slopes]) if chain.path_slopes else 1.0
        blocks.append(f"product of the slopes $= {number(float(f'{product_of_slopes:.6g}'))}$")
        if chain.path_weights:
            blocks.append("weights along it: " + ", ".join(f"${math(s)} = {number(float(f'{v:.6g}'))}$"
                                                          for s, v in chain.path_weights))
        blocks.append(f"output factor ${math(chain.path_output[0])} = {number(chain.path_output[1])}$")
        blocks.append(f"this path's term $= {number(chain.path_term)}$ (the gradient is the sum over all paths)")
    return "\n\n".join(blocks)


def _indent(text):
    return ["  " + line for line in str(text).splitlines()]


def _close(a, b):
    if not (np.isfinite(a) and np.isfinite(b)):
        return np.isfinite(a) == np.isfinite(b)
    return abs(a - b) <= 1e-12 * max(abs(a), abs(b)) or a == b
