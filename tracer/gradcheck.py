"""Backprop gradients against central finite differences.

For a parameter θ at step t, with the batch of step t and every other parameter fixed:
  D(h)    = (E(θ + h) − E(θ − h)) / 2h,   h₀ = 1e-4 · max(1, |θ|)
  numeric = D(h/2) + (D(h/2) − D(h)) / 3   (Richardson: truncation error O(h⁴), so h can be
                                            large enough that round-off in u stays small)
  error   = |backprop − numeric| / max(|backprop|, |numeric|, floor)
where E is the step's reduced batch loss and floor = 1e-3 · |E| / max(1, |θ|): the
round-off of the difference quotient is about 1e-12 · |E| / max(1, |θ|), so gradients
far below the typical scale |E|/|θ| (or exactly 0 on both sides) are compared with an
absolute tolerance rather than divided by almost nothing.

The step must be small against the length over which E bends along θ. The Richardson
correction measures that: bend = |D(h/2) − D(h)| / max(|numeric|, floor) ≈ (h/L)² for a
length scale L, and the O(h⁴) remainder left in `numeric` is then about bend² relative.
A step is accepted when bend ≤ 1e-4 (remainder ~1e-8, far below the 1e-6 tolerance);
otherwise h is halved (h₀, h₀/2, ..., at most h₀/16, reusing D(h/2) as the next D(h)).
Below h₀/16 the round-off of D(h/2), ~2.2e-16 · |E| / (h₀/32), would reach ~1e-7 of the
floor, so a gradient still bending there is not resolvable in double precision: it is
listed as unresolved, not checked. Batch normalisation makes such points: with σ² of the
order of eps (a batch of two nearly equal values), x̂ = d/√(d² + eps) is a sign function
smoothed over a width √eps ≈ 3e-3 in x, and E can bend within 1e-3 of θ or less.
Parameters whose ±h perturbation flips the sign of any u (a kink of ReLU-like
activations) are skipped and counted.
"""
from dataclasses import dataclass, field

import numpy as np

from . import activations, layers
from .engine import forward_backward, reduce_samples

BEND_LIMIT = 1e-4     # accepted |D(h/2) − D(h)| / max(|numeric|, floor): O(h⁴) remainder ~1e-8
HALVINGS = 4          # smallest step h₀/16: its round-off stays ~1e-7 of the floor


@dataclass
class Check:
    step: int
    name: str
    backprop: float
    numeric: float
    error: float


@dataclass
class Report:
    checks: list
    skipped: list        # (step, name) whose perturbation crossed a kink
    nonfinite: list      # steps left out because their values are not finite
    unresolved: list = field(default_factory=list)  # (step, name) bending even at the smallest step

    @property
    def worst(self):
        return max(self.checks, key=lambda c: c.error, default=None)


def _batch_loss(scenario, weights, biases, x, t, extra=None, sums="in_order"):
    """E of the batch (its sums in the order `sums`, the trace's), and the signs of every u of a
    piecewise activation (recurrent layers: u at every time step) to detect a kink crossed by a
    perturbation."""
    result = forward_backward(scenario, weights, biases, x, t, extra, sums)
    signs = []
    for layer, u, record in zip(scenario.layers, result.u, result.records):
        if activations.get(layer.activation).piecewise:
            signs.append(np.sign(record["u"] if layers.of(layer).recurrent else u))
    return float(reduce_samples(result.sample_loss, scenario.reduction)), signs


_KINK = object()


def _numeric_derivative(scenario, weights, biases, x, t, array, index, h, signs, floor, extra=None, sums="in_order"):
    """Richardson-extrapolated ∂E/∂θ for θ = array[index], halving h until it no longer bends.

    Returns the estimate, _KINK if a ±h step flips the sign of some u, or None if the loss
    still bends beyond BEND_LIMIT at the smallest step (see the module docstring).
    """
    original = array[index]

    def difference(step):
        losses, crossed = [], False
        for offset in (step, -step):
            array[index] = original + offset
            value, perturbed = _batch_loss(scenario, weights, biases, x, t, extra, sums)
            losses.append(value)
            crossed = crossed or any((p != s0).any() for p, s0 in zip(perturbed, signs))
        array[index] = original
        return (losses[0] - losses[1]) / (2 * step), crossed

    wide, crossed = difference(h)
    for _ in range(HALVINGS + 1):
        narrow, crossed_narrow = difference(h / 2)
        if crossed or crossed_narrow:
            return _KINK
        numeric = narrow + (narrow - wide) / 3
        if abs(narrow - wide) <= BEND_LIMIT * max(abs(numeric), floor):
            return numeric
        wide, h = narrow, h / 2
    return None


def check(trace, steps=(0,)):
    """Compare every parameter's batch gradient at each of `steps` with finite differences."""
    scenario = trace.scenario
    checks, skipped, nonfinite, unresolved = [], [], [], []
    with np.errstate(all="ignore"):
        for step in steps:
            params = trace.parameters(step)
            weights, biases = params.pop("W"), params.pop("b")
            extra = params                              # Wh, bh of recurrent layers
            stored = dict(extra, W=weights, b=biases)
            ids = trace.samples(step)
            x, t = scenario.inputs[ids], scenario.targets[ids]
            loss, signs = _batch_loss(scenario, weights, biases, x, t, extra, trace.sum_order)
            gradients = [g[step] for name in stored for g in trace._store(f"grad_{name}") if g is not None]
            if not np.isfinite(loss) or not all(np.isfinite(g).all() for g in gradients):
                nonfinite.append(step)
                continue
            for layer in range(trace.layers):
                kind = layers.of(scenario.layers[layer])   # names the parameters: W, b, Wh, bh or gamma, beta
                targets = []
                for which in kind.stored_params:
                    array, grad = stored[which][layer], trace._store(f"grad_{which}")[layer][step]
                    targets += [(array, index, kind.param_name(which, layer + 1, index), grad[index])
                                for index in np.ndindex(array.shape)]
                for array, index, name, backprop in targets:
                    scale = max(1.0, abs(array[index]))
                    floor = max(1e-3 * abs(loss) / scale, 1e-300)
                    numeric = _numeric_derivative(scenario, weights, biases, x, t, array, index, 1e-4 * scale, signs, floor,
                                                  extra, trace.sum_order)
                    if numeric is _KINK:
                        skipped.append((step, name))
                    elif numeric is None:
                        unresolved.append((step, name))
                    else:
                        error = abs(backprop - numeric) / max(abs(backprop), abs(numeric), floor)
                        checks.append(Check(step, name, float(backprop), float(numeric), float(error)))
    return Report(checks, skipped, nonfinite, unresolved)
