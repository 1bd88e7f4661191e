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

Evaluating E(θ ± h). Each perturbed loss is that of the full net with θ ± h, in double precision;
only what θ cannot change is not recomputed:
  - forward only (the backward pass does not enter E);
  - the layers below θ's layer l keep their outputs: the forward resumes at layer l from the
    unperturbed input a⁽ˡ⁻¹⁾ (for a recurrent layer: the sequence below);
  - in a weighted layer (dense: u_j = Σ_i a_i W[i,j] + b_j) θ = W[i,j] or b[j] moves only unit j's
    u: the kind's own forward recomputes that column (the same sum, in the same order, as the
    engine's pass), the other units keep theirs;
  - K perturbations are evaluated at once: their K copies of the batch are stacked along the
    sample axis (K·B rows) through the layers above l, whose forward treats every row alone (with
    a batchnorm layer above l, one pass per perturbation instead).
The sums are added in the trace's sum order (trace.sum_order, layers.SumOrder). In order (left to
right), every row goes through the same numpy operations as in the engine's forward pass and E(θ ± h)
has the bits of a full pass: the derivatives are those of `reference=True`, which runs
engine.forward_backward for every E (tests/test_gradcheck.py, on every layer kind). With matmul,
BLAS may add a product of K columns or K·B rows in another blocked order than the engine's
product: E(θ ± h) differs from the full pass's in the last bits, the round-off the step sizes
above allow for (the derivatives agree with the reference path's to ~1e-9 of max(|numeric|, floor),
as two reference runs with differently blocked products would). The halvings run for many
parameters together: the first round evaluates ±h₀ and ±h₀/2, each further round ±h/2 of those
still bending, with the same decisions as for one parameter.

A sample (sample_parameters) holds every bias, one weight of every weight array of every layer,
and weights drawn without replacement from the rest, reproducibly from a seed.
"""
from dataclasses import dataclass, field

import numpy as np

from tracer.maths import activations
from tracer import layers
from tracer.training.engine import forward_backward, forward_layers, reduce_samples, sample_losses
from tracer.errors import InputError

BEND_LIMIT = 1e-4     # accepted |D(h/2) − D(h)| / max(|numeric|, floor): O(h⁴) remainder ~1e-8
HALVINGS = 4          # smallest step h₀/16: its round-off stays ~1e-7 of the floor
STACK_CELLS = 1 << 16  # values per stacked array of K perturbed batches (512 KiB): small enough that numpy's
                       # BLAS multiplies the stacked products in one thread (thread hand-offs cost 10-20x on
                       # a busy 2-core machine: benchmarks/gradcheck.py), large enough for few Python calls
GROUP = 1024          # parameters whose halvings run together (progress is reported per group)


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

    def __repr__(self):
        from tracer import notebook
        return notebook.gradcheck_repr(self)

    def _repr_html_(self):
        from tracer import notebook
        return notebook.gradcheck_html(self)


def _batch_loss(scenario, weights, biases, x, t, extra=None, sums="in_order"):
    """E of the batch (its sums in the order `sums`, the trace's), and the signs of every u of a
    piecewise activation (the kind's pre_activations: a recurrent layer's u at every time step) to
    detect a kink crossed by a perturbation."""
    result = forward_backward(scenario, weights, biases, x, t, extra, sums)
    signs = []
    for layer, u, record in zip(scenario.layers, result.u, result.records):
        if activations.get(layer.activation).piecewise:
            signs.append(np.sign(layers.of(layer).pre_activations(layer, u, record)))
    return float(reduce_samples(result.sample_loss, scenario.reduction)), signs


_KINK = object()


def _numeric_derivative(scenario, weights, biases, x, t, array, index, h, signs, floor, extra=None, sums="in_order"):
    """Richardson-extrapolated ∂E/∂θ for θ = array[index], halving h until it no longer bends,
    each E from a full forward_backward pass (the reference path, check(reference=True)).

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


def _numeric_derivatives(evaluate, originals, h, floors):
    """_numeric_derivative for many parameters of one array at once: `evaluate(positions, values)`
    gives E and the kink flags with parameter originals[positions[k]] set to values[k]. The same
    steps, estimates and decisions for each parameter; returns a list of estimates, _KINK or None."""
    outcome = [None] * len(originals)

    def differences(positions, steps):
        count = len(positions)
        both = np.concatenate([originals[positions] + steps, originals[positions] + -steps])
        loss, crossed = evaluate(np.concatenate([positions, positions]), both)
        return (loss[:count] - loss[count:]) / (2 * steps), crossed[:count] | crossed[count:]

    pending = np.arange(len(originals))
    first, first_crossed = differences(np.concatenate([pending, pending]), np.concatenate([h, h / 2]))
    wide, crossed = first[:len(pending)], first_crossed[:len(pending)]
    narrow, crossed_narrow = first[len(pending):], first_crossed[len(pending):]
    for halving in range(HALVINGS + 1):
        if halving:
            narrow, crossed_narrow = differences(pending, h / 2)
        kink = crossed | crossed_narrow
        numeric = narrow + (narrow - wide) / 3
        accepted = ~kink & (np.abs(narrow - wide) <= BEND_LIMIT * np.maximum(np.abs(numeric), floors))
        for position in pending[kink]:
            outcome[position] = _KINK
        for position, value in zip(pending[accepted], numeric[accepted]):
            outcome[position] = float(value)
        going = ~kink & ~accepted
        pending, crossed, wide, h, floors = pending[going], crossed[going], narrow[going], h[going] / 2, floors[going]
        if not len(pending):
            break
    return outcome


def _stack(states):
    """One LayerPass of K stacked copies of the batch from the K passes `states` of one layer: their
    outputs, rows and sequences one after another along the sample axis."""
    def join(arrays):
        return None if arrays[0] is None else np.concatenate(arrays)
    first = states[0]
    up = layers.Signal(join([s.up.rows for s in states]), join([s.up.sequence for s in states]), first.up.per_time)
    return layers.LayerPass(first.below, up, join([s.a for s in states]), u=join([s.u for s in states]))


class _Step:
    """The unperturbed forward pass of one step (the engine's, every layer's pass kept), and the
    losses of perturbed parameter sets resuming from the perturbed layer (see the module docstring)."""

    def __init__(self, scenario, stored, x, t, sums="in_order"):
        self.scenario, self.t, self.samples, self.sums = scenario, t, x.shape[0], layers.sum_order(sums)
        self.kinds = [layers.of(layer) for layer in scenario.layers]
        self.values = [[stored[name][l] for name in kind.stored_params] for l, kind in enumerate(self.kinds)]
        self.passes = forward_layers(scenario, self.values, layers.Signal(x, x, t.ndim == 3), sums=self.sums,
                                     slopes=False)
        self.loss = self._reduce(sample_losses(scenario, self.passes[-1], t))[0]
        self.signs = {l: np.sign(u).reshape(-1) for l, u in self._pieces(self.passes, 0).items()}

    def _pieces(self, passes, start):
        """{layer: its pre-activations} of the layers from `start` (`passes`) whose activation has a kink."""
        found = {}
        for l, state in enumerate(passes, start):
            layer = self.scenario.layers[l]
            if activations.get(layer.activation).piecewise:
                found[l] = self.kinds[l].pre_activations(layer, state.u, state.record)
        return found

    def _reduce(self, sample_loss):
        """E of each of the K stacked batches: Σ_s (÷ B for `mean`) in sample order, with the bits of
        reduce_samples on each batch alone (a reduction along contiguous rows)."""
        per_batch = sample_loss.reshape(-1, self.samples)
        total = np.add.reduce(per_batch, axis=1)
        return total / self.samples if self.scenario.reduction == "mean" else total

    def _crossed(self, pieces, copies):
        """Per stacked batch: does any u of a piecewise layer change sign from the unperturbed pass?"""
        crossed = np.zeros(copies, dtype=bool)
        for l, u in pieces.items():
            crossed |= (np.sign(u).reshape(copies, -1) != self.signs[l]).any(axis=1)
        return crossed

    def _resume(self, l, state, copies, own):
        """E and kink flags of `copies` perturbed batches whose layer-l pass is `state` (K stacked
        copies of the batch), the layers above unperturbed; `own` layer l's pieces (_pieces)."""
        passes = [state] + forward_layers(self.scenario, self.values, state.up, l + 1, self.sums, slopes=False)
        t = np.tile(self.t, (copies,) + (1,) * (self.t.ndim - 1))
        pieces = {**self._pieces(passes[1:], l + 1), **own}
        return self._reduce(sample_losses(self.scenario, passes[-1], t)), self._crossed(pieces, copies)

    def _above(self, l, states):
        """E and kink flags of K perturbed batches whose layer-l passes are `states`: one pass of K·B
        rows through the layers above when none of them couples samples, else one pass per batch."""
        owns = [self._pieces([state], l) for state in states]
        if any(kind.couples_samples for kind in self.kinds[l + 1:]):
            results = [self._resume(l, state, 1, own) for state, own in zip(states, owns)]
            return np.array([loss[0] for loss, _ in results]), np.array([crossed[0] for _, crossed in results])
        own = {k: np.concatenate([o[k].reshape(-1) for o in owns]) for k in owns[0]}
        return self._resume(l, _stack(states), len(states), own)

    def losses(self, l, which, flat, values):
        """E and kink flags with parameter `which` of layer l at flat positions `flat` set to
        `values` (one perturbation each), in stacks of at most STACK_CELLS values."""
        kind, previous = self.kinds[l], self.passes[l].below.rows
        size = max(1, STACK_CELLS // (previous.shape[0] * max(self.scenario.widths[l + 1:]) + previous.shape[-1]))
        loss, crossed = np.empty(len(flat)), np.empty(len(flat), dtype=bool)
        for begin in range(0, len(flat), size):
            part = slice(begin, begin + size)
            if kind.weighted:
                loss[part], crossed[part] = self._weighted(l, which, flat[part], values[part])
            else:
                loss[part], crossed[part] = self._each(l, which, flat[part], values[part])
        return loss, crossed

    def _weighted(self, l, which, flat, values):
        """A weighted layer: θ = W[i,j] or b[j] moves only unit j. Its column of u is recomputed by the
        kind's forward for each perturbation (a layer of K units: unit k is column j_k perturbed)."""
        kind, layer, (W, b) = self.kinds[l], self.scenario.layers[l], self.values[l]
        below, u = self.passes[l].below, self.passes[l].u
        if kind.stored_params.index(which) == 0:
            rows, units = np.unravel_index(flat, W.shape)
            columns, biases = W[:, units].copy(), b[units].copy()
            columns[rows, np.arange(len(flat))] = values
        else:
            units = flat
            columns, biases = W[:, units].copy(), np.array(values, dtype=float)
        recomputed = kind.forward(layer, below.rows, columns, biases, sums=self.sums)[0]
        u_stack = np.repeat(u[None], len(flat), axis=0)
        u_stack[np.arange(len(flat)), :, units] = recomputed.T
        if any(above.couples_samples for above in self.kinds[l + 1:]):
            return self._above(l, [kind.forward_pass(layer, below, self.values[l], self.sums, u=u, slopes=False)
                                   for u in u_stack])
        state = kind.forward_pass(layer, below, self.values[l], self.sums, u=u_stack.reshape((-1,) + u.shape[1:]),
                                  slopes=False)
        return self._resume(l, state, len(flat), self._pieces([state], l))

    def _each(self, l, which, flat, values):
        """Any kind: the layer's forward_pass for each perturbed parameter set, the K passes then
        stacked through the layers above."""
        kind, layer = self.kinds[l], self.scenario.layers[l]
        position = kind.stored_params.index(which)
        states = []
        for index, value in zip(flat, values):
            own = list(self.values[l])
            own[position] = own[position].copy()
            own[position].flat[index] = value
            states.append(kind.forward_pass(layer, self.passes[l].below, own, self.sums, slopes=False))
        return self._above(l, states)


def _targets(trace, stored, chosen):
    """Per layer and stored parameter, in the engine's order: (l, which, flat positions) of the
    parameters to check (`chosen` a set of (l, which, flat) or None for all)."""
    found = []
    for l, layer in enumerate(trace.scenario.layers):
        for which in layers.of(layer).stored_params:
            size = stored[which][l].size
            flat = np.arange(size) if chosen is None else np.array(sorted(f for m, w, f in chosen if (m, w) == (l, which)),
                                                                  dtype=int)
            if len(flat):
                found.append((l, which, flat))
    return found


def sample_parameters(trace, count, seed=0):
    """`count` parameters of the trace's net to check, drawn reproducibly from `seed`: every bias
    (the kinds' bias_params: b, bh, β), one weight of every other stored array of every layer (W,
    Wh, γ), then weights drawn uniformly without replacement from the rest. Returns a set of
    (layer, name, flat position); all parameters when `count` reaches their number. InputError
    when `count` is below the biases and one weight per array."""
    rng = np.random.default_rng(seed)
    stored = trace.parameters(0)
    arrays = []
    for l, layer in enumerate(trace.scenario.layers):
        kind = layers.of(layer)
        arrays += [(l, which, stored[which][l].size, which in kind.bias_params) for which in kind.stored_params]
    total = sum(size for _, _, size, _ in arrays)
    if count >= total:
        return {(l, which, f) for l, which, size, _ in arrays for f in range(size)}
    required = {(l, which, f) for l, which, size, bias in arrays if bias for f in range(size)}
    required |= {(l, which, int(rng.integers(size))) for l, which, size, bias in arrays if not bias}
    if count < len(required):
        raise InputError(f"--sample {count}: a sample holds every bias and one weight of every weight array, "
                         f"{len(required)} parameters here (of {total})")
    rest = [(l, which, f) for l, which, size, bias in arrays if not bias for f in range(size)
            if (l, which, f) not in required]
    drawn = rng.choice(len(rest), size=count - len(required), replace=False)
    return required | {rest[k] for k in drawn}


def check(trace, steps=(0,), sample=None, seed=0, progress=None, reference=False):
    """Compare the parameters' batch gradients at each of `steps` with finite differences.

    sample     None: every parameter; N: the N parameters of sample_parameters(trace, N, seed),
               the same at every step
    progress   called with (parameters done, parameters in all) as the check goes
    reference  True: every E(θ ± h) from a full engine.forward_backward pass, one parameter at a time
               (the path before the stacked evaluation; slow, kept as the tests' reference)
    """
    scenario = trace.scenario
    chosen = None if sample is None else sample_parameters(trace, sample, seed)
    checks, skipped, nonfinite, unresolved = [], [], [], []
    done = 0
    with np.errstate(all="ignore"):
        for step in steps:
            params = trace.parameters(step)
            weights, biases = params.pop("W"), params.pop("b")
            extra = params                              # Wh, bh of recurrent layers
            stored = dict(extra, W=weights, b=biases)
            targets = _targets(trace, stored, chosen)
            total = len(steps) * sum(len(flat) for *_, flat in targets)
            ids = trace.samples(step)
            x, t = scenario.inputs[ids], scenario.targets[ids]
            loss, signs = _batch_loss(scenario, weights, biases, x, t, extra, trace.sum_order)
            gradients = [g[step] for name in stored for g in trace._store(f"grad_{name}") if g is not None]
            if not np.isfinite(loss) or not all(np.isfinite(g).all() for g in gradients):
                nonfinite.append(step)
                done += total // len(steps)
                if progress:
                    progress(done, total)
                continue
            evaluation = None if reference else _Step(scenario, stored, x, t, trace.sum_order)
            for l, which, flat in targets:
                kind = layers.of(scenario.layers[l])    # names the parameters: W, b, Wh, bh or gamma, beta
                array, grad = stored[which][l], trace._store(f"grad_{which}")[l][step]
                originals = array.reshape(-1)[flat].astype(float)
                scales = np.maximum(1.0, np.abs(originals))
                floors = np.maximum(1e-3 * abs(loss) / scales, 1e-300)
                for begin in range(0, len(flat), GROUP):
                    part = slice(begin, begin + GROUP)
                    if reference:
                        found = [_numeric_derivative(scenario, weights, biases, x, t, array,
                                                     np.unravel_index(f, array.shape), 1e-4 * scale, signs, floor, extra,
                                                     trace.sum_order)
                                 for f, scale, floor in zip(flat[part], scales[part], floors[part])]
                    else:
                        def evaluate(positions, values):
                            return evaluation.losses(l, which, flat[part][positions], values)
                        found = _numeric_derivatives(evaluate, originals[part], 1e-4 * scales[part], floors[part])
                    for f, floor, numeric in zip(flat[part], floors[part], found):
                        index = np.unravel_index(f, array.shape)
                        name = kind.param_name(which, l + 1, tuple(int(i) for i in index))
                        if numeric is _KINK:
                            skipped.append((step, name))
                        elif numeric is None:
                            unresolved.append((step, name))
                        else:
                            backprop = grad[index]
                            error = abs(backprop - numeric) / max(abs(backprop), abs(numeric), floor)
                            checks.append(Check(step, name, float(backprop), float(numeric), float(error)))
                    done += len(found)
                    if progress:
                        progress(done, total)
    return Report(checks, skipped, nonfinite, unresolved)
