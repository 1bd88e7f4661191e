"""Check a person's hand calculation against the trace, and explain each wrong number.

HAND.csv holds one number per line, `name,value`. Names (a contract):
  u{l}[j]  a{l}[j]  slope{l}[j]  delta{l}[j]        per sample (default sample 0)
  W{l}[i,j]  b{l}[j]                                the value used at the step
  grad W{l}[i,j]  grad b{l}[j]                      the batch gradient (or one sample's with #s)
  update W{l}[i,j]  update b{l}[j]                  Δθ subtracted at the step
  loss                                              the batch loss (or one sample's with #s)
each optionally followed by @t (step, default 0) and #s (data row of the sample).
A recurrent layer (rnn, lstm, gru) has one value per time step: its names take ~k, the time step,
before @t and #s (a contract):
  u{l}[j]~k  h{l}[j]~k  slope{l}[j]~k  e{l}[j]~k  delta{l}[j]~k     at time step k, per sample
  Wh{l}[i,j]  bh{l}[j]  (and W, b) with grad / update as above      the sums over time
  grad W{l}[i,j]~k  grad Wh{l}[i,j]~k  grad b{l}[j]~k  grad bh{l}[j]~k   time step k's contribution (per sample)
e.g. h1[0]~3@0#1 is h of layer 1, unit 0, at time step 3 of training step 0 for sample 1; a{l}[j]
of a recurrent layer is its last hidden state h~(T−1) (what the dense layer above reads).
A number is right when it equals the engine's value at the precision it was written with:
0.2413 stands for [0.24125, 0.24135], so it matches 0.241300709 and 0.2414 does not.

For a wrong number, its local chain-rule formula is evaluated again with the person's own
numbers where they gave them. If that reproduces their value, the mistake is earlier: it is a
consequence (of a wrong number) or a value carried forward after rounding (of a right but
rounded one). Otherwise it is a new mistake, and the recognisable slips are tried: a sign
flip, a factor 2 or ½ from the loss, the update's sign or learning rate, one factor taken
from another unit, sample or step, and the next layer's weights already updated (layer by
layer instead of all at once). When none fits, the report says which factor would have to
change, and to what.
"""
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
import itertools
import json
import math
import re

import numpy as np

from tracer.maths import activations, losses, optim
from tracer.training import inputs
from tracer import layers
from tracer.explain.chain import parse_parameter
from tracer.errors import InputError, LibreOfficeMissing, TracerError, shorten

_NAME = re.compile(
    r"^(?:(grad|update)\s+)?(u|a|h|e|slope|delta|Wh|bh|W|b|gamma|beta|loss)([0-9]{1,9})?"
    r"(?:\[([0-9]{1,9})(?:,\s*([0-9]{1,9}))?\])?(?:~([0-9]{1,9}))?(?:@([0-9]{1,9}))?(?:#([0-9]{1,9}))?$"
)
PER_SAMPLE = ("u", "a", "h", "e", "slope", "delta")
THROUGH_TIME = ("u", "h", "e", "slope", "delta")      # one value per time step on a recurrent layer
PARAMETERS = ("W", "b", "Wh", "bh")                   # stored parameter names (gamma, beta are W, b)
PHASE = {"W": 0, "b": 0, "Wh": 0, "bh": 0, "u": 1, "a": 1, "h": 1, "loss": 2, "slope": 3, "e": 3, "delta": 3,
         "grad_W": 4, "grad_b": 4, "grad_Wh": 4, "grad_bh": 4, "update_W": 5, "update_b": 5, "update_Wh": 5, "update_bh": 5}


def parameter_of(quantity):
    """The stored parameter a quantity is about (W of grad_W, Wh of update_Wh), or None."""
    name = quantity.split("_", 1)[1] if quantity.startswith(("grad_", "update_")) else quantity
    return name if name in PARAMETERS else None


@dataclass(frozen=True)
class Key:
    quantity: str          # u a slope delta W b grad_W grad_b update_W update_b loss
    layer: int | None
    index: tuple
    step: int
    sample: int | None     # data row; None for batch values and parameters
    time: int | None = None   # time step of a recurrent layer's quantity (~k), None without one

    def label(self, scenario=None):
        param = parameter_of(self.quantity)
        prefix = self.quantity.split("_", 1)[0] + " " if param and "_" in self.quantity else ""
        if self.quantity == "loss":
            text = "loss"
        elif scenario is not None and param and self.layer:
            layer = scenario.layers[self.layer - 1]
            text = f"{prefix}{layers.of(layer).param_name(param, self.layer, self.index)}"
        else:
            letter = param or self.quantity
            text = f"{prefix}{letter}{self.layer}[{','.join(map(str, self.index))}]"
        if self.time is not None:
            text += f"~{self.time}"
        text += f"@{self.step}"
        return text + (f"#{self.sample}" if self.sample is not None else "")


@dataclass
class Entry:
    line: int
    text: str
    key: Key
    written: str
    value: float
    tolerance: float


@dataclass
class Result:
    entry: Entry
    engine: float
    right: bool
    kind: str = "right"           # right | mistake | consequence | rounding
    explanation: str = ""
    causes: list = field(default_factory=list)

    def __repr__(self):
        from tracer import notebook
        return notebook.hand_result_repr(self)

    def _repr_html_(self):
        from tracer import notebook
        return notebook.hand_results_html([self])


def tolerance_of(text):
    """Half a unit in the last written digit: '0.2413' -> 5e-5, '1.83e18' -> 5e15, '379' -> 0.5;
    inf when that unit is beyond the float range ('0e999'). ValueError for text that is not a
    number or is NaN/infinity."""
    try:
        exponent = Decimal(text.strip()).as_tuple().exponent
    except InvalidOperation:
        raise ValueError(text) from None
    if not isinstance(exponent, int):     # 'n', 'N' (NaN) or 'F' (infinity)
        raise ValueError(text)
    try:
        return 0.5 * 10.0 ** exponent
    except OverflowError:
        return math.inf


def written_number(text):
    """(value, tolerance) of a number as a person wrote it; ValueError unless both are finite."""
    value, tolerance = float(text), tolerance_of(text)
    if not (math.isfinite(value) and math.isfinite(tolerance)):
        raise ValueError(text)
    return value, tolerance


def parse_name(text, trace, line=0, source="hand"):
    """A hand name ('grad W1[0,2]@1#3') -> Key, checked against the network's shape and steps."""
    match = _NAME.match(text.strip())
    where = f"{source} line {line}" if line else source
    shown = shorten(repr(text), 60)
    if not match:
        raise InputError(f"{where}: cannot read the name {shown}; write e.g. u1[0], W1[0,1], grad W1[0,1]@2#0 or loss")
    prefix, symbol, layer, first, second, time, step, sample = match.groups()
    s = trace.scenario
    widths, L = s.widths, len(s.layers)
    step = int(step) if step else 0
    sample = int(sample) if sample is not None else None
    time = int(time) if time is not None else None
    if symbol == "loss":
        if prefix or layer or first or time is not None:
            raise InputError(f"{where}: {shown}: write the loss as loss, loss@t or loss@t#s")
        quantity, layer, index = "loss", None, ()
    else:
        if layer is None or first is None:
            raise InputError(f"{where}: {shown} needs a layer and an index, e.g. {symbol}1[0]")
        layer = int(layer)
        if not 1 <= layer <= L:
            raise InputError(f"{where}: {shown}: layers are 1..{L}")
        if symbol in ("W", "b", "Wh", "bh", "gamma", "beta"):
            parameter = f"{symbol}{layer}[{first}" + (f",{second}" if second is not None else "") + "]"
            symbol, layer, index = parse_parameter(parameter, widths, s, where=f"{where}: {shown}")
        elif int(first) >= widths[layer] or second is not None:
            raise InputError(f"{where}: {shown}: layer {layer} has units 0..{widths[layer] - 1}")
        else:
            index = (int(first),)
        if prefix and symbol not in PARAMETERS:
            raise InputError(f"{where}: {shown}: '{prefix}' applies to parameters only (W, b, gamma, beta)")
        quantity = f"{prefix}_{symbol}" if prefix else symbol
        _check_time(s, quantity, layer, time, where, shown)
        if time is not None and quantity.startswith("grad_") and sample is None:
            sample = 0       # a time step's contribution belongs to one sample (default 0, as u, a, ...)
    last = trace.steps if quantity in PARAMETERS else trace.steps - 1
    if not 0 <= step <= last:
        raise InputError(f"{where}: {shown}: step {step} is outside 0..{last}")
    if quantity in PER_SAMPLE and sample is None:
        sample = 0
    if (quantity in PARAMETERS or quantity.startswith("update_")) and sample is not None:
        raise InputError(f"{where}: {shown}: parameters and updates belong to the step, not to a sample")
    if sample is not None and sample not in trace.samples(step).tolist():
        raise InputError(f"{where}: {shown}: sample {sample} is not in step {step}'s batch {trace.samples(step).tolist()}")
    return Key(quantity, layer, index, step, sample, time)


def _check_time(s, quantity, l, time, where, shown):
    """A time step (~k) where the layer is recurrent and the quantity has one; required for the
    quantities a recurrent layer has at every time step; within 0..T−1."""
    from tracer.explain import through_time
    layer = s.layers[l - 1]
    recurrent = through_time.is_recurrent(layer)
    timed = recurrent or getattr(s, "per_time_targets", False)   # dense layers at every time step: targets per time step
    if quantity in ("h", "e") and not recurrent:
        raise InputError(f"{where}: {shown}: h and e are the hidden state and the error through time of a recurrent "
                         f"layer; layer {l} is a {layer.kind} layer")
    if time is None:
        if timed and quantity in THROUGH_TIME + ("a",) and not (recurrent and quantity == "a"):
            what = f"a {layer.kind} layer" if recurrent else "a layer at every time step (targets per time step)"
            raise InputError(f"{where}: {shown}: layer {l} is {what}: give the time step, "
                             f"e.g. {quantity}{l}[0]~0 (time steps 0..{s.inputs.shape[1] - 1})")
        return
    if not timed:
        raise InputError(f"{where}: {shown}: ~{time} is a time step, and layer {l} is a {layer.kind} layer without one")
    if not recurrent and quantity.startswith("grad_"):
        raise InputError(f"{where}: {shown}: the engine keeps a dense layer's gradient summed over time (no ~k)")
    if not (quantity in THROUGH_TIME or quantity.startswith("grad_")):
        raise InputError(f"{where}: {shown}: ~k applies to u, h, slope, e, delta and a gradient's contribution "
                         "(grad W, grad Wh, grad b, grad bh); parameters and updates belong to the step")
    if time >= s.inputs.shape[1]:
        raise InputError(f"{where}: {shown}: time step {time} is outside 0..{s.inputs.shape[1] - 1}")


def _name_lines(path, second):
    """(line number, name, text after the last comma) of a `name,<second>` CSV; skips blank lines
    and an optional header line. A name may hold commas (W1[0,1]), so the split is at the last one."""
    try:
        lines = inputs.read_text(path).splitlines()
    except ValueError as exc:
        raise InputError(f"{path}: cannot read the file: {exc}") from None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or (number == 1 and line.replace(" ", "").lower() == f"name,{second}"):
            continue
        if "," not in line:
            raise InputError(f"{path} line {number}: expected name,{second}, not {shorten(repr(line), 60)}")
        name, other = (part.strip() for part in line.rsplit(",", 1))
        yield number, name, other


def read_hand(path, trace):
    """Read HAND.csv (name,value per line; an optional header line 'name,value')."""
    entries = []
    for number, name, written in _name_lines(path, "value"):
        shown = shorten(repr(written), 60)
        try:
            float(written)
        except ValueError:
            raise InputError(f"{path} line {number}: {shown} is not a number") from None
        try:
            value, tol = written_number(written)
        except ValueError:
            raise InputError(f"{path} line {number}: {shown} is not a finite number") from None
        entries.append(Entry(number, name, parse_name(name, trace, number, str(path)), written, value, tol))
    if not entries:
        raise InputError(f"{path}: no numbers to check")
    return entries


_CELL = re.compile(r"^\$?([A-Za-z]+)\$?([0-9]+)$")
MAX_COLUMN, MAX_ROW = 16_384, 1_048_576      # XFD, the last column; the last row
_SPREADSHEET_MAGIC = {b"PK\x03\x04": "a zip archive (xlsx, xlsm, ods)",
                      b"\xd0\xcf\x11\xe0": "an OLE2 file (xls)"}


def parse_cell(text):
    """'Sheet1!C7', "'My sheet'!$C$7" or 'C7' -> (sheet name or None, 'C7'); ValueError (one
    sentence) for anything else: a range, an empty address, a column beyond XFD or a row
    outside 1..1048576."""
    sheet, bang, address = text.strip().rpartition("!")
    sheet = sheet.strip()
    if len(sheet) >= 2 and sheet[0] == sheet[-1] == "'":
        sheet = sheet[1:-1].replace("''", "'")
    if bang and not sheet:
        raise ValueError("no sheet name before '!'")
    address = address.strip()
    if not address:
        raise ValueError("no cell after '!', e.g. Sheet1!C7" if bang else "no cell given, e.g. Sheet1!C7")
    if ":" in address:
        raise ValueError(f"{shorten(address, 30)} is a range; give one cell, e.g. C7")
    match = _CELL.match(address)
    if not match:
        raise ValueError(f"{shorten(repr(address), 30)} is not a cell reference such as C7 or Sheet1!C7")
    letters, digits = match.group(1).upper(), match.group(2)
    column = 0
    for letter in letters[:4]:
        column = column * 26 + ord(letter) - ord("A") + 1
    if len(letters) > 3 or column > MAX_COLUMN:
        raise ValueError(f"column {shorten(letters, 20)} is beyond XFD, the last column")
    if len(digits) > 7 or not 1 <= int(digits) <= MAX_ROW:
        raise ValueError(f"row {shorten(digits, 20)} is outside the rows 1..{MAX_ROW:,}")
    return sheet or None, f"{letters}{int(digits)}"


def _check_spreadsheet_file(path):
    """Refuse, before LibreOffice is started, a HAND workbook that is not a spreadsheet file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror})") from None
    if not head:
        raise InputError(f"{path}: the file is empty, not a workbook")
    if head not in _SPREADSHEET_MAGIC:
        raise InputError(f"{path}: not a workbook (an .xlsx or .ods file is a zip archive, an .xls an OLE2 file)")


def read_workbook(path, mapping, trace):
    """Recompute a person's workbook with LibreOffice, then read the cells `mapping` (name,cell per
    line, e.g. `grad W1[0,0],Sheet1!C7`) names. Full-precision values are compared to 1e-9 relative."""
    import tempfile
    from openpyxl import load_workbook
    from tracer.recalc import libreoffice
    pairs = []
    for number, name, cell in _name_lines(mapping, "cell"):
        key = parse_name(name, trace, number, str(mapping))
        try:
            sheet_name, address = parse_cell(cell)
        except ValueError as exc:
            raise InputError(f"{mapping} line {number}: {shorten(cell, 40)}: {exc}") from None
        pairs.append((number, name, key, cell, sheet_name, address))
    if not pairs:
        raise InputError(f"{mapping}: no cells to check")
    _check_spreadsheet_file(path)
    with tempfile.TemporaryDirectory(prefix="tracer-check-") as folder:
        try:
            recomputed = libreoffice.convert(path, "xlsx", folder)
            book = load_workbook(recomputed, data_only=True)
        except LibreOfficeMissing:
            raise
        except (TracerError, OSError, ValueError, KeyError) as exc:
            reason = "; ".join(str(exc).split("\n")[:1])
            raise InputError(f"{path}: cannot be opened as a workbook ({shorten(reason, 120)})") from None
        entries = []
        for number, name, key, cell, sheet_name, address in pairs:
            sheet_name = sheet_name or book.sheetnames[0]
            if sheet_name not in book.sheetnames:
                raise InputError(f"{mapping} line {number}: no sheet {shorten(repr(sheet_name), 40)} in {path} "
                                 f"(its sheets: {shorten(', '.join(book.sheetnames), 80)})")
            value = book[sheet_name][address].value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{mapping} line {number}: {shorten(cell, 40)} holds {shorten(repr(value), 40)}, not a number")
            value = float(value)
            if not math.isfinite(value):
                raise InputError(f"{mapping} line {number}: {shorten(cell, 40)} holds {value!r}, not a finite number")
            entries.append(Entry(number, name, key, repr(value), value, max(1e-9 * abs(value), 1e-15)))
    return entries


# ------------------------------------------------------------------ the engine's values

def engine_value(trace, key):
    """The engine's value of a hand-check key, read with the Trace's accessor."""
    slot = None if key.sample is None else trace.samples(key.step).tolist().index(key.sample)
    kind = "total" if slot is None else "sample"
    if key.time is not None:     # a recurrent layer's value at a time step: key (name, l, (t, ...))
        name = f"{key.quantity}_time" if key.quantity.startswith("grad_") else key.quantity
        return float(trace.values((name, key.layer, (key.time,) + tuple(key.index)), kind, key.step, slot or 0, key.sample or 0))
    return float(trace.values((key.quantity, key.layer, key.index), kind, key.step, slot or 0, key.sample or 0))


# ------------------------------------------------------------------ local formulas

class Local:
    """Evaluate one quantity's local chain-rule formula from the values `get` supplies."""

    def __init__(self, trace):
        self.trace = trace
        self.s = trace.scenario
        self.memo = {}     # key -> (value, keys used) recomputed from one check's written numbers

    def inputs(self, key):
        """True when the quantity has a local formula (step-0 parameters are the starting values)."""
        if key.quantity in PARAMETERS and key.step == 0:
            return False
        if key.layer is None:        # the loss: per sample a sum over time steps with targets per time step
            return not (getattr(self.s, "per_time_targets", False) and key.sample is not None)
        layer = self.s.layers[key.layer - 1]
        return layers.of(layer).check_recomputes(layer, self.s, key.quantity, key.time, key.sample)

    def __call__(self, key, get):
        q, l, t, smp = key.quantity, key.layer, key.step, key.sample
        s, widths, L = self.s, self.s.widths, len(self.s.layers)
        if q in PARAMETERS:
            layer = s.layers[l - 1]
            if q in getattr(layers.of(layer), "bias_params", ("b",)) and not layer.train_bias:
                return get(Key("b", l, key.index, t - 1, None))
            return get(Key(q, l, key.index, t - 1, None)) - get(Key(f"update_{q}", l, key.index, t - 1, None))
        if q.startswith("update_"):
            g = get(Key(q.replace("update", "grad"), l, key.index, t, None))
            factor = 1.0 if self.trace.clip_factor is None else float(self.trace.clip_factor[t])
            g = g * factor
            if s.clip_value is not None:
                g = min(s.clip_value, max(-s.clip_value, g))
            kind = parameter_of(q)
            theta = engine_value(self.trace, Key(kind, l, key.index, t, None))
            before = {name: value[key.index] for name, value in self.trace.state_before(kind, l - 1, t).items()}
            hyper = dict(s.optimizer_params, lr=float(self.trace.lr[t]))
            update, _ = optim.OPTIMIZERS[s.optimizer].step(np.float64(g), theta, before, hyper, t + 1)
            return float(update)
        if q.startswith("grad_") and smp is None:
            per = [get(Key(q, l, key.index, t, int(x))) for x in self.trace.samples(t)]
            total = sum(per[1:], per[0])
            return total / len(per) if s.reduction == "mean" else total
        layer = s.layers[l - 1] if l else None
        kind = layers.of(layer) if l else None
        own = kind.check_value(layer, q, l, key.index, key.time, _Sample(self, t, smp, get)) if l else None
        if own is not None:
            return own
        if q == "grad_W":
            return kind.check_grad_W(layer, l, key.index[0], key.index[1], _Sample(self, t, smp, get))
        if q == "grad_b":
            return get(Key("delta", l, key.index, t, smp))
        if q == "loss" and smp is None:
            per = [get(Key("loss", None, (), t, int(x))) for x in self.trace.samples(t)]
            total = sum(per[1:], per[0])
            return total / len(per) if s.reduction == "mean" else total
        if q == "loss":
            u = np.array([[get(Key("u", L, (k,), t, smp)) for k in range(widths[-1])]])
            a = np.array([[get(Key("a", L, (k,), t, smp)) for k in range(widths[-1])]])
            return float(losses.LOSSES[s.loss].value(u, a, s.targets[[smp]])[0])
        j = key.index[0]
        act = activations.get(s.layers[l - 1].activation)
        params = s.layers[l - 1].activation_params
        if q == "u":
            return kind.check_u(layer, l, j, _Sample(self, t, smp, get))
        if q == "a":
            if act.elementwise:
                h = float(act.forward(np.array([get(Key("u", l, (j,), t, smp))]), params)[0])
            else:
                u = np.array([[get(Key("u", l, (k,), t, smp)) for k in range(widths[l])]])
                h = float(act.forward(u, params)[0, j])
            return kind.check_combine(layer, l, j, h, _Sample(self, t, smp, get))
        if q == "slope":
            u = get(Key("u", l, (j,), t, smp))
            if kind.activated(layer) == "a":
                a = get(Key("a", l, (j,), t, smp))
            else:   # the slope reads f(u), not f(u) + the skip
                a = float(act.forward(np.array([u]), params)[0])
            if act.elementwise:
                return float(act.slope(np.array([u]), np.array([a]), params)[0])
            return a * (1 - a)
        if q == "delta":
            loss = losses.LOSSES[s.loss]
            if l == L:
                y = np.array([[get(Key("a", L, (k,), t, smp)) for k in range(widths[-1])]])
                target = s.targets[[smp]]
                slope = get(Key("slope", l, (j,), t, smp)) if loss.reads_output_slope else None
                return float(loss.output_delta(y, target, slope)[0, j])
            return get(Key("slope", l, (j,), t, smp)) * self.error(l, j, t, smp, get)
        raise ValueError(key)

    def error(self, l, j, t, smp, get):
        """e⁽ˡ⁾ⱼ, the error layer l+1 passes down (its kind's check_error_down)."""
        above = self.s.layers[l]
        return layers.of(above).check_error_down(above, l + 1, j, _Sample(self, t, smp, get))

    def below(self, layer, i, t, sample, get):
        if layer == 1:
            return float(self.s.inputs[sample, i])
        return get(Key("a", layer - 1, (i,), t, sample))


class _Sample:
    """The accessor a layer kind's check face reads (see layers/protocol.py): the values of one sample
    at one step as `get` supplies them, the layer below's output, and the engine's values of the
    quantities a hand check does not recompute (batch statistics)."""

    def __init__(self, local, step, sample, get):
        self.local, self.step, self.sample, self.get = local, step, sample, get

    @property
    def trace(self):
        return self.local.trace

    @property
    def slot(self):
        """The sample's place in the step's batch."""
        return self.local.trace.samples(self.step).tolist().index(self.sample)

    def __call__(self, quantity, l, index, time=None):
        sample = None if quantity in PARAMETERS else self.sample
        return self.get(Key(quantity, l, tuple(index), self.step, sample, time))

    def below(self, l, i):
        return self.local.below(l, i, self.step, self.sample, self.get)

    def error(self, l, j):
        return self.local.error(l, j, self.step, self.sample, self.get)

    def fan_in(self, l):
        return self.local.s.widths[l - 1]

    def engine(self, quantity, l, index):
        kinds = {layers.of(layer).name: layers.of(layer) for layer in self.local.s.layers}
        if not any(quantity in kind.engine_only for kind in kinds.values()):
            raise ValueError(f"{quantity} is not an engine-only quantity of this network's layer kinds")
        trace = self.local.trace
        slot = trace.samples(self.step).tolist().index(self.sample)
        return float(trace.values((quantity, l, index[-1]), "sample", self.step, slot, self.sample))


# ------------------------------------------------------------------ the check

def _matches(value, target, tolerance):
    return math.isfinite(value) and abs(value - target) <= tolerance * (1 + 1e-9) + 1e-300


class _Values:
    """Values for recomputation: the person's where written, or a substitute for a direct factor;
    where not written, recomputed from the person's numbers within the step (so a number follows
    from their earlier ones even through quantities they skipped), without substitutions; the
    engine's for parameters and the data.

    Each unwritten quantity is computed once per `memo` (its value does not depend on the
    substitutions, which act on direct factors only), and `used` is an ordered set: the keys a
    value depends on are collected once each, so an explanation costs time polynomial in the
    size of the network, not one evaluation per path through its layers."""

    def __init__(self, trace, written, substitute=None, local=None, memo=None):
        self.trace, self.written, self.substitute = trace, written, substitute or {}
        self.local = local or Local(trace)
        self.memo = self.local.memo if memo is None else memo
        self.used, self.direct = {}, {}       # ordered sets (dicts with None values)
        self.substituted = {}                 # key -> value of a computed substitute, once each

    def __call__(self, key):
        self.used[key] = None
        self.direct[key] = None
        if key in self.substitute:
            other = self.substitute[key]
            if not callable(other):
                return self._value(other)
            if key not in self.substituted:
                self.substituted[key] = other(self)
            return self.substituted[key]
        return self._value(key)

    def _value(self, key):
        if key in self.written:
            return self.written[key]
        if key.quantity in PARAMETERS or not self.local.inputs(key):
            return engine_value(self.trace, key)
        if key.time is not None and key not in self.memo:
            self._through_time_first(key)
        if key not in self.memo:
            plain = _Values(self.trace, self.written, local=self.local, memo=self.memo)
            self.memo[key] = (self.local(key, plain), plain.used)
        value, used = self.memo[key]
        self.used.update(used)
        return value


    def _through_time_first(self, key):
        """Recompute, once per step and sample, the Elman layers' values through time in the order of
        the computation (h forward from time step 0, δ backward from the last), so that a value at one
        time step reads its neighbour's from the memo: the recursion through time stays one step deep
        whatever the length of the sequences. The warm-up's keys are not counted as used by `key`."""
        done = self.local.__dict__.setdefault("through_time_done", set())
        if (key.step, key.sample, id(self.memo)) in done:
            return
        done.add((key.step, key.sample, id(self.memo)))
        s = self.trace.scenario
        T = s.inputs.shape[1]
        recursions = {l: layers.of(layer).check_recursion(layer, T) for l, layer in enumerate(s.layers, start=1)}
        plain = _Values(self.trace, self.written, local=self.local, memo=self.memo)
        for quantity, backward in (("h", False), ("delta", True)):
            for l in sorted(recursions, reverse=backward):
                for k in recursions[l].get(quantity, ()):
                    for j in range(s.layers[l - 1].units):
                        plain._value(Key(quantity, l, (j,), key.step, key.sample, k))


def check(trace, entries):
    """Classify every entry; returns Results in the order of the computation."""
    local = Local(trace)
    written = {e.key: e.value for e in entries}
    results = {}
    order = sorted(entries, key=lambda e: _order(e.key))
    for entry in order:
        engine = engine_value(trace, entry.key)
        result = Result(entry, engine, _matches(engine, entry.value, entry.tolerance))
        results[entry.key] = result
        if result.right:
            continue
        _explain(trace, local, written, results, result)
    return [results[e.key] for e in order]


def _order(key):
    layer = key.layer or 0
    phase = PHASE[key.quantity]
    if key.quantity == "loss":
        layer = 0
    time = -1 if key.time is None else key.time
    if phase == 4 and key.time is None:
        time = math.inf      # a gradient's sum over time after its time steps' contributions
    if phase == 3:
        layer = -layer       # backward: the output layer first, the last time step first
        time = -time
    return (key.step, phase, layer, time, key.index, -1 if key.sample is None else key.sample)


def _explain(trace, local, written, results, result):
    entry = result.entry
    key, person, tol = entry.key, entry.value, entry.tolerance
    engine = result.engine
    if local.inputs(key):
        values = _Values(trace, written, local=local)
        again = local(key, values)
        earlier = [results[k] for k in dict.fromkeys(values.used) if k in results and k != key]
        wrong = [r for r in earlier if not r.right]
        if _matches(again, person, tol) and wrong:
            result.kind, result.causes = "consequence", [r.entry.key for r in wrong]
            result.explanation = (f"a consequence of your earlier {_names(wrong)}: with your numbers the formula "
                                  f"gives {again:.6g}, which is what you wrote; the trace has {engine:.6g}")
            return
        if _matches(again, person, tol) and earlier and not wrong:
            rounded = [r for r in earlier if r.entry.value != r.engine]
            if rounded:
                result.kind, result.causes = "rounding", [r.entry.key for r in rounded]
                result.explanation = (f"a value carried forward after rounding: you used {_names(rounded, written=True)} "
                                      f"as written (rounded) in this calculation, which gives {again:.6g}; with the "
                                      f"unrounded values it is {engine:.6g}. Keep more digits in intermediate results")
                return
    result.kind = "mistake"
    result.explanation = _slip(trace, local, written, key, person, tol, engine)


def _names(results, written=False):
    return ", ".join(f"{r.entry.text} = {r.entry.written}" if written else r.entry.text for r in results)


def _slip(trace, local, written, key, person, tol, engine):
    s = trace.scenario
    q = key.quantity
    if _matches(-engine, person, tol) and engine != 0:
        return f"the sign is flipped: the trace has {engine:.6g}"
    backward = q in ("loss", "delta", "e") or q.startswith(("grad_", "update_"))
    if backward and engine != 0:
        for factor, meaning in ((2.0, "a factor 2 too large"), (0.5, "a factor ½ too small")):
            if _matches(factor * engine, person, tol):
                hint = losses.LOSSES[s.loss].derivative_text
                return (f"{meaning}: a missing ½ or factor 2 in the loss ({s.loss}) or its derivative; {hint}; "
                        f"the trace has {engine:.6g}")
    if q == "e" and key.time is not None:
        text = _time_slip(trace, local, written, key, person, tol, engine)
        if text:
            return text
    if q.startswith("update_") or q in PARAMETERS:
        text = _update_slip(trace, key, person, tol, engine)
        if text:
            return text
    if local.inputs(key):
        text = _substitution(trace, local, written, key, person, tol)
        if text:
            return f"{text}; the trace has {engine:.6g}"
        return _required_factor(trace, local, written, key, person, engine)
    if key.quantity not in PARAMETERS:
        return f"the trace has {engine:.6g} (no hand rule recomputes this number at a time step yet)"
    return f"the starting value differs: the trace has {engine:.6g}"


def _time_slip(trace, local, written, key, person, tol, engine):
    """Slips in the error through time e_k = g_k + Σ_m Wh[j,m]·δ_{k+1}[m]: one of its two parts left out."""
    T = trace.scenario.inputs.shape[1]
    if key.time == T - 1:
        return None
    slot = trace.samples(key.step).tolist().index(key.sample)
    above = layers.of(trace.scenario.layers[key.layer - 1]).error_from_above(trace, key.layer, key.step, slot, key.time,
                                                                               key.index[0])
    if _matches(above, person, tol) and not _matches(engine, person, tol):
        return (f"the error arriving from time step {key.time + 1} is left out: e_k = g_k + Σ_m Wh[j,m]·δ_(k+1)[m], with "
                f"g_k = {above:.6g} from the layer above (a dense layer above reads only the last time step {T - 1}); "
                f"the trace has {engine:.6g}")
    return None


def _update_slip(trace, key, person, tol, engine):
    """Slips in the update θ ← θ − Δθ. Every optimiser's Δθ is lr times a step d (sgd: d = g, adam:
    d = m̂/(√v̂ + eps); tests/test_optim.py holds them to it), so d = Δθ/lr: the learning rate left out
    (d written for Δθ, or θ − d for θ), another learning rate (Δθ/d), or Δθ added instead of subtracted."""
    kind = parameter_of(key.quantity)
    step = key.step if key.quantity.startswith("update") else key.step - 1
    if step < 0:
        return None
    lr = float(trace.lr[step])
    update = engine_value(trace, Key(f"update_{kind}", key.layer, key.index, step, None))
    if not (math.isfinite(lr) and lr > 0 and math.isfinite(update)) or update == 0:
        return None
    d = update / lr
    rule = f"Δθ = lr·d with d = {d:.6g} ({trace.scenario.optimizer}: {optim.OPTIMIZERS[trace.scenario.optimizer].meaning})"
    if key.quantity.startswith("update"):
        if _matches(d, person, tol):
            return f"the learning rate is left out: {rule}, so Δθ = {lr:g} × {d:.6g} = {engine:.6g}"
        return f"the update used a learning rate of {person / d:.4g} instead of {lr:g}: {rule} = {engine:.6g}"
    before = engine_value(trace, Key(kind, key.layer, key.index, step, None))
    if _matches(before + update, person, tol):
        return f"the update was applied with the wrong sign: θ ← θ − Δθ = {before:.6g} − {update:.6g} = {engine:.6g}"
    if _matches(before - d, person, tol):
        return f"the learning rate is left out: θ ← θ − Δθ with {rule} and lr = {lr:g} gives {engine:.6g}"
    used = (before - person) / d
    if used > 0 and not _matches(used, lr, 1e-12 * lr):
        return f"the update used a learning rate of {used:.4g} instead of {lr:g}: θ ← θ − Δθ, {rule}, gives {engine:.6g}"
    return None


def _weight_shape(trace, layer, which="W"):
    """Shape of layer `layer`'s W: fan-in × units, or 1 × units (γ) for a normalisation layer (or of
    its parameter `which`: Wh, b of a recurrent layer)."""
    return getattr(trace, which)[layer - 1].shape[1:]


def _alternatives(trace, key):
    """(alternative key, description) for one factor: other units, samples and steps."""
    s = trace.scenario
    widths = s.widths
    q, l = key.quantity, key.layer
    out = []
    if l is not None and key.index:
        param = parameter_of(q)
        if param is not None and (param != "b" or key.time is not None or trace.b[l - 1].shape[1:] != (widths[l],)):
            units = itertools.product(*map(range, _weight_shape(trace, l, param)))
        else:
            units = ((j,) for j in range(widths[l]))
        for index in units:
            if index != key.index:
                out.append((Key(q, l, tuple(index), key.step, key.sample, key.time), "another unit"))
    if key.time is not None:
        for time in (key.time - 1, key.time + 1):
            if 0 <= time < trace.scenario.inputs.shape[1]:
                out.append((Key(q, l, key.index, key.step, key.sample, time), "another time step"))
    if key.sample is not None:
        for other in trace.samples(key.step).tolist():
            if other != key.sample:
                out.append((Key(q, l, key.index, key.step, other, key.time), "another sample"))
    for step in (key.step - 1, key.step + 1):
        last = trace.steps if q in PARAMETERS else trace.steps - 1
        if 0 <= step <= last and (key.sample is None or key.sample in trace.samples(step).tolist()):
            out.append((Key(q, l, key.index, step, key.sample, key.time), "another step"))
    return out


def _substitution(trace, local, written, key, person, tol):
    """Try one factor taken from elsewhere, and the layers above already updated."""
    if key.quantity in ("delta", "grad_W", "grad_b") and key.layer < len(trace.scenario.layers) \
            and key.step + 1 <= trace.steps and not layers.of(trace.scenario.layers[key.layer - 1]).recurrent:
        values = _Values(trace, written, _updated_above(trace, local, key), local=local)
        if _matches(local(key, values), person, tol):
            return ("the parameters were updated one layer at a time: the back-propagation used the already-updated "
                    f"weights of layer {key.layer + 1} (their step {key.step + 1} values) instead of the values of "
                    f"step {key.step}; update every layer at once, after the whole backward pass")
    probe = _Values(trace, written, local=local)
    local(key, probe)
    for factor in dict.fromkeys(probe.direct):
        for other, where in _alternatives(trace, factor):
            if other.time is not None:        # through time a neighbour may follow from `key` itself (δ_t from e_t)
                reads = _Values(trace, written, local=local)
                reads(other)
                if key in reads.used:
                    continue
            values = _Values(trace, written, {factor: other}, local=local)
            if _matches(local(key, values), person, tol):
                return (f"the factor {factor.label(trace.scenario)} was taken from {where}: "
                        f"{other.label(trace.scenario)} was used instead")
    return None


def _updated_above(trace, local, key):
    """Substitutions for a layer-by-layer update: every W above `key`'s layer at its next-step value,
    and every delta (and per-sample gradient) from `key`'s layer up recomputed with them."""
    s = trace.scenario
    widths, L = s.widths, len(s.layers)
    t = key.step
    substitutes = {}
    for layer in range(key.layer + 1, L + 1):
        for i, j in itertools.product(*map(range, _weight_shape(trace, layer))):
            substitutes[Key("W", layer, (i, j), t, None)] = Key("W", layer, (i, j), t + 1, None)
    samples = [key.sample] if key.sample is not None else trace.samples(t).tolist()
    recomputed = []
    for sample in samples:
        recomputed += [Key("delta", layer, (j,), t, sample) for layer in range(key.layer, L) for j in range(widths[layer])]
        if key.quantity in ("grad_W", "grad_b") and key.sample is None:
            units = (itertools.product(*map(range, _weight_shape(trace, key.layer)))
                     if key.quantity == "grad_W" else ((j,) for j in range(widths[key.layer])))
            recomputed += [Key(key.quantity, key.layer, tuple(u), t, sample) for u in units]
    for target in recomputed:
        if target != key:
            substitutes[target] = lambda values, target=target: local(target, values)
    return substitutes


def _required_factor(trace, local, written, key, person, engine):
    """Name the factor of a product that would have to change, and to what."""
    probe = _Values(trace, written, local=local)
    value = local(key, probe)
    factors = [f for f in dict.fromkeys(probe.direct)]
    if key.quantity in ("grad_W", "grad_b", "delta") and key.sample is not None and value != 0:
        ratio = person / value
        parts = ", ".join(f"{f.label(trace.scenario)} = {probe._value(f):.6g}" for f in factors)
        return (f"with the trace's factors ({parts}) the product is {value:.6g}; your value is {ratio:.4g} times that, "
                f"so one factor differs (none matches another unit, sample or step); the trace has {engine:.6g}")
    parts = ", ".join(f"{f.label(trace.scenario)} = {probe._value(f):.6g}" for f in factors[:6])
    return f"recomputed from {parts} it is {value:.6g}; the trace has {engine:.6g}"


# ------------------------------------------------------------------ reports

def render(results):
    lines = []
    for r in results:
        mark = "right" if r.right else "WRONG"
        lines.append(f"{r.entry.text:<22} {r.entry.written:>16}  {mark:<5}  engine {r.engine:.10g}")
        if not r.right:
            lines.append(f"    {r.kind}: {r.explanation}")
    wrong = [r for r in results if not r.right]
    new = [r for r in wrong if r.kind == "mistake"]
    lines.append("")
    lines.append(f"{len(results) - len(wrong)} of {len(results)} numbers right; {len(new)} mistake(s), "
                 f"{len(wrong) - len(new)} number(s) that only follow from earlier ones")
    return "\n".join(lines)


def to_json(results, scenario=None):
    return json.dumps({
        "right": sum(r.right for r in results), "total": len(results),
        "numbers": [{
            "name": r.entry.text, "key": r.entry.key.label(scenario), "written": r.entry.written, "engine": r.engine,
            "right": r.right, "kind": r.kind, "explanation": r.explanation,
            "caused_by": [k.label(scenario) for k in r.causes],
        } for r in results],
    }, indent=2, ensure_ascii=False)
