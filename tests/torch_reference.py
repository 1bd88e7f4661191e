"""Independent float64 references computed with PyTorch, for parity tests.

Written from PyTorch's documentation (torch.nn.Linear, LayerNorm, BatchNorm1d, GroupNorm, RNN,
LSTM, GRU, MultiheadAttention, Conv1d, Conv2d, Flatten, torch.nn.functional.
scaled_dot_product_attention, the torch.optim optimisers and schedulers,
torch.nn.utils.clip_grad_norm_/clip_grad_value_), NOT from tracer's engine: the only facts taken
from tracer are its public contract (README.md: the loss definitions, the optimiser and
hyper-parameter names, the parameter names, the weight orientation of a scenario, the trace CSV's
columns; the scenario contract of the attention and convolution kinds).

Weight convention (the one mapping to keep in mind)
----------------------------------------------------
tracer's `W{l}[i,j]` joins unit i of the layer below to unit j of layer l: shape (fan_in, units),
u = a⁽ˡ⁻¹⁾ · W + b. torch.nn.Linear stores `weight` with shape (out_features, in_features) and
computes u = x · weightᵀ + bias. So

    W{l}      = linear.weight.T          linear.weight = W{l}.T
    b{l}      = linear.bias
    gamma{l}  = norm.weight              (LayerNorm / BatchNorm1d, elementwise affine)
    beta{l}   = norm.bias

Every array this module returns is in tracer's orientation, under tracer's names.

Recurrent layers (README's scenario schema), with H units and G gates (rnn 1, gru 3, lstm 4):

    W{l}  = weight_ih_l0.T   shape (features, G·H)     `weights`
    Wh{l} = weight_hh_l0.T   shape (H, G·H)            `recurrent_weights`
    b{l}  = bias_ih_l0       shape (G·H,)              `bias`
    bh{l} = bias_hh_l0       shape (G·H,)              `recurrent_bias`

The gates are stacked in PyTorch's order, one block of H columns each (rows of weight_ih_l0):
lstm (i, f, g, o), gru (r, z, n). The documented equations (h₋₁ = 0, c₋₁ = 0 here):

    rnn   h_t = f(x_t W_ihᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh)           f = tanh | relu (nn.RNN),
                                                                   any elementwise f (elman_forward)
    lstm  i = σ(W_ii x + b_ii + W_hi h + b_hi)    f = σ(W_if x + b_if + W_hf h + b_hf)
          g = tanh(W_ig x + b_ig + W_hg h + b_hg) o = σ(W_io x + b_io + W_ho h + b_ho)
          c_t = f ⊙ c_{t−1} + i ⊙ g,   h_t = o ⊙ tanh(c_t)
    gru   r = σ(W_ir x + b_ir + W_hr h + b_hr)    z = σ(W_iz x + b_iz + W_hz h + b_hz)
          n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),   h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}

Losses (README "Scenario files" / the maths section), per sample with K outputs, then reduced over
the batch by `reduction` = "sum" or "mean" (the mean divides by the number of samples):
half_sse ½Σ(t−y)², sse Σ(t−y)², mse (1/K)Σ(t−y)², bce −Σ[t ln y + (1−t) ln(1−y)] of a sigmoid
output (computed from its logits u, as torch's binary_cross_entropy_with_logits), softmax_ce
−Σ t ln softmax(u) (log_softmax). For per-time-step targets of a recurrent net the per-sample loss
is the SUM over time steps of the per-step losses (README: "the sum over time of the loss at each
time step"; `time_reduction="mean"` divides by T instead).

Optimisers (tracer name → torch.optim, state starting at 0):
    sgd       SGD(lr, weight_decay)
    momentum  SGD(lr, momentum, nesterov, weight_decay)      dampening 0
    adagrad   Adagrad(lr, eps, weight_decay)                  lr_decay 0, initial_accumulator_value 0
    rmsprop   RMSprop(lr, alpha, eps, weight_decay)           momentum 0, centered False
    adam      Adam(lr, betas=(beta1, beta2), eps, weight_decay)   amsgrad False
Schedules: "step" → StepLR(step_size, gamma), "exponential" → ExponentialLR(gamma), stepped once
after every update. Clipping: clip_grad_norm_(trained parameters, clip_norm) then
clip_grad_value_(trained parameters, clip_value), before the optimiser step.

Group norm, attention, pooling and convolution (their scenario contract; see build_modules):

    gamma{l}, beta{l}   = GroupNorm(G, n).weight, .bias     per sample over groups of n/G units
    Wq{l} Wk{l} Wv{l}   (features, heads·d_k)    Q = X·Wq + bq …, head h the columns h·d_k … (h+1)·d_k − 1
    Wo{l}               (heads·d_k, features)    Y = C·Wo + bo (without: Y = C), + X with a residual
    W{l} of conv1d/2d   conv.weight.reshape(units, −1)ᵀ   row c·k + kk, or (c·kh + r)·kw + s
    pool                mean over time, or the last time step (no parameters, still a layer)
"""
from dataclasses import dataclass, field
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DTYPE = torch.float64
# The tensors here are tiny: one thread is about 10× faster than two on the shared 2-core machine
# (thread hand-offs dominate), and the test process uses torch for nothing larger.
torch.set_num_threads(1)

# tracer activation name -> (tensor, params) -> tensor, from torch's own functions.
ACTIVATIONS = {
    "identity": lambda x, p: x,
    "sigmoid": lambda x, p: torch.sigmoid(x),
    "tanh": lambda x, p: torch.tanh(x),
    "relu": lambda x, p: torch.relu(x),
    "leaky_relu": lambda x, p: F.leaky_relu(x, negative_slope=p.get("slope", 0.01)),
    "elu": lambda x, p: F.elu(x, alpha=p.get("alpha", 1.0)),
    "silu": lambda x, p: F.silu(x),
    "gelu": lambda x, p: F.gelu(x, approximate="none"),      # x·Φ(x) with the exact erf
    # softplus ln(1 + eˣ) exactly: torch's default threshold=20 switches to x above 20
    "softplus": lambda x, p: F.softplus(x, beta=1.0, threshold=math.inf),
    "softmax": lambda x, p: torch.softmax(x, dim=-1),
}

# tracer optimiser name -> torch hyper-parameter defaults (README: "PyTorch's update rules").
OPTIMIZER_DEFAULTS = {
    "sgd": {"weight_decay": 0.0},
    "momentum": {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
    "adagrad": {"lr": 0.01, "eps": 1e-10, "weight_decay": 0.0},
    "rmsprop": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0},
    "adam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
}


def tensor(values):
    """A float64 tensor holding a copy of `values` (lists, numpy arrays or tensors): never a view
    of the caller's array, which an optimiser would then update in place."""
    return torch.tensor(np.array(values, dtype=np.float64), dtype=DTYPE)


class Elementwise(nn.Module):
    """An activation as a module: a = f(u), f one of ACTIVATIONS."""

    def __init__(self, name, params=None):
        super().__init__()
        if name not in ACTIVATIONS:
            raise ValueError(f"no torch reference for activation {name!r}")
        self.name, self.params = name, dict(params or {})

    def forward(self, x):
        return ACTIVATIONS[self.name](x, self.params)


@dataclass
class TorchRun:
    """A training run computed by torch, in tracer's names and orientation.

    losses[t]      the batch loss at step t (before its update), t = 0..steps−1
    grads[t]       {name: ∂E/∂θ} of step t's batch loss, before clipping (trained parameters only)
    clipped[t]     the gradients after clipping (equal to grads[t] without clipping)
    params[k]      {name: θ} after k updates, k = 0..steps (params[0] = the initial values)
    outputs[t]     the network's outputs y at step t (before its update)
    """
    losses: list = field(default_factory=list)
    grads: list = field(default_factory=list)
    clipped: list = field(default_factory=list)
    params: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


# --- feed-forward nets ------------------------------------------------------------------------

def spec_from_scenario(raw):
    """The layers_spec of a tracer scenario dict (its "layers" list, explicit weights only).

    A dense layer becomes {"kind": "linear", ...} then {"kind": "activation", ...}; a batchnorm,
    layernorm or groupnorm layer becomes the norm then its activation (default identity); a conv1d
    or conv2d layer its convolution then its activation (which the scenario must name); attention
    and pool layers one entry each (no activation). A `[data] shape = [C, H, W]` puts a "reshape"
    of the flat inputs first. Only the keys of the scenario contract are read (README's schema and
    the attention/convolution contract: heads, key_size, causal, scale, output, residual, mode,
    kernel, stride, padding and the explicit weight keys).
    """
    spec = []
    shape = raw.get("data", {}).get("shape")
    if shape is not None:
        spec.append({"kind": "reshape", "shape": [int(n) for n in shape]})
    for layer in raw["layers"]:
        kind = layer.get("kind", "dense")
        if kind not in _SCENARIO_READERS:
            raise ValueError(f"no torch reference for layer kind {kind!r}")
        spec += _SCENARIO_READERS[kind](layer)
    return spec


def _array(values):
    return np.asarray(values, dtype=np.float64)


def _explicit(layer, key):
    if layer.get("init") != "explicit":
        raise ValueError("the torch reference needs init = \"explicit\" weights")
    return _array(layer[key])


def _activation_of(layer, default):
    params = {k: layer[k] for k in ("slope", "alpha") if k in layer}
    name = layer.get("activation", default)
    if name is None:
        raise ValueError(f"the torch reference needs an explicit activation on a {layer['kind']} layer")
    return {"kind": "activation", "name": name, "params": params}


def _dense_entries(layer):
    weights = _explicit(layer, "weights")
    return [{"kind": "linear", "weights": weights, "bias": _array(layer.get("bias", np.zeros(weights.shape[1]))),
             "train_bias": layer.get("train_bias", True)},
            _activation_of(layer, "sigmoid")]


def _norm_entries(layer):
    entry = {"kind": layer["kind"], "eps": layer.get("eps", 1e-5), "train_bias": layer.get("train_bias", True)}
    if layer["kind"] == "groupnorm":
        entry["groups"] = int(layer["groups"])
    return [entry, _activation_of(layer, "identity")]


def _attention_entries(layer):
    weights = {"Wq": _explicit(layer, "query_weights"), "Wk": _explicit(layer, "key_weights"),
               "Wv": _explicit(layer, "value_weights")}
    output = layer.get("output", True)
    if output:
        weights["Wo"] = _explicit(layer, "output_weights")
    biases = {name: _array(layer.get(key, np.zeros(weights[of].shape[1])))
              for name, key, of in (("bq", "query_bias", "Wq"), ("bk", "key_bias", "Wk"),
                                    ("bv", "value_bias", "Wv"), ("bo", "output_bias", "Wo")) if of in weights}
    return [{"kind": "attention", "heads": int(layer.get("heads", 1)), "key_size": int(layer["key_size"]),
             "causal": bool(layer.get("causal", False)), "scale": layer.get("scale"), "output": bool(output),
             "residual": bool(layer.get("residual", False)), "weights": weights, "biases": biases}]


def _pool_entries(layer):
    return [{"kind": "pool", "mode": layer.get("mode", "mean")}]


def _conv_entries(layer):
    weights = _explicit(layer, "weights")
    return [{"kind": layer["kind"], "kernel": layer["kernel"], "stride": layer.get("stride", 1),
             "padding": layer.get("padding", 0), "weights": weights,
             "bias": _array(layer.get("bias", np.zeros(weights.shape[1]))),
             "train_bias": layer.get("train_bias", True)},
            _activation_of(layer, None)]


_SCENARIO_READERS = {"dense": _dense_entries, "batchnorm": _norm_entries, "layernorm": _norm_entries,
                     "groupnorm": _norm_entries, "attention": _attention_entries, "pool": _pool_entries,
                     "conv1d": _conv_entries, "conv2d": _conv_entries}


def build_modules(layers_spec, fan_in):
    """nn modules of a layers_spec and their parameters under tracer's names.

    fan_in is the shape of one sample: an int (features), (time, features) for sequences or
    (channels, height, width) for images. layers_spec is a list of dicts:
      {"kind": "linear", "weights": (fan_in, units) in tracer's orientation, "bias": (units,),
       "train_bias": True}                                   -> nn.Linear, weight = weightsᵀ; after
                        an image it reads torch's flatten order (channel, row, column) through
                        nn.Flatten; on a sequence it acts at every time step
      {"kind": "layernorm", "eps": 1e-5}                     -> nn.LayerNorm(n, eps, elementwise_affine=True)
      {"kind": "batchnorm", "eps": 1e-5, "affine": True}     -> nn.BatchNorm1d(n, eps, affine), training mode
      {"kind": "groupnorm", "groups": G, "eps": 1e-5}        -> nn.GroupNorm(G, n, eps, affine=True)
      {"kind": "attention", ...}                             -> see attention_module
      {"kind": "pool", "mode": "mean" | "last"}              -> Pool
      {"kind": "conv1d" | "conv2d", ...}                     -> see conv_module
      {"kind": "reshape", "shape": [C, H, W]}                -> nn.Unflatten of the flat inputs (no layer)
      {"kind": "activation", "name": "sigmoid", "params": {"slope": ...}}
    Layers are numbered as tracer numbers them: every entry but an activation or a reshape starts
    the next layer (an activation belongs to the entry before it). Returns (modules, named) with
    named a list of (name, parameter, to_tracer) and to_tracer mapping a torch tensor (the
    parameter or its gradient) to tracer's orientation; a torch parameter that holds several of
    tracer's (nn.MultiheadAttention's in_proj_weight) appears once per name.
    """
    shape = (int(fan_in),) if isinstance(fan_in, (int, np.integer)) else tuple(int(n) for n in fan_in)
    modules, named, layer = [], [], 0
    for entry in layers_spec:
        kind = entry["kind"]
        if kind == "activation":
            modules.append(Elementwise(entry["name"], entry.get("params")))
            continue
        if kind == "reshape":
            if math.prod(entry["shape"]) != math.prod(shape):
                raise ValueError(f"data shape {entry['shape']} for samples of {math.prod(shape)} values")
            modules.append(nn.Unflatten(1, tuple(entry["shape"])))
            shape = tuple(entry["shape"])
            continue
        layer += 1
        if kind not in _BUILDERS:
            raise ValueError(f"unknown layers_spec kind {kind!r}")
        built, built_named, shape = _BUILDERS[kind](entry, shape, layer)
        modules += built
        named += built_named
    return modules, named


def _linear(entry, shape, layer):
    modules = []
    if len(shape) == 3:
        modules.append(nn.Flatten())
        shape = (math.prod(shape),)
    weights = _array(entry["weights"])
    if weights.shape[0] != shape[-1]:
        raise ValueError(f"layer {layer}: weights of shape {weights.shape} after {shape[-1]} units")
    linear = nn.Linear(weights.shape[0], weights.shape[1], dtype=DTYPE)
    with torch.no_grad():
        linear.weight.copy_(tensor(weights.T))
        linear.bias.copy_(tensor(entry.get("bias", np.zeros(weights.shape[1]))))
    linear.bias.requires_grad_(entry.get("train_bias", True))
    named = [(f"W{layer}", linear.weight, _transposed), (f"b{layer}", linear.bias, _as_is)]
    return modules + [linear], named, shape[:-1] + (weights.shape[1],)


def _norm(entry, shape, layer):
    if len(shape) != 1:
        raise ValueError(f"layer {layer}: a {entry['kind']} layer reads samples × units, not {shape}")
    width, eps = shape[0], entry.get("eps", 1e-5)
    if entry["kind"] == "layernorm":
        norm = nn.LayerNorm(width, eps=eps, elementwise_affine=True, dtype=DTYPE)
    elif entry["kind"] == "groupnorm":
        norm = group_norm(entry["groups"], width, eps, entry.get("formula"))
    else:
        norm = nn.BatchNorm1d(width, eps=eps, affine=entry.get("affine", True), dtype=DTYPE)
    named = []
    if norm.weight is not None:
        norm.bias.requires_grad_(entry.get("train_bias", True))
        named = [(f"gamma{layer}", norm.weight, _as_is), (f"beta{layer}", norm.bias, _as_is)]
    return [norm], named, shape


class GroupNormFormula(nn.Module):
    """torch.nn.GroupNorm's documented equation written with tensor operations (its weight and
    bias as nn.GroupNorm's): per sample and group of C/G consecutive units
    y = (x − E[x])/√(Var[x] + eps)·γ + β, Var biased. Where a group holds one unit, x − E[x] is
    exactly 0, so y = β and no gradient passes down, exactly; nn.GroupNorm's fused kernel
    (x·γ·rstd + (β − E[x]·γ·rstd)) leaves rounding noise of |x|·γ·ε/√eps there, which the adaptive
    optimisers amplify (g/(√v + eps) of a 1e-14 noise gradient is 1e-6), and refuses a batch of
    one such sample."""

    def __init__(self, num_groups, num_channels, eps=1e-5):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups, self.eps = num_groups, eps
        self.weight = nn.Parameter(torch.ones(num_channels, dtype=DTYPE))
        self.bias = nn.Parameter(torch.zeros(num_channels, dtype=DTYPE))

    def forward(self, x):
        samples, units = x.shape
        grouped = x.view(samples, self.num_groups, units // self.num_groups)
        centred = grouped - grouped.mean(dim=-1, keepdim=True)
        var = (centred * centred).mean(dim=-1, keepdim=True)
        return (centred / torch.sqrt(var + self.eps)).view(samples, units) * self.weight + self.bias


def group_norm(groups, width, eps=1e-5, formula=None):
    """nn.GroupNorm(groups, width, eps) (affine, float64), or GroupNormFormula where every group
    is a single unit (instance norm of samples × units: see GroupNormFormula for why);
    formula=True or False forces the choice."""
    if formula is None:
        formula = width % groups == 0 and width // groups == 1
    if formula:
        return GroupNormFormula(groups, width, eps)
    return nn.GroupNorm(groups, width, eps=eps, affine=True, dtype=DTYPE)


def _transposed(t):
    return t.detach().numpy().T.copy()


def _as_is(t):
    return t.detach().numpy().copy()


def train_torch(layers_spec, inputs, targets, loss, reduction, optimizer, hyper, steps, *,
                batch=None, clip_norm=None, clip_value=None):
    """Train the feed-forward net of `layers_spec` with torch.optim for `steps` updates.

    inputs (samples × features, samples × time × features, or flat samples × C·H·W with a
    reshape entry first), targets (samples × outputs, or samples × time × outputs after a layer
    that keeps the time axis: the per-sample loss is then the sum over time). `loss`,
    `reduction`, `optimizer` and `hyper` are tracer's names (hyper: lr, momentum, nesterov, alpha,
    beta1, beta2, eps, weight_decay, schedule, step_size, gamma). batch=None is the full batch;
    an integer k takes mini-batches of k in data order, step t using batch t mod ⌈samples/k⌉. If
    the spec ends with an activation, the loss reads its input u as well (bce and softmax_ce are
    computed from u). Returns a TorchRun.
    """
    inputs, targets = tensor(inputs), tensor(targets)
    modules, named = build_modules(layers_spec, tuple(inputs.shape[1:]))
    model = nn.Sequential(*modules).train()
    last = modules[-1] if modules and isinstance(modules[-1], Elementwise) else Elementwise("identity")
    body = nn.Sequential(*modules[:-1]) if isinstance(modules[-1], Elementwise) else model

    def forward(x):
        u = body(x)
        return u, last(u)

    return _train(forward, named, inputs, targets, loss, reduction, optimizer, hyper, steps,
                  batch=batch, clip_norm=clip_norm, clip_value=clip_value)


def per_sample_loss(name, u, y, t):
    """E per sample (shape: the leading axes of y), from tracer's definitions."""
    if name == "half_sse":
        return 0.5 * F.mse_loss(y, t, reduction="none").sum(-1)
    if name == "sse":
        return F.mse_loss(y, t, reduction="none").sum(-1)
    if name == "mse":
        return F.mse_loss(y, t, reduction="none").mean(-1)
    if name == "bce":
        return F.binary_cross_entropy_with_logits(u, t, reduction="none").sum(-1)
    if name == "softmax_ce":
        return -(t * F.log_softmax(u, dim=-1)).sum(-1)
    raise ValueError(f"no torch reference for loss {name!r}")


def make_optimizer(name, parameters, hyper):
    """The torch.optim optimiser of tracer's `name` and hyper-parameters."""
    if name not in OPTIMIZER_DEFAULTS:
        raise ValueError(f"no torch reference for optimizer {name!r}: add its torch.optim mapping")
    h = {**OPTIMIZER_DEFAULTS[name], **hyper}
    common = {"lr": h["lr"], "weight_decay": h["weight_decay"], "foreach": False}
    if name == "sgd":
        return torch.optim.SGD(parameters, **common)
    if name == "momentum":
        return torch.optim.SGD(parameters, momentum=h["momentum"], nesterov=h["nesterov"], dampening=0.0, **common)
    if name == "adagrad":
        return torch.optim.Adagrad(parameters, eps=h["eps"], lr_decay=0.0, initial_accumulator_value=0.0, **common)
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, alpha=h["alpha"], eps=h["eps"], momentum=0.0, centered=False, **common)
    return torch.optim.Adam(parameters, betas=(h["beta1"], h["beta2"]), eps=h["eps"], amsgrad=False, **common)


def make_schedule(optimizer, hyper):
    """The torch.optim.lr_scheduler of tracer's schedule, or None for a constant lr."""
    schedule = hyper.get("schedule", "constant")
    if schedule == "constant":
        return None
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=hyper["step_size"], gamma=hyper["gamma"])
    if schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=hyper["gamma"])
    raise ValueError(f"no torch reference for schedule {schedule!r}")


def _batches(samples, batch):
    if batch is None:
        return [slice(0, samples)]
    return [slice(start, min(start + batch, samples)) for start in range(0, samples, batch)]


def _train(forward, named, inputs, targets, loss, reduction, optimizer, hyper, steps, *,
           batch=None, clip_norm=None, clip_value=None, time_reduction="sum"):
    """The shared loop: forward, loss, backward, record, clip, optimiser step, schedule step."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"unknown reduction {reduction!r}")
    trained = list({id(p): p for _, p, _ in named if p.requires_grad}.values())     # each torch parameter once
    opt = make_optimizer(optimizer, trained, hyper)
    schedule = make_schedule(opt, hyper)
    batches = _batches(inputs.shape[0], batch)
    run = TorchRun(params=[{name: to_tracer(p) for name, p, to_tracer in named}])
    for step in range(steps):
        rows = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        u, y = forward(inputs[rows])
        per_sample = per_sample_loss(loss, u, y, targets[rows])
        if per_sample.dim() == 2:            # per-time-step targets: samples × time
            per_sample = per_sample.sum(1) if time_reduction == "sum" else per_sample.mean(1)
        total = per_sample.sum() if reduction == "sum" else per_sample.mean()
        total.backward()
        run.losses.append(total.item())
        run.outputs.append(y.detach().numpy().copy())
        run.grads.append({name: to_tracer(p.grad) for name, p, to_tracer in named if p.requires_grad})
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(trained, clip_norm, foreach=False)
        if clip_value is not None:
            nn.utils.clip_grad_value_(trained, clip_value, foreach=False)
        run.clipped.append({name: to_tracer(p.grad) for name, p, to_tracer in named if p.requires_grad})
        opt.step()
        if schedule is not None:
            schedule.step()
        run.params.append({name: to_tracer(p) for name, p, to_tracer in named})
    return run


# --- recurrent nets ------------------------------------------------------------------------------

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
GATE_ORDER = {"rnn": ("h",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}


def elman_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, activation="tanh", params=None, h0=None):
    """A hand-written Elman RNN in torch: h_t = f(x_t W_ihᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh).

    x (samples × time × features); weights in torch's orientation (weight_ih (H, features),
    weight_hh (H, H)); h0 defaults to 0. Returns every h_t, samples × time × H.
    """
    samples, time, _ = x.shape
    h = torch.zeros(samples, weight_hh.shape[0], dtype=DTYPE) if h0 is None else h0
    states = []
    for t in range(time):
        h = ACTIVATIONS[activation](x[:, t, :] @ weight_ih.T + bias_ih + h @ weight_hh.T + bias_hh, params or {})
        states.append(h)
    return torch.stack(states, dim=1)


def lstm_forward(x, weight_ih, weight_hh, bias_ih, bias_hh):
    """PyTorch's documented LSTM equations, hand-written, gates stacked (i, f, g, o); h₋₁ = c₋₁ = 0."""
    samples, time, _ = x.shape
    units = weight_hh.shape[1]
    h = torch.zeros(samples, units, dtype=DTYPE)
    c = torch.zeros(samples, units, dtype=DTYPE)
    states = []
    for t in range(time):
        pre = x[:, t, :] @ weight_ih.T + bias_ih + h @ weight_hh.T + bias_hh
        i, f, g, o = (pre[:, k * units:(k + 1) * units] for k in range(4))
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        states.append(h)
    return torch.stack(states, dim=1)


def gru_forward(x, weight_ih, weight_hh, bias_ih, bias_hh):
    """PyTorch's documented GRU equations, hand-written, gates stacked (r, z, n); h₋₁ = 0."""
    samples, time, _ = x.shape
    units = weight_hh.shape[1]
    h = torch.zeros(samples, units, dtype=DTYPE)
    states = []
    for t in range(time):
        gi = x[:, t, :] @ weight_ih.T + bias_ih
        gh = h @ weight_hh.T + bias_hh
        r = torch.sigmoid(gi[:, :units] + gh[:, :units])
        z = torch.sigmoid(gi[:, units:2 * units] + gh[:, units:2 * units])
        n = torch.tanh(gi[:, 2 * units:] + r * gh[:, 2 * units:])
        h = (1 - z) * n + z * h
        states.append(h)
    return torch.stack(states, dim=1)


class ElmanLoop(nn.Module):
    """elman_forward as a module with nn.RNN's parameter names (weight_ih_l0, ...)."""

    def __init__(self, features, units, activation, params=None):
        super().__init__()
        self.weight_ih_l0 = nn.Parameter(torch.zeros(units, features, dtype=DTYPE))
        self.weight_hh_l0 = nn.Parameter(torch.zeros(units, units, dtype=DTYPE))
        self.bias_ih_l0 = nn.Parameter(torch.zeros(units, dtype=DTYPE))
        self.bias_hh_l0 = nn.Parameter(torch.zeros(units, dtype=DTYPE))
        self.activation, self.params = activation, dict(params or {})

    def forward(self, x):
        out = elman_forward(x, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0,
                            self.activation, self.params)
        return out, out[:, -1, :].unsqueeze(0)


def recurrent_module(cell, features, units, activation="tanh", params=None, loop=False):
    """nn.RNN (tanh, relu) / nn.LSTM / nn.GRU, batch_first, float64; ElmanLoop for any other
    activation of an rnn (or with loop=True)."""
    if cell == "rnn":
        if loop or activation not in ("tanh", "relu"):
            return ElmanLoop(features, units, activation, params)
        return nn.RNN(features, units, nonlinearity=activation, batch_first=True, dtype=DTYPE)
    if cell == "lstm":
        return nn.LSTM(features, units, batch_first=True, dtype=DTYPE)
    if cell == "gru":
        return nn.GRU(features, units, batch_first=True, dtype=DTYPE)
    raise ValueError(f"unknown recurrent cell {cell!r}")


def rnn_reference(cell, inputs, targets, weights, recurrent_weights, bias, recurrent_bias,
                  head_weights, head_bias, *, activation="tanh", activation_params=None,
                  output_activation="identity", loss="half_sse", reduction="sum", optimizer="sgd",
                  hyper=None, steps=1, clip_norm=None, clip_value=None, loop=False,
                  time_reduction="sum"):
    """A recurrent layer (layer 1) and a Linear head (layer 2) trained by torch.

    inputs: samples × time × features. targets: samples × outputs (the head reads the last hidden
    state h_{T−1}) or samples × time × outputs (many-to-many: the head reads every h_t and the
    per-sample loss sums — or with time_reduction="mean" averages — over time). Weights in
    tracer's orientation (README's schema): weights (features, G·H) = weight_ih_l0ᵀ,
    recurrent_weights (H, G·H) = weight_hh_l0ᵀ, bias = bias_ih_l0, recurrent_bias = bias_hh_l0,
    head_weights (H, outputs), head_bias (outputs,). h₋₁ = 0 (and c₋₁ = 0).
    hyper defaults to {"lr": 0.1} (with sgd). Returns a TorchRun with names W1, Wh1, b1, bh1 (the
    cell) and W2, b2 (the head).
    """
    inputs, targets = tensor(inputs), tensor(targets)
    weights, recurrent_weights = np.asarray(weights, np.float64), np.asarray(recurrent_weights, np.float64)
    units = recurrent_weights.shape[0]
    if weights.shape != (inputs.shape[2], GATES[cell] * units) or recurrent_weights.shape != (units, GATES[cell] * units):
        raise ValueError(f"{cell}: weights {weights.shape}, recurrent_weights {recurrent_weights.shape} "
                         f"for {inputs.shape[2]} features and {units} units")
    recurrent = recurrent_module(cell, inputs.shape[2], units, activation, activation_params, loop)
    head_weights = np.asarray(head_weights, np.float64)
    head = nn.Linear(units, head_weights.shape[1], dtype=DTYPE)
    with torch.no_grad():
        recurrent.weight_ih_l0.copy_(tensor(weights.T))
        recurrent.weight_hh_l0.copy_(tensor(recurrent_weights.T))
        recurrent.bias_ih_l0.copy_(tensor(bias))
        recurrent.bias_hh_l0.copy_(tensor(recurrent_bias))
        head.weight.copy_(tensor(head_weights.T))
        head.bias.copy_(tensor(head_bias))
    named = [("W1", recurrent.weight_ih_l0, _transposed), ("Wh1", recurrent.weight_hh_l0, _transposed),
             ("b1", recurrent.bias_ih_l0, _as_is), ("bh1", recurrent.bias_hh_l0, _as_is),
             ("W2", head.weight, _transposed), ("b2", head.bias, _as_is)]
    many_to_many = targets.dim() == 3
    out_act = Elementwise(output_activation)

    def forward(x):
        states, _ = recurrent(x)
        u = head(states if many_to_many else states[:, -1, :])
        return u, out_act(u)

    return _train(forward, named, inputs, targets, loss, reduction, optimizer, hyper or {"lr": 0.1}, steps,
                  clip_norm=clip_norm, clip_value=clip_value, time_reduction=time_reduction)


# --- attention, pooling and convolution -----------------------------------------------------------

class SelfAttention(nn.Module):
    """Self-attention over the time axis through F.scaled_dot_product_attention, with parameters
    held in tracer's orientation (x_t a row of features, as in tracer's u = a·W + b):

        Q = X·Wq + bq,  K = X·Wk + bk,  V = X·Wv + bv          (samples × time × heads·d_k)
        head h owns the columns h·d_k … (h+1)·d_k − 1 of Q, K and V (nn.MultiheadAttention's split)
        C_h = softmax(Q_h K_hᵀ · scale + M) V_h               M = −∞ above the diagonal if causal
        C = [C_0 … C_{heads−1}],  Y = C·Wo + bo (output) or Y = C,  then Y + X (residual)

    scale None is torch's default 1/√d_k. `weights` {"Wq", "Wk", "Wv"[, "Wo"]} and `biases`
    {"bq", "bk", "bv"[, "bo"]} are numpy arrays; the parameters are named as those keys.
    """

    def __init__(self, weights, biases, heads, causal, scale, residual):
        super().__init__()
        self.weights = nn.ParameterDict({k: nn.Parameter(tensor(v)) for k, v in weights.items()})
        self.biases = nn.ParameterDict({k: nn.Parameter(tensor(v)) for k, v in biases.items()})
        self.heads, self.causal, self.scale, self.residual = heads, causal, scale, residual

    def _split(self, x, name):
        projected = x @ self.weights[f"W{name}"] + self.biases[f"b{name}"]
        samples, time, width = projected.shape
        return projected.view(samples, time, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x):
        q, k, v = (self._split(x, name) for name in "qkv")
        context = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=self.scale)
        samples, _, time, _ = context.shape
        y = context.transpose(1, 2).reshape(samples, time, -1)
        if "Wo" in self.weights:
            y = y @ self.weights["Wo"] + self.biases["bo"]
        return y + x if self.residual else y


class MultiheadSelfAttention(nn.Module):
    """nn.MultiheadAttention(features, heads, batch_first=True) as self-attention, Y + X if
    residual. Its packed in_proj_weight holds [Wqᵀ; Wkᵀ; Wvᵀ] (rows), in_proj_bias [bq; bk; bv],
    out_proj (weight Woᵀ, bias bo); a causal mask is the boolean matrix that is True above the
    diagonal (True: may not attend, nn.MultiheadAttention's convention)."""

    def __init__(self, weights, biases, heads, causal, residual):
        super().__init__()
        features = weights["Wq"].shape[0]
        self.attention = nn.MultiheadAttention(features, heads, bias=True, batch_first=True, dtype=DTYPE)
        with torch.no_grad():
            self.attention.in_proj_weight.copy_(tensor(np.concatenate([weights[k].T for k in ("Wq", "Wk", "Wv")])))
            self.attention.in_proj_bias.copy_(tensor(np.concatenate([biases[k] for k in ("bq", "bk", "bv")])))
            self.attention.out_proj.weight.copy_(tensor(weights["Wo"].T))
            self.attention.out_proj.bias.copy_(tensor(biases["bo"]))
        self.causal, self.residual = causal, residual

    def forward(self, x):
        time = x.shape[1]
        mask = torch.ones(time, time, dtype=torch.bool).triu(diagonal=1) if self.causal else None
        y, _ = self.attention(x, x, x, attn_mask=mask, need_weights=False)
        return y + x if self.residual else y

    def named(self, layer):
        """(name, parameter, to_tracer) of Wq…bo: slices of the packed in-projection."""
        width = self.attention.embed_dim
        packed, bias = self.attention.in_proj_weight, self.attention.in_proj_bias
        named = []
        for block, letter in enumerate("qkv"):
            rows = slice(block * width, (block + 1) * width)
            named.append((f"W{letter}{layer}", packed, lambda t, rows=rows: t.detach().numpy()[rows].T.copy()))
            named.append((f"b{letter}{layer}", bias, lambda t, rows=rows: t.detach().numpy()[rows].copy()))
        return named + [(f"Wo{layer}", self.attention.out_proj.weight, _transposed),
                        (f"bo{layer}", self.attention.out_proj.bias, _as_is)]


def attention_module(entry, features, layer, multihead=None):
    """The attention layer of a layers_spec entry and its named parameters (Wq{l} … bo{l}).

    entry: heads, key_size (d_k per head), causal, scale (None: 1/√d_k), output, residual,
    weights {"Wq", "Wk", "Wv": features × heads·d_k, "Wo": heads·d_k × features}, biases.
    multihead=None takes nn.MultiheadAttention for heads > 1 wherever it can hold the layer
    (heads·d_k = features, the default scale, an output projection) and SelfAttention otherwise;
    True or False forces the choice.
    """
    weights, biases, heads = entry["weights"], entry["biases"], entry["heads"]
    width = heads * entry["key_size"]
    for name in ("Wq", "Wk", "Wv"):
        if weights[name].shape != (features, width):
            raise ValueError(f"layer {layer}: {name} of shape {weights[name].shape}, not ({features}, {width})")
    if "Wo" in weights and weights["Wo"].shape != (width, features):
        raise ValueError(f"layer {layer}: Wo of shape {weights['Wo'].shape}, not ({width}, {features})")
    fits = width == features and entry["scale"] is None and "Wo" in weights
    if multihead is None:
        multihead = heads > 1 and fits
    if multihead:
        if not fits:
            raise ValueError(f"layer {layer}: nn.MultiheadAttention cannot hold this attention layer")
        module = MultiheadSelfAttention(weights, biases, heads, entry["causal"], entry["residual"])
        return module, module.named(layer)
    module = SelfAttention(weights, biases, heads, entry["causal"], entry["scale"], entry["residual"])
    named = [(f"{name}{layer}", p, _as_is) for name, p in [*module.weights.items(), *module.biases.items()]]
    return module, named


def _attention(entry, shape, layer):
    if len(shape) != 2:
        raise ValueError(f"layer {layer}: attention reads samples × time × features, not {shape}")
    time, features = shape
    module, named = attention_module(entry, features, layer, entry.get("multihead"))
    width = features if entry["output"] else entry["heads"] * entry["key_size"]
    if entry["residual"] and width != features:
        raise ValueError(f"layer {layer}: a residual needs {features} outputs, not {width}")
    return [module], named, (time, width)


class Pool(nn.Module):
    """samples × time × features → samples × features: the mean over time, or the last time step."""

    def __init__(self, mode):
        super().__init__()
        if mode not in ("mean", "last"):
            raise ValueError(f"unknown pool mode {mode!r}")
        self.mode = mode

    def forward(self, x):
        return x.mean(dim=1) if self.mode == "mean" else x[:, -1, :]


def _pool(entry, shape, layer):
    if len(shape) != 2:
        raise ValueError(f"layer {layer}: pool reads samples × time × features, not {shape}")
    return [Pool(entry["mode"])], [], shape[1:]


class SequenceConv(nn.Module):
    """nn.Conv1d over a sequence kept as samples × time × channels: transposed to torch's
    (samples, channels, time) and back, so the output is samples × positions × units."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


def _pair(value):
    return (int(value), int(value)) if np.ndim(value) == 0 else tuple(int(v) for v in value)


def conv_module(entry, shape, layer):
    """nn.Conv1d (shape (time, channels)) or nn.Conv2d (shape (channels, height, width)) of a
    layers_spec entry, its named parameters and its output shape per sample.

    tracer's weights are the im2col columns: W{l} = conv.weight.reshape(units, −1)ᵀ, of shape
    (channels·kernel, units), row i = c·kernel + k (conv1d) or (c·kh + r)·kw + s (conv2d); so
    conv.weight = W{l}ᵀ reshaped to (units, channels, kernel…). b{l} = conv.bias. Output length
    per axis ⌊(n + 2·padding − kernel)/stride⌋ + 1, zero padding (torch's default).
    """
    weights = _array(entry["weights"])
    units = weights.shape[1]
    if entry["kind"] == "conv1d":
        (time, channels), kernel = shape, (int(entry["kernel"]),)
        stride, padding, sizes = (int(entry["stride"]),), (int(entry["padding"]),), (time,)
        conv = nn.Conv1d(channels, units, kernel, stride, padding, dtype=DTYPE)
    else:
        (channels, *sizes), kernel = shape, _pair(entry["kernel"])
        stride, padding = _pair(entry["stride"]), _pair(entry["padding"])
        conv = nn.Conv2d(channels, units, kernel, stride, padding, dtype=DTYPE)
    if weights.shape[0] != channels * math.prod(kernel):
        raise ValueError(f"layer {layer}: weights of shape {weights.shape} for {channels} channels, kernel {kernel}")
    with torch.no_grad():
        conv.weight.copy_(tensor(weights.T.reshape(units, channels, *kernel)))
        conv.bias.copy_(tensor(entry["bias"]))
    conv.bias.requires_grad_(entry.get("train_bias", True))
    positions = tuple((n + 2 * p - k) // s + 1 for n, p, k, s in zip(sizes, padding, kernel, stride))
    named = [(f"W{layer}", conv.weight, _im2col_columns), (f"b{layer}", conv.bias, _as_is)]
    if entry["kind"] == "conv1d":
        return SequenceConv(conv), named, (positions[0], units)
    return conv, named, (units, *positions)


def _im2col_columns(t):
    return t.detach().numpy().reshape(t.shape[0], -1).T.copy()


def _conv(entry, shape, layer):
    expected = 2 if entry["kind"] == "conv1d" else 3
    if len(shape) != expected:
        raise ValueError(f"layer {layer}: {entry['kind']} reads samples of shape of length {expected}, not {shape}")
    module, named, shape = conv_module(entry, shape, layer)
    return [module], named, shape


_BUILDERS = {"linear": _linear, "layernorm": _norm, "batchnorm": _norm, "groupnorm": _norm,
             "attention": _attention, "pool": _pool, "conv1d": _conv, "conv2d": _conv}


# --- reading tracer's trace (README "Trace CSV"), for the parity tests -------------------------------

def split_name(name):
    """tracer's parameter name into (quantity, layer): "Wq1" → ("Wq", 1), "gamma12" → ("gamma", 12)."""
    stem = name.rstrip("0123456789")
    if stem == name or not stem:
        raise ValueError(f"{name!r} is not a parameter name with a layer number")
    return stem, int(name[len(stem):])


def trace_arrays(frame, names, steps):
    """The batch rows (sample and time empty) of a trace frame (`trace.to_frame()`, the CSV's
    columns step, sample, quantity, layer, row, col, value, time) as arrays under tracer's names:
    (params {step: {name: array}} for steps 0..steps, grads {name: array} of step 0, the batch
    losses per step). `names` are the parameters to read ("W1", "Wq1", "gamma2", ...); a vector
    has `col` empty, a matrix row i and col j; a name with no rows is left out."""
    batch = frame[frame["sample"].isna()]
    if "time" in batch.columns:
        batch = batch[batch["time"].isna()]
    wanted = {split_name(name): name for name in names}
    quantities = {q for q, _ in wanted} | {f"grad_{q}" for q, _ in wanted}
    rows = batch[batch["quantity"].isin(quantities) & batch["step"].between(0, steps)]
    params, grads = {step: {} for step in range(steps + 1)}, {}
    for (step, quantity, layer), group in rows.groupby(["step", "quantity", "layer"]):
        stem = quantity.removeprefix("grad_")
        name = wanted.get((stem, int(layer)))
        if name is None or (quantity != stem and step != 0):
            continue
        (grads if quantity != stem else params[int(step)])[name] = _filled(group)
    losses = batch[batch["quantity"] == "loss"].sort_values("step")["value"].to_numpy(dtype=np.float64)
    return params, grads, losses


def _filled(group):
    r = group["row"].to_numpy(dtype=int)
    if group["col"].isna().all():
        values = np.zeros(r.max() + 1)
        values[r] = group["value"].to_numpy(dtype=np.float64)
        return values
    c = group["col"].to_numpy(dtype=int)
    values = np.zeros((r.max() + 1, c.max() + 1))
    values[r, c] = group["value"].to_numpy(dtype=np.float64)
    return values


def relative_difference(engine, reference, floor=1e-12):
    """max |a − b| / max(|a|, |b|, floor·M) over the elements, M the largest magnitude of either
    array: a component that cancels to ~0 in exact arithmetic is compared at the precision of
    its array, not at its own rounding noise. 0 for two arrays of zeros."""
    a, b = np.asarray(engine, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes {a.shape} and {b.shape} differ")
    if a.size == 0:
        return 0.0
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), floor * max(np.abs(a).max(), np.abs(b).max()))
    return float(np.max(np.where(scale > 0, np.abs(a - b) / np.where(scale > 0, scale, 1.0), 0.0)))
