"""The chain's parts as the scenario's [[layers]]: each layer optionally followed by ONE activation.

  nn.Linear(n, m)          dense layer; W = weight.T (tracer's W is fan_in × units), b = bias;
                           bias=False: b = 0, not trained
  x + f(x)                 a residual dense layer (residual = true: a = f(x·W + b) + x), f one
                           Linear(n, n) and its activation
  nn.BatchNorm1d(n)        kind = "batchnorm" (batch statistics, biased variance, as in training mode;
                           eval mode is refused unless track_running_stats=False), eps;
                           γ = 1 and β = 0 as a fresh module has them (a scenario cannot set them yet)
  nn.LayerNorm(n)          kind = "layernorm", eps, γ = 1, β = 0
  nn.RNN / LSTM / GRU      recurrent layers (bridges.pytorch.recurrent), first in the chain
  activations              nn.Identity, Sigmoid, Tanh, ReLU, LeakyReLU(negative_slope) -> leaky_relu
                           slope, ELU(alpha), SiLU, GELU (approximate="none"), Softplus (beta=1; PyTorch
                           returns u itself above `threshold`, tracer log(1 + e^u): at most 2e-9 apart)
  nn.Dropout               in eval mode (or p = 0) the identity: left out, with a note saying so;
                           in training mode refused (its random mask is not reproducible)
A layer is {"table": the [[layers]] dict, "module": its torch module, "where": how errors name it,
"activation_module": the module read as its activation (None), "weights": the tensors the optimiser
must train, "biases": those it may leave frozen (train_bias = false)}.
"""
import numpy as np

from tracer.bridges.pytorch import recurrent
from tracer.bridges.pytorch.common import ModelError, values
from tracer.training import scenario as scenario_module

SUPPORTED = ("tracer reads Linear, BatchNorm1d, LayerNorm, RNN, LSTM, GRU, Dropout in eval mode and the activations "
             "Identity, Sigmoid, Tanh, ReLU, LeakyReLU, ELU, SiLU, GELU, Softplus")


def activations(torch):
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
        nn.GELU: _gelu,
        nn.Softplus: _softplus,
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


def without_dropout(parts, torch, notes):
    """The parts with every Dropout left out: the identity in eval mode (or p = 0), noted; refused in
    training mode. Residual branches are read the same way."""
    kept = []
    for part in parts:
        if part.residual:
            part.residual = without_dropout(part.residual, torch, notes)
        if not isinstance(part.module, torch.nn.Dropout):
            kept.append(part)
        elif part.module.training and part.module.p > 0:
            raise ModelError(part.where, f"Dropout(p={part.module.p}) in training mode is not supported (its random mask "
                             "cannot be reproduced): in eval mode (model.eval()) it is the identity, which tracer reads")
        else:
            notes.append(f"{part.where}: the identity in eval mode (left out).")
    return kept


def flattened_inputs(parts, x, torch):
    """An nn.Flatten first: the inputs flattened the same way (one row per sample), the part dropped."""
    if parts and isinstance(parts[0].module, torch.nn.Flatten):
        flatten = parts.pop(0).module
        if flatten.start_dim != 1 or flatten.end_dim != -1:
            raise ModelError(repr(flatten), "only nn.Flatten() with start_dim=1, end_dim=-1 (one row per sample)")
        x = x.reshape(x.shape[0], -1)
    return parts, x


def layers_of(parts, x, torch, model, notes):
    """([layer], the modules in words) for inputs x: (samples × features), or (samples × time ×
    features) read by recurrent layers first."""
    layers, words = [], []
    index, width, per_time = recurrent.layers_first(parts, x, torch, layers, words, notes)
    if x.ndim != (3 if layers else 2):
        _unread_inputs(parts, x, torch)
    known = activations(torch)
    while index < len(parts):
        part = parts[index]
        table, layer_words = _layer(part, parts, index, width, torch, model)
        layer = {"table": table, "module": part.module, "where": part.where, "activation_module": None,
                 "weights": [], "biases": []}
        _parameters_of(layer, part, torch)
        index += 1
        index = _activation(layer, parts, index, known, torch, layer_words) if not part.residual else index
        layers.append(layer)
        words.extend(layer_words)
        width = table.get("units", width)
    if not layers:
        raise ModelError(type(model).__name__, "has no layers")
    return layers, words, per_time


def _unread_inputs(parts, x, torch):
    """Inputs of more than two dimensions that no recurrent layer reads: the first part named (as not
    supported, or as what cannot read them)."""
    first = parts[0] if parts else None
    nn = torch.nn
    if first is not None and not first.residual and type(first.module) not in (nn.Linear, nn.BatchNorm1d, nn.LayerNorm):
        raise ModelError(first.where, f"{type(first.module).__name__} is not supported ({SUPPORTED})")
    raise ModelError("inputs", f"must be a (samples × features) array, not of shape {tuple(x.shape)}"
                     + (f": {first.where} cannot read it (begin the model with nn.Flatten() to flatten images)"
                        if first is not None else ""))


def _layer(part, parts, index, width, torch, model):
    """(the [[layers]] table, words) of a Linear, a residual x + f(x), or a normalisation part."""
    nn = torch.nn
    module = part.module
    if part.residual:
        return _residual(part, width, torch)
    if type(module) is nn.Linear:
        return linear(module, part.where, width), [f"Linear({module.in_features}, {module.out_features})"]
    if type(module) in (nn.BatchNorm1d, nn.LayerNorm):
        return norm(module, part.where, width, torch), [f"{type(module).__name__}({width})"]
    if part.last_step or isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
        raise ModelError(part.where, "is not where tracer reads it: the recurrent layers come first (read by the "
                         "inputs), then out[:, -1] (or every step), then the dense layers")
    if type(module) in activations(torch) or type(module) in (nn.Softmax, nn.LogSoftmax):
        before = "the inputs" if index == 0 else _name(parts[index - 1])
        raise ModelError(part.where, f"follows {before}: tracer applies one activation after each Linear, "
                         "BatchNorm1d or LayerNorm")
    raise ModelError(part.where, f"{type(module).__name__} is not supported ({SUPPORTED})")


def _name(part):
    return "a residual x + f(x)" if part.residual else f"{type(part.module).__name__} ({part.where})"


def linear(module, where, width):
    """A Linear as a dense table: W = weight.T, b = bias (0 and not trained without one)."""
    if module.in_features != width:
        raise ModelError(where, f"takes {module.in_features} features, but {width} arrive")
    table = {"units": module.out_features, "init": "explicit", "weights": values(module.weight).T.tolist(),
             "bias": (values(module.bias).tolist() if module.bias is not None else [0.0] * module.out_features)}
    if module.bias is None:
        table["train_bias"] = False
    return table


def _residual(part, width, torch):
    """x + f(x) with f = Linear(n, n) and its activation: a residual dense layer."""
    branch = part.residual
    known = activations(torch)
    shape_ok = (len(branch) in (1, 2) and type(branch[0].module) is torch.nn.Linear
                and (len(branch) == 1 or type(branch[1].module) in known))
    if not shape_ok:
        found = ", ".join(type(p.module).__name__ if p.module is not None else "a residual" for p in branch) or "nothing"
        raise ModelError(part.where, f"the residual branch f in x + f(x) is {found}: tracer's residual layer is "
                         "x + act(Linear(x)), one Linear of as many outputs as inputs and its activation")
    module = branch[0].module
    table = linear(module, branch[0].where, width)
    if module.out_features != width:
        raise ModelError(part.where, f"adds x of {width} features to f(x) of {module.out_features}")
    activation, params = known[type(branch[1].module)](branch[1].module) if len(branch) == 2 else ("identity", {})
    table.update(params, activation=activation, residual=True)
    return table, [f"x + {'∘'.join(type(p.module).__name__ for p in reversed(branch))}(x)"]


def _parameters_of(layer, part, torch):
    module = part.residual[0].module if part.residual else part.module
    layer["module"] = module
    layer["weights"] = [module.weight]
    layer["biases"] = [module.bias] if module.bias is not None else []


def _activation(layer, parts, index, known, torch, words):
    """Reads the part after a layer as its activation (or the softmax output); the next index."""
    nn = torch.nn
    table = layer["table"]
    follower = parts[index].module if index < len(parts) else None
    if follower is not None and type(follower) in known:
        activation, params = known[type(follower)](follower)
        table["activation"] = activation
        table.update(params)
    elif follower is not None and type(follower) in (nn.Softmax, nn.LogSoftmax):
        if index != len(parts) - 1:
            raise ModelError(parts[index].where, f"{type(follower).__name__} is allowed as the last module only")
        if follower.dim not in (None, 1, -1):
            raise ModelError(parts[index].where, f"dim={follower.dim}: tracer's softmax runs over the units of a "
                             "sample (dim=1)")
        table["activation"] = "identity"   # the loss decides (LogSoftmax + NLLLoss: softmax)
    else:
        table["activation"] = "identity"
        return index
    layer["activation_module"], layer["activation_where"] = follower, parts[index].where
    words.append(type(follower).__name__)
    return index + 1


def known_kinds():
    """The layer kinds this version of tracer has."""
    try:
        from tracer import layers as registry
        return tuple(registry.LAYERS)
    except (ImportError, AttributeError):
        return scenario_module.LAYER_KINDS


def norm(module, where, width, torch):
    """A BatchNorm1d / LayerNorm as a batchnorm / layernorm layer (γ = 1, β = 0, as a fresh module)."""
    batchnorm = type(module) is torch.nn.BatchNorm1d
    kind = "batchnorm" if batchnorm else "layernorm"
    if kind not in known_kinds():
        raise ModelError(where, f"this version of tracer has no {kind} layer (kinds: {', '.join(known_kinds())})")
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
    gamma = values(module.weight)
    beta = values(module.bias) if module.bias is not None else np.zeros(features)
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
