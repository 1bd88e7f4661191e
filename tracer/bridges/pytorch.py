"""A PyTorch model as a scenario: `tracer.from_torch(model, inputs, targets, optimizer, loss=...)`.

The model is read, never run: its modules become the scenario's [[layers]] with the model's current
weights as explicit values, the optimiser's hyper-parameters its [optimizer], the loss module its
[loss], and the dict goes through the same loader as a TOML file (`scenario.from_dict`). torch is
imported only here, when `from_torch` is called (`pip install 'tracer[torch]'`).

The model: an `nn.Sequential` (nested ones are flattened), optionally starting with `nn.Flatten()`
(the inputs are then flattened the same way), of layers, each optionally followed by ONE activation:
  nn.Linear(n, m)          dense layer; W = weight.T (tracer's W is fan_in × units), b = bias;
                           bias=False: b = 0, not trained
  nn.BatchNorm1d(n)        kind = "batchnorm" (batch statistics, biased variance, as in training mode;
                           eval mode is refused unless track_running_stats=False), eps;
                           γ = 1 and β = 0 as a fresh module has them (a scenario cannot set them yet)
  nn.LayerNorm(n)          kind = "layernorm" (where this version of tracer has it), eps, γ = 1, β = 0
  activations              nn.Identity, Sigmoid, Tanh, ReLU, LeakyReLU(negative_slope) -> leaky_relu
                           slope, ELU(alpha), SiLU, GELU (approximate="none"), Softplus (beta=1; PyTorch
                           returns u itself above `threshold`, tracer log(1 + e^u): at most 2e-9 apart)
A frozen bias (requires_grad=False, or not given to the optimiser) becomes train_bias = false.

The loss (tracer's per-sample loss over K outputs, then the batch reduction):
  nn.MSELoss()                      mean over B·K elements = mse with reduction mean
  nn.MSELoss(reduction="sum")       sse with reduction sum
  nn.BCELoss(), a Sigmoid output    bce (mean: only for K = 1, PyTorch divides by B·K, tracer by B)
  nn.BCEWithLogitsLoss()            bce, the model's last layer given a sigmoid (the trace's output
                                    a is then σ(logits); u are the model's logits); K = 1 for mean
  nn.CrossEntropyLoss()             softmax_ce, the last layer given a softmax (a = probabilities,
                                    u = logits); class-index targets become one-hot, probability
                                    targets stay; label_smoothing ε: t ← (1 − ε)·t + ε/K, as PyTorch
  nn.NLLLoss() after nn.LogSoftmax  softmax_ce (LogSoftmax becomes the softmax output)
Anything else — another module, a loss weight, reduction="none", a model ending in nn.Softmax (whose
cross-entropy would apply a second softmax) — raises ModelError naming the module.

The optimiser (PyTorch's update rules are tracer's; the state must be fresh, every weight trained):
  SGD(lr, weight_decay)                                  sgd
  SGD(momentum > 0, nesterov, weight_decay; dampening 0) momentum
  Adagrad(lr, eps, weight_decay; lr_decay 0, initial_accumulator_value 0)   adagrad
  RMSprop(lr, alpha, eps, weight_decay; momentum 0, not centered)          rmsprop
  Adam(lr, betas, eps, weight_decay; not amsgrad)        adam;  AdamW only with weight_decay = 0
None stands for torch.optim.SGD(model.parameters()) with PyTorch's defaults (lr 0.001).

Training: `steps` updates on batches of `batch` samples (None: every sample) taken in data order,
the way `for step in range(steps): x[(step % per_epoch) * batch:][:batch]` walks the data. Train the
model in float64 (`model.double()`) to compare it number for number: the trace is float64.
"""
import math

import numpy as np

from tracer.training import scenario as scenario_module
from tracer.errors import TracerError

SOURCE = "from_torch"


class ModelError(TracerError):
    """A PyTorch model, loss or optimiser that tracer cannot trace; names the module and why."""

    exit_code = 2

    def __init__(self, where, problem):
        self.where, self.problem = where, problem
        super().__init__(f"{SOURCE}: {where}: {problem}")


def from_torch(model, inputs, targets, optimizer=None, *, loss, steps=10, batch=None, name="torch-model",
               description=None):
    """The Scenario that trains `model` on (inputs, targets) with `optimizer` and `loss` as PyTorch
    would (see the module docstring for what maps to what). Raises ModelError for anything tracer
    cannot express, ScenarioError for what the loader refuses (a momentum of 1, NaN data, ...)."""
    torch = _torch()
    modules = list(_flatten(model, torch))
    x = _array(inputs, "inputs", torch)
    if modules and type(modules[0]) is torch.nn.Flatten:
        x = _flattened(modules.pop(0), x)
    if x.ndim != 2:
        raise ModelError("inputs", f"must be a (samples × features) array, not of shape {tuple(x.shape)} "
                         "(begin the model with nn.Flatten() to flatten images)")
    loss_module = loss
    layers, described = _layers(modules, x.shape[1], torch, model)
    loss_table, t = _loss_and_targets(loss_module, layers, targets, x.shape[0], modules, torch)
    optimizer_table = _optimizer(optimizer, model, layers, torch)
    raw = {
        "name": name,
        "description": description or f"From PyTorch: {' -> '.join(described)}; {type(loss_module).__name__}; "
                                      f"{_optimizer_words(optimizer_table)}.",
        "seed": 0,
        "steps": steps,
        "data": {"inputs": x.tolist(), "targets": t.tolist()},
        "layers": [layer["table"] for layer in layers],
        "loss": loss_table,
        "optimizer": optimizer_table,
        "training": {"batch": "full" if batch is None else batch},
    }
    return scenario_module.from_dict(raw, source=SOURCE)


# ---------------------------------------------------------------- the model

def _torch():
    try:
        import torch
    except ImportError:
        raise ModelError("torch", "PyTorch is not installed: pip install 'tracer[torch]'") from None
    return torch


def _flatten(model, torch):
    if not isinstance(model, torch.nn.Sequential):
        raise ModelError(type(model).__name__, "tracer reads an nn.Sequential (of Linear, BatchNorm1d, LayerNorm "
                         "and activations); a model with its own forward() cannot be read")
    for module in model:
        if isinstance(module, torch.nn.Sequential):
            yield from _flatten(module, torch)
        else:
            yield module


def _flattened(flatten, x):
    if flatten.start_dim != 1 or flatten.end_dim != -1:
        raise ModelError(repr(flatten), "only nn.Flatten() with start_dim=1, end_dim=-1 (one row per sample)")
    return x.reshape(x.shape[0], -1)


def _array(values, what, torch):
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        values = values.double().numpy() if values.is_floating_point() else values.numpy()
    array = np.asarray(values)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ModelError(what, f"must be numbers, not {array.dtype}")
    return array


def _activations(torch):
    """PyTorch activation module type -> (tracer activation, its parameters from the module)."""
    nn = torch.nn
    return {
        nn.Identity: lambda m: ("identity", {}),
        nn.Sigmoid: lambda m: ("sigmoid", {}),
        nn.Tanh: lambda m: ("tanh", {}),
        nn.ReLU: lambda m: ("relu", {}),
        nn.LeakyReLU: lambda m: ("leaky_relu", {"slope": float(m.negative_slope)}),
        nn.ELU: lambda m: ("elu", {"alpha": float(m.alpha)}),
        nn.SiLU: lambda m: ("silu", {}),
        nn.GELU: lambda m: _gelu(m),
        nn.Softplus: lambda m: _softplus(m),
    }


def _gelu(module):
    if module.approximate != "none":
        raise ModelError(repr(module), "tracer's gelu is the exact 0.5·u·erfc(−u/√2), not the tanh approximation "
                         "(use nn.GELU())")
    return "gelu", {}


def _softplus(module):
    if module.beta != 1:
        raise ModelError(repr(module), "tracer's softplus is log(1 + e^u), beta = 1")
    return "softplus", {}


def _layers(modules, width, torch, model):
    """[{"table": the [[layers]] dict, "module": the torch layer, "trained": {...}}], and the modules in words."""
    nn = torch.nn
    known = _activations(torch)
    layers, words = [], []
    index = 0
    while index < len(modules):
        module, where = modules[index], _where(modules, index)
        kind = type(module)
        if kind is nn.Linear:
            if module.in_features != width:
                raise ModelError(where, f"takes {module.in_features} features, but {width} arrive")
            table = {"units": module.out_features, "init": "explicit", "weights": _values(module.weight).T.tolist(),
                     "bias": (_values(module.bias).tolist() if module.bias is not None else [0.0] * module.out_features)}
            if module.bias is None:
                table["train_bias"] = False
            words.append(f"Linear({module.in_features}, {module.out_features})")
        elif kind in (nn.BatchNorm1d, nn.LayerNorm):
            table = _norm(module, where, width, torch, model)
            words.append(f"{kind.__name__}({width})")
        elif kind in known or kind in (nn.Softmax, nn.LogSoftmax):
            before = "the inputs" if index == 0 else f"{type(modules[index - 1]).__name__} ({_where(modules, index - 1)})"
            raise ModelError(where, f"follows {before}: tracer applies one activation after each Linear, "
                             "BatchNorm1d or LayerNorm")
        else:
            raise ModelError(where, f"{kind.__name__} is not supported (tracer reads Linear, BatchNorm1d, LayerNorm and "
                             "the activations Identity, Sigmoid, Tanh, ReLU, LeakyReLU, ELU, SiLU, GELU, Softplus)")
        layer = {"table": table, "module": module, "where": where, "activation_module": None}
        index += 1
        follower = modules[index] if index < len(modules) else None
        if follower is not None and type(follower) in known:
            activation, params = known[type(follower)](follower)
            table["activation"] = activation
            table.update(params)
            layer["activation_module"] = follower
            words.append(type(follower).__name__)
            index += 1
        elif follower is not None and type(follower) in (nn.Softmax, nn.LogSoftmax):
            if index != len(modules) - 1:
                raise ModelError(_where(modules, index), f"{type(follower).__name__} is allowed as the last module only")
            _softmax_dim(follower, _where(modules, index))
            table["activation"] = "identity"   # the loss decides (LogSoftmax + NLLLoss: softmax)
            layer["activation_module"] = follower
            words.append(type(follower).__name__)
            index += 1
        else:
            table["activation"] = "identity"
        layers.append(layer)
        width = table.get("units", width)
    if not layers:
        raise ModelError(type(model).__name__, "has no layers")
    return layers, words


def _where(modules, index):
    return f"model[{index}] {type(modules[index]).__name__}"


def _values(tensor):
    return tensor.detach().cpu().double().numpy()


def _softmax_dim(module, where):
    if module.dim not in (None, 1, -1):
        raise ModelError(where, f"dim={module.dim}: tracer's softmax runs over the units of a sample (dim=1)")


def _known_kinds():
    try:
        from tracer import layers as registry   # the layer registry, where this version of tracer has one
        return tuple(registry.LAYERS)
    except (ImportError, AttributeError):
        return scenario_module.LAYER_KINDS


def _norm(module, where, width, torch, model):
    """A BatchNorm1d / LayerNorm as a batchnorm / layernorm layer (γ = 1, β = 0, as a fresh module)."""
    batchnorm = type(module) is torch.nn.BatchNorm1d
    kind = "batchnorm" if batchnorm else "layernorm"
    if kind not in _known_kinds():
        raise ModelError(where, f"this version of tracer has no {kind} layer (kinds: {', '.join(_known_kinds())})")
    features = module.num_features if batchnorm else _normalized_width(module, where)
    if features != width:
        raise ModelError(where, f"normalises {features} features, but {width} arrive")
    affine = module.affine if batchnorm else module.elementwise_affine
    if not affine:
        raise ModelError(where, f"{'affine' if batchnorm else 'elementwise_affine'}=False: tracer trains the scale γ "
                         "of every normalisation layer")
    if batchnorm and not module.training and module.track_running_stats:
        raise ModelError(where, "is in eval mode (running statistics); tracer trains with batch statistics: call "
                         "model.train()")
    gamma = _values(module.weight)
    beta = _values(module.bias) if module.bias is not None else np.zeros(features)
    if (gamma != 1).any() or (beta != 0).any():
        raise ModelError(where, "has γ ≠ 1 or β ≠ 0 (a trained layer); a scenario's normalisation layer starts at "
                         "γ = 1, β = 0, as a fresh module does")
    table = {"kind": kind, "eps": float(module.eps)}
    if module.bias is None:
        table["train_bias"] = False
    return table


def _normalized_width(module, where):
    shape = tuple(module.normalized_shape)
    if len(shape) != 1:
        raise ModelError(where, f"normalized_shape {shape}: tracer normalises over the units of a layer (one dimension)")
    return shape[0]


# ---------------------------------------------------------------- the loss and the targets

def _loss_and_targets(loss, layers, targets, samples, modules, torch):
    """([loss] table, targets as tracer reads them); sets the output layer's activation where the
    loss implies it (logits losses: sigmoid, softmax)."""
    nn = torch.nn
    kind = type(loss)
    where = f"loss {kind.__name__}"
    supported = (nn.MSELoss, nn.BCELoss, nn.BCEWithLogitsLoss, nn.CrossEntropyLoss, nn.NLLLoss)
    if kind not in supported:
        raise ModelError(where, "is not supported (tracer maps MSELoss, BCELoss, BCEWithLogitsLoss, "
                         "CrossEntropyLoss and NLLLoss after LogSoftmax)")
    if loss.reduction not in ("mean", "sum"):
        raise ModelError(where, f"reduction={loss.reduction!r}: tracer reduces the batch by 'mean' or 'sum'")
    for attribute in ("weight", "pos_weight"):
        if getattr(loss, attribute, None) is not None:
            raise ModelError(where, f"{attribute}: tracer's losses weigh every output and sample alike")
    output = layers[-1]
    units = output["table"]["units"] if "units" in output["table"] else _width_of(layers)
    last = output["activation_module"]
    if type(last) is nn.Identity:
        last = None
    last_name = type(last).__name__ if last is not None else "no activation"
    if kind in (nn.CrossEntropyLoss, nn.NLLLoss, nn.BCEWithLogitsLoss):
        wanted = nn.LogSoftmax if kind is nn.NLLLoss else None
        if (type(last) if last is not None else None) is not wanted:
            needs = "end in nn.LogSoftmax" if wanted else "end in a layer without an activation (the logits)"
            raise ModelError(where, f"takes {'log-probabilities' if wanted else 'logits'}: the model must {needs}, "
                             f"not {last_name}" + (" (a second softmax would be applied)" if type(last) is nn.Softmax else ""))
        output["table"]["activation"] = "sigmoid" if kind is nn.BCEWithLogitsLoss else "softmax"
    elif type(last) in (nn.Softmax, nn.LogSoftmax):
        raise ModelError(f"{_where(modules, len(modules) - 1)}", f"a {last_name} output trains in tracer only with its "
                         "cross-entropy: end the model in Linear and use nn.CrossEntropyLoss")
    if kind is nn.BCELoss and output["table"]["activation"] != "sigmoid":
        raise ModelError(where, f"takes probabilities: the model must end in nn.Sigmoid, not {last_name}")
    if kind in (nn.BCELoss, nn.BCEWithLogitsLoss) and loss.reduction == "mean" and units > 1:
        raise ModelError(where, f"reduction='mean' over {units} outputs divides by batch × {units}; tracer's bce "
                         "sums a sample's outputs and divides by the batch only: use reduction='sum', or one output")
    if kind in (nn.CrossEntropyLoss, nn.NLLLoss):
        t = _class_targets(loss, targets, samples, units, where, torch)
    else:
        t = _array(targets, "targets", torch).astype(float)
        if t.shape != (samples, units):
            hint = (" (pass targets.reshape(-1, 1); MSELoss would broadcast them to a batch × batch grid)"
                    if t.shape == (samples,) and units == 1 else "")
            raise ModelError("targets", f"shape {t.shape} does not match the model's output ({samples}, {units}){hint}")
    if kind is nn.MSELoss:
        name = "mse" if loss.reduction == "mean" else "sse"
    else:
        name = "bce" if kind in (nn.BCELoss, nn.BCEWithLogitsLoss) else "softmax_ce"
    return {"name": name, "reduction": loss.reduction}, t


def _width_of(layers):
    for layer in reversed(layers):
        if "units" in layer["table"]:
            return layer["table"]["units"]
    raise ModelError("model", "has no Linear layer")


def _class_targets(loss, targets, samples, units, where, torch):
    """Class indices (B,) -> one-hot (B, K); CrossEntropyLoss's probabilities (B, K) as they are;
    then label smoothing: t ← (1 − ε)·t + ε/K."""
    t = _array(targets, "targets", torch)
    if np.issubdtype(t.dtype, np.integer) and t.shape == (samples,):
        outside = np.flatnonzero((t < 0) | (t >= units))
        if outside.size:
            value = int(t[outside[0]])
            ignored = " (ignore_index: tracer trains on every sample)" if value == loss.ignore_index else ""
            raise ModelError("targets", f"sample {int(outside[0])}: class {value} is not one of 0..{units - 1}{ignored}")
        t = np.eye(units)[t]
    elif type(loss) is torch.nn.CrossEntropyLoss and np.issubdtype(t.dtype, np.floating) and t.shape == (samples, units):
        t = t.astype(float)
    else:
        accepted = "class indices (an integer tensor of shape (B,))" + (
            f" or class probabilities of shape ({samples}, {units})" if type(loss) is torch.nn.CrossEntropyLoss else "")
        raise ModelError("targets", f"{where} takes {accepted}, not {t.dtype} of shape {tuple(t.shape)}")
    smoothing = float(getattr(loss, "label_smoothing", 0.0))
    if smoothing:
        t = (1.0 - smoothing) * t + smoothing / units
    return t


# ---------------------------------------------------------------- the optimiser

def _optimizer(optimizer, model, layers, torch):
    """The [optimizer] table from a fresh torch optimiser; checks that it trains the model's weights."""
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters())
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ModelError("optimizer", f"must be a torch.optim optimiser, not {type(optimizer).__name__}")
    kind = type(optimizer)
    where = f"optimizer {kind.__name__}"
    if any(_stepped(state) for state in optimizer.state.values()):
        raise ModelError(where, "has already taken steps (its state is not empty); tracer starts every optimiser "
                         "from zero state: pass a new one")
    hyper = _one_group(optimizer, where)
    _trained(optimizer, layers, where)
    if hyper.get("maximize"):
        raise ModelError(where, "maximize=True: tracer descends the loss")
    lr = _number(hyper["lr"])
    decay = _number(hyper.get("weight_decay", 0.0))
    if kind is torch.optim.SGD:
        if hyper["momentum"] == 0:
            return {"name": "sgd", "lr": lr, "weight_decay": decay}
        if hyper["dampening"] != 0:
            raise ModelError(where, f"dampening={hyper['dampening']}: tracer's momentum is b = μ·b + g (dampening 0)")
        return {"name": "momentum", "lr": lr, "momentum": _number(hyper["momentum"]), "nesterov": bool(hyper["nesterov"]),
                "weight_decay": decay}
    if kind is torch.optim.Adagrad:
        for key in ("lr_decay", "initial_accumulator_value"):
            if hyper[key] != 0:
                raise ModelError(where, f"{key}={hyper[key]}: tracer's adagrad has neither (0)")
        return {"name": "adagrad", "lr": lr, "eps": _number(hyper["eps"]), "weight_decay": decay}
    if kind is torch.optim.RMSprop:
        if hyper["momentum"] != 0 or hyper["centered"]:
            raise ModelError(where, "momentum or centered=True: tracer's rmsprop is the plain one (momentum 0, not centered)")
        return {"name": "rmsprop", "lr": lr, "alpha": _number(hyper["alpha"]), "eps": _number(hyper["eps"]),
                "weight_decay": decay}
    if kind in (torch.optim.Adam, torch.optim.AdamW):
        if hyper["amsgrad"]:
            raise ModelError(where, "amsgrad=True: tracer's adam is the plain one")
        if decay and (kind is torch.optim.AdamW or hyper.get("decoupled_weight_decay")):
            raise ModelError(where, f"decoupled weight decay (θ ← θ − lr·{decay:g}·θ) is not tracer's weight_decay "
                             "(g ← g + wd·θ, torch.optim.Adam's): use Adam, or weight_decay=0")
        return {"name": "adam", "lr": lr, "betas": [_number(b) for b in hyper["betas"]], "eps": _number(hyper["eps"]),
                "weight_decay": decay}
    raise ModelError(where, "is not supported (tracer maps SGD, SGD with momentum, Adagrad, RMSprop, Adam)")


def _stepped(state):
    """Whether a parameter's optimiser state shows a step taken (Adagrad fills its state, step 0,
    on construction; SGD keeps a momentum buffer and no step count)."""
    if "step" in state:
        return float(state["step"]) > 0
    return any(value is not None for value in state.values())


def _one_group(optimizer, where):
    """The hyper-parameters, the same in every parameter group (tracer has one set)."""
    groups = [{key: value for key, value in group.items() if key not in ("params", "initial_lr")}
              for group in optimizer.param_groups]
    if any(_comparable(group) != _comparable(groups[0]) for group in groups[1:]):
        raise ModelError(where, "has parameter groups with different hyper-parameters; tracer has one set for every parameter")
    return groups[0]


def _comparable(group):
    return {key: (float(value) if _is_tensor_number(value) else value) for key, value in group.items()}


def _is_tensor_number(value):
    return hasattr(value, "item") and getattr(value, "ndim", 1) == 0


def _number(value):
    number = float(value.item() if _is_tensor_number(value) else value)
    if not math.isfinite(number):
        raise ModelError("optimizer", f"hyper-parameter {number} is not finite")
    return number


def _trained(optimizer, layers, where):
    """Every weight (and γ) trained by the optimiser; a bias may be frozen; nothing else given."""
    given = {id(p) for group in optimizer.param_groups for p in group["params"]}
    model_parameters = set()
    for layer in layers:
        module = layer["module"]
        weight, bias = module.weight, module.bias
        model_parameters.update(id(p) for p in (weight, bias) if p is not None)
        if id(weight) not in given or not weight.requires_grad:
            raise ModelError(f"{layer['where']}", f"its weight is not trained by the {where.split()[-1]} optimiser "
                             "(tracer trains every weight; only a bias may be frozen)")
        if bias is not None and (id(bias) not in given or not bias.requires_grad):
            layer["table"]["train_bias"] = False
    if given - model_parameters:
        raise ModelError(where, "also trains parameters that are not the model's")


def _optimizer_words(table):
    hyper = ", ".join(f"{key}={value}" for key, value in table.items() if key != "name")
    return f"{table['name']}({hyper})"
