"""The scalar-trace engine: Scenario -> Trace, every intermediate kept.

Per step t, for the batch's samples (a⁽⁰⁾ = x):
  u⁽ˡ⁾_j = Σ_i a⁽ˡ⁻¹⁾_i W_l[i,j] + b_l[j]      (summed left to right, as a spreadsheet does)
  h⁽ˡ⁾_j = f_l(u⁽ˡ⁾_j),  slope⁽ˡ⁾_j = f_l'(u⁽ˡ⁾_j)
  a⁽ˡ⁾_j = h⁽ˡ⁾_j, or h⁽ˡ⁾_j + a⁽ˡ⁻¹⁾_j for a residual layer
  δ⁽ᴸ⁾_k = ∂E/∂a⁽ᴸ⁾_k · slope⁽ᴸ⁾_k             (the loss's output_delta: or its fused δ, y − t for bce, y·Σt − t for softmax_ce)
  e⁽ˡ⁾_j = Σ_k W_{l+1}[j,k] δ⁽ˡ⁺¹⁾_k (+ e⁽ˡ⁺¹⁾_j when layer l+1 is residual)   the error ∂E/∂a⁽ˡ⁾_j
  δ⁽ˡ⁾_j = slope⁽ˡ⁾_j · e⁽ˡ⁾_j
  ∂E/∂W_l[i,j] = a⁽ˡ⁻¹⁾_i δ⁽ˡ⁾_j,  ∂E/∂b_l[j] = δ⁽ˡ⁾_j       (per sample)
  g = Σ_s (or mean_s) of the per-sample gradients;  Δθ = optimiser(g);  θ ← θ − Δθ
Overflow never raises: inf/NaN propagate as IEEE arithmetic gives them, and a non-finite
input poisons every output that reads it (see ieee.py); numpy's warnings are recorded.
"""
from dataclasses import dataclass, field

import numpy as np

from . import activations, init as inits, losses, optim, procedures
from .ieee import propagate_nonfinite
from .trace import Trace


@dataclass
class Pass:
    """One forward and backward pass over a batch (arrays have the batch on axis 0)."""

    u: list
    a: list
    slope: list
    delta: list
    h: list                           # f(u) before a residual skip is added (= a otherwise)
    error: list                       # e = ∂E/∂a per hidden layer (None for the output layer)
    output_error: np.ndarray | None   # ∂E/∂a⁽ᴸ⁾ per sample, None for fused losses
    sample_loss: np.ndarray
    grad_W: list                      # per-sample (B, fan_in, units)
    grad_b: list                      # per-sample (B, units)
    norm: dict = field(default_factory=dict)  # batchnorm layer index -> BatchNorm


@dataclass
class BatchNorm:
    """One batch-normalisation layer's statistics and backward terms for a batch (training mode).

    μ = Σ_s x_s / B,  σ² = Σ_s (x_s − μ)² / B (biased),  x̂ = (x − μ)/√(σ² + eps),  u = γ·x̂ + β
    backward, with δ = ∂E/∂u (per sample, relative to the summed loss):
      ∂E/∂γ = Σ_s δ·x̂,  ∂E/∂β = Σ_s δ,  dx̂ = δ·γ,  m1 = Σ_s dx̂ / B,  m2 = Σ_s dx̂·x̂ / B
      ∂E/∂x = (dx̂ − m1 − x̂·m2) / √(σ² + eps)        (the error arriving at the layer below)
    """

    mean: np.ndarray
    var: np.ndarray
    xhat: np.ndarray
    dxhat: np.ndarray | None = None
    m1: np.ndarray | None = None
    m2: np.ndarray | None = None
    dx: np.ndarray | None = None

    @classmethod
    def forward(cls, x, eps):
        n = x.shape[0]
        mean = np.sum(x, axis=0) / n
        centred = x - mean
        var = np.sum(centred * centred, axis=0) / n
        # σ² = inf gives x̂ = x/√inf = 0 in IEEE arithmetic, an error in a spreadsheet (whose x̂ reads σ²)
        return cls(mean, var, propagate_nonfinite(centred / np.sqrt(var + eps), var))

    def backward(self, delta, gamma, eps):
        n = delta.shape[0]
        self.dxhat = delta * gamma
        self.m1 = np.sum(self.dxhat, axis=0) / n
        self.m2 = np.sum(self.dxhat * self.xhat, axis=0) / n
        self.dx = (self.dxhat - self.m1 - self.xhat * self.m2) / np.sqrt(self.var + eps)


@dataclass
class Recorder:
    """Collects numpy floating-point warnings (overflow, invalid, ...) per step."""

    step: int = 0
    events: list = field(default_factory=list)

    def __call__(self, kind, flag):
        if not self.events or self.events[-1] != (self.step, kind):
            self.events.append((self.step, kind))


def initial_parameters(scenario):
    """Draw W_l (fan_in × units) and b_l (units) for every layer, in order, from the seed."""
    rng = np.random.default_rng(scenario.seed)
    weights, biases = [], []
    for fan_in, layer in zip(scenario.widths[:-1], scenario.layers):
        if layer.kind == "batchnorm":   # γ = 1, β = 0: no draw from the seed
            weights.append(np.ones((1, layer.units)))
            biases.append(np.zeros(layer.units))
            continue
        if layer.init == "explicit":
            weights.append(np.array(layer.weights, dtype=float))
        else:
            sampler = inits.INITS[layer.init][1]
            weights.append(np.asarray(sampler(rng, (fan_in, layer.units), fan_in, layer.units, layer.init_params), dtype=float))
        if layer.bias_init == "explicit":
            biases.append(np.array(layer.bias, dtype=float))
        else:
            sampler = inits.INITS[layer.bias_init][1]
            biases.append(np.asarray(sampler(rng, (layer.units,), fan_in, layer.units, layer.bias_params), dtype=float))
    return weights, biases


def weighted_sum(a, W, b):
    """u_j = Σ_i a_i W[i,j] + b_j, summed left to right for every sample row of `a`."""
    total = a[:, 0:1] * W[0]
    for i in range(1, W.shape[0]):
        total = total + a[:, i:i + 1] * W[i]
    return total + b


def back_sum(delta_next, W_next):
    """Σ_k W_next[j,k] δ_k, summed left to right over k, for every sample row."""
    total = delta_next[:, 0:1] * W_next[:, 0]
    for k in range(1, W_next.shape[1]):
        total = total + delta_next[:, k:k + 1] * W_next[:, k]
    return total


def forward_backward(scenario, weights, biases, x, t):
    """Run one pass over the samples x (B × n_in) with targets t; return every intermediate."""
    loss = losses.LOSSES[scenario.loss]
    us, hs, acts, slopes, norm = [], [], [], [], {}
    previous = x
    for index, (layer, W, b) in enumerate(zip(scenario.layers, weights, biases)):
        definition = activations.get(layer.activation)
        axis = None if definition.elementwise else -1
        if layer.kind == "batchnorm":
            norm[index] = BatchNorm.forward(previous, layer.eps)
            u = W[0] * norm[index].xhat + b
        else:
            u = weighted_sum(previous, W, b)
        h = propagate_nonfinite(definition.forward(u, layer.activation_params), u, axis=axis)
        slope = propagate_nonfinite(definition.slope(u, h, layer.activation_params), u, h)
        a = h + previous if layer.residual else h
        us.append(u), hs.append(h), acts.append(a), slopes.append(slope)
        previous = a
    y, u_out = acts[-1], us[-1]
    sample_loss = propagate_nonfinite(loss.value(u_out, y, t)[:, None], u_out, y, axis=-1)[:, 0]
    output_error = loss.output_error(y, t)        # None when the loss owns δ⁽ᴸ⁾
    delta = loss.output_delta(y, t, slopes[-1])
    last = len(scenario.layers) - 1
    if last in norm:
        norm[last].backward(delta, weights[last][0], scenario.layers[last].eps)
    deltas, errors = [delta], [None]
    for index in range(last - 1, -1, -1):
        above = scenario.layers[index + 1]
        if above.kind == "batchnorm":
            error = norm[index + 1].dx
        else:
            error = back_sum(deltas[0], weights[index + 1])
            if above.residual:
                error = error + errors[0]
        delta = slopes[index] * error
        if index in norm:
            norm[index].backward(delta, weights[index][0], scenario.layers[index].eps)
        deltas.insert(0, delta)
        errors.insert(0, error)
    inputs = [x] + acts[:-1]
    grad_W = [(d * norm[i].xhat)[:, None, :] if i in norm else below[:, :, None] * d[:, None, :]
              for i, (below, d) in enumerate(zip(inputs, deltas))]
    return Pass(us, acts, slopes, deltas, hs, errors, output_error, sample_loss, grad_W, list(deltas), norm)


reduce_samples = procedures.reduce_samples   # Σ_s, or Σ_s / B for `mean` (with its Excel form there)


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
            result = forward_backward(scenario, weights, biases, scenario.inputs[ids], scenario.targets[ids])
            grads_W = [reduce_samples(g, scenario.reduction) for g in result.grad_W]
            grads_b = [reduce_samples(g, scenario.reduction) for g in result.grad_b]
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
            trace.record(step, result, grads_W, grads_b, updates_W, updates_b, loss)
            weights = [W - d for W, d in zip(weights, updates_W)]
            biases = [b - d for b, d in zip(biases, updates_b)]
        trace.set_parameters(scenario.steps, weights, biases)
    trace.warnings = recorder.events
    return trace
