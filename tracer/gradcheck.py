"""Backprop gradients against central finite differences.

For a parameter θ at step t, with the batch of step t and every other parameter fixed:
  D(h)    = (E(θ + h) − E(θ − h)) / 2h,   h = 1e-4 · max(1, |θ|)
  numeric = D(h/2) + (D(h/2) − D(h)) / 3   (Richardson: truncation error O(h⁴), so h can be
                                            large enough that round-off in u stays small)
  error   = |backprop − numeric| / max(|backprop|, |numeric|, floor)
where E is the step's reduced batch loss and floor = 1e-3 · |E| / max(1, |θ|): the
round-off of the difference quotient is about 1e-12 · |E| / max(1, |θ|), so gradients
far below the typical scale |E|/|θ| (or exactly 0 on both sides) are compared with an
absolute tolerance rather than divided by almost nothing.
Parameters whose ±h or ±h/2 perturbation flips the sign of any u (a kink of ReLU-like
activations) are skipped and counted.
"""
from dataclasses import dataclass

import numpy as np

from . import activations
from .engine import forward_backward, reduce_samples
from .trace import param_name


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
                targets = [(weights[layer], (i, j), param_name(scenario, "W", layer + 1, (i, j)), trace.grad_W[layer][step, i, j])
                           for i in range(weights[layer].shape[0]) for j in range(weights[layer].shape[1])]
                targets += [(biases[layer], (j,), param_name(scenario, "b", layer + 1, (j,)), trace.grad_b[layer][step, j])
                            for j in range(biases[layer].shape[0])]
                for array, index, name, backprop in targets:
                    original = array[index]
                    scale = max(1.0, abs(original))
                    h = 1e-4 * scale
                    losses, crossed = {}, False
                    for offset in (h, -h, h / 2, -h / 2):
                        array[index] = original + offset
                        losses[offset], perturbed = _batch_loss(scenario, weights, biases, x, t)
                        crossed = crossed or any((p != s0).any() for p, s0 in zip(perturbed, signs))
                    array[index] = original
                    if crossed:
                        skipped.append((step, name))
                        continue
                    wide = (losses[h] - losses[-h]) / (2 * h)
                    narrow = (losses[h / 2] - losses[-h / 2]) / h
                    numeric = narrow + (narrow - wide) / 3
                    floor = max(1e-3 * abs(loss) / scale, 1e-300)
                    error = abs(backprop - numeric) / max(abs(backprop), abs(numeric), floor)
                    checks.append(Check(step, name, float(backprop), float(numeric), float(error)))
    return Report(checks, skipped, nonfinite)
