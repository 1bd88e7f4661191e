"""Diagnosis: where gradients vanish or explode, which units saturate or die, which weights
swing in sign while they grow, and which chain-rule factor is responsible.

Per step and layer, with the scenario's thresholds (defaults 1e-7 and 1e3):
  vanishing   ‖∇⁽ˡ⁾‖ < vanishing        exploding   ‖∇⁽ˡ⁾‖ > exploding
  non-finite  inf or NaN anywhere in the layer's gradient
  saturated   |f'(u)| < saturated for a unit and sample (exactly 0 counted apart)
  dead        a ReLU unit with u ≤ 0 for every sample of a step (its slope is 0 for all)
A parameter "alternates and grows" when, on consecutive steps, its sign flips and its
magnitude increases (the write-up's -1e18 → +1e57 → -1e170); its growth exponent is the
ratio of successive log10 magnitudes (about 3 in the write-up).

Why a net stops learning (thresholds in [diagnosis], see StallSeries for the exact rules): a
plateau of the loss far from its minimum, vanishing relative to depth (a layer's ‖∇‖ a small
fraction of the output layer's, with the product of slopes along the dominant path), the
update-to-weight ratio |Δθ|/|θ| (≈1e-3 healthy; far below frozen, far above unstable),
saturated units (activations with `saturates_at`) and units at their floor (`can_die`), an
oscillating loss, and for a non-finite run the producer: the first scalar that became inf/NaN,
the operation that made it and its finite operands.
"""
from dataclasses import dataclass, field
import math

import numpy as np

from tracer.maths import activations, losses, optim
from tracer.explain import chain as chain_module
from tracer import layers
from tracer.training.trace import param_name, weight_name


SWING_GROWTH = 2.0   # |θ| must at least double per step on average, and end above 1, to count as diverging


@dataclass
class Swing:
    name: str
    quantity: str          # "value" or "gradient"
    first: int             # first step of the run
    values: list
    exponent: float | None  # mean ratio of successive log10 magnitudes (when they exceed 10)
    factor: float           # geometric mean growth of |θ| per step


@dataclass
class Diagnosis:
    trace: object
    norms: np.ndarray                    # (steps, layers)
    flags: list                          # per step: {layer: flag}
    first: dict = field(default_factory=dict)   # condition -> (step, layer)
    saturated: dict = field(default_factory=dict)  # (step, layer) -> (count < threshold, exactly zero)
    dead: dict = field(default_factory=dict)       # (layer, unit) -> first step dead
    swings: list = field(default_factory=list)
    why: str = ""
    window: tuple | None = None
    series: object = None                        # StallSeries
    producer: object = None                      # Producer of the first non-finite value, or None
    outcome: tuple = ("", 0)                     # (outcome, step)
    time: dict = field(default_factory=dict)     # recurrent layer -> TimeFinding (the error through time)

    def __repr__(self):
        from tracer import notebook
        return notebook.diagnosis_repr(self)

    def _repr_html_(self):
        from tracer import notebook
        return notebook.diagnosis_html(self)

    @property
    def findings(self):
        return [text for _, text in _sentences(self)]

    @property
    def kinds(self):
        """The kinds of the findings, in order (plateau, depth, frozen, ..., progress, note)."""
        return [kind for kind, _ in _sentences(self)]

    @property
    def stalls(self):
        """The findings that explain why the net stopped (or failed) to learn."""
        return [kind for kind in self.kinds if kind in STALL_KINDS]


def layer_flag(norm, finite, thresholds):
    """The flag of one layer's gradient: 'non-finite' (a gradient entry is inf/NaN), 'vanishing',
    'exploding' (including a norm whose squares overflow) or ''."""
    if not finite:
        return "non-finite"
    if not math.isfinite(norm):
        return "exploding"
    if norm < thresholds["vanishing"]:
        return "vanishing"
    if norm > thresholds["exploding"]:
        return "exploding"
    return ""


def unit_values(trace, name, l, step, n):
    """A per-unit quantity (u, slope, a, h) of layer l at `step` for the step's first n batch slots,
    (rows, units): one row per sample (the kind's unit_values: a recurrent layer's per sample and time step)."""
    layer = trace.scenario.layers[l - 1]
    return layers.of(layer).unit_values(layer, trace, name, l, step, n)


def gradients_finite(trace, l, step):
    """True when every entry of layer l's batch gradients (W, b; Wh, bh of a recurrent layer) is finite."""
    return all(np.isfinite(store[l - 1][step]).all()
               for store in (trace.grad_W, trace.grad_b, getattr(trace, "grad_Wh", None), getattr(trace, "grad_bh", None))
               if store is not None and store[l - 1] is not None)


def diagnose(trace):
    """Examine every step and layer of `trace`."""
    s = trace.scenario
    th = s.thresholds
    layers = trace.layers
    norms = np.stack([trace.gradient_norm(l) for l in range(1, layers + 1)], axis=1)
    flags = []
    result = Diagnosis(trace, norms, flags)
    for step in range(trace.steps):
        row = {}
        for l in range(1, layers + 1):
            flag = layer_flag(norms[step, l - 1], gradients_finite(trace, l, step), th)
            row[l] = flag
            if flag and flag not in result.first:
                result.first[flag] = (step, l)
            n = len(trace.samples(step))
            slope = unit_values(trace, "slope", l, step, n)
            small = int((np.abs(slope) < th["saturated"]).sum())
            zero = int((slope == 0).sum())
            if small:
                result.saturated[(step, l)] = (small, zero)
                result.first.setdefault("saturated", (step, l))
            if activations.get(s.layers[l - 1].activation).can_die:
                u = unit_values(trace, "u", l, step, n)
                for unit in np.flatnonzero((np.isfinite(u) & (u <= 0)).all(axis=0)):
                    result.dead.setdefault((l, int(unit)), step)
                    result.first.setdefault("dead", (step, l))
        flags.append(row)
    result.time = through_time_findings(trace)
    result.swings = _swings(trace)
    result.why = _why(trace, result)
    result.window = _window(trace, result)
    result.series = stall_series(trace, norms)
    result.producer = find_producer(trace)
    result.outcome = outcome(trace, result.series, norms)
    return result


@dataclass
class TimeFinding:
    """The error through time of a recurrent layer: at `step` (the first step with a finding, else
    the first step), norms[t] = ‖∂E/∂h_t‖ over the units and the step's samples, and
    the kind's error_through_time verdict: kind ("exploding", "vanishing" or ""), the first time step
    (going back from the last) where ‖e_t‖/‖e_{T−1}‖ crosses the threshold, the factor per time step;
    `cell_factors` the scalar Elman cell's Wh·f'(u_t) per time step of the first sample (else None)."""

    layer: int
    step: int
    norms: np.ndarray
    kind: str
    time: int | None
    factor: float
    ratio: np.ndarray
    cell_factors: np.ndarray | None
    cell_state: np.ndarray | None = None    # lstm: ‖∂E/∂c_t‖ per time step (the error through the cell state)


def through_time_findings(trace):
    """{layer: TimeFinding} for every recurrent layer (the thresholds of [diagnosis]: a ratio
    ‖e_t‖/‖e_{T−1}‖ above `exploding` or below `vanishing`)."""
    s = trace.scenario
    found_layers = {}
    for l, layer in enumerate(s.layers, start=1):
        first = None
        for step in range(trace.steps):
            found = layers.of(layer).error_through_time(layer, trace, l, step)
            if found is None:
                break                # no error through time on this layer
            verdict = found["verdict"]
            if verdict is None:
                continue
            finding = TimeFinding(l, step, found["norms"], verdict["kind"], verdict["time"], verdict["factor"],
                                  verdict["ratio"], found["cell_factors"], found["cell_state"])
            if first is None:
                first = finding
            if finding.kind:
                first = finding
                break
        if first is not None:
            found_layers[l] = first
    return found_layers


def _time_sentence(d, finding):
    """The finding "exploding/vanishing through time" of a recurrent layer."""
    t, s = d.trace, d.trace.scenario
    th = s.thresholds
    T = len(finding.norms)
    layer = s.layers[finding.layer - 1]
    start, end = finding.norms[-1], finding.norms[0]
    total = end / start if start else math.nan
    if finding.cell_factors is not None:
        f = finding.cell_factors
        cell = (f"the cell's factor Wh·f'(u_t) = {f[0]:.6g} at every time step" if np.all(f == f[0])
                else f"the cell's factor Wh·f'(u_t) between {np.min(f):.3g} and {np.max(f):.3g}")
        cell = f" ({cell}: the error through time is multiplied by it once per time step)"
    else:
        cell = ""
    head = (f"layer {finding.layer} ({layer.kind}) at step {t.first_step + finding.step}: going back from the last time step "
            f"{T - 1}, ‖∂E/∂h_t‖ changes by a factor of about {finding.factor:.6g} per time step{cell}: "
            f"from ‖e_{T - 1}‖ = {start:.4g} to ‖e_0‖ = {end:.4g} (×{total:.4g} over {T - 1} time steps)")
    if finding.cell_state is not None:
        head += (f"; through the cell state, ‖∂E/∂c_t‖ goes from {finding.cell_state[-1]:.4g} at time step {T - 1} to "
                 f"{finding.cell_state[0]:.4g} at time step 0")
    if finding.kind == "exploding":
        return (f"Exploding through time: {head}; it first exceeds exploding = {th['exploding']:g} × ‖e_{T - 1}‖ at "
                f"time step {finding.time} ({T - 1 - finding.time} time steps back).")
    if finding.kind == "vanishing":
        return (f"Vanishing through time: {head}; it first falls below vanishing = {th['vanishing']:g} × ‖e_{T - 1}‖ at "
                f"time step {finding.time} ({T - 1 - finding.time} time steps back): the first time steps barely "
                "contribute to the gradient.")
    return (f"Through time: {head}; within the thresholds (vanishing = {th['vanishing']:g}, exploding = "
            f"{th['exploding']:g} of ‖e_{T - 1}‖) at every time step.")


def _parameters(trace):
    for l in range(1, trace.layers + 1):
        W = trace.W[l - 1]
        for i in range(W.shape[1]):
            for j in range(W.shape[2]):
                yield param_name(trace.scenario, "W", l, (i, j)), W[:, i, j], trace.grad_W[l - 1][:, i, j]
        for j in range(trace.b[l - 1].shape[1]):
            yield param_name(trace.scenario, "b", l, (j,)), trace.b[l - 1][:, j], trace.grad_b[l - 1][:, j]


def _longest_swing(values):
    """(start, end) of the longest run where the sign flips and |value| grows each step."""
    best, start = (0, 0), 0
    for t in range(1, len(values)):
        a, b = values[t - 1], values[t]
        ok = np.isfinite(a) and np.isfinite(b) and a != 0 and b != 0 and np.sign(a) != np.sign(b) and abs(b) > abs(a)
        if not ok:
            start = t
        elif t - start > best[1] - best[0]:
            best = (start, t)
    return best


def _swings(trace):
    found = []
    for name, values, grads in _parameters(trace):
        for quantity, series in (("value", values), ("gradient", grads)):
            start, end = _longest_swing(series)
            if end - start >= 2:  # three values: two flips
                run = [float(v) for v in series[start:end + 1]]
                logs = [math.log10(abs(v)) for v in run]
                ratios = [b / a for a, b in zip(logs, logs[1:]) if a > 1]
                exponent = float(np.mean(ratios)) if ratios else None
                factor = float(10 ** ((logs[-1] - logs[0]) / (len(logs) - 1)))
                if factor >= SWING_GROWTH and abs(run[-1]) >= 1:
                    found.append(Swing(name, quantity, trace.first_step + start, run, exponent, factor))
    # the largest final magnitude first; among equals, the first parameters (W1[0,0]) first
    order = {name: index for index, (name, _, _) in enumerate(_parameters(trace))}
    found.sort(key=lambda s: (s.quantity != "value", -round(math.log10(abs(s.values[-1]))), order[s.name]))
    return found


def _why(trace, result):
    """One sentence naming the chain-rule factor behind the worst gradient."""
    if "vanishing" in result.first or "exploding" in result.first:
        kind = "vanishing" if "vanishing" in result.first else "exploding"
        step, layer = result.first[kind]
        over_time = layers.of(trace.scenario.layers[layer - 1]).time_parameter(trace.scenario.layers[layer - 1], trace.scenario)
        if over_time is not None:    # the gradient is a sum over time steps
            return _why_through_time(trace, result, kind, step, layer, over_time)
        grads = np.abs(trace.grad_W[layer - 1][step])
        with np.errstate(invalid="ignore"):
            index = np.unravel_index(np.nanargmax(grads) if kind == "exploding" else 0, grads.shape)
        name = param_name(trace.scenario, "W", layer, index)
        explained = chain_module.explain(trace, name, step=step)
        values = [abs(f.value) for f in explained.factors]
        if kind == "vanishing":
            culprit = explained.factors[int(np.argmin(values))]
        else:
            culprit = explained.factors[int(np.argmax(values))]
        product = " × ".join(f"{f.value:.4g}" for f in explained.factors)
        text = (f"At step {trace.first_step + step}, layer {layer}'s gradient is {kind} "
                f"(‖∇⁽{layer}⁾‖ = {result.norms[step, layer - 1]:.3g}). Its weight {name}: "
                f"∂E/∂{name} = {' · '.join(str(f.symbol) for f in explained.factors)} = {product} "
                f"(sample {explained.sample}); the factor responsible is {culprit.label} {culprit.symbol} = {culprit.value:.4g}, "
                f"the {culprit.meaning}.")
        if culprit.label == "④" and layer < trace.layers:
            above = trace.scenario.layers[layer]
            _, edges = layers.of(above).diagnose_links(above, layer + 1, trace, step)
            weights = edges[index[-1]]
            k = int(np.argmax(np.abs(weights)))
            text += (f" It carries the weight {param_name(trace.scenario, 'W', layer + 1, (index[-1], k))} = {weights[k]:.4g} "
                     "from the layer above.")
        return text
    return ""


def _why_through_time(trace, result, kind, step, layer, which):
    """The worst gradient is a sum over time steps (a recurrent layer's Wh, or W of a dense layer at
    every time step): name its largest (exploding) or first (vanishing) weight's sum over time, and
    its largest time step's contribution."""
    store = getattr(trace, f"grad_{which}")[layer - 1][step]
    with np.errstate(invalid="ignore"):
        index = np.unravel_index(np.nanargmax(np.abs(store)) if kind == "exploding" and np.isfinite(store).any() else 0,
                                 store.shape)
    name = param_name(trace.scenario, which, layer, index)
    explained = chain_module.explain(trace, name, step=step)
    parts = np.array([row["contribution"] for row in explained.rows])
    with np.errstate(invalid="ignore"):
        biggest = int(np.nanargmax(np.abs(parts))) if np.isfinite(parts).any() else 0
    return (f"At step {trace.first_step + step}, layer {layer}'s gradient is {kind} (‖∇⁽{layer}⁾‖ = "
            f"{result.norms[step, layer - 1]:.3g}). Its weight {name}: ∂E/∂{name} = Σ_t {explained.input_name}·δ_t over "
            f"{explained.steps} time steps = {explained.total:.4g} (sample {explained.sample}); the largest contribution is "
            f"time step {biggest}'s, {parts[biggest]:.4g} (see tracer chain --param '{name}').")


def _window(trace, result):
    """A window of a few steps around the first anomaly, or None."""
    firsts = [v[0] for k, v in result.first.items() if k in ("vanishing", "exploding", "non-finite")]
    firsts += [s.first for s in result.swings[:1]]
    if not firsts:
        return None
    anchor = min(firsts)
    return trace.first_step + max(0, anchor - 2), trace.first_step + min(trace.steps - 1, anchor + 4)


def _sentences(d):
    """(kind, sentence) pairs: the findings of the diagnosis, most telling first."""
    t, s = d.trace, d.trace.scenario
    out = []
    th = s.thresholds
    names = {"vanishing": f"vanishing gradients (norm < {th['vanishing']:g})",
             "exploding": f"exploding gradients (norm > {th['exploding']:g})",
             "non-finite": "non-finite gradients (inf or NaN: the workbook shows #NUM!)"}
    for kind in ("vanishing", "exploding", "non-finite"):
        if kind in d.first:
            step, layer = d.first[kind]
            layers = sorted({l for row in d.flags for l, f in row.items() if f == kind})
            out.append((kind, f"First {names[kind]} at step {t.first_step + step}, layer {layer} "
                              f"(layers affected: {', '.join(map(str, layers))})."))
    if d.producer is not None:
        out.append(("non-finite", _producer_sentence(d.producer, t)))
    for finding in d.time.values():
        out.append(("time", _time_sentence(d, finding)))
    if d.series is not None:
        out += _stall_sentences(d)
    if d.saturated:
        (step, layer), (small, zero) = next(iter(d.saturated.items()))
        total_zero = sum(z for _, z in d.saturated.values())
        out.append(("saturated", f"Saturated slopes: first at step {t.first_step + step}, layer {layer}: {small} unit-sample slope(s) "
                                 f"|f'(u)| < {th['saturated']:g}, {zero} of them exactly 0 ({total_zero} exact zeros over the run)."))
    if d.dead:
        out.append(("dead", _floor_sentence(d)))
    for quantity in ("value", "gradient"):
        swings = [w for w in d.swings if w.quantity == quantity]
        preferred = [w for w in swings if w.name == weight_name(1, 0, 0)]
        for swing in (preferred or swings)[:1]:
            values = " → ".join(f"{v:+.3g}" for v in swing.values)
            growth = (f"the exponent of |·| grows about ×{swing.exponent:.1f} per step" if swing.exponent
                      else f"|·| grows about ×{swing.factor:.3g} per step")
            what = swing.name if quantity == "value" else f"∂E/∂{swing.name}"
            others = f" ({len(swings) - 1} other parameters do the same)" if len(swings) > 1 else ""
            out.append(("swing", f"{what} alternates in sign while it grows, from step {swing.first}: {values}; {growth}{others}."))
    if any(w.quantity == "value" for w in d.swings):
        out.append(("swing", "Why it diverges: each update θ ← θ − lr·∂E/∂θ overshoots (lr·∂E/∂θ is larger than θ), so θ flips "
                             "sign and grows; the next gradient contains the grown weights (in the error from above) and is "
                             "larger still, with the opposite sign."))
    if t.clip_factor is not None:
        finite = t.clip_factor[np.isfinite(t.clip_factor)]
        active = int((finite < 1).sum())
        if active:
            out.append(("note", f"Gradient clipping (clip_norm = {s.clip_norm:g}) scaled the gradients at {active} of {t.steps} "
                                f"steps; the smallest clip factor was c = {finite.min():.3g} (‖g‖ = {np.nanmax(t.grad_norm):.3g} "
                                f"at its largest). The norms above are before clipping."))
    if d.why:
        out.append(("why", d.why))
    progress = _progress_sentence(d, out)
    if progress:
        out.append(("progress", progress))
    if not out:
        out.append(("note", "No anomaly: every gradient norm is within the thresholds and finite."))
    return out


def _layers_text(layers):
    layers = list(layers)
    return f"layer {layers[0]}" if len(layers) == 1 else "layers " + ", ".join(map(str, layers))


def _producer_sentence(p, trace):
    operands = ", ".join(f"{name} = {value:.4g}" for name, value in p.operands)
    return (f"The first non-finite value is {p.name} = {p.value} at step {trace.first_step + p.step}: it is produced by "
            f"{p.operation}" + (f", from the finite operands {operands}" if operands else "") +
            "; every later inf/NaN only propagates it.")


def _stall_sentences(d):
    t, s, series = d.trace, d.trace.scenario, d.series
    th = s.thresholds
    E, T, L, first = t.loss, t.steps, t.layers, t.first_step
    out = []
    finite_run = d.producer is None and t.first_nonfinite_step() is None
    last = T - 1
    if series.plateau[last] == "plateau":
        since = last - int(series.quiet[last])
        moves = float(np.nanmax(series.rel[since + 1:]))
        m0, m = series.minimum[0], series.minimum[last]
        share = (E[last] - m) / (E[0] - m0)
        total = abs(E[last] - E[since]) / abs(E[since])
        out.append(("plateau", f"Plateau: the loss has stopped falling since step {first + since}: it moves by at most "
                               f"{moves:.2g} of itself per step (threshold plateau = {th['plateau']:g}), "
                               f"E = {E[since]:.6g} → {E[last]:.6g} over {last - since} steps ({total:.2g} in all), while it is "
                               f"still {E[last] - m:.4g} above its minimum {m:g} ({share:.0%} of the way from E₀ = {E[0]:.4g}; "
                               f"plateau_far = {th['plateau_far']:g})."))
    if L > 1 and (series.deep > 0).any():
        step = int(np.flatnonzero(series.deep > 0)[0])
        ratios = series.depth[step]
        layer = int(np.nanargmin(ratios)) + 1
        below = [l + 1 for l in range(L - 1) if ratios[l] < th["depth_ratio"]]
        steps_count = int((series.deep > 0).sum())
        units, slopes, weights = dominant_path(t, layer, step)
        symbols = [activations.get(s.layers[m].activation) for m in range(layer - 1, layer - 1 + len(slopes))]
        counts = {}
        for act, value in zip(symbols, slopes):
            counts.setdefault(act.symbol, []).append((act, value))
        factors = []
        for symbol, items in counts.items():
            bound = items[0][0].slope_bound
            word = _COUNT_WORDS.get(len(items), str(len(items)))
            factors.append(f"{word} {symbol}'" + (f" ≤ {bound:g}" if bound else "") + " (" +
                           " × ".join(f"{v:.3g}" for _, v in items) + ")")
        slope_product = float(np.prod(slopes))
        weight_product = float(np.prod(np.abs(weights))) if weights else 1.0
        out.append(("depth", f"Vanishing relative to depth: at step {first + step}, layer {layer}'s gradient norm is "
                             f"{ratios[layer - 1]:.2g} of the output layer {L}'s (below depth_ratio = {th['depth_ratio']:g}; "
                             f"{_layers_text(below)} below it; at {steps_count} of {T} steps). The factor responsible: along the "
                             f"dominant path (units {', '.join(map(str, units))} of layers {layer}..{L}) the error is multiplied by "
                             f"{' and '.join(factors)} = {slope_product:.2g}, and by {len(weights)} weight(s) with "
                             f"Π|W| = {weight_product:.3g}."))
    if finite_run:
        with np.errstate(all="ignore"):
            medians = np.array([np.nanmedian(np.where(np.isfinite(series.update[:, l]), series.update[:, l], np.nan))
                                if np.isfinite(series.update[:, l]).any() else np.nan for l in range(L)])
        unstable = [l + 1 for l in range(L) if medians[l] > th["update_unstable"]]
        frozen = [l + 1 for l in range(L) if medians[l] < th["update_frozen"]]
        if unstable:
            out.append(("unstable", f"Unstable updates: the median update-to-weight ratio |Δθ|/|θ| of {_layers_text(unstable)} is "
                                    + ", ".join(f"{medians[l - 1]:.2g}" for l in unstable) +
                                    f" (above update_unstable = {th['update_unstable']:g}; about 1e-3 is healthy): each step "
                                    "changes the weights by a large part of themselves."))
        if frozen and d.outcome[0] != "converged":
            out.append(("frozen", f"Frozen weights: the median update-to-weight ratio |Δθ|/|θ| of {_layers_text(frozen)} is "
                                  + ", ".join(f"{medians[l - 1]:.2g}" for l in frozen) +
                                  f" (below update_frozen = {th['update_frozen']:g}; about 1e-3 is healthy): the steps barely "
                                  "move the weights."))
    for l, fractions in series.saturation.items():
        if l == L and not losses.LOSSES[s.loss].reads_output_slope:
            continue   # a fused loss's output delta (a − t, a·Σt − t) does not pass through σ'
        if not (fractions > 0).any():
            continue
        act = activations.get(s.layers[l - 1].activation)
        levels = " or ".join(f"{v:g}" for v in act.saturates_at)
        step = int(np.flatnonzero(fractions > 0)[0])
        n = len(t.samples(last))
        store = getattr(t, layers.of(s.layers[l - 1]).activated(s.layers[l - 1]))[l - 1]
        if store is None:      # a recurrent layer keeps f(u) per time step; its a is the last hidden state
            store = t.a[l - 1]
        a = store[last, :n]
        stuck = [j for j in range(a.shape[1]) if all(
            any(level - th["saturation"] < v < level + th["saturation"] for level in act.saturates_at) for v in a[:, j])]
        kind = "near one-hot" if not act.elementwise else f"within {th['saturation']:g} of {levels}"
        out.append(("saturation", f"Saturated {act.symbol} units ({kind}, where the slope is about 0): layer {l}, "
                                  f"{fractions[step]:.0%} of the unit-samples from step {first + step}, {fractions[last]:.0%} at the last "
                                  f"step" + (f"; units {', '.join(map(str, stuck))} saturated for every sample of the last step"
                                             if stuck else "") + "."))
    oscillating = [k for k, flag in enumerate(series.oscillating) if flag == "oscillating"]
    if oscillating:
        k = oscillating[0]
        start = k - int(series.flips[k]) - 1
        values = " → ".join(f"{v:.4g}" for v in E[start:k + 1])
        out.append(("oscillation", f"Oscillating loss: from step {first + start} the change of the loss flips sign at every step "
                                   f"({int(series.flips[k])} flips in a row, oscillation = {th['oscillation']}): {values}, at "
                                   f"{len(oscillating)} step(s) in all; the steps overshoot the minimum: the learning rate is too large."))
    return out


_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}


def _flat_below_zero(layer):
    """True when the layer's activation has slope exactly 0 for u < 0 (asked at u = −1: ReLU), so a
    unit at its floor is dead rather than slow."""
    act = activations.get(layer.activation)
    u = np.array([-1.0])
    return bool(act.slope(u, act.forward(u, layer.activation_params), layer.activation_params)[0] == 0)


def _floor_sentence(d):
    t, s = d.trace, d.trace.scenario
    parts = []
    for (l, u), st in sorted(d.dead.items()):
        share = []
        for step in range(t.steps):
            n = len(t.samples(step))
            values = unit_values(t, "u", l, step, n)[:, u]   # a recurrent layer: every (sample, time step)
            share.extend(np.isfinite(values) & (values <= 0))
        parts.append(f"layer {l} unit {u} (from step {t.first_step + st}, at its floor for {np.mean(share):.0%} of the samples)")
    names = sorted({s.layers[l - 1].activation for l, _ in d.dead})
    symbols = sorted({activations.get(s.layers[l - 1].activation).symbol for l, _ in d.dead})
    dead = all(_flat_below_zero(s.layers[l - 1]) for l, _ in d.dead)
    head = (f"Dead {'/'.join(symbols)} units (u ≤ 0 for every sample of a step, so "
            f"{'/'.join(f'{symbol}' for symbol in symbols)}'(u) = 0)" if dead else
            f"Units at their floor ({', '.join(names)}: u ≤ 0 for every sample of a step, where the slope is 0 or small)")
    return f"{head}: {', '.join(parts)}."


def _progress_sentence(d, found):
    """What went well: the loss fell (and whether it still falls), the gradient reaches layer 1, values stay finite."""
    t, series = d.trace, d.series
    stalled = ("plateau", "depth", "frozen", "oscillation", "non-finite", "vanishing")
    if series is None or t.first_nonfinite_step() is not None or any(kind in stalled for kind, _ in found):
        return ""
    E, L = t.loss, t.layers
    if not E[-1] < E[0]:
        return ""
    text = (f"Learning ({d.outcome[0]}): the loss fell from {E[0]:.4g} to {E[-1]:.4g} ({(E[0] - E[-1]) / E[0]:.1%} lower) "
            f"over {t.steps} steps, with no plateau")
    if L > 1:
        with np.errstate(invalid="ignore"):
            worst = np.nanmin(series.depth[:, 0]) if np.isfinite(series.depth[:, 0]).any() else np.nan
        text += f"; layer 1's gradient norm is at least {worst:.2g} of the output layer's"
    medians = [np.nanmedian(series.update[:, l]) for l in range(L)]
    text += f"; median |Δθ|/|θ| per layer {min(medians):.2g}..{max(medians):.2g}; every value finite."
    return text


def render(d, rows=20):
    """The report as text: a table of gradient norms and flags, then plain sentences."""
    t, s = d.trace, d.trace.scenario
    th = s.thresholds
    lines = [f"Diagnosis of {s.name} ({t.steps} steps; thresholds: vanishing < {th['vanishing']:g}, "
             f"exploding > {th['exploding']:g}, saturated |f'(u)| < {th['saturated']:g})", ""]
    header = "  step " + "".join(f"{'‖∇⁽' + str(l) + '⁾‖':>12}" for l in range(1, t.layers + 1)) + "   flags"
    lines.append(header)
    shown = list(range(min(rows, t.steps)))
    for step in shown:
        flags = ", ".join(f"{f} ({l})" for l, f in d.flags[step].items() if f)
        lines.append(f"  {t.first_step + step:>4} " + "".join(f"{v:>12.3g}" for v in d.norms[step]) + f"   {flags}")
    if t.steps > len(shown):
        lines.append(f"  ... {t.steps - len(shown)} more steps (see the Diagnosis sheet of the workbook)")
    for finding in d.time.values():
        lines += [""] + _time_table(d, finding, rows)
    lines += ["", "Findings:"] + [f"- {text}" for text in d.findings]
    if d.window:
        a, b = d.window
        lines += ["", "Zoom into the first anomaly:", f"  tracer run {_reference(s)} --window {a}:{b} -o zoom.xlsx"]
    return "\n".join(lines)


def _time_table(d, finding, rows):
    """‖∂E/∂h_t‖ per time step of a recurrent layer (at most `rows` time steps, always the first, the
    last and the crossing), with its ratio to the last time step's."""
    T = len(finding.norms)
    chosen = set(np.linspace(0, T - 1, max(2, min(rows, T))).round().astype(int).tolist())
    if finding.time is not None:
        chosen |= {finding.time, min(T - 1, finding.time + 1)}
    layer = d.trace.scenario.layers[finding.layer - 1]
    lines = [f"‖∂E/∂h_t‖ of layer {finding.layer} ({layer.kind}) at step {d.trace.first_step + finding.step} per time step t "
             f"(over the units and the step's samples; ratio to the last time step's):",
             f"  {'t':>5} {'‖e_t‖':>12} {'ratio':>12}"]
    for t in sorted(chosen, reverse=True):
        mark = "   ← first beyond the threshold" if t == finding.time else ""
        lines.append(f"  {t:>5} {finding.norms[t]:>12.4g} {finding.ratio[t]:>12.4g}{mark}")
    if len(chosen) < T:
        lines.append(f"  ({T - len(chosen)} other time steps not shown)")
    return lines


def _reference(scenario):
    source = scenario.source
    return source[len("template "):] if source.startswith("template ") else source


# ---------------------------------------------------------------- stalls: why did the net stop learning?

STALL_KINDS = ("plateau", "depth", "frozen", "unstable", "oscillation", "non-finite", "vanishing", "exploding")
OUTCOMES = ("converged", "falling", "plateaued", "vanishing", "exploding", "non-finite")   # best first


def loss_minimum(trace):
    """Per step, the smallest value the batch loss can take with these targets: 0 for squared errors
    and for 0/1 targets; −Σ_k [t ln t + (1−t) ln(1−t)] per sample for bce, −Σ_k t ln t for softmax_ce
    (reduced over the step's samples like the loss)."""
    s = trace.scenario
    t = s.targets
    per_sample = losses.LOSSES[s.loss].minimum(t)
    floors = np.zeros(trace.steps)
    for step in range(trace.steps):
        ids = trace.samples(step)
        total = float(np.sum(per_sample[ids])) + 0.0
        floors[step] = total / len(ids) if s.reduction == "mean" else total
    return floors


def _finite(*values):
    return all(math.isfinite(float(v)) for v in values)


def _layer_norm(arrays, step):
    """sqrt(Σ x²) over the arrays' entries at `step` (inf when the squares overflow, as in a sheet: #NUM!)."""
    with np.errstate(all="ignore"):
        return float(np.sqrt(sum(float(np.sum(np.asarray(a[step], dtype=float) ** 2)) for a in arrays)))


def _ratio(top, bottom):
    """top / bottom as a spreadsheet computes it: NaN (an error cell) for non-finite operands or /0."""
    if not _finite(top, bottom) or bottom == 0:
        return math.nan
    return top / bottom


@dataclass
class StallSeries:
    """Per-step series behind the stall findings; the Diagnosis sheet computes the same with formulas.

      rel_t      = |E_t − E_{t−1}| / |E_{t−1}|                      (NaN at t = 0: no previous step)
      quiet_t    = quiet_{t−1} + 1 if rel_t < plateau else 0        (steps in a row of a still loss)
      plateau_t  = quiet_t ≥ plateau_window and E_t − m_t > plateau_far·(E_0 − m_0)   (m: loss minimum)
      flips_t    = flips_{t−1} + 1 if ΔE_t and ΔE_{t−1} differ in sign else 0
      oscillating_t = flips_t ≥ oscillation and rel_t > plateau
      depth_t[l] = ‖∇⁽ˡ⁾‖ / ‖∇⁽ᴸ⁾‖ (hidden layers);  deep_t = how many are below depth_ratio
      update_t[l] = ‖Δθ⁽ˡ⁾‖ / ‖θ⁽ˡ⁾‖;  update_flag_t = unstable (any above update_unstable), else frozen
                    (any below update_frozen)
      saturation_t[l] = share of unit-samples with a within `saturation` of a saturating level
      floor_t[l] = units with u ≤ 0 for every sample of the step (activations that can die)
    A NaN stands for an error cell (a non-finite operand); flags are "" when not raised."""

    minimum: np.ndarray
    rel: np.ndarray
    quiet: np.ndarray
    plateau: list
    flips: np.ndarray
    oscillating: list
    depth: np.ndarray
    deep: np.ndarray
    update: np.ndarray
    update_flag: list
    saturation: dict
    floor: dict


def stall_series(trace, norms=None):
    """Compute the StallSeries of `trace` with the scenario's thresholds."""
    s, th = trace.scenario, trace.scenario.thresholds
    T, L = trace.steps, trace.layers
    E = trace.loss
    if norms is None:
        norms = np.stack([trace.gradient_norm(l) for l in range(1, L + 1)], axis=1)
    minimum = loss_minimum(trace)
    rel, quiet, flips = np.full(T, np.nan), np.zeros(T), np.zeros(T)
    plateau, oscillating = [""] * T, [""] * T
    for t in range(1, T):
        rel[t] = _ratio(abs(E[t] - E[t - 1]) if _finite(E[t], E[t - 1]) else math.nan, abs(E[t - 1]))
        if math.isnan(rel[t]):
            quiet[t] = math.nan
        else:
            quiet[t] = quiet[t - 1] + 1 if rel[t] < th["plateau"] else 0.0
        if not _finite(quiet[t], E[t], E[0]):
            plateau[t] = math.nan
        elif quiet[t] >= th["plateau_window"] and E[t] - minimum[t] > th["plateau_far"] * (E[0] - minimum[0]):
            plateau[t] = "plateau"
        if t >= 2:
            if not _finite(E[t], E[t - 1], E[t - 2]):
                flips[t] = math.nan
            else:
                turned = np.sign(E[t] - E[t - 1]) * np.sign(E[t - 1] - E[t - 2]) < 0
                flips[t] = flips[t - 1] + 1 if turned else 0.0
            if not _finite(flips[t], rel[t]):
                oscillating[t] = math.nan
            elif flips[t] >= th["oscillation"] and rel[t] > th["plateau"]:
                oscillating[t] = "oscillating"
    depth = np.array([[_ratio(norms[t, l], norms[t, L - 1]) for l in range(L - 1)] for t in range(T)]).reshape(T, L - 1)
    with np.errstate(invalid="ignore"):
        deep = np.sum(depth < th["depth_ratio"], axis=1).astype(float)
    stored = [layers.of(layer).stored_params for layer in s.layers]   # W, b (recurrent: W, b, Wh, bh)
    update = np.array([[_ratio(_layer_norm([getattr(trace, f"update_{p}")[l] for p in stored[l]], t),
                               _layer_norm([getattr(trace, p)[l] for p in stored[l]], t))
                        for l in range(L)] for t in range(T)])
    update_flag = []
    with np.errstate(invalid="ignore"):
        for row in update:
            update_flag.append("unstable" if (row > th["update_unstable"]).any()
                               else "frozen" if (row < th["update_frozen"]).any() else "")
    saturation, floor = {}, {}
    for l, layer in enumerate(s.layers, start=1):
        act = activations.get(layer.activation)
        activated = layers.of(layer).activated(layer)
        if act.saturates_at:
            series = np.zeros(T)
            for t in range(T):
                n = len(trace.samples(t))
                a = unit_values(trace, activated, l, t, n)
                with np.errstate(invalid="ignore"):
                    near = sum(int(((a > level - th["saturation"]) & (a < level + th["saturation"])).sum())
                               for level in act.saturates_at)
                series[t] = near / a.size
            saturation[l] = series
        if act.can_die:
            series = np.zeros(T)
            for t in range(T):
                n = len(trace.samples(t))
                u = unit_values(trace, "u", l, t, n)
                series[t] = float((np.isfinite(u) & (u <= 0)).all(axis=0).sum())
            floor[l] = series
    return StallSeries(minimum, rel, quiet, plateau, flips, oscillating, depth, deep, update, update_flag, saturation, floor)


def dominant_path(trace, layer, step):
    """The path of units from `layer` to the output along which the error is multiplied most:
    maximise |f'⁽ˡ⁾_j|·Π_m link_m[j_{m−1}, j_m]·|f'⁽ᵐ⁾_{j_m}| (slopes averaged over the step's samples;
    no output slope when the loss does not read it) with chain.dominant_path. Returns (units,
    slopes, weights), the weights those the layer kinds show on the path's edges."""
    s = trace.scenario
    L, n = trace.layers, len(trace.samples(step))
    reads_slope = losses.LOSSES[s.loss].reads_output_slope
    with np.errstate(all="ignore"):
        slope = [np.nanmean(np.abs(_last_slopes(trace, m + 1, step, n)), axis=0) for m in range(L)]
    if not reads_slope:
        slope[L - 1] = np.ones_like(slope[L - 1])
    units = chain_module.dominant_path(trace, step, layer, slope[layer - 1:])
    slopes = [float(slope[m - 1][unit]) for m, unit in zip(range(layer, L + 1), units)]
    weights = []
    for m in range(layer + 1, L + 1):
        above = s.layers[m - 1]
        _, edge = layers.of(above).diagnose_links(above, m, trace, step)
        weights.append(float(edge[units[m - layer - 1], units[m - layer]]))
    if not reads_slope:
        slopes.pop()   # an output delta that does not read the slope carries none
    return units, slopes, weights


def _last_slopes(trace, l, step, n):
    """Layer l's slopes f'(u) at `step` (n samples × units): a recurrent layer's at its last time step
    (the hidden state the layer above reads)."""
    layer = trace.scenario.layers[l - 1]
    return layers.of(layer).output_slopes(layer, trace, l, step, n)


@dataclass
class Producer:
    """The first scalar of the run that became inf or NaN, and the operation that made it."""

    step: int
    name: str
    value: float
    operation: str
    operands: list     # (name, value), all finite


def _first_bad(array):
    bad = np.argwhere(~np.isfinite(np.asarray(array, dtype=float)))
    return tuple(int(i) for i in bad[0]) if bad.size else None


def _product(name_a, a, name_b, b):
    return f"the product {name_a} × {name_b}", [(name_a, float(a)), (name_b, float(b))]


def _time_producer(step, ids, found):
    name, slot, value, operation, operands = found
    return Producer(step, f"{name} (sample {ids[slot]})", value, operation, operands)


def find_producer(trace):
    """Scan the run in computation order (forward, loss, backward, batch gradients, update, next θ)
    and explain the first non-finite scalar by its finite operands, or return None."""
    s = trace.scenario
    L = trace.layers
    for step in range(trace.steps):
        ids = trace.samples(step)
        n = len(ids)
        for l in range(1, L + 1):
            layer, act = s.layers[l - 1], activations.get(s.layers[l - 1].activation)
            kind = layers.of(layer)
            if kind.recurrent:        # its values live per time step
                found = kind.first_nonfinite_through_time(layer, trace, l, step, "forward")
                if found:
                    return _time_producer(step, ids, found)
                continue
            below = s.inputs[ids] if l == 1 else trace.a[l - 2][step, :n]
            below_name = "x" if l == 1 else f"a{l - 1}"
            hit = _first_bad(trace.u[l - 1][step, :n])
            if hit:
                slot, j = hit
                op, operands = kind.diagnose_u(layer, l, trace, step, slot, j, below, below_name)
                return Producer(step, f"u{l}[{j}] (sample {ids[slot]})", trace.u[l - 1][step, slot, j], op, operands)
            activated = kind.activated(layer)
            for store, symbol in ((getattr(trace, activated), activated), (trace.slope, "f'")):
                hit = _first_bad(store[l - 1][step, :n])
                if hit:
                    slot, j = hit
                    what = "the exponential inside" if act.exponential else "the activation"
                    return Producer(step, f"{symbol}{l}[{j}] (sample {ids[slot]})", store[l - 1][step, slot, j],
                                    f"{what} {act.symbol}(u)" + ("'s slope" if symbol == "f'" else ""),
                                    [(f"u{l}[{j}]", float(trace.u[l - 1][step, slot, j]))])
            if activated != "a":
                hit = _first_bad(trace.a[l - 1][step, :n])
                if hit:
                    slot, j = hit
                    op, operands = kind.diagnose_combine(layer, l, trace, step, slot, j, below, below_name)
                    return Producer(step, f"a{l}[{j}] (sample {ids[slot]})", trace.a[l - 1][step, slot, j], op, operands)
        hit = _first_bad(trace.sample_loss[step, :n])
        if hit:
            slot = hit[0]
            y, t = trace.a[L - 1][step, slot], s.targets[ids[slot]]
            operands = [(f"y[{k}]", float(v)) for k, v in enumerate(y)] + [(f"t[{k}]", float(v)) for k, v in enumerate(t)]
            return Producer(step, f"E (sample {ids[slot]})", trace.sample_loss[step, slot],
                            f"the {s.loss} loss (its square (t − y)² overflows)" if "sse" in s.loss else f"the {s.loss} loss",
                            operands)
        if trace.output_error is not None:
            hit = _first_bad(trace.output_error[step, :n])
            if hit:
                slot, k = hit
                return Producer(step, f"∂E/∂y[{k}] (sample {ids[slot]})", trace.output_error[step, slot, k],
                                f"the {s.loss} derivative", [(f"y[{k}]", float(trace.a[L - 1][step, slot, k]))])
        for l in range(L, 0, -1):
            if layers.of(s.layers[l - 1]).recurrent:        # its values live per time step
                found = layers.of(s.layers[l - 1]).first_nonfinite_through_time(s.layers[l - 1], trace, l, step, "backward")
                if found:
                    return _time_producer(step, ids, found)
                continue
            if l < L:
                hit = _first_bad(trace.error[l - 1][step, :n])
                if hit:
                    slot, j = hit
                    above = s.layers[l]
                    op, operands = layers.of(above).diagnose_error_down(above, l + 1, trace, step, slot, j)
                    return Producer(step, f"e{l}[{j}] (sample {ids[slot]})", trace.error[l - 1][step, slot, j], op, operands)
            hit = _first_bad(trace.delta[l - 1][step, :n])
            if hit:
                slot, j = hit
                if l == L and not losses.LOSSES[s.loss].reads_output_slope:
                    y, t = trace.a[L - 1][step, slot], s.targets[ids[slot]]
                    op = f"the {s.loss} output delta δ = {losses.LOSSES[s.loss].output_delta_text}"
                    operands = [(f"a[{k}]", float(v)) for k, v in enumerate(y)] + [(f"t[{k}]", float(v)) for k, v in enumerate(t)]
                else:
                    e = trace.output_error[step, slot, j] if l == L else trace.error[l - 1][step, slot, j]
                    op, operands = _product(f"f'(u{l}[{j}])", trace.slope[l - 1][step, slot, j], f"e{l}[{j}]", e)
                    op += " (δ = f'(u)·e), which overflows"
                return Producer(step, f"δ{l}[{j}] (sample {ids[slot]})", trace.delta[l - 1][step, slot, j], op, operands)
        for l in range(1, L + 1):
            if layers.of(s.layers[l - 1]).recurrent:        # its values live per time step
                found = layers.of(s.layers[l - 1]).first_nonfinite_through_time(s.layers[l - 1], trace, l, step, "gradient")
                if found:
                    return _time_producer(step, ids, found)
                continue
            hit = _first_bad(trace.grad_W_sample[l - 1][step, :n])
            if hit:
                slot, i, j = hit
                layer = s.layers[l - 1]
                name = param_name(s, "W", l, (i, j))
                factor, value = layers.of(layer).diagnose_input(layer, l, trace, step, slot, i, j)
                op, operands = _product(factor, value, f"δ{l}[{j}]", trace.delta[l - 1][step, slot, j])
                return Producer(step, f"∂E/∂{name} (sample {ids[slot]})", trace.grad_W_sample[l - 1][step, slot, i, j],
                                op + f" (∂E/∂{name} = {factor}·δ{l}[{j}]), which overflows", operands)
        for l in range(1, L + 1):
            for kind, store in (("W", trace.grad_W), ("b", trace.grad_b)):
                hit = _first_bad(store[l - 1][step])
                if hit:
                    name = param_name(s, kind, l, hit)
                    return Producer(step, f"∂E/∂{name}", store[l - 1][step][hit],
                                    f"the {s.reduction} of finite per-sample gradients over the batch overflows", [])
        if not np.isfinite(trace.lr[step]):
            hyper = s.optimizer_params
            t = trace.first_step + step
            k = t // hyper["step_size"] if hyper["schedule"] == "step" else t
            return Producer(step, "lr", float(trace.lr[step]), f"the {hyper['schedule']} schedule lr·γ^k, which overflows",
                            [("lr", float(hyper["lr"])), ("γ", float(hyper["gamma"])), ("k", k)])
        for l in range(1, L + 1):
            for kind, store, grads in (("W", trace.update_W, trace.grad_W), ("b", trace.update_b, trace.grad_b)):
                hit = _first_bad(store[l - 1][step])
                if hit:
                    name = param_name(s, kind, l, hit)
                    operands = [("lr", float(trace.lr[step])), (f"∂E/∂{name}", float(grads[l - 1][step][hit]))]
                    op = f"the {s.optimizer} update ({optim.OPTIMIZERS[s.optimizer].meaning})"
                    return Producer(step, f"Δ{name}", store[l - 1][step][hit], op, operands)
        for l in range(1, L + 1):
            for kind, store, updates in (("W", trace.W, trace.update_W), ("b", trace.b, trace.update_b)):
                hit = _first_bad(store[l - 1][step + 1])
                if hit:
                    name = param_name(s, kind, l, hit)
                    operands = [(name, float(store[l - 1][step][hit])), (f"Δ{name}", float(updates[l - 1][step][hit]))]
                    return Producer(step + 1, name, store[l - 1][step + 1][hit], "the update θ − lr·g (θ − Δθ)", operands)
    return None


def outcome(trace, series=None, norms=None):
    """The outcome of a run and the step it refers to:
      non-finite  a loss, gradient or parameter became inf/NaN (at the first such step)
      exploding   the loss ended above where it started
      converged   E_last − m ≤ plateau_far·(E_0 − m)   (m: the loss minimum)
      vanishing   otherwise, and at the last step a layer's ‖∇‖ is below `vanishing` or below
                  depth_ratio × the output layer's
      plateaued   otherwise, and the loss sits on a plateau at the last step
      falling     otherwise (still falling, far from its minimum)."""
    th = trace.scenario.thresholds
    bad = trace.first_nonfinite_step()
    if bad is not None:
        return "non-finite", trace.first_step + bad
    E, last = trace.loss, trace.steps - 1
    if E[last] > E[0]:
        return "exploding", trace.first_step + last
    if norms is None:
        norms = np.stack([trace.gradient_norm(l) for l in range(1, trace.layers + 1)], axis=1)
    series = series or stall_series(trace, norms)
    m = series.minimum
    if E[last] - m[last] <= th["plateau_far"] * (E[0] - m[0]):
        return "converged", trace.first_step + last
    if (norms[last] < th["vanishing"]).any() or series.deep[last] > 0:
        return "vanishing", trace.first_step + last
    if series.plateau[last] == "plateau":
        return "plateaued", trace.first_step + last
    return "falling", trace.first_step + last
