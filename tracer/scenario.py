"""Scenario files (TOML) -> a validated `Scenario`. Every user-facing input error is raised here.

The schema (keys may be added, never renamed) is documented in README.md. Each error names
the file, the key and the problem, in one line.
"""
from dataclasses import dataclass, field
import csv
import difflib
import math
from pathlib import Path
import tomllib

import numpy as np

from . import activations, init as inits, losses, optim, templates
from .errors import ScenarioError

TOP_KEYS = ("name", "description", "seed", "steps", "data", "layers", "loss", "optimizer", "training", "diagnosis")
DATA_KEYS = ("inputs", "targets", "file", "input_columns", "target_columns", "normalize")
NORMALIZATIONS = ("none", "standard", "minmax")
LAYER_KEYS = (
    "units", "activation", "slope", "alpha", "init", "low", "high", "mean", "std", "value", "weights",
    "bias", "bias_init", "bias_low", "bias_high", "bias_mean", "bias_std", "bias_value", "train_bias",
    "residual", "kind", "eps",
)
LAYER_KINDS = ("dense", "batchnorm")
BATCHNORM_KEYS = ("kind", "units", "activation", "slope", "alpha", "eps", "train_bias")
LOSS_KEYS = ("name", "reduction")
TRAINING_KEYS = ("batch", "shuffle", "clip_norm", "clip_value")
DIAGNOSIS_KEYS = ("vanishing", "exploding", "saturated")
DIAGNOSIS_DEFAULTS = {"vanishing": 1e-7, "exploding": 1e3, "saturated": 1e-7}
ACTIVATION_PARAM_KEYS = ("slope", "alpha")
INIT_PARAM_KEYS = ("low", "high", "mean", "std", "value")


@dataclass
class Layer:
    """One non-input layer: `units` units with activation f and parameters W (fan_in × units), b."""

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
    kind: str = "dense"           # dense | batchnorm (u = γ·x̂ + β over the batch, x̂ = (x − μ)/√(σ² + eps))
    eps: float = 1e-5             # batchnorm only


@dataclass
class Scenario:
    """A fully validated run description."""

    name: str
    description: str
    seed: int
    steps: int
    inputs: np.ndarray            # (N, n_inputs)
    targets: np.ndarray           # (N, n_outputs)
    layers: list
    loss: str
    reduction: str
    optimizer: str
    optimizer_params: dict
    batch: int | None             # None = full batch
    shuffle: bool
    clip_norm: float | None       # PyTorch clip_grad_norm_: g ← g·min(1, clip_norm/(‖g‖ + 1e-6))
    clip_value: float | None      # g ← clamp(g, −clip_value, clip_value)
    thresholds: dict
    raw_inputs: np.ndarray | None = None   # the data as given; `inputs` is what the network sees
    normalize: str = "none"                # none | standard | minmax
    source: str = "<scenario>"
    text: str = ""                # the TOML that describes this run
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def widths(self):
        """Units per layer, input layer first: [n_inputs, units_1, ..., units_L]."""
        return [self.inputs.shape[1]] + [layer.units for layer in self.layers]

    @property
    def batch_size(self):
        return self.inputs.shape[0] if self.batch is None else self.batch

    def __repr__(self):
        layers = ", ".join(f"{layer.kind} {layer.units} {layer.activation}" if layer.kind != "dense"
                           else f"{layer.units} {layer.activation}" for layer in self.layers)
        return (f"<Scenario {self.name!r}: {self.inputs.shape[1]} inputs -> {layers}; {self.loss} loss, "
                f"{self.optimizer} lr={self.optimizer_params.get('lr')}, {self.steps} steps, "
                f"{self.inputs.shape[0]} samples, batch {'full' if self.batch is None else self.batch}>")


# ---------------------------------------------------------------- loading

def load(reference, overrides=(), steps=None):
    """Load a scenario from a path or a built-in template name, apply `key.path=value` overrides."""
    path = Path(reference)
    if path.is_file():
        source, base = str(path), path.parent
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError(source, None, f"cannot read the file ({exc})") from None
    elif templates.exists(reference):
        source, base, text = f"template {reference}", None, templates.read(reference)
    else:
        hint = _did_you_mean(reference, templates.names())
        raise ScenarioError(
            str(reference), None,
            f"no such file or built-in template{hint} (templates: {', '.join(templates.names())})",
        )
    return loads(text, source=source, base=base, overrides=overrides, steps=steps)


def loads(text, source="<scenario>", base=None, overrides=(), steps=None):
    """Parse TOML text into a validated Scenario."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, None, f"malformed TOML: {exc}") from None
    for item in overrides:
        _apply_override(raw, item, source)
    if steps is not None:
        raw["steps"] = steps
    if overrides or steps is not None:
        text = dump_toml(raw)
    return from_dict(raw, source=source, base=base, text=text)


def _apply_override(raw, item, source):
    if "=" not in item:
        raise ScenarioError(source, item, "an override must look like key.path=value")
    path, value_text = (part.strip() for part in item.split("=", 1))
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text
    keys = path.split(".")
    node = raw
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ScenarioError(source, path, f"--set: '{key}' is not an index below {len(node)}")
            key = int(key)
        elif not isinstance(node, dict):
            raise ScenarioError(source, path, "--set: this key path goes inside a value")
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            node = node[key]


# ---------------------------------------------------------------- validation

def from_dict(raw, source="<scenario>", base=None, text=""):
    """Validate a parsed TOML dict; raise ScenarioError naming the first problem."""
    v = _Validator(source)
    v.keys(raw, TOP_KEYS, "")
    for key in ("steps", "data", "layers"):
        v.require(raw, key, "")
    steps = v.integer(raw, "steps", "", minimum=1)
    seed = v.integer(raw, "seed", "", default=0, minimum=0)
    data_raw = v.table(raw, "data", "")
    raw_inputs, targets = _data(v, data_raw, base)
    normalize = v.choice(data_raw, "normalize", "data", NORMALIZATIONS, default="none")
    inputs = normalized(raw_inputs, normalize, v)
    layers_raw = raw["layers"]
    if not isinstance(layers_raw, list) or not layers_raw or not all(isinstance(x, dict) for x in layers_raw):
        raise ScenarioError(source, "layers", "must be one or more [[layers]] tables")
    widths = [inputs.shape[1]]
    layers = []
    for index, layer_raw in enumerate(layers_raw):
        layer = _layer(v, layer_raw, f"layers[{index}]", widths[-1], index == len(layers_raw) - 1)
        layers.append(layer)
        widths.append(layer.units)
    if widths[-1] != targets.shape[1]:
        raise ScenarioError(
            source, f"layers[{len(layers) - 1}].units",
            f"the output layer has {widths[-1]} units but the data has {targets.shape[1]} target column(s)",
        )
    loss_raw = v.table(raw, "loss", "", default={})
    v.keys(loss_raw, LOSS_KEYS, "loss")
    loss = v.choice(loss_raw, "name", "loss", losses.LOSSES, default="half_sse")
    reduction = v.choice(loss_raw, "reduction", "loss", losses.REDUCTIONS, default="sum")
    needed = losses.LOSSES[loss].output_activation
    if needed and layers[-1].activation != needed:
        raise ScenarioError(
            source, f"layers[{len(layers) - 1}].activation",
            f"loss '{loss}' needs a {needed} output layer, not {layers[-1].activation}",
        )
    optimizer, optimizer_params = _optimizer(v, v.table(raw, "optimizer", ""))
    training = v.table(raw, "training", "", default={})
    v.keys(training, TRAINING_KEYS, "training")
    batch = _batch(v, training, inputs.shape[0])
    shuffle = v.boolean(training, "shuffle", "training", default=False)
    clip_norm, clip_value = (v.number(training, key, "training", positive=True) if key in training else None
                             for key in ("clip_norm", "clip_value"))
    diagnosis = v.table(raw, "diagnosis", "", default={})
    v.keys(diagnosis, DIAGNOSIS_KEYS, "diagnosis")
    thresholds = {k: v.number(diagnosis, k, "diagnosis", default=d, positive=True) for k, d in DIAGNOSIS_DEFAULTS.items()}
    name = v.string(raw, "name", "", default=Path(source).stem if source != "<scenario>" else "scenario")
    return Scenario(
        name=name, description=v.string(raw, "description", "", default=""), seed=seed, steps=steps,
        inputs=inputs, targets=targets, layers=layers, loss=loss, reduction=reduction,
        raw_inputs=raw_inputs, normalize=normalize,
        optimizer=optimizer, optimizer_params=optimizer_params, batch=batch, shuffle=shuffle,
        clip_norm=clip_norm, clip_value=clip_value,
        thresholds=thresholds, source=source, text=text or dump_toml(raw), raw=raw,
    )


def normalization_stats(raw_inputs, normalize):
    """Per input column: (mean, population std) for standard, (min, max) for minmax."""
    n = raw_inputs.shape[0]
    if normalize == "standard":
        mean = np.sum(raw_inputs, axis=0) / n
        return mean, np.sqrt(np.sum((raw_inputs - mean) ** 2, axis=0) / n)
    return raw_inputs.min(axis=0), raw_inputs.max(axis=0)


def normalized(raw_inputs, normalize, v=None):
    """x̂ = (x − μ)/σ (standard, population σ) or (x − min)/(max − min) (minmax), per input column."""
    if normalize == "none":
        return raw_inputs
    first, second = normalization_stats(raw_inputs, normalize)
    spread = second if normalize == "standard" else second - first
    if (spread == 0).any():
        column = int(np.flatnonzero(spread == 0)[0])
        raise ScenarioError(v.source if v else "<scenario>", "data.normalize",
                            f"input column {column} is constant, so it cannot be {normalize}-normalised")
    return (raw_inputs - first) / spread


def _data(v, data, base):
    v.keys(data, DATA_KEYS, "data")
    if "file" in data:
        for key in ("input_columns", "target_columns"):
            v.require(data, key, "data")
        inputs, targets = _read_data_file(v, data, base)
    else:
        v.require(data, "inputs", "data")
        v.require(data, "targets", "data")
        inputs = v.matrix(data, "inputs", "data")
        targets = v.matrix(data, "targets", "data")
    if inputs.shape[0] != targets.shape[0]:
        raise ScenarioError(
            v.source, "data.targets", f"{targets.shape[0]} target rows for {inputs.shape[0]} input rows",
        )
    return inputs, targets


def _read_data_file(v, data, base):
    name = v.string(data, "file", "data")
    path = Path(name) if base is None or Path(name).is_absolute() else Path(base) / name
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise ScenarioError(v.source, "data.file", f"cannot read {path} ({exc.strerror})") from None
    if len(rows) < 2:
        raise ScenarioError(v.source, "data.file", f"{path} needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    picked = []
    for key in ("input_columns", "target_columns"):
        columns = data[key]
        if not isinstance(columns, list) or not columns:
            raise ScenarioError(v.source, f"data.{key}", "must be a non-empty list of column names")
        indices = []
        for column in columns:
            if column not in header:
                hint = _did_you_mean(str(column), header)
                raise ScenarioError(v.source, f"data.{key}", f"no column '{column}' in {path}{hint}")
            indices.append(header.index(column))
        matrix = []
        for line_no, row in enumerate(rows[1:], start=2):
            try:
                matrix.append([float(row[i]) for i in indices])
            except (ValueError, IndexError):
                raise ScenarioError(
                    v.source, f"data.{key}", f"{path} line {line_no}: missing or non-numeric value",
                ) from None
        array = np.array(matrix, dtype=float)
        if not np.isfinite(array).all():
            line = int(np.argwhere(~np.isfinite(array))[0][0]) + 2
            raise ScenarioError(v.source, f"data.{key}", f"{path} line {line}: NaN or infinite value")
        picked.append(array)
    return picked


def _layer(v, raw, key, fan_in, is_output):
    v.keys(raw, LAYER_KEYS, key)
    kind = v.choice(raw, "kind", key, LAYER_KINDS, default="dense")
    if kind == "batchnorm":
        return _batchnorm(v, raw, key, fan_in, is_output)
    if "eps" in raw:
        raise ScenarioError(v.source, f"{key}.eps", "'eps' applies to kind = \"batchnorm\" layers")
    v.require(raw, "units", key)
    units = v.integer(raw, "units", key, minimum=1)
    activation = v.choice(raw, "activation", key, activations.ACTIVATIONS, default="sigmoid")
    definition = activations.get(activation)
    if not definition.elementwise and not is_output:
        raise ScenarioError(v.source, f"{key}.activation", f"{activation} is allowed on the output layer only")
    activation_params = {}
    for name in ACTIVATION_PARAM_KEYS:
        if name in raw and name not in definition.params:
            raise ScenarioError(v.source, f"{key}.{name}", f"'{name}' does not apply to activation {activation}")
    for name, default in definition.params.items():
        activation_params[name] = v.number(raw, name, key, default=default)
    init_name, init_params = _init(v, raw, key, "", default="uniform")
    weights = None
    if init_name == "explicit":
        v.require(raw, "weights", f"{key} (init = \"explicit\")")
        weights = v.matrix(raw, "weights", key)
        if weights.shape != (fan_in, units):
            raise ScenarioError(
                v.source, f"{key}.weights",
                f"shape {weights.shape[0]}×{weights.shape[1]} does not match (fan_in, units) = ({fan_in}, {units})",
            )
    elif "weights" in raw:
        raise ScenarioError(v.source, f"{key}.weights", "explicit weights need init = \"explicit\"")
    bias = None
    if "bias" in raw:
        bias = v.vector(raw, "bias", key)
        if bias.shape != (units,):
            raise ScenarioError(v.source, f"{key}.bias", f"{bias.shape[0]} values for {units} units")
        if "bias_init" in raw and raw["bias_init"] != "explicit":
            raise ScenarioError(v.source, f"{key}.bias_init", "give either bias values or bias_init, not both")
        bias_name, bias_params = "explicit", {}
    else:
        bias_name, bias_params = _init(v, raw, key, "bias_", default="constant")
        if bias_name == "explicit":
            raise ScenarioError(v.source, f"{key}.bias", "bias_init = \"explicit\" needs bias = [...]")
    return Layer(
        units=units, activation=activation, activation_params=activation_params, init=init_name,
        init_params=init_params, weights=weights, bias_init=bias_name, bias_params=bias_params, bias=bias,
        train_bias=v.boolean(raw, "train_bias", key, default=True),
        residual=_residual(v, raw, key, fan_in, units, is_output),
    )


def _batchnorm(v, raw, key, fan_in, is_output):
    """A batch-normalisation layer: γ = 1 and β = 0 to start (as PyTorch), its own activation."""
    for name in raw:
        if name not in BATCHNORM_KEYS:
            raise ScenarioError(v.source, f"{key}.{name}", f"'{name}' does not apply to a batchnorm layer "
                                f"(its keys: {', '.join(BATCHNORM_KEYS)})")
    units = v.integer(raw, "units", key, default=fan_in, minimum=1)
    if units != fan_in:
        raise ScenarioError(v.source, f"{key}.units", f"a batchnorm layer keeps the width of the layer below ({fan_in})")
    activation = v.choice(raw, "activation", key, activations.ACTIVATIONS, default="identity")
    definition = activations.get(activation)
    if not definition.elementwise and not is_output:
        raise ScenarioError(v.source, f"{key}.activation", f"{activation} is allowed on the output layer only")
    for name in ACTIVATION_PARAM_KEYS:
        if name in raw and name not in definition.params:
            raise ScenarioError(v.source, f"{key}.{name}", f"'{name}' does not apply to activation {activation}")
    params = {name: v.number(raw, name, key, default=default) for name, default in definition.params.items()}
    return Layer(
        units=units, activation=activation, activation_params=params, init="constant", init_params={"value": 1.0},
        weights=None, bias_init="constant", bias_params={"value": 0.0}, bias=None,
        train_bias=v.boolean(raw, "train_bias", key, default=True), kind="batchnorm",
        eps=v.number(raw, "eps", key, default=1e-5, positive=True),
    )


def _residual(v, raw, key, fan_in, units, is_output):
    residual = v.boolean(raw, "residual", key, default=False)
    if residual and is_output:
        raise ScenarioError(v.source, f"{key}.residual", "a residual connection is for hidden layers, not the output layer")
    if residual and fan_in != units:
        raise ScenarioError(v.source, f"{key}.residual", f"needs as many units as the layer below ({fan_in}), not {units}")
    return residual


def _init(v, raw, key, prefix, default):
    name = v.choice(raw, f"{prefix}init", key, inits.INITS, default=default)
    defaults = inits.INITS[name][0]
    for param in INIT_PARAM_KEYS:
        if f"{prefix}{param}" in raw and param not in defaults:
            raise ScenarioError(v.source, f"{key}.{prefix}{param}", f"'{prefix}{param}' does not apply to {prefix}init {name}")
    params = {p: v.number(raw, f"{prefix}{p}", key, default=d) for p, d in defaults.items()}
    if name == "uniform" and params["low"] >= params["high"]:
        raise ScenarioError(v.source, f"{key}.{prefix}high", "must be greater than low")
    if name == "normal" and params["std"] < 0:
        raise ScenarioError(v.source, f"{key}.{prefix}std", "must not be negative")
    return name, params


SCHEDULE_KEYS = ("schedule", "step_size", "gamma")


def _optimizer(v, raw):
    """Optimizer name and hyper-parameters (betas = [β1, β2] becomes beta1, beta2), with the schedule."""
    name = v.choice(raw, "name", "optimizer", optim.OPTIMIZERS, default="sgd")
    definition = optim.OPTIMIZERS[name]
    public = ["betas" if p == "beta1" else p for p in definition.params if p != "beta2"]
    v.keys(raw, ("name",) + tuple(public) + SCHEDULE_KEYS, "optimizer")
    params = {}
    for param, default in definition.params.items():
        if param in ("beta1", "beta2"):
            continue
        if default is None:
            v.require(raw, param, "optimizer")
        if param == "nesterov":
            params[param] = v.boolean(raw, param, "optimizer", default=default)
            continue
        value = v.number(raw, param, "optimizer", default=default, positive=param in ("lr", "eps"))
        if param in ("momentum", "weight_decay") and value < 0:
            raise ScenarioError(v.source, f"optimizer.{param}", f"must not be negative, not {value!r}")
        if param in ("momentum", "alpha") and not value < 1:
            raise ScenarioError(v.source, f"optimizer.{param}", f"must be below 1, not {value!r}")
        params[param] = value
    if "beta1" in definition.params:
        betas = raw.get("betas", [definition.params["beta1"], definition.params["beta2"]])
        if (not isinstance(betas, list) or len(betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
            raise ScenarioError(v.source, "optimizer.betas", f"must be two numbers in [0, 1), not {betas!r}")
        params["beta1"], params["beta2"] = float(betas[0]), float(betas[1])
    if params.get("nesterov") and not params.get("momentum"):
        raise ScenarioError(v.source, "optimizer.nesterov", "needs momentum > 0")
    schedule = v.choice(raw, "schedule", "optimizer", optim.SCHEDULES, default="constant")
    params["schedule"] = schedule
    if schedule != "constant":
        v.require(raw, "gamma", "optimizer")
        params["gamma"] = v.number(raw, "gamma", "optimizer", positive=True)
        if schedule == "step":
            v.require(raw, "step_size", "optimizer")
            params["step_size"] = v.integer(raw, "step_size", "optimizer", minimum=1)
    else:
        for key in ("gamma", "step_size"):
            if key in raw:
                raise ScenarioError(v.source, f"optimizer.{key}", "applies only with schedule = \"step\" or \"exponential\"")
    return name, params


def _batch(v, training, n_samples):
    batch = training.get("batch", "full")
    if batch == "full":
        return None
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ScenarioError(v.source, "training.batch", f"must be \"full\" or a positive integer, not {batch!r}")
    if batch > n_samples:
        raise ScenarioError(v.source, "training.batch", f"{batch} is larger than the {n_samples} samples")
    return None if batch == n_samples else batch


def _did_you_mean(word, candidates):
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Validator:
    """Typed getters that raise ScenarioError with the file and key path."""

    def __init__(self, source):
        self.source = source

    def _key(self, where, key):
        return f"{where}.{key}" if where else key

    def keys(self, table, allowed, where):
        for key in table:
            if key not in allowed:
                hint = _did_you_mean(key, allowed)
                raise ScenarioError(self.source, self._key(where, key), f"unknown key{hint}")

    def require(self, table, key, where):
        if key not in table:
            raise ScenarioError(self.source, self._key(where, key), "missing required key")

    def table(self, table, key, where, default=None):
        if key not in table:
            if default is None:
                raise ScenarioError(self.source, self._key(where, key), "missing required table")
            return default
        if not isinstance(table[key], dict):
            raise ScenarioError(self.source, self._key(where, key), "must be a table ([...])")
        return table[key]

    def number(self, table, key, where, default=None, positive=False):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScenarioError(self.source, self._key(where, key), f"must be a number, not {value!r}")
        if not math.isfinite(value):
            raise ScenarioError(self.source, self._key(where, key), "must be finite")
        if positive and value <= 0:
            raise ScenarioError(self.source, self._key(where, key), f"must be positive, not {value!r}")
        return float(value)

    def integer(self, table, key, where, default=None, minimum=None):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(self.source, self._key(where, key), f"must be an integer, not {value!r}")
        if minimum is not None and value < minimum:
            raise ScenarioError(self.source, self._key(where, key), f"must be at least {minimum}, not {value}")
        return value

    def string(self, table, key, where, default=None):
        value = table.get(key, default)
        if not isinstance(value, str):
            raise ScenarioError(self.source, self._key(where, key), f"must be a string, not {value!r}")
        return value

    def boolean(self, table, key, where, default=None):
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise ScenarioError(self.source, self._key(where, key), f"must be true or false, not {value!r}")
        return value

    def choice(self, table, key, where, known, default=None):
        value = table.get(key, default)
        if value is None:
            raise ScenarioError(self.source, self._key(where, key), "missing required key")
        if value not in known:
            hint = _did_you_mean(str(value), known)
            raise ScenarioError(
                self.source, self._key(where, key), f"unknown {key.replace('_', ' ')} '{value}'{hint} (known: {', '.join(known)})",
            )
        return value

    def matrix(self, table, key, where):
        value = table[key]
        full = self._key(where, key)
        if not isinstance(value, list) or not value or not all(isinstance(row, list) for row in value):
            raise ScenarioError(self.source, full, "must be a non-empty list of rows ([[...], ...])")
        width = len(value[0])
        for index, row in enumerate(value):
            if len(row) != width or width == 0:
                raise ScenarioError(self.source, full, f"ragged rows: row {index} has {len(row)} values, row 0 has {width}")
            for item in row:
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    raise ScenarioError(self.source, full, f"row {index}: non-numeric value {item!r}")
                if not math.isfinite(item):
                    raise ScenarioError(self.source, full, f"row {index}: NaN or infinite value")
        return np.array(value, dtype=float)

    def vector(self, table, key, where):
        value = table[key]
        if not isinstance(value, list) or not value:
            raise ScenarioError(self.source, self._key(where, key), "must be a non-empty list of numbers")
        return self.matrix({key: [value]}, key, where)[0]


# ---------------------------------------------------------------- TOML output

def dump_toml(raw):
    """Write a parsed scenario dict back as TOML (scalars first, then tables, then arrays of tables)."""
    lines = []
    _dump_table(raw, [], lines)
    return "\n".join(lines).strip() + "\n"


def _dump_table(table, path, lines):
    scalars = {k: v for k, v in table.items() if not _is_table(v) and not _is_table_array(v)}
    for key, value in scalars.items():
        lines.append(f"{key} = {_toml_value(value)}")
    for key, value in table.items():
        if _is_table(value):
            lines.append(f"\n[{'.'.join(path + [key])}]")
            _dump_table(value, path + [key], lines)
        elif _is_table_array(value):
            for item in value:
                lines.append(f"\n[[{'.'.join(path + [key])}]]")
                _dump_table(item, path + [key], lines)


def _is_table(value):
    return isinstance(value, dict)


def _is_table_array(value):
    return isinstance(value, list) and value and all(isinstance(v, dict) for v in value)


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
