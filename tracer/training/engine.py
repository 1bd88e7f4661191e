"""The scalar-trace engine: Scenario -> Trace, every intermediate kept.

Per step t, for the batch's samples (a⁽⁰⁾ = x):
  u⁽ˡ⁾ = the layer kind's forward of a⁽ˡ⁻¹⁾ (dense: Σ_i a⁽ˡ⁻¹⁾_i W_l[i,j] + b_l[j];
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

The sum order (`run(scenario, sums=...)`, layers.SumOrder) says how the dense layers add their
big sums, u over the fan-in, the error Σ_k W δ over the units above and the batch gradient over
the samples: "in_order" (the default) adds the terms left to right, u and the error from the first
term, the batch gradient from 0.0 in sample order, each addition rounded once (the bits of a
formula =t₀+t₁+…); "matmul" takes numpy matrix products (BLAS's own order, last bits differ). The
Trace records the order (trace.sum_order). Recurrent and normalisation layers, the loss and the
optimiser add in their own fixed order whatever the sum order.
"""
from dataclasses import dataclass, field

import numpy as np

from tracer.maths import losses, optim, procedures
from tracer import layers
from tracer.training import records
from tracer.maths.ieee import propagate_nonfinite
from tracer.training.records import derives_sample_gradients
from tracer.layers import back_sum, weighted_sum  # noqa: F401  (the shared sums, defined with the layer kinds)
from tracer.training.trace import Trace
from tracer.layers.passes import sum_over_time


class Pass(dict):
    """One forward and backward pass over a batch (arrays have the batch on axis 0), keyed as the
    trace's fields read it (records.Field.key): per layer lists u, a, slope, delta, h (f(u) before a
    residual skip), e (∂E/∂a, None for the output layer), grad_W, grad_b (per sample; and grad_Wh,
    grad_bh: one list per stored parameter name of the scenario, None on layers without it, and None
    on the layers whose per-sample gradients the Trace derives: records.derives_sample_gradients),
    records (the layer kinds' own values {key: array}; a recurrent layer's: its cell's full record,
    see tracer/layers/recurrent/); inputs (what each layer read as rows: x, a⁽ˡ⁻¹⁾); output_error (∂E/∂a⁽ᴸ⁾, None for fused losses) and sample_loss. A
    recurrent layer has None for u, h, slope, delta (they are in its record, per time step) and a =
    h_(T−1). Items read as attributes too (result.u)."""

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
    """The parameters of every layer before the first step: {stored name: per layer array or None}
    (W, b for every layer; Wh, bh of recurrent layers), each kind drawing from the seeded generator
    as it needs, layer by layer (see LayerKind.initial_parameters)."""
    rng = np.random.default_rng(scenario.seed)
    params = {name: [None] * len(scenario.layers) for name in records.parameter_names(scenario)}
    for l, (fan_in, layer) in enumerate(zip(scenario.widths[:-1], scenario.layers)):
        kind = layers.of(layer)
        for name, value in zip(kind.stored_params, kind.initial_parameters(layer, fan_in, rng)):
            params[name][l] = value
    return params


def output_delta(loss, y, t, slope):
    """(∂E/∂a⁽ᴸ⁾ per sample or None, δ⁽ᴸ⁾): δ = ∂E/∂a · f'(u), or the loss's fused δ (y − t for bce,
    y·Σt − t for softmax_ce) for which ∂E/∂a is not recorded."""
    return loss.output_error(y, t), loss.output_delta(y, t, slope)


def forward_layers(scenario, values, below, start=0, sums=layers.IN_ORDER, u=None, slopes=True):
    """The forward pass from layer `start` (from 0) over the Signal `below` (its input): one
    LayerPass per layer from `start` up, each kind's forward_pass (layers.protocol). `values` per
    layer the stored parameters in the kind's order; `u`: layer start's u already formed (gradcheck:
    K stacked copies of the batch over one input); `slopes` False: no f'(u) (a forward for the loss
    only)."""
    passes = []
    for l in range(start, len(scenario.layers)):
        layer = scenario.layers[l]
        state = layers.of(layer).forward_pass(layer, below, values[l], sums, u=u if l == start else None, slopes=slopes)
        passes.append(state)
        below = state.up
    return passes


def sample_losses(scenario, top, t):
    """The per-sample losses from the output layer's pass `top` for targets t (B × outputs, or B ×
    time × outputs: the loss of every (sample, time) row, Σ over time left to right from t = 0)."""
    loss = losses.LOSSES[scenario.loss]
    per_time = t.ndim == 3
    rows_t = t.reshape(-1, t.shape[-1]) if per_time else t
    sample_loss = propagate_nonfinite(loss.value(top.u, top.a, rows_t)[:, None], top.u, top.a, axis=-1)[:, 0]
    if per_time:
        sample_loss = sum_over_time(sample_loss.reshape(t.shape[:2]))
    return sample_loss


def forward_backward(scenario, weights, biases, x, t, extra=None, sums=layers.IN_ORDER):
    """Run one pass over the samples x (B × n_in, or B × time × features for sequences) with targets
    t; return every intermediate. `extra` {name: per layer array or None}: the stored parameters
    beyond W and b (Wh, bh of recurrent layers); `sums` the sum order (a name or layers.SumOrder).

    forward: forward_layers, each kind's forward_pass (u, h = f(u), a = combine; a recurrent
      layer runs its cell through time and hands up its hidden states)
    backward: δ⁽ᴸ⁾ from the loss; per layer from the top, the kind's backward_pass given the error
      arriving from above (e⁽ˡ⁾, or ∂E/∂h_t through time from a recurrent layer above): δ = f'(u)·e,
      the kind's backward records, and the error it passes down
    gradients: the kind's sample_gradients for the layers that record them (the others derive
      them: batch_gradients gives the batch's). With targets per time step (t B × time × outputs)
      the layers above the recurrent ones run on every (sample, time) row and give back per-sample
      arrays (sample, time, unit), their gradients summed over time."""
    sums = layers.sum_order(sums)
    kinds = [layers.of(layer) for layer in scenario.layers]
    params = {"W": weights, "b": biases, **(extra or {})}
    values = [[params[name][l] for name in kind.stored_params] for l, kind in enumerate(kinds)]
    per_time = t.ndim == 3
    passes = forward_layers(scenario, values, layers.Signal(x, x, per_time), sums=sums)
    top = passes[-1]
    sample_loss = sample_losses(scenario, top, t)
    rows_t = t.reshape(-1, t.shape[-1]) if per_time else t
    output_error, top.delta = output_delta(losses.LOSSES[scenario.loss], top.a, rows_t, top.slope)
    arriving = None
    for index in range(len(kinds) - 1, -1, -1):
        arriving = kinds[index].backward_pass(scenario.layers[index], passes[index], arriving, values[index], sums,
                                              down=index > 0)
    steps = t.shape[:2] if per_time else None
    grads = {name: [None] * len(kinds) for name in params}
    for l, (layer, kind, state) in enumerate(zip(scenario.layers, kinds, passes)):
        if derives_sample_gradients(scenario, kind):
            continue                 # derived by the Trace when read; batch_gradients sums them blockwise
        for name, g in zip(kind.stored_params, kind.sample_gradients(layer, state, steps)):
            grads[name][l] = g
    for layer, kind, state in zip(scenario.layers, kinds, passes):
        kind.finish_pass(layer, state, steps)
    if per_time and output_error is not None:
        output_error = output_error.reshape(t.shape)
    stores = {name: [getattr(state, name) for state in passes] for name in ("u", "a", "slope", "delta", "h", "e")}
    return Pass(**stores, output_error=output_error, sample_loss=sample_loss,
                records=[state.record for state in passes], inputs=[state.below.rows for state in passes],
                **{f"grad_{name}": g for name, g in grads.items()})


reduce_samples = procedures.reduce_samples   # Σ_s, or Σ_s / B for `mean` (with its Excel form there)


def batch_gradients(scenario, result, x, sums=layers.IN_ORDER):
    """The batch gradients of a pass over the samples x: {name: per layer array or None} (W, b; Wh,
    bh of recurrent layers), each Σ_s (or Σ_s / B for `mean`) of the per-sample gradients in sample
    order. For the layers that derive their per-sample gradients (records.derives_sample_gradients)
    the kind's batch_gradients forms W's and b's from a⁽ˡ⁻¹⁾ and δ (the per-sample products never all
    held at once), in the sum order `sums` (a name or layers.SumOrder); the others' recorded
    per-sample arrays are reduced."""
    sums = layers.sum_order(sums)
    grads = {name: [None] * len(scenario.layers) for name in records.parameter_names(scenario)}
    for l, (layer, record, below, delta) in enumerate(zip(scenario.layers, result.records, result.inputs,
                                                          result.delta)):
        kind = layers.of(layer)
        if derives_sample_gradients(scenario, kind):
            grads["W"][l], grads["b"][l] = kind.batch_gradients(layer, record, below, delta, scenario.reduction, sums=sums)
            continue
        for name in kind.stored_params:
            grads[name][l] = reduce_samples(result[f"grad_{name}"][l], scenario.reduction)
    return grads


def clip(scenario, grads, trace, step):
    """Gradient clipping before the update, as PyTorch does it (procedures.clip_gradients: clip_norm's
    factor c = min(1, clip_norm / (‖g‖ + 1e-6)), then clip_value's clamp) over every parameter, layer
    by layer in each kind's order (W, b; W, b, Wh, bh); ‖g‖ and c are recorded per step.
    `grads` {name: per layer array or None}; returns the clipped gradients in the same form."""
    order = [(name, l) for l, layer in enumerate(scenario.layers) for name in layers.of(layer).stored_params]
    trained = [scenario.layers[l].train_bias or name not in layers.of(scenario.layers[l]).bias_params for name, l in order]
    clipped, norm, factor = procedures.clip_gradients([grads[name][l] for name, l in order], trained,
                                                      scenario.clip_norm, scenario.clip_value)
    if norm is not None:
        trace.grad_norm[step], trace.clip_factor[step] = norm, factor
    used = {name: list(values) for name, values in grads.items()}
    for (name, l), g in zip(order, clipped):
        used[name][l] = g
    return used


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


def run(scenario, sums="in_order"):
    """Train for scenario.steps steps and return the full Trace. `sums`: the sum order of the dense
    layers' sums, "in_order" (left to right, a spreadsheet formula's bits) or "matmul" (numpy matrix
    products), see the module docstring; the Trace records it (trace.sum_order)."""
    sums = layers.sum_order(sums)
    params = initial_parameters(scenario)
    optimizer = optim.OPTIMIZERS[scenario.optimizer]
    trace = Trace.allocate(scenario, batch_schedule(scenario), sum_order=sums.name)
    recorder = Recorder()
    with np.errstate(all="call", call=recorder):
        for step in range(scenario.steps):
            recorder.step = step
            ids = trace.samples(step)
            extra = {name: values for name, values in params.items() if name not in ("W", "b")}
            trace.set_parameters(step, params["W"], params["b"], extra)
            x = scenario.inputs[ids]
            result = forward_backward(scenario, params["W"], params["b"], x, scenario.targets[ids], extra, sums)
            grads = batch_gradients(scenario, result, x, sums)
            used = clip(scenario, grads, trace, step)
            hyper = dict(scenario.optimizer_params, lr=procedures.learning_rate(scenario.optimizer_params, step))
            trace.lr[step] = hyper["lr"]
            updates = {name: [None] * len(scenario.layers) for name in params}
            for l, layer in enumerate(scenario.layers):
                kind = layers.of(layer)
                for name in kind.stored_params:
                    if name in kind.bias_params and not layer.train_bias:
                        updates[name][l] = np.zeros_like(used[name][l])
                        continue
                    update, state = optimizer.step(used[name][l], params[name][l], trace.state_before(name, l, step),
                                                   hyper, step + 1)
                    trace.record_state(name, l, step, state)
                    updates[name][l] = update
            loss = reduce_samples(result.sample_loss, scenario.reduction)
            totals = {f"{what}_{name}": values[name] for name in params for what, values in (("grad", grads), ("update", updates))}
            trace.record(step, result, dict(totals, loss=loss))
            params = {name: [None if p is None else p - d for p, d in zip(values, updates[name])]
                      for name, values in params.items()}
        extra = {name: values for name, values in params.items() if name not in ("W", "b")}
        trace.set_parameters(scenario.steps, params["W"], params["b"], extra)
    trace.warnings = recorder.events
    return trace
