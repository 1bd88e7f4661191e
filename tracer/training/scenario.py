"""Scenario files (TOML) -> a validated `Scenario`. Every user-facing input error is raised here.

The schema (keys may be added, never renamed) is documented in README.md. Each error names
the file, the key and the problem, in one line.
"""
from dataclasses import dataclass, field
import datetime
import difflib
import math
from pathlib import Path
import re
import tomllib
import unicodedata

import numpy as np

from tracer.training import inputs, templates
from tracer import layers as layer_kinds
from tracer.maths import losses, optim, procedures
from tracer.layers import Layer  # noqa: F401  (a scenario's layer; defined with the layer kinds)
from tracer.errors import ScenarioError, shorten
from tracer.training.records import MAX_BYTES as MAX_TRACE_BYTES, bytes_needed as trace_bytes

TOP_KEYS = ("name", "description", "seed", "steps", "data", "layers", "loss", "optimizer", "training", "diagnosis")
DATA_KEYS = ("inputs", "targets", "file", "input_columns", "target_columns", "normalize")
NORMALIZATIONS = procedures.NORMALIZATIONS
normalization_stats = procedures.normalization_stats   # defined with the Data sheet's formulas in procedures.py
LAYER_KEYS = layer_kinds.KEYS                 # every [[layers]] key, each kind taking its own (tracer/layers/)
LAYER_KINDS = tuple(layer_kinds.LAYERS)
LOSS_KEYS = ("name", "reduction")
TRAINING_KEYS = ("batch", "shuffle", "clip_norm", "clip_value")
DIAGNOSIS_DEFAULTS = {
    "vanishing": 1e-7, "exploding": 1e3, "saturated": 1e-7,
    # a stall: |ΔE|/|E| below `plateau` for `plateau_window` steps running while E − E_min is above
    # plateau_far × (E₀ − E_min); `depth_ratio`: a layer's ‖∇‖ below this fraction of the output layer's;
    # |Δθ|/|θ| below update_frozen or above update_unstable; a saturating unit within `saturation` of
    # its level; `oscillation` sign changes of ΔE in a row
    "plateau": 1e-4, "plateau_window": 5, "plateau_far": 0.1, "depth_ratio": 1e-2,
    "update_frozen": 1e-4, "update_unstable": 1e-1, "saturation": 1e-2, "oscillation": 3,
}
DIAGNOSIS_KEYS = tuple(DIAGNOSIS_DEFAULTS)
DIAGNOSIS_COUNTS = ("plateau_window", "oscillation")   # whole numbers of steps


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
        """Units per layer, input layer first: [n_inputs, units_1, ..., units_L] (n_inputs: the
        features per time step of sequences)."""
        return [self.inputs.shape[-1]] + [layer.units for layer in self.layers]

    @property
    def per_time_targets(self):
        """Targets samples × time × outputs (many-to-many): the dense layers after the recurrent ones
        read every h_t, and a sample's loss is the sum over time of the loss at each time step."""
        return self.targets.ndim == 3

    @property
    def time_steps(self):
        """The length of the input sequences (inputs samples × time × features), None for plain rows."""
        return self.inputs.shape[1] if self.inputs.ndim == 3 else None

    @property
    def batch_size(self):
        return self.inputs.shape[0] if self.batch is None else self.batch

    def __repr__(self):
        from tracer import notebook
        return notebook.scenario_repr(self)

    def _repr_html_(self):
        from tracer import notebook
        return notebook.scenario_html(self)


# ---------------------------------------------------------------- loading

def load(reference, overrides=(), steps=None):
    """Load a scenario from a path or a built-in template name, apply `key.path=value` overrides."""
    path = Path(reference)
    if path.is_file() or (_exists(path) and not templates.exists(reference)):
        source, base = str(path), path.parent
        try:
            text = inputs.read_text(path)
        except ValueError as exc:
            raise ScenarioError(source, None, f"cannot read the file: {exc}") from None
    elif templates.exists(reference):
        source, base, text = f"template {reference}", None, templates.read(reference)
    else:
        hint = _did_you_mean(str(reference), templates.names())
        raise ScenarioError(
            shorten(str(reference)), None,
            f"no such file or built-in template{hint} (templates: {', '.join(templates.names())})",
        )
    return loads(text, source=source, base=base, overrides=overrides, steps=steps)


def _exists(path):
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def loads(text, source="<scenario>", base=None, overrides=(), steps=None):
    """Parse TOML text into a validated Scenario."""
    try:
        raw = tomllib.loads(text)
    except ValueError as exc:   # TOMLDecodeError, or an integer of more than 4300 digits
        raise ScenarioError(source, None, f"malformed TOML: {shorten(str(exc), 200)}") from None
    _check_text_lines(text, source)
    for item in overrides:
        _apply_override(raw, item, source)
    if steps is not None:
        raw["steps"] = steps
    if overrides or steps is not None:
        text = dump_toml(raw)
    return from_dict(raw, source=source, base=base, text=text)


# Characters XML 1.0 forbids (C0 controls but tab, LF and CR; lone surrogates; U+FFFE, U+FFFF):
# a workbook cannot hold them, and the scenario's text and strings go into the workbook.
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _unstorable_problem(char):
    if "\ud800" <= char <= "\udfff":
        return f"is not valid Unicode (a lone surrogate U+{ord(char):04X}, from bytes that are not UTF-8)"
    return (f"holds the character U+{ord(char):04X}, which a spreadsheet cannot store (XML 1.0 forbids it); "
            "remove it")


def _check_text_lines(text, source):
    """Refuse scenario text (comments included: the Scenario sheet shows it) a workbook cannot hold."""
    found = _UNSTORABLE.search(text)
    if found:
        line = text.count("\n", 0, found.start()) + 1
        raise ScenarioError(source, f"line {line}", _unstorable_problem(found.group()))


def _check_text_values(node, path, source):
    """Refuse keys and strings (at any depth, e.g. from --set) a workbook cannot hold."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
        for text in (key, value):
            found = _UNSTORABLE.search(text) if isinstance(text, str) else None
            if found:
                raise ScenarioError(source, shorten(where, 60), _unstorable_problem(found.group()))
        _check_text_values(value, where, source)


def _apply_override(raw, item, source):
    if "=" not in item:
        raise ScenarioError(source, shorten(item, 60), "an override must look like key.path=value")
    path, value_text = (part.strip() for part in item.split("=", 1))
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except ValueError:   # not a TOML value (or an integer of more than 4300 digits): a string
        value = value_text
    keys = path.split(".")
    node = raw
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not re.fullmatch(r"[0-9]{1,9}", key) or int(key) >= len(node):
                raise ScenarioError(source, shorten(path, 60), f"--set: '{shorten(key, 20)}' is not an index below {len(node)}")
            key = int(key)
        elif not isinstance(node, dict):
            raise ScenarioError(source, shorten(path, 60), "--set: this key path goes inside a value")
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
    _check_text_values(raw, "", source)
    _check_text_lines(text, source)
    v.keys(raw, TOP_KEYS, "")
    for key in ("steps", "data", "layers"):
        v.require(raw, key, "")
    steps = v.integer(raw, "steps", "", minimum=1)
    seed = v.integer(raw, "seed", "", default=0, minimum=0)
    data_raw = v.table(raw, "data", "")
    raw_inputs, targets = _data(v, data_raw, base)
    normalize = v.choice(data_raw, "normalize", "data", NORMALIZATIONS, default="none")
    if normalize != "none" and raw_inputs.ndim == 3:
        raise ScenarioError(source, "data.normalize", "input normalisation is not available for sequences "
                            "(samples × time × features) yet: use normalize = \"none\"")
    inputs = normalized(raw_inputs, normalize, v)
    layers_raw = raw["layers"]
    if not isinstance(layers_raw, list) or not layers_raw or not all(isinstance(x, dict) for x in layers_raw):
        raise ScenarioError(source, "layers", "must be one or more [[layers]] tables")
    _check_sequence_order(v, layers_raw, inputs)
    widths = [inputs.shape[-1]]
    layers = []
    for index, layer_raw in enumerate(layers_raw):
        layer = layer_kinds.parse(v, layer_raw, f"layers[{index}]", widths[-1], index == len(layers_raw) - 1)
        layers.append(layer)
        widths.append(layer.units)
    if widths[-1] != targets.shape[-1]:
        raise ScenarioError(
            source, f"layers[{len(layers) - 1}].units",
            f"the output layer has {widths[-1]} units but the data has {targets.shape[-1]} target column(s)",
        )
    if targets.ndim == 3:
        for index, layer in enumerate(layers):
            if layer.kind not in ("dense", *(k for k, kind in layer_kinds.LAYERS.items() if kind.recurrent)):
                raise ScenarioError(source, f"layers[{index}].kind", f"with targets at every time step (samples × time "
                                    f"× outputs) the layers after the recurrent ones must be dense, not {layer.kind}")
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
    if layers[-1].activation == "softmax" and loss != "softmax_ce":
        raise ScenarioError(source, "loss.name", f"a softmax output needs loss softmax_ce, not {loss}: the engine "
                            "backpropagates through softmax only fused with its cross-entropy (δ = a·Σt − t)")
    if losses.LOSSES[loss].probabilities:
        _probability_targets(v, targets, loss, "data.targets" if "targets" in data_raw else "data.target_columns")
    optimizer, optimizer_params = _optimizer(v, v.table(raw, "optimizer", ""))
    training = v.table(raw, "training", "", default={})
    v.keys(training, TRAINING_KEYS, "training")
    batch = _batch(v, training, inputs.shape[0])
    for index, layer in enumerate(layers):
        layer_kinds.of(layer).check_batches(v, index, inputs.shape[0], batch)
    shuffle = v.boolean(training, "shuffle", "training", default=False)
    clip_norm, clip_value = (v.number(training, key, "training", positive=True) if key in training else None
                             for key in ("clip_norm", "clip_value"))
    diagnosis = v.table(raw, "diagnosis", "", default={})
    v.keys(diagnosis, DIAGNOSIS_KEYS, "diagnosis")
    thresholds = {k: v.integer(diagnosis, k, "diagnosis", default=d, minimum=1) if k in DIAGNOSIS_COUNTS
                  else v.number(diagnosis, k, "diagnosis", default=d, positive=True) for k, d in DIAGNOSIS_DEFAULTS.items()}
    name = v.string(raw, "name", "", default=Path(source).stem if source != "<scenario>" else "scenario")
    loaded = Scenario(
        name=name, description=v.string(raw, "description", "", default=""), seed=seed, steps=steps,
        inputs=inputs, targets=targets, layers=layers, loss=loss, reduction=reduction,
        raw_inputs=raw_inputs, normalize=normalize,
        optimizer=optimizer, optimizer_params=optimizer_params, batch=batch, shuffle=shuffle,
        clip_norm=clip_norm, clip_value=clip_value,
        thresholds=thresholds, source=source, text=text or dump_toml(raw), raw=raw,
    )
    _check_size(loaded)
    return loaded


def _check_sequence_order(v, layers_raw, inputs):
    """Recurrent layers come first (a stack of them), and input sequences need one: checked on the
    [[layers]] kinds before the layers are parsed (unknown kinds are left to the layer's parse)."""
    kinds = [raw.get("kind", "dense") for raw in layers_raw]
    recurrent = [isinstance(k, str) and k in layer_kinds.LAYERS and layer_kinds.get(k).recurrent for k in kinds]
    for index in range(1, len(kinds)):
        if recurrent[index] and not recurrent[index - 1]:
            raise ScenarioError(v.source, f"layers[{index}].kind", f"a {kinds[index]} layer must come before every "
                                f"non-recurrent layer (layers[{index - 1}] is {kinds[index - 1]})")
    if inputs.ndim == 3 and not recurrent[0]:
        raise ScenarioError(v.source, "layers[0].kind", "input sequences (samples × time × features) need a "
                            "recurrent first layer (kind = \"rnn\", \"lstm\" or \"gru\")")
    if recurrent[0] and inputs.ndim != 3:
        raise ScenarioError(v.source, "data.inputs", f"a {kinds[0]} layer needs input sequences: samples × time × "
                            "features, a 3-deep array like [[[0.5], [0.1]], ...]")


def _check_size(scenario):
    """Refuse, before anything is allocated, a run whose trace would take more than
    records.MAX_BYTES (8 bytes per recorded scalar: steps × samples × quantities, as the
    declarative table of recorded quantities, records.fields, counts them)."""
    needed = trace_bytes(scenario, scenario.steps, scenario.batch_size)
    if needed <= MAX_TRACE_BYTES:
        return
    fixed = trace_bytes(scenario, 0, scenario.batch_size)
    per_step = trace_bytes(scenario, 1, scenario.batch_size) - fixed
    fitting = (MAX_TRACE_BYTES - fixed) // per_step
    cap = f"above tracer's cap of {MAX_TRACE_BYTES / 2**30:g} GiB"
    if fitting >= 1:
        raise ScenarioError(
            scenario.source, "steps",
            f"{shorten(f'{scenario.steps:,}', 40)} steps would need {_size(needed)} of memory for the trace, {cap}: "
            f"use at most {fitting:,} steps (steps = {fitting} or --steps {fitting})",
        )
    widest = max(range(len(scenario.layers)), key=lambda index: scenario.layers[index].units)
    raise ScenarioError(
        scenario.source, f"layers[{widest}].units",
        f"one step would need {_size(per_step + fixed)} of memory for the trace, {cap}: "
        "use fewer units (or a smaller batch)",
    )


def _size(count):
    """A byte count (an int of any size) in words: 8.0 GiB, 12.5 MiB, 3.2 TiB, about 1e+30 PiB."""
    if count < 1024:
        return f"{count} bytes"
    for power, unit in enumerate(("KiB", "MiB", "GiB", "TiB", "PiB"), start=1):
        if count < 1024 ** (power + 1) or unit == "PiB":
            break
    whole = count // 1024 ** power
    if whole >= 10 ** 15:   # beyond a float's exact range (or range): the order of magnitude
        return f"about 1e+{len(str(whole)) - 1} {unit}"
    return f"{count / 1024 ** power:,.1f} {unit}"


def normalized(raw_inputs, normalize, v=None):
    """x̂ = (x − μ)/σ (standard, population σ) or (x − min)/(max − min) (minmax), per input column."""
    if normalize == "none":
        return raw_inputs
    source = v.source if v else "<scenario>"
    result, first, spread = procedures.normalize_columns(raw_inputs, normalize)
    if (spread == 0).any():
        column = int(np.flatnonzero(spread == 0)[0])
        raise ScenarioError(source, "data.normalize",
                            f"input column {column} is constant, so it cannot be {normalize}-normalised")
    # statistics beyond the largest double: numpy would turn finite data into 0 or NaN, a
    # spreadsheet shows #NUM!; neither is a normalisation, so refuse
    overflow = ~np.isfinite(first) | ~np.isfinite(spread) | ~np.isfinite(result).all(axis=0)
    if overflow.any():
        column = int(np.flatnonzero(overflow)[0])
        what = "max − min" if normalize == "minmax" else "its mean or standard deviation"
        raise ScenarioError(source, "data.normalize",
                            f"input column {column}: {what} would overflow the largest double (|x| up to "
                            f"{np.abs(raw_inputs[:, column]).max():.3g}), so it cannot be {normalize}-normalised; scale the data")
    return result


def _data(v, data, base):
    v.keys(data, DATA_KEYS, "data")
    if "file" in data:
        for key in ("input_columns", "target_columns"):
            v.require(data, key, "data")
        inputs, targets = _read_data_file(v, data, base)
    else:
        v.require(data, "inputs", "data")
        v.require(data, "targets", "data")
        inputs = v.sequences(data, "inputs", "data") if _three_deep(data["inputs"]) else v.matrix(data, "inputs", "data")
        targets = v.sequences(data, "targets", "data") if _three_deep(data["targets"]) else v.matrix(data, "targets", "data")
    if targets.ndim == 3:
        if inputs.ndim != 3:
            raise ScenarioError(v.source, "data.targets", "targets per time step (samples × time × outputs) need "
                                "input sequences (samples × time × features)")
        if targets.shape[1] != inputs.shape[1]:
            raise ScenarioError(v.source, "data.targets", f"{targets.shape[1]} time steps of targets for "
                                f"{inputs.shape[1]} time steps of inputs")
    if inputs.shape[0] != targets.shape[0]:
        raise ScenarioError(
            v.source, "data.targets", f"{targets.shape[0]} target rows for {inputs.shape[0]} input rows",
        )
    return inputs, targets


def _three_deep(value):
    """A list of lists of lists (samples × time × features): sequences for recurrent layers."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], list) and bool(value[0]) \
        and isinstance(value[0][0], list)


def _read_data_file(v, data, base):
    name = v.string(data, "file", "data")
    path = Path(name) if base is None or Path(name).is_absolute() else Path(base) / name
    try:
        rows = inputs.read_csv(path)
    except ValueError as exc:
        raise ScenarioError(v.source, "data.file", str(exc)) from None
    if len(rows) < 2:
        raise ScenarioError(v.source, "data.file", f"{path} needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    picked = []
    for key in ("input_columns", "target_columns"):
        columns = data[key]
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
            raise ScenarioError(v.source, f"data.{key}", f"must be a non-empty list of column names, not {describe(columns)}")
        indices = []
        for column in columns:
            if column not in header:
                hint = _did_you_mean(column, header)
                raise ScenarioError(v.source, f"data.{key}", f"no column '{shorten(column, 60)}' in {path}{hint}")
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


def _probability_targets(v, targets, loss, key):
    """Cross-entropy targets are probabilities in [0, 1]; outside, E has no minimum (u → ±∞)."""
    outside = np.argwhere((targets < 0) | (targets > 1))
    if outside.size:
        where = [int(i) for i in outside[0]]
        at = f"row {where[0]}, column {where[-1]}" if len(where) == 2 else f"sample {where[0]}, time {where[1]}, column {where[2]}"
        raise ScenarioError(v.source, key, f"{at}: target {targets[tuple(where)]!r} is outside [0, 1]; "
                            f"{loss} targets are probabilities (rows need not sum to 1)")


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
            raise ScenarioError(v.source, f"optimizer.{param}", f"must not be negative, not {describe(value)}")
        if param in ("momentum", "alpha") and not value < 1:
            raise ScenarioError(v.source, f"optimizer.{param}", f"must be below 1, not {describe(value)}")
        params[param] = value
    if "beta1" in definition.params:
        betas = raw.get("betas", [definition.params["beta1"], definition.params["beta2"]])
        if (not isinstance(betas, list) or len(betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
            raise ScenarioError(v.source, "optimizer.betas", f"must be two numbers in [0, 1), not {describe(betas)}")
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
        raise ScenarioError(v.source, "training.batch", f"must be \"full\" or a positive integer, not {describe(batch)}")
    if batch > n_samples:
        raise ScenarioError(v.source, "training.batch", f"{batch} is larger than the {n_samples} samples")
    return None if batch == n_samples else batch


def _did_you_mean(word, candidates):
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def describe(value):
    """A TOML value as a message names it: 'an array [1]', 'the date 1979-05-27', '"text"', 3.5."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        kind = ("date-time" if isinstance(value, datetime.datetime)
                else "date" if isinstance(value, datetime.date) else "time")
        return f"the {kind} {value.isoformat()}"
    if isinstance(value, list):
        return f"an array {shorten(repr(value), 60)}"
    if isinstance(value, dict):
        return f"a table {shorten(repr(value), 60)}"
    return shorten(repr(value), 60)


def _finite(value):
    """A TOML number as a finite float, or None (NaN, ±inf, or an integer beyond the float range)."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Validator:
    """Typed getters that raise ScenarioError with the file and key path. Each checks the type
    first, so a value of any TOML type (array, table, date, bool, string, number) is refused in
    one line, never passed on to a lookup or to numpy."""

    def __init__(self, source):
        self.source = source

    def _key(self, where, key):
        return f"{where}.{key}" if where else key

    def fail(self, where, key, problem):
        raise ScenarioError(self.source, self._key(where, key), problem)

    def keys(self, table, allowed, where):
        for key in table:
            if key not in allowed:
                hint = _did_you_mean(key, allowed)
                self.fail(where, shorten(key, 60) or '""', f"unknown key{hint}")

    def require(self, table, key, where):
        if key not in table:
            self.fail(where, key, "missing required key")

    def table(self, table, key, where, default=None):
        if key not in table:
            if default is None:
                self.fail(where, key, "missing required table")
            return default
        if not isinstance(table[key], dict):
            self.fail(where, key, f"must be a table ([...]), not {describe(table[key])}")
        return table[key]

    def number(self, table, key, where, default=None, positive=False):
        value = table.get(key, default)
        if not _is_number(value):
            self.fail(where, key, f"must be a number, not {describe(value)}")
        number = _finite(value)
        if number is None:
            self.fail(where, key, f"must be a finite number, not {describe(value)}")
        if positive and number <= 0:
            self.fail(where, key, f"must be positive, not {describe(value)}")
        return number

    def integer(self, table, key, where, default=None, minimum=None):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, key, f"must be an integer, not {describe(value)}")
        if minimum is not None and value < minimum:
            self.fail(where, key, f"must be at least {minimum}, not {describe(value)}")
        return value

    def string(self, table, key, where, default=None):
        value = table.get(key, default)
        if not isinstance(value, str):
            self.fail(where, key, f"must be a string, not {describe(value)}")
        return value

    def boolean(self, table, key, where, default=None):
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.fail(where, key, f"must be true or false, not {describe(value)}")
        return value

    def choice(self, table, key, where, known, default=None):
        value = table.get(key, default)
        if value is None:
            self.fail(where, key, "missing required key")
        if not isinstance(value, str):
            self.fail(where, key, f"must be a name (one of: {', '.join(known)}), not {describe(value)}")
        if value not in known:
            hint = _did_you_mean(value, known)
            self.fail(where, key, f"unknown {key.replace('_', ' ')} '{shorten(value, 60)}'{hint} (known: {', '.join(known)})")
        return value

    def matrix(self, table, key, where):
        """A non-empty array of equally long, non-empty rows of finite numbers."""
        value = table[key]
        if not isinstance(value, list) or not value or not all(isinstance(row, list) for row in value):
            self.fail(where, key, f"must be a non-empty list of rows ([[...], ...]), not {describe(value)}")
        width = len(value[0])
        for index, row in enumerate(value):
            if not row:
                self.fail(where, key, f"row {index} is empty")
            if len(row) != width:
                self.fail(where, key, f"ragged rows: row {index} has {len(row)} values, row 0 has {width}")
            for item in row:
                if not _is_number(item):
                    self.fail(where, key, f"row {index}: non-numeric value {describe(item)}")
                if _finite(item) is None:
                    self.fail(where, key, f"row {index}: NaN or infinite value {describe(item)}")
        return np.array([[float(item) for item in row] for row in value], dtype=float)

    def sequences(self, table, key, where):
        """A non-empty samples × time × values array: every sample as many time steps, every time
        step as many finite numbers (a ragged sequence is refused, naming the sample)."""
        value = table[key]
        first = value[0]
        for index, sample in enumerate(value):
            if not isinstance(sample, list) or not sample or not all(isinstance(row, list) for row in sample):
                self.fail(where, key, f"sample {index} must be a non-empty list of time steps ([[...], ...]), "
                          f"not {describe(sample)}")
            if len(sample) != len(first):
                self.fail(where, key, f"ragged sequences: sample {index} has {len(sample)} time steps, sample 0 has {len(first)}")
            try:
                rows = self.matrix({key: sample}, key, where)
            except ScenarioError as exc:
                self.fail(where, key, f"sample {index}: {exc.problem}")
            if rows.shape[1] != len(first[0]):
                self.fail(where, key, f"sample {index} has {rows.shape[1]} values per time step, sample 0 has {len(first[0])}")
        return np.array([[[float(item) for item in row] for row in sample] for sample in value], dtype=float)

    def vector(self, table, key, where):
        value = table[key]
        if not isinstance(value, list) or not value:
            self.fail(where, key, f"must be a non-empty list of numbers, not {describe(value)}")
        return self.matrix({key: [value]}, key, where)[0]


# ---------------------------------------------------------------- TOML output

def dump_toml(raw):
    """Write a parsed scenario dict back as TOML (scalars first, then tables, then arrays of tables).

    Every type tomllib produces is written (strings, integers, floats with nan/inf, booleans,
    dates, times, date-times, arrays, tables), so tomllib.loads(dump_toml(raw)) == raw."""
    lines = []
    _dump_table(raw, [], lines)
    return "\n".join(lines).strip() + "\n"


def _dump_table(table, path, lines):
    scalars = {k: v for k, v in table.items() if not _is_table(v) and not _is_table_array(v)}
    for key, value in scalars.items():
        lines.append(f"{_toml_key(key)} = {toml_value(value)}")
    for key, value in table.items():
        header = ".".join(_toml_key(k) for k in path + [key])
        if _is_table(value):
            lines.append(f"\n[{header}]")
            _dump_table(value, path + [key], lines)
        elif _is_table_array(value):
            for item in value:
                lines.append(f"\n[[{header}]]")
                _dump_table(item, path + [key], lines)


def _is_table(value):
    return isinstance(value, dict)


def _is_table_array(value):
    return isinstance(value, list) and value and all(isinstance(v, dict) for v in value)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_STRING_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_key(key):
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text):
    """A basic string; control characters, U+FFFE/U+FFFF and lone surrogates as escapes."""
    out = []
    for char in text:
        if char in _STRING_ESCAPES:
            out.append(_STRING_ESCAPES[char])
        elif unicodedata.category(char) in ("Cc", "Cs") or char in "\ufffe\uffff":
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value):
    """One value as TOML text (a string, number, boolean, date/time, array or inline table);
    tomllib reads `key = <this>` back as the value (nan and inf included)."""
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
        return _toml_string(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
