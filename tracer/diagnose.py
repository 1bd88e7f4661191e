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
"""
from dataclasses import dataclass, field
import math

import numpy as np

from . import chain as chain_module
from .trace import param_name, weight_name


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

    @property
    def findings(self):
        return _sentences(self)


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
            finite = np.isfinite(trace.grad_W[l - 1][step]).all() and np.isfinite(trace.grad_b[l - 1][step]).all()
            flag = layer_flag(norms[step, l - 1], finite, th)
            row[l] = flag
            if flag and flag not in result.first:
                result.first[flag] = (step, l)
            n = len(trace.samples(step))
            slope = trace.slope[l - 1][step, :n]
            small = int((np.abs(slope) < th["saturated"]).sum())
            zero = int((slope == 0).sum())
            if small:
                result.saturated[(step, l)] = (small, zero)
                result.first.setdefault("saturated", (step, l))
            if s.layers[l - 1].activation == "relu":
                for unit in np.flatnonzero((trace.u[l - 1][step, :n] <= 0).all(axis=0)):
                    result.dead.setdefault((l, int(unit)), step)
                    result.first.setdefault("dead", (step, l))
        flags.append(row)
    result.swings = _swings(trace)
    result.why = _why(trace, result)
    result.window = _window(trace, result)
    return result


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
        if culprit.label == "④" and layer < trace.layers and trace.scenario.layers[layer].kind == "dense":
            above = trace.W[layer][step, index[-1]]
            k = int(np.argmax(np.abs(above)))
            text += f" It carries the weight {param_name(trace.scenario, 'W', layer + 1, (index[-1], k))} = {above[k]:.4g} from the layer above."
        return text
    return ""


def _window(trace, result):
    """A window of a few steps around the first anomaly, or None."""
    firsts = [v[0] for k, v in result.first.items() if k in ("vanishing", "exploding", "non-finite")]
    firsts += [s.first for s in result.swings[:1]]
    if not firsts:
        return None
    anchor = min(firsts)
    return trace.first_step + max(0, anchor - 2), trace.first_step + min(trace.steps - 1, anchor + 4)


def _sentences(d):
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
            out.append(f"First {names[kind]} at step {t.first_step + step}, layer {layer} "
                       f"(layers affected: {', '.join(map(str, layers))}).")
    if d.saturated:
        (step, layer), (small, zero) = next(iter(d.saturated.items()))
        total_zero = sum(z for _, z in d.saturated.values())
        out.append(f"Saturated units: first at step {t.first_step + step}, layer {layer}: {small} unit-sample slope(s) "
                   f"|f'(u)| < {th['saturated']:g}, {zero} of them exactly 0 ({total_zero} exact zeros over the run).")
    if d.dead:
        units = ", ".join(f"layer {l} unit {u} (from step {t.first_step + st})" for (l, u), st in sorted(d.dead.items()))
        out.append(f"Dead ReLU units (u ≤ 0 for every sample of a step, so ReLU'(u) = 0): {units}.")
    for quantity in ("value", "gradient"):
        swings = [w for w in d.swings if w.quantity == quantity]
        preferred = [w for w in swings if w.name == weight_name(1, 0, 0)]
        for swing in (preferred or swings)[:1]:
            values = " → ".join(f"{v:+.3g}" for v in swing.values)
            growth = (f"the exponent of |·| grows about ×{swing.exponent:.1f} per step" if swing.exponent
                      else f"|·| grows about ×{swing.factor:.3g} per step")
            what = swing.name if quantity == "value" else f"∂E/∂{swing.name}"
            others = f" ({len(swings) - 1} other parameters do the same)" if len(swings) > 1 else ""
            out.append(f"{what} alternates in sign while it grows, from step {swing.first}: {values}; {growth}{others}.")
    if any(w.quantity == "value" for w in d.swings):
        out.append("Why it diverges: each update θ ← θ − lr·∂E/∂θ overshoots (lr·∂E/∂θ is larger than θ), so θ flips "
                   "sign and grows; the next gradient contains the grown weights (in the error from above) and is "
                   "larger still, with the opposite sign.")
    if t.clip_factor is not None:
        finite = t.clip_factor[np.isfinite(t.clip_factor)]
        active = int((finite < 1).sum())
        if active:
            out.append(f"Gradient clipping (clip_norm = {s.clip_norm:g}) scaled the gradients at {active} of {t.steps} "
                       f"steps; the smallest clip factor was c = {finite.min():.3g} (‖g‖ = {np.nanmax(t.grad_norm):.3g} "
                       f"at its largest). The norms above are before clipping.")
    if d.why:
        out.append(d.why)
    if not out:
        out.append("No anomaly: every gradient norm is within the thresholds and finite.")
    return out


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
    lines += ["", "Findings:"] + [f"- {text}" for text in d.findings]
    if d.window:
        a, b = d.window
        lines += ["", "Zoom into the first anomaly:", f"  tracer run {_reference(s)} --window {a}:{b} -o zoom.xlsx"]
    return "\n".join(lines)


def _reference(scenario):
    source = scenario.source
    return source[len("template "):] if source.startswith("template ") else source
