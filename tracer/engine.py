"""The scalar-trace engine: Scenario -> Trace, every intermediate kept.

Per step t, for the batch's samples (a⁽⁰⁾ = x):
  u⁽ˡ⁾ = the layer kind's forward of a⁽ˡ⁻¹⁾ (dense: Σ_i a⁽ˡ⁻¹⁾_i W_l[i,j] + b_l[j], left to right;
         batchnorm/layernorm: γ·x̂ + β; see tracer/layers/)
  h⁽ˡ⁾_j = f_l(u⁽ˡ⁾_j),  slope⁽ˡ⁾_j = f_l'(u⁽ˡ⁾_j)
  a⁽ˡ⁾_j = the kind's combine: h⁽ˡ⁾_j, or h⁽ˡ⁾_j + a⁽ˡ⁻¹⁾_j for a residual dense layer
  δ⁽ᴸ⁾_k = ∂E/∂a⁽ᴸ⁾_k · slope⁽ᴸ⁾_k             (the loss's output_delta: or its fused δ, y − t for bce, y·Σt − t for softmax_ce)
  e⁽ˡ⁾_j = the error the kind of layer l+1 passes down, ∂E/∂a⁽ˡ⁾_j
           (dense: Σ_k W_{l+1}[j,k] δ⁽ˡ⁺¹⁾_k (+ e⁽ˡ⁺¹⁾_j when layer l+1 is residual))
  δ⁽ˡ⁾_j = slope⁽ˡ⁾_j · e⁽ˡ⁾_j
  ∂E/∂W_l, ∂E/∂b_l per sample by the kind (dense: a⁽ˡ⁻¹⁾_i δ⁽ˡ⁾_j and δ⁽ˡ⁾_j)
  g = Σ_s (or mean_s) of the per-sample gradients, added in sample order;  Δθ = optimiser(g);  θ ← θ − Δθ
The per-sample gradients follow from a⁽ˡ⁻¹⁾ (x̂) and δ: for the kinds that say so
(LayerKind.derives_sample_gradients: dense, batchnorm, layernorm) the engine adds their products
into g without keeping them and the Trace derives them when asked (bit for bit the same products).
Overflow never raises: inf/NaN propagate as IEEE arithmetic gives them, and a non-finite
input poisons every output that reads it (see ieee.py); numpy's warnings are recorded.
"""
from dataclasses import dataclass, field

import numpy as np

from . import activations, layers, losses, optim, procedures
from .ieee import propagate_nonfinite
from .layers import back_sum, weighted_sum  # noqa: F401  (the shared sums, defined with the layer kinds)
from .trace import Trace


class Pass(dict):
    """One forward and backward pass over a batch (arrays have the batch on axis 0), keyed as the
    trace's fields read it (records.Field.key): per layer lists u, a, slope, delta, h (f(u) before a
    residual skip), e (∂E/∂a, None for the output layer), grad_W, grad_b (per sample; None for the
    kinds whose per-sample gradients the Trace derives), records (the layer kinds' own values
    {key: array}); output_error (∂E/∂a⁽ᴸ⁾, None for fused losses) and sample_loss. Items read as
    attributes too (result.u)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class Recorder:
    """Collects numpy floating-point warnings (overflow, invalid, ...) per step."""

    step: int = 0
    events: list = field(default_factory=list)

    def __call__(self, kind, flag):
        if not self.events or self.events[-1] != (self.step, kind):
            self.events.append((self.step, kind))


def initial_parameters(scenario):
    """The parameters W_l, b_l of every layer before the first step, in layer order, each kind drawing
    from the seeded generator as it needs (see LayerKind.initial_parameters)."""
    rng = np.random.default_rng(scenario.seed)
    weights, biases = [], []
    for fan_in, layer in zip(scenario.widths[:-1], scenario.layers):
        W, b = layers.of(layer).initial_parameters(layer, fan_in, rng)
        weights.append(W)
        biases.append(b)
    return weights, biases


def output_delta(loss, y, t, slope):
    """(∂E/∂a⁽ᴸ⁾ per sample or None, δ⁽ᴸ⁾): δ = ∂E/∂a · f'(u), or the loss's fused δ (y − t for bce,
    y·Σt − t for softmax_ce) for which ∂E/∂a is not recorded."""
    return loss.output_error(y, t), loss.output_delta(y, t, slope)


def forward_backward(scenario, weights, biases, x, t):
    """Run one pass over the samples x (B × n_in) with targets t; return every intermediate.

    forward, per layer: u, record = kind.forward; h = f(u); a = kind.combine(h, a⁽ˡ⁻¹⁾)
    backward: δ⁽ᴸ⁾ from the loss; per layer from the top: kind.backward (its own records),
    e⁽ˡ⁻¹⁾ = kind.error_down, δ⁽ˡ⁻¹⁾ = f'(u⁽ˡ⁻¹⁾)·e⁽ˡ⁻¹⁾; then per-sample gradients by kind.gradients
    for the kinds that record them (batch_gradients gives the batch's)."""
    loss = losses.LOSSES[scenario.loss]
    kinds = [layers.of(layer) for layer in scenario.layers]
    us, hs, acts, slopes, records = [], [], [], [], []
    previous = x
    for layer, kind, W, b in zip(scenario.layers, kinds, weights, biases):
        definition = activations.get(layer.activation)
        axis = None if definition.elementwise else -1
        u, record = kind.forward(layer, previous, W, b)
        h = propagate_nonfinite(definition.forward(u, layer.activation_params), u, axis=axis)
        slope = propagate_nonfinite(definition.slope(u, h, layer.activation_params), u, h)
        a = kind.combine(layer, h, previous)
        us.append(u), hs.append(h), acts.append(a), slopes.append(slope), records.append(record)
        previous = a
    y, u_out = acts[-1], us[-1]
    sample_loss = propagate_nonfinite(loss.value(u_out, y, t)[:, None], u_out, y, axis=-1)[:, 0]
    output_error, delta = output_delta(loss, y, t, slopes[-1])
    last = len(scenario.layers) - 1
    deltas, errors = [None] * last + [delta], [None] * (last + 1)
    for index in range(last, -1, -1):
        layer, kind = scenario.layers[index], kinds[index]
        kind.backward(layer, records[index], deltas[index], weights[index])
        if index:
            errors[index - 1] = kind.error_down(layer, records[index], deltas[index], weights[index], errors[index])
            deltas[index - 1] = slopes[index - 1] * errors[index - 1]
    inputs = [x] + acts[:-1]
    grads = [(None, None) if kind.derives_sample_gradients else kind.gradients(layer, record, below, d)
             for layer, kind, record, below, d in zip(scenario.layers, kinds, records, inputs, deltas)]
    return Pass(u=us, a=acts, slope=slopes, delta=deltas, h=hs, e=errors, output_error=output_error,
                sample_loss=sample_loss, grad_W=[g for g, _ in grads], grad_b=[g for _, g in grads], records=records)


reduce_samples = procedures.reduce_samples   # Σ_s, or Σ_s / B for `mean` (with its Excel form there)


def batch_gradients(scenario, result, x):
    """The batch gradients of a pass over the samples x, per layer: (grads_W, grads_b), each Σ_s (or
    Σ_s / B for `mean`) of the per-sample gradients in sample order, by the kinds' batch_gradients
    (from a⁽ˡ⁻¹⁾ and δ, the per-sample products never all held at once)."""
    pairs = []
    for layer, record, below, delta, per_sample_W, per_sample_b in zip(
            scenario.layers, result.records, [x] + result.a[:-1], result.delta, result.grad_W, result.grad_b):
        if per_sample_W is None:
            pairs.append(layers.of(layer).batch_gradients(layer, record, below, delta, scenario.reduction))
        else:    # a kind that records its per-sample gradients: they are at hand
            pairs.append((reduce_samples(per_sample_W, scenario.reduction), reduce_samples(per_sample_b, scenario.reduction)))
    return [w for w, _ in pairs], [b for _, b in pairs]


def clip(scenario, grads_W, grads_b, trace, step):
    """Gradient clipping before the update, as PyTorch does it (procedures.clip: clip_norm's factor
    c = min(1, clip_norm / (‖g‖ + 1e-6)), then clip_value's clamp); ‖g‖ and c are recorded per step."""
    grads_W, grads_b, norm, factor = procedures.clip(grads_W, grads_b, [layer.train_bias for layer in scenario.layers],
                                                     scenario.clip_norm, scenario.clip_value)
    if norm is not None:
        trace.grad_norm[step], trace.clip_factor[step] = norm, factor
    return grads_W, grads_b


def batch_schedule(scenario):
    """Sample ids per step, shape (steps, B), padded with -1 where the last batch is short."""
    n, size = scenario.inputs.shape[0], scenario.batch_size
    per_epoch = -(-n // size)
    rng = np.random.default_rng([scenario.seed, 1])
    ids = np.full((scenario.steps, size), -1, dtype=int)
    order = np.arange(n)
    for step in range(scenario.steps):
        position = step % per_epoch
        if position == 0 and scenario.shuffle:
            order = rng.permutation(n)
        chosen = order[position * size:(position + 1) * size]
        ids[step, :len(chosen)] = chosen
    return ids


def run(scenario):
    """Train for scenario.steps steps and return the full Trace."""
    weights, biases = initial_parameters(scenario)
    optimizer = optim.OPTIMIZERS[scenario.optimizer]
    trace = Trace.allocate(scenario, batch_schedule(scenario))
    recorder = Recorder()
    with np.errstate(all="call", call=recorder):
        for step in range(scenario.steps):
            recorder.step = step
            ids = trace.samples(step)
            trace.set_parameters(step, weights, biases)
            x = scenario.inputs[ids]
            result = forward_backward(scenario, weights, biases, x, scenario.targets[ids])
            grads_W, grads_b = batch_gradients(scenario, result, x)
            used_W, used_b = clip(scenario, grads_W, grads_b, trace, step)
            hyper = dict(scenario.optimizer_params, lr=procedures.learning_rate(scenario.optimizer_params, step))
            trace.lr[step] = hyper["lr"]
            updates = {"W": [], "b": []}
            for l, layer in enumerate(scenario.layers):
                for kind, grads, params in (("W", used_W, weights), ("b", used_b, biases)):
                    if kind == "b" and not layer.train_bias:
                        updates[kind].append(np.zeros_like(grads[l]))
                        continue
                    update, state = optimizer.step(grads[l], params[l], trace.state_before(kind, l, step), hyper, step + 1)
                    trace.record_state(kind, l, step, state)
                    updates[kind].append(update)
            updates_W, updates_b = updates["W"], updates["b"]
            loss = reduce_samples(result.sample_loss, scenario.reduction)
            trace.record(step, result, dict(grad_W=grads_W, grad_b=grads_b, update_W=updates_W, update_b=updates_b, loss=loss))
            weights = [W - d for W, d in zip(weights, updates_W)]
            biases = [b - d for b, d in zip(biases, updates_b)]
        trace.set_parameters(scenario.steps, weights, biases)
    trace.warnings = recorder.events
    return trace
