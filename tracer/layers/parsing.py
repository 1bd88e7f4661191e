"""The scenario's Layer (one [[layers]] table, parsed) and the TOML helpers the kinds' scenario
faces share: an activation and its parameters, an initialiser and its parameters, the bias."""
from dataclasses import dataclass

import numpy as np

from tracer.errors import ScenarioError
from tracer.maths import activations, initialisers as inits


@dataclass
class Layer:
    """One non-input layer: `units` units with activation f and parameters W (fan_in × units), b
    (γ, β for normalisation layers, stored as a 1 × units W and a b)."""

    units: int
    activation: str
    activation_params: dict
    init: str
    init_params: dict
    weights: np.ndarray | None
    bias_init: str
    bias_params: dict
    bias: np.ndarray | None
    train_bias: bool
    residual: bool = False        # a = f(u) + a⁽ˡ⁻¹⁾ (a skip connection; equal widths, hidden layers)
    kind: str = "dense"           # a name in tracer.layers.LAYERS
    eps: float = 1e-5             # normalisation layers only
    recurrent_weights: np.ndarray | None = None   # recurrent layers: explicit Wh (units × gates·units)
    recurrent_bias: np.ndarray | None = None      # recurrent layers: bh (gates·units), default 0
    groups: int = 1               # groupnorm layers only: the groups of units normalised together


ACTIVATION_PARAM_KEYS = ("slope", "alpha")
INIT_PARAM_KEYS = ("low", "high", "mean", "std", "value")


def parse_activation(v, raw, key, units, is_output, default):
    """The layer's activation name and its parameters {slope/alpha: value}, validated: a
    non-elementwise activation (softmax) only on the output layer and over more than one unit;
    parameters only those the activation has."""
    activation = v.choice(raw, "activation", key, activations.ACTIVATIONS, default=default)
    definition = activations.get(activation)
    if not definition.elementwise and not is_output:
        raise ScenarioError(v.source, f"{key}.activation", f"{activation} is allowed on the output layer only")
    if activation == "softmax" and units == 1:   # softmax over one unit is the constant 1
        raise ScenarioError(v.source, f"{key}.units", "softmax of a single unit is the constant 1 (nothing to learn); "
                            "for one output use activation = \"sigmoid\" with loss bce")
    for name in ACTIVATION_PARAM_KEYS:
        if name in raw and name not in definition.params:
            raise ScenarioError(v.source, f"{key}.{name}", f"'{name}' does not apply to activation {activation}")
    return activation, {name: v.number(raw, name, key, default=d) for name, d in definition.params.items()}


def parse_init(v, raw, key, prefix, default):
    """An initialiser name ({prefix}init) and its parameters ({prefix}low, ...), validated."""
    name = v.choice(raw, f"{prefix}init", key, inits.INITS, default=default)
    defaults = inits.INITS[name][0]
    for param in INIT_PARAM_KEYS:
        if f"{prefix}{param}" in raw and param not in defaults:
            raise ScenarioError(v.source, f"{key}.{prefix}{param}", f"'{prefix}{param}' does not apply to {prefix}init {name}")
    params = {p: v.number(raw, f"{prefix}{p}", key, default=d) for p, d in defaults.items()}
    if name == "uniform" and params["low"] >= params["high"]:
        raise ScenarioError(v.source, f"{key}.{prefix}high", "must be greater than low")
    if name == "uniform" and not np.isfinite(params["high"] - params["low"]):
        raise ScenarioError(v.source, f"{key}.{prefix}high", "high − low must be below 1.8e308 (it overflows)")
    if name == "normal" and params["std"] < 0:
        raise ScenarioError(v.source, f"{key}.{prefix}std", "must not be negative")
    return name, params



def parse_bias(v, raw, key, read_bias):
    """The bias: explicit values `bias = [...]` (read and shape-checked by `read_bias()`), or an
    initialiser ({bias_}init, default constant), never both. Returns (values or None, init name, params)."""
    if "bias" in raw:
        bias = read_bias()
        if "bias_init" in raw and raw["bias_init"] != "explicit":
            raise ScenarioError(v.source, f"{key}.bias_init", "give either bias values or bias_init, not both")
        return bias, "explicit", {}
    name, params = parse_init(v, raw, key, "bias_", default="constant")
    if name == "explicit":
        raise ScenarioError(v.source, f"{key}.bias", "bias_init = \"explicit\" needs bias = [...]")
    return None, name, params
