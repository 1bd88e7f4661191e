"""Independent float64 references computed with PyTorch, for parity tests (issues 11 and 12).

Written from PyTorch's documentation (torch.nn.Linear, LayerNorm, BatchNorm1d, RNN, LSTM, GRU,
the torch.optim optimisers and schedulers, torch.nn.utils.clip_grad_norm_/clip_grad_value_),
NOT from tracer's engine: the only facts taken from tracer are its public contract (README.md:
the loss definitions, the optimiser and hyper-parameter names, the parameter names, the weight
orientation of a scenario).

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

Recurrent layers (issue 12's scenario contract), with H units and G gates (rnn 1, gru 3, lstm 4):

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
is the SUM over time steps of the per-step losses (an assumption: issue 12 does not define it;
`time_reduction="mean"` divides by T instead).

Optimisers (tracer name → torch.optim, state starting at 0):
    sgd       SGD(lr, weight_decay)
    momentum  SGD(lr, momentum, nesterov, weight_decay)      dampening 0
    adagrad   Adagrad(lr, eps, weight_decay)                  lr_decay 0, initial_accumulator_value 0
    rmsprop   RMSprop(lr, alpha, eps, weight_decay)           momentum 0, centered False
    adam      Adam(lr, betas=(beta1, beta2), eps, weight_decay)   amsgrad False
Schedules: "step" → StepLR(step_size, gamma), "exponential" → ExponentialLR(gamma), stepped once
after every update. Clipping: clip_grad_norm_(trained parameters, clip_norm) then
clip_grad_value_(trained parameters, clip_value), before the optimiser step.
"""
from dataclasses import dataclass, field
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DTYPE = torch.float64

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

    A dense layer becomes {"kind": "linear", ...} then {"kind": "activation", ...}; a batchnorm
    or layernorm layer becomes the norm then its activation (default identity). Only the
    keys of the scenario contract are read: units, activation, slope, alpha, weights, bias,
    train_bias, kind, eps.
    """
    spec = []
    for layer in raw["layers"]:
        kind = layer.get("kind", "dense")
        params = {k: layer[k] for k in ("slope", "alpha") if k in layer}
        if kind == "dense":
            if layer.get("init") != "explicit":
                raise ValueError("the torch reference needs init = \"explicit\" weights")
            weights = np.asarray(layer["weights"], dtype=np.float64)
            bias = np.asarray(layer.get("bias", np.zeros(weights.shape[1])), dtype=np.float64)
            spec.append({"kind": "linear", "weights": weights, "bias": bias,
                         "train_bias": layer.get("train_bias", True)})
            spec.append({"kind": "activation", "name": layer.get("activation", "sigmoid"), "params": params})
        elif kind in ("batchnorm", "layernorm"):
            spec.append({"kind": kind, "eps": layer.get("eps", 1e-5), "train_bias": layer.get("train_bias", True)})
            spec.append({"kind": "activation", "name": layer.get("activation", "identity"), "params": params})
        else:
            raise ValueError(f"no torch reference for layer kind {kind!r}")
    return spec


def build_modules(layers_spec, fan_in):
    """nn modules of a layers_spec and their parameters under tracer's names.

    layers_spec is a list of dicts:
      {"kind": "linear", "weights": (fan_in, units) in tracer's orientation, "bias": (units,),
       "train_bias": True}                                   -> nn.Linear, weight = weightsᵀ
      {"kind": "layernorm", "eps": 1e-5}                     -> nn.LayerNorm(n, eps, elementwise_affine=True)
      {"kind": "batchnorm", "eps": 1e-5, "affine": True}     -> nn.BatchNorm1d(n, eps, affine), training mode
      {"kind": "activation", "name": "sigmoid", "params": {"slope": ...}}
    Layers are numbered as tracer numbers them: every linear or norm entry starts the next layer
    (an activation belongs to the entry before it). Returns (modules, named) with named a list of
    (name, parameter, to_tracer) and to_tracer mapping a torch tensor to tracer's orientation.
    """
    modules, named, width, layer = [], [], fan_in, 0
    for entry in layers_spec:
        kind = entry["kind"]
        if kind == "activation":
            modules.append(Elementwise(entry["name"], entry.get("params")))
            continue
        layer += 1
        if kind == "linear":
            weights = np.asarray(entry["weights"], dtype=np.float64)
            if weights.shape[0] != width:
                raise ValueError(f"layer {layer}: weights of shape {weights.shape} after {width} units")
            linear = nn.Linear(weights.shape[0], weights.shape[1], dtype=DTYPE)
            with torch.no_grad():
                linear.weight.copy_(tensor(weights.T))
                linear.bias.copy_(tensor(entry.get("bias", np.zeros(weights.shape[1]))))
            linear.bias.requires_grad_(entry.get("train_bias", True))
            named += [(f"W{layer}", linear.weight, _transposed), (f"b{layer}", linear.bias, _as_is)]
            modules.append(linear)
            width = weights.shape[1]
        elif kind in ("layernorm", "batchnorm"):
            eps = entry.get("eps", 1e-5)
            if kind == "layernorm":
                norm = nn.LayerNorm(width, eps=eps, elementwise_affine=True, dtype=DTYPE)
            else:
                norm = nn.BatchNorm1d(width, eps=eps, affine=entry.get("affine", True), dtype=DTYPE)
            if norm.weight is not None:
                norm.bias.requires_grad_(entry.get("train_bias", True))
                named += [(f"gamma{layer}", norm.weight, _as_is), (f"beta{layer}", norm.bias, _as_is)]
            modules.append(norm)
        else:
            raise ValueError(f"unknown layers_spec kind {kind!r}")
    return modules, named


def _transposed(t):
    return t.detach().numpy().T.copy()


def _as_is(t):
    return t.detach().numpy().copy()


def train_torch(layers_spec, inputs, targets, loss, reduction, optimizer, hyper, steps, *,
                batch=None, clip_norm=None, clip_value=None):
    """Train the feed-forward net of `layers_spec` with torch.optim for `steps` updates.

    inputs (samples × features), targets (samples × outputs). `loss`, `reduction`, `optimizer`
    and `hyper` are tracer's names (hyper: lr, momentum, nesterov, alpha, beta1, beta2, eps,
    weight_decay, schedule, step_size, gamma). batch=None is the full batch; an integer k takes
    mini-batches of k in data order, step t using batch t mod ⌈samples/k⌉. If the spec ends with
    an activation, the loss reads its input u as well (bce and softmax_ce are computed from u).
    Returns a TorchRun.
    """
    inputs, targets = tensor(inputs), tensor(targets)
    modules, named = build_modules(layers_spec, inputs.shape[1])
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
    trained = [p for _, p, _ in named if p.requires_grad]
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


# --- recurrent nets (issue 12) -----------------------------------------------------------------

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
    tracer's orientation (issue 12's contract): weights (features, G·H) = weight_ih_l0ᵀ,
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
