"""Backprop gradients against central finite differences.

For a parameter θ at step t, with the batch of step t and every other parameter fixed:
  numeric = (E(θ + h) − E(θ − h)) / 2h,   h = 1e-5 · max(1, |θ|)
  error   = |backprop − numeric| / max(|backprop|, |numeric|, floor)
where E is the step's reduced batch loss and floor = 1e-3 · |E| / max(1, |θ|): the
round-off of the difference quotient is about 1e-10 · |E| / max(1, |θ|), so gradients
far below the typical scale |E|/|θ| (or exactly 0 on both sides) are compared with an
absolute tolerance rather than divided by almost nothing.
Parameters whose ±h perturbation flips the sign of any u (a kink of ReLU-like
activations) are skipped and counted.
"""
from dataclasses import dataclass

import numpy as np

from . import activations
from .engine import forward_backward, reduce_samples
from .trace import bias_name, weight_name


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

    @property
    def worst(self):
        return max(self.checks, key=lambda c: c.error, default=None)


def _batch_loss(scenario, weights, biases, x, t):
    result = forward_backward(scenario, weights, biases, x, t)
    kinked = [activations.get(layer.activation).piecewise for layer in scenario.layers]
    return float(reduce_samples(result.sample_loss, scenario.reduction)), [np.sign(u) for u, k in zip(result.u, kinked) if k]


def check(trace, steps=(0,)):
    """Compare every parameter's batch gradient at each of `steps` with finite differences."""
    scenario = trace.scenario
    checks, skipped, nonfinite = [], [], []
    with np.errstate(all="ignore"):
        for step in steps:
            weights = [W[step].copy() for W in trace.W]
            biases = [b[step].copy() for b in trace.b]
            ids = trace.samples(step)
            x, t = scenario.inputs[ids], scenario.targets[ids]
            loss, signs = _batch_loss(scenario, weights, biases, x, t)
            if not np.isfinite(loss) or not all(np.isfinite(g[step]).all() for g in trace.grad_W + trace.grad_b):
                nonfinite.append(step)
                continue
            for layer in range(trace.layers):
                targets = [(weights[layer], (i, j), weight_name(layer + 1, i, j), trace.grad_W[layer][step, i, j])
                           for i in range(weights[layer].shape[0]) for j in range(weights[layer].shape[1])]
                targets += [(biases[layer], (j,), bias_name(layer + 1, j), trace.grad_b[layer][step, j])
                            for j in range(biases[layer].shape[0])]
                for array, index, name, backprop in targets:
                    original = array[index]
                    scale = max(1.0, abs(original))
                    h = 1e-5 * scale
                    array[index] = original + h
                    plus, signs_plus = _batch_loss(scenario, weights, biases, x, t)
                    array[index] = original - h
                    minus, signs_minus = _batch_loss(scenario, weights, biases, x, t)
                    array[index] = original
                    if any((s1 != s0).any() or (s2 != s0).any() for s0, s1, s2 in zip(signs, signs_plus, signs_minus)):
                        skipped.append((step, name))
                        continue
                    numeric = (plus - minus) / (2 * h)
                    floor = max(1e-3 * abs(loss) / scale, 1e-300)
                    error = abs(backprop - numeric) / max(abs(backprop), abs(numeric), floor)
                    checks.append(Check(step, name, float(backprop), float(numeric), float(error)))
    return Report(checks, skipped, nonfinite)
