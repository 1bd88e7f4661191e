"""Which quantity goes in which cell: a pure function of the scenario and the batch plan.

The Trace sheet has two header rows, then for every step its sample rows followed by one
Σ row (batch totals, the parameters used at that step and their updates), and a final row
with the parameters after the last step. Every column holds one formula shape all the way
down; a template's placeholders are filled per row:
  {r} this row   {p} this step's Σ row   {q} the previous Σ row   {d} the sample's Data row
  {f}/{l} first/last sample row of the step   {n} samples in the step
Each column also knows its quantity key, so the verifier can ask the Trace for the
engine's value of every cell. Formulas refer to other columns by key (`ref`), never by letter:
letters exist only once every column is declared (see TraceLayout).
"""
import ast
from dataclasses import dataclass, field
import functools
import itertools
import math
import re
from typing import Callable

import numpy as np
from openpyxl.utils import column_index_from_string, get_column_letter

from tracer.maths import activations, losses, optim, procedures
from tracer import layers
from tracer.errors import LimitError
from tracer.layers.base import ExcelLayer
from tracer.training.trace import param_name
from tracer.maths import notation

HEADER_ROWS = 2
MAX_COLUMNS = 16_384
SETTINGS = "Settings"


REFERENCE = re.compile(r"«([^»]*)»")
TEMPLATES = ("sample", "total", "final", "first")


class LayoutError(ValueError):
    """A column declaration that cannot be laid out (a programming error, not a user's input)."""


def ref(key, place="r"):
    """Pass 1's reference to the column of quantity `key` in row {place} ("r", "p", "q", "f",
    "l"; None: the column alone). Pass 2 replaces «key» by the column's letter."""
    return f"«{key!r}»" + (f"{{{place}}}" if place else "")


@dataclass
class Column:
    letter: str
    group: str
    header: str
    comment: str
    key: tuple                    # (quantity, layer, index) for Trace lookups
    sample: str | None = None     # template in sample rows
    total: str | None = None      # template in Σ rows (None: blank)
    final: str | None = None      # template in the final row
    first: str | None = None      # template in the first Σ row ({prev0}: the state before it)
    width: float = 14
    index: int = 0                # position in the sheet (0 = column A)


@dataclass
class Row:
    number: int
    kind: str                      # "sample" | "total" | "final"
    step: int                      # index into the trace's steps
    slot: int | None = None        # position in the batch (sample rows)
    sample: int | None = None      # data row id (sample rows)
    places: dict = field(default_factory=dict)


@dataclass
class Declared:
    """A column as pass 1 declares it: no letter yet. Its templates refer to other columns by key
    with `ref`; a template may also be a function of `letter` (key -> column letter), for the rare
    formula that needs the letters themselves (adjacent columns merged into one range)."""
    header: str
    comment: str
    key: tuple
    sample: object = None
    total: object = None
    final: object = None
    first: object = None
    width: float = 14


@dataclass
class Family:
    """The columns of one group declared together, one per index: `member(index)` declares it.
    The column count is the sum of len(indices), read before any member is declared, so that a
    net too wide for the sheet is refused at once."""
    group: str
    indices: object               # a sized iterable: range(units), Grid(rows, units), ...
    member: Callable


class Grid:
    """The index tuples of an array of `shape` in row-major order: (i, j) of W, i outer; (j,) of b."""

    def __init__(self, *shape):
        self.shape = shape

    def __len__(self):
        return math.prod(self.shape)

    def __iter__(self):
        return itertools.product(*(range(n) for n in self.shape))


def one(group, declared):
    """A family of a single column."""
    return Family(group, (declared,), lambda column: column)


def widest_key(scenario, layer=None):
    """The scenario key of the widest layer (the input columns count as layer 0), among layer−1,
    layer and layer+1 when `layer` is given: the width that makes a sheet or formula too large."""
    widths = scenario.widths
    near = range(len(widths)) if layer is None else range(max(0, layer - 1), min(len(widths), layer + 2))
    widest = max(near, key=lambda index: widths[index])
    return "data.inputs" if widest == 0 else f"layers[{widest - 1}].units"


class TraceLayout:
    """Columns and rows of the Trace sheet for a scenario and its batch plan, laid out in two
    passes: the builders declare families of columns by key (pass 1), then the layout counts them
    against the sheet's limit, gives each column its letter and resolves the references (pass 2)."""

    name = "column"

    def __init__(self, scenario, sample_ids, first_step=0, names=None):
        self.scenario = scenario
        self.sample_ids = sample_ids
        self.first_step = first_step
        self.names = names or settings_names(scenario)
        families = list(self._families())
        count = sum(len(family.indices) for family in families)
        if count > MAX_COLUMNS:
            if time_steps(scenario):
                raise LimitError(
                    f"the Trace sheet would need {count:,} columns ({time_steps(scenario)} time steps unrolled), above "
                    f"the spreadsheet limit of {MAX_COLUMNS} columns: use shorter sequences or fewer units",
                    scenario.source, "data.inputs",
                )
            raise LimitError(
                f"the Trace sheet would need {count:,} columns, above the spreadsheet limit of "
                f"{MAX_COLUMNS} columns: use fewer or narrower layers",
                scenario.source, widest_key(scenario),
            )
        self.columns, self._where = [], {}
        self._place(families)

    # ---------------------------------------------------------------- pass 2

    def cell(self, key):
        """Column letter of quantity `key`."""
        return self._where[key]

    def _place(self, families):
        """Declare every column in sheet order, give it the next letter, then resolve references."""
        for family in families:
            for index in family.indices:
                declared = family.member(index)
                if declared.key in self._where:
                    raise LayoutError(f"two columns declare the key {declared.key!r}")
                letter = get_column_letter(len(self.columns) + 1)
                self.columns.append(Column(letter, family.group, declared.header, declared.comment, declared.key,
                                           *(getattr(declared, name) for name in TEMPLATES), declared.width,
                                           index=len(self.columns)))
                self._where[declared.key] = letter
        self._letters = {repr(key): letter for key, letter in self._where.items()}
        for column in self.columns:
            where = f"column {column.header} {column.key!r}"
            for name in TEMPLATES:
                template = getattr(column, name)
                if callable(template):
                    try:
                        template = template(self.cell)
                    except KeyError as missing:
                        raise LayoutError(f"{where} refers to {missing.args[0]!r}, which no column declares") from None
                if template is not None:
                    setattr(column, name, self.formula(template, where=where))

    def formula(self, template, prefix="", where="a formula"):
        """`template` (a formula body naming columns by key) with every «key» replaced by its column's
        letter, after `prefix` ("Trace!" from another sheet)."""
        def letter(match):
            if match.group(1) not in self._letters:
                raise LayoutError(f"{where} refers to {match.group(1)}, which no column declares")
            return prefix + self._letters[match.group(1)]
        return REFERENCE.sub(letter, template)

    # ---------------------------------------------------------------- pass 1

    def _families(self):
        """Every column group of the sheet, in order."""
        L = len(self.scenario.layers)
        yield from self._row_labels()
        yield from self._inputs_and_targets()
        for l in range(1, L + 1):
            yield from self._over_time(l, self._forward)
        yield from self._loss_columns()
        for l in range(L, 0, -1):
            yield from self._over_time(l, self._backward)
        yield from self._gradients()
        yield from self._parameters()
        yield from self._updates()
        yield from self._optimizer_state()
        yield from self._schedule()
        yield from self._clipping()

    def _row_labels(self):
        yield one("", Declared("step", "training step t", ("step",), width=7))
        yield one("", Declared("sample", "data row of the sample (Σ: batch total of the step)", ("sample",), width=8))

    def _inputs_and_targets(self):
        s = self.scenario
        if time_steps(s):
            yield from self._sequences()
            return
        yield Family("input x", range(s.widths[0]), lambda i: Declared(
            notation.sub("x", i), f"input x{i} of the sample (Data sheet)", ("x", 0, i),
            sample=f"Data!{input_letter(s, i)}{{d}}"))
        yield Family("target t", range(s.widths[-1]), lambda k: Declared(
            notation.sub("t", k), f"target t{k} of the sample (Data sheet)", ("t", 0, k),
            sample=f"Data!{data_letter(s.widths[0] + k)}{{d}}"))

    def _sequences(self):
        """Sequence data (samples × time × features): x per (time, feature), time outer, read from the
        Data sheet's row of the sample (its columns x[t,i] in the same order); the targets after them."""
        s = self.scenario
        T, F, K = time_steps(s), s.widths[0], s.widths[-1]
        yield Family("input x", Grid(T, F), lambda index: Declared(
            timed(notation.sub("x", index[1]), index[0]), f"input x{index[1]} at time step {index[0]} (Data sheet)",
            ("x", 0, index), sample=f"Data!{data_letter(index[0] * F + index[1])}{{d}}"))
        if self.timed_from():
            yield Family("target t", Grid(T, K), lambda index: Declared(
                timed(notation.sub("t", index[1]), index[0]), f"target t{index[1]} at time step {index[0]} (Data sheet)",
                ("t", 0, index), sample=f"Data!{data_letter(T * F + index[0] * K + index[1])}{{d}}"))
            return
        yield Family("target t", range(s.widths[-1]), lambda k: Declared(
            notation.sub("t", k), f"target t{k} of the sample, read after the last time step (Data sheet)", ("t", 0, k),
            sample=f"Data!{data_letter(T * F + k)}{{d}}"))

    def layer_cells(self, l):
        """Layer l's scenario entry, its kind (the registry's definition) and what the kind's excel face is given."""
        s = self.scenario
        layer = s.layers[l - 1]
        kind = layers.of(layer)
        steps = time_steps(s)
        below_key = above = None
        if l > 1:
            below, below_kind = s.layers[l - 2], layers.of(s.layers[l - 2])
            if below_kind.excel_unrolled(below) and self.timed_from():   # h of the row's time step (see _at_time)
                below_key = functools.partial(lambda l, i: ("h", l, i), l - 1)
            elif below_kind.excel_unrolled(below):
                below_key = functools.partial(below_kind.excel_output, below, l - 1, steps=steps)
        if l < len(s.layers) and kind.excel_unrolled(layer):
            above = functools.partial(self.error_from_above, l)
        cells = ExcelLayer(l, s.widths[l], s.widths[l - 1], ref, lambda parameter: self.names[(kind.name, parameter, l)],
                           notation.unit, steps, below_key, above, self._activation_params(l))
        return layer, kind, cells

    # ---------------------------------------------------------------- targets per time step (many-to-many)
    # The layers after the recurrent ones run at every time step: their columns are declared once per
    # time step t by the usual builders, then moved to time t (`_at_time`): keys (q, l, j) become
    # (q, l, (t, j)), the headers get (t=…), and the references of their formulas follow — to the
    # layer's own columns at t, the recurrent layer's h at t, the targets and ∂E/∂a at t.

    def timed_from(self):
        """The first layer that runs at every time step (targets per time step), or None."""
        s = self.scenario
        if not getattr(s, "per_time_targets", False):
            return None
        return 1 + max(l for l, layer in enumerate(s.layers, start=1) if layers.of(layer).excel_unrolled(layer))

    def through_time(self, l):
        """True for a layer whose columns repeat per time step (a recurrent cell, or a layer after one
        with targets per time step): the sheets that read one column per unit leave it out."""
        layer = self.scenario.layers[l - 1]
        first = self.timed_from()
        return layers.of(layer).excel_unrolled(layer) or (first is not None and l >= first)

    def _timed_key(self, key, t):
        """`key` at time step t when it names a per-time quantity: (q, l, j) of a layer from timed_from,
        h of the last recurrent layer, the targets; other keys unchanged."""
        first = self.timed_from()
        if len(key) < 2 or not isinstance(key[1], int):
            return key
        name, l = key[0], key[1]
        timed_layer = l >= first or (l == first - 1 and name == "h") or name == "t"
        if not timed_layer or l == 0 and name == "x":
            return key
        if len(key) == 2:
            return (name, l, (t,))
        return (name, l, (t, key[2])) if isinstance(key[2], int) else key

    def _at_time(self, template, t):
        """A formula template with its per-time references moved to time step t."""
        if template is None or callable(template):
            return template
        return REFERENCE.sub(lambda m: "«" + repr(self._timed_key(ast.literal_eval(m.group(1)), t)) + "»", template)

    def _over_time(self, l, families):
        """Layer l's families (`families(l)`): as they are, or once per time step for a layer that runs
        at every time step."""
        first = self.timed_from()
        if first is None or l < first:
            yield from families(l)
            return
        for t in range(time_steps(self.scenario)):
            for family in families(l):
                yield Family(f"{family.group}, t = {t}", family.indices, functools.partial(self._member_at, family.member, t))

    def _member_at(self, member, t, index):
        declared = member(index)
        return Declared(timed(declared.header, t), declared.comment, self._timed_key(declared.key, t),
                        *(self._at_time(getattr(declared, name), t) for name in TEMPLATES), width=declared.width)

    def _summed_over_time(self, body):
        """A per-time formula body summed over time from t = 0 (the engine's order)."""
        return "+".join(f"({self._at_time(body, t)})" for t in range(time_steps(self.scenario)))

    def _kind_columns(self, l, declared):
        """The families of a kind's ExcelColumns declarations on layer l."""
        for columns in declared:
            yield Family(columns.group, range(self.scenario.widths[l] if columns.per_unit else 1),
                         functools.partial(self._kind_column, l, columns))

    @staticmethod
    def _kind_column(l, columns, j):
        header = notation.unit(columns.symbol, l, j) if columns.per_unit else f"{columns.symbol}{notation.layer(l)}"
        meaning = columns.meaning(j) if callable(columns.meaning) else columns.meaning
        key = (columns.quantity, l, j) if columns.per_unit else (columns.quantity, l)
        if columns.time is not None:
            header, key = timed(header, columns.time), (columns.quantity, l, (columns.time, j))
        return Declared(header, meaning, key,
                        sample=columns.sample(j) if columns.sample else None, total=columns.total(j) if columns.total else None)

    def _forward(self, l):
        """The kind's forward columns up to u, f(u) (a, or h before a residual skip), the kind's combine columns."""
        layer, kind, cells = self.layer_cells(l)
        n = cells.units
        yield from self._kind_columns(l, kind.excel_forward(layer, cells))
        if kind.excel_unrolled(layer):
            return
        act, params = activations.get(layer.activation), self._activation_params(l)
        symbol = kind.activated(layer)

        def activated(j):
            if act.elementwise:
                template = act.excel_value(ref(("u", l, j)), params)
            else:
                template = act.excel_value([ref(("u", l, k)) for k in range(n)], j, params)
            return Declared(notation.unit(symbol, l, j), f"{notation.unit(symbol, l, j)} = {act.symbol}({notation.unit('u', l, j)})",
                            (symbol, l, j), sample=template)
        yield Family(f"layer {l} forward", range(n), activated)
        yield from self._kind_columns(l, kind.excel_combine(layer, cells))

    def _loss_columns(self):
        """∂E/∂a of the output (unless the loss is fused with it), then E; Σ row: the reduction."""
        s = self.scenario
        L, K, loss = len(s.layers), s.widths[-1], losses.LOSSES[s.loss]
        if loss.records_output_error:
            yield from self._over_time(L, lambda L: [Family("loss", range(K), lambda k: Declared(
                f"∂E/∂{notation.unit('a', L, k)}", f"derivative of the {s.loss} loss by the output", ("dE_da", L, k),
                sample=loss.excel_error(ref(("a", L, k)), ref(("t", 0, k)), K)))])
        template = loss.excel_value([ref(("u", L, k)) for k in range(K)], [ref(("a", L, k)) for k in range(K)],
                                    [ref(("t", 0, k)) for k in range(K)])
        meaning = f"{s.loss} loss of the sample"
        if self.timed_from():
            template, meaning = self._summed_over_time(template), meaning + ": the sum over time of the loss at each time step"
        yield one("loss", Declared("E", f"{meaning}; Σ row: {s.reduction} over the batch", ("loss",),
                                   sample=template, total=self._reduce(("loss",))))

    def _backward(self, l):
        """f'(u), the error e = ∂E/∂a where it has columns, δ = ∂E/∂u, and the kind's own backward columns."""
        s = self.scenario
        layer, kind, cells = self.layer_cells(l)
        n, L = cells.units, len(s.layers)
        group = f"layer {l} backward"
        if kind.excel_unrolled(layer):
            yield from self._kind_columns(l, kind.excel_backward(layer, cells))
            return
        act, params = activations.get(layer.activation), self._activation_params(l)
        activated = kind.activated(layer)
        yield Family(group, range(n), lambda j: Declared(
            f"{act.symbol}'({notation.unit('u', l, j)})", f"local slope f'(u) of {act.name}", ("slope", l, j),
            sample=act.excel_slope(ref(("u", l, j)), ref((activated, l, j)), params)))
        has_error = self.has_error_columns(l)
        if has_error:
            def error(j):
                body, text = self.error_from_above(l, j)
                return Declared(notation.unit("e", l, j), f"e = ∂E/∂a: {text}", ("e", l, j), sample=body)
            yield Family(group, range(n), error)

        def delta(j):
            slope = ref(("slope", l, j))
            if l == L:
                template, meaning = self._output_delta(j)
            elif has_error:
                template, meaning = f"{slope}*{ref(('e', l, j))}", "δ = f'(u) · e"
            else:
                body, text = self.error_from_above(l, j)
                template, meaning = f"{slope}*({body})", f"δ = f'(u) · {text}"
            return Declared(notation.unit("δ", l, j), meaning, ("delta", l, j), sample=template)
        yield Family(group, range(n), delta)
        yield from self._kind_columns(l, kind.excel_backward(layer, cells))

    def _output_delta(self, j):
        """(formula body, meaning) of δ⁽ᴸ⁾_j, from the loss: ∂E/∂a · f'(u), or its fused δ."""
        s = self.scenario
        L, K, loss = len(s.layers), s.widths[-1], losses.LOSSES[s.loss]
        template = loss.excel_output_delta([ref(("a", L, k)) for k in range(K)], [ref(("t", 0, k)) for k in range(K)], j,
                                           [ref(("dE_da", L, k)) for k in range(K)], ref(("slope", L, j)))
        return template, loss.output_delta_meaning

    def error_from_above(self, l, j, t=None):
        """(formula body, text) of the error layer l+1 passes down to unit j of layer l, by its kind;
        at time step t of a recurrent layer l: a recurrent layer above passes one at every t, another
        kind reads h at the last time step only (None at the other t)."""
        layer, kind, cells = self.layer_cells(l + 1)
        if t is not None and kind.excel_unrolled(layer):
            return kind.excel_error_down_time(layer, cells, j, t)
        if t is not None and self.timed_from():
            body, text = kind.excel_error_down(layer, cells, j)
            return self._at_time(body, t), f"{text} at t={t}"
        if t is not None and t != time_steps(self.scenario) - 1:
            return None
        return kind.excel_error_down(layer, cells, j)

    def _gradients(self):
        """Per-sample ∂E/∂θ in the sample rows, by the layer's kind; Σ row: the batch's reduction."""
        s = self.scenario
        group = "gradient ∂E/∂θ (Σ row: batch)"
        for l in range(1, len(s.layers) + 1):
            layer, kind, cells = self.layer_cells(l)
            for which, shape, _ in kind.excel_parameters(layer, cells.fan_in, cells.units):
                yield Family(group, Grid(*shape), lambda index, l=l, layer=layer, kind=kind, cells=cells, which=which:
                             self._gradient(which, l, index, *self._layer_gradient(l, layer, kind, cells, which, index)))

    def _layer_gradient(self, l, layer, kind, cells, which, index):
        """(formula body, text) of a per-sample gradient: the kind's, summed over time for a layer that
        runs at every time step."""
        body, text = kind.excel_gradient(layer, cells, which, index)
        if self.timed_from() and l >= self.timed_from():
            return self._summed_over_time(body), f"Σₜ {text} (t = 0 … {time_steps(self.scenario) - 1})"
        return body, text

    def _gradient(self, which, l, index, body, text):
        s = self.scenario
        return Declared(f"∂E/∂{param_name(s, which, l, index)}", f"{text}; Σ row: {s.reduction} over the batch",
                        (f"grad_{which}", l, index), sample=body, total=self._reduce((f"grad_{which}", l, index)))

    def _parameter_blocks(self, trained_only=False):
        """(which, layer, indices) of every parameter array in sheet order (W then b per layer),
        or of the trained ones (a bias with train_bias = false is frozen)."""
        s = self.scenario
        for l, layer in enumerate(s.layers, start=1):
            for which, shape, is_bias in layers.of(layer).excel_parameters(layer, s.widths[l - 1], s.widths[l]):
                if layer.train_bias or not is_bias or not trained_only:
                    yield which, l, Grid(*shape)

    def parameter_span(self, l, prefix="", trained_only=False):
        """(first, last) column letters of layer l's parameter-shaped columns named prefix + parameter
        ("" θ, "grad_" ∂E/∂θ, "update_" Δθ): W[0,0] … the last entry of its last parameter (b, or bh
        of a recurrent cell), adjacent in the sheet."""
        blocks = [(which, indices) for which, layer, indices in self._parameter_blocks(trained_only) if layer == l]
        (first, first_indices), (last, last_indices) = blocks[0], blocks[-1]
        return (self.cell((f"{prefix}{first}", l, next(iter(first_indices)))),
                self.cell((f"{prefix}{last}", l, tuple(n - 1 for n in last_indices.shape))))

    def parameter_range(self, l, step, prefix="", trained_only=False):
        """Layer l's parameter-shaped cells named prefix + parameter ("" θ, "grad_" ∂E/∂θ, "update_" Δθ) at
        step index `step`, as a range of the Trace sheet (the companion sheets read it): its Σ row's span."""
        first, last = self.parameter_span(l, prefix, trained_only)
        total = self.total_row(step)
        return f"Trace!{first}{total}:{last}{total}"

    @staticmethod
    def range_size(span):
        """How many cells a range of `parameter_range` holds, as a formula: a row's span."""
        return f"COLUMNS({span})"

    def _trained(self, which, l):
        layer = self.scenario.layers[l - 1]
        biases = {name for name, _, is_bias in layers.of(layer).excel_parameters(layer, 1, 1) if is_bias}
        return which not in biases or layer.train_bias

    def _parameters(self):
        """θ used at each step (Σ rows) and after the last one (final row): previous θ − previous Δθ."""
        for which, l, indices in self._parameter_blocks():
            yield Family("parameters θ (value used at this step)", indices, functools.partial(self._parameter, which, l))

    def _parameter(self, which, l, index):
        key, name = (which, l, index), param_name(self.scenario, which, l, index)
        if self._trained(which, l):
            carry = f"{ref(key, 'q')}-{ref((f'update_{which}', l, index), 'q')}"
            meaning = f"{name} used at this step = previous value − previous update"
        else:
            carry, meaning = ref(key, "q"), f"{name} (not trained: train_bias = false)"
        return Declared(name, meaning, key, total=carry, final=carry)

    def _updates(self):
        """Δθ of every trained parameter (Σ rows), from the optimiser's update rule."""
        s = self.scenario
        optimizer = optim.OPTIMIZERS[s.optimizer]
        _, clipping = self._clipped("")
        for which, l, indices in self._parameter_blocks(trained_only=True):
            yield Family("update Δθ (subtracted)", indices, lambda index, which=which, l=l: Declared(
                f"Δ{param_name(s, which, l, index)}", f"{s.optimizer}: {optimizer.meaning}{clipping}",
                (f"update_{which}", l, index), total=optimizer.excel_update(self._update_refs(which, l, index))))

    def _optimizer_state(self):
        """Each state of the optimiser per trained parameter (Σ rows; the first reads {prev0})."""
        s = self.scenario
        optimizer = optim.OPTIMIZERS[s.optimizer]
        for state in optimizer.state:
            for which, l, indices in self._parameter_blocks(trained_only=True):
                yield Family(f"optimiser state ({s.optimizer})", indices,
                             functools.partial(self._state_column, optimizer, state, which, l))

    def _state_column(self, optimizer, state, which, l, index):
        name, formula = param_name(self.scenario, which, l, index), optimizer.excel_state[state]
        refs = self._update_refs(which, l, index)
        previous = {f"prev_{st}": ref((f"{st}_{which}", l, index), "q") for st in optimizer.state}
        first = {f"prev_{st}": "{prev0}" for st in optimizer.state}
        return Declared(f"{optim.STATE_SYMBOLS.get(state, state)} {name}", f"{state} of {name} after this step",
                        (f"{state}_{which}", l, index), total=formula(dict(refs, **previous)), first=formula(dict(refs, **first)))

    def _update_refs(self, which, l, index):
        """What the optimiser's Excel forms read for one parameter: its gradient as the update
        sees it (clipped, with weight decay), the hyper-parameters, lr, t and its state cells."""
        s = self.scenario
        hyper, optimizer = s.optimizer_params, optim.OPTIMIZERS[s.optimizer]
        names = {p: self.names[("optimizer", p)] for p in hyper if ("optimizer", p) in self.names}
        lr = ref(("lr",)) if hyper["schedule"] != "constant" else names["lr"]
        gradient, _ = self._clipped(ref((f"grad_{which}", l, index)))
        gradient = optim.excel_gradient(gradient, ref((which, l, index)), names, hyper)
        return dict(names, lr=lr, t=f"(${ref(('step',))}+1)", nesterov=hyper.get("nesterov", False), g=gradient,
                    **{state: ref((f"{state}_{which}", l, index)) for state in optimizer.state})

    def _schedule(self):
        """The learning rate of the step under a schedule (Σ rows)."""
        hyper = self.scenario.optimizer_params
        if hyper["schedule"] == "constant":
            return
        decay = procedures.excel_learning_rate(hyper["schedule"], f"${ref(('step',))}")   # IFERROR where γ^k underflows
        yield one("schedule", Declared("lr", f"learning rate of the step ({hyper['schedule']} decay)", ("lr",), total=decay))

    def _clipping(self):
        """‖g‖ over the batch gradients of every trained parameter and the factor c (Σ rows)."""
        if self.scenario.clip_norm is None:
            return
        def norm(letter):   # a frozen bias is not in ‖g‖
            trained = [letter((f"grad_{which}", l, index))
                       for which, l, indices in self._parameter_blocks(trained_only=True) for index in indices]
            return procedures.excel_grad_norm(_column_ranges(trained))
        yield one("gradient clipping", Declared("‖g‖", "L2 norm of the batch gradients of every trained parameter",
                                                ("grad_norm",), total=norm))
        yield one("gradient clipping", Declared("clip c", "c = min(1, clip_norm / (‖g‖ + 1e-6)); the update uses g·c",
                                                ("clip_factor",), total=procedures.excel_clip_factor(ref(('grad_norm',)))))

    def _reduce(self, key):
        """The Σ row's batch total of the column of `key`: its sum, or mean."""
        return procedures.excel_reduce(f"{ref(key, 'f')}:{ref(key, 'l')}", self.scenario.reduction, "{n}")

    def _clipped(self, gradient):
        """The gradient as the update sees it (clip_norm factor, then clip_value clamp), and its meaning."""
        by_norm, by_value = self.scenario.clip_norm is not None, self.scenario.clip_value is not None
        meaning = (", g clipped by norm (×c)" if by_norm else "") + (", g clamped to ±clip_value" if by_value else "")
        return procedures.excel_clipped(gradient, ref(("clip_factor",)) if by_norm else None,
                                        "clip_value" if by_value else None), meaning

    def _activation_params(self, l):
        """The defined names of layer l's activation parameters: name -> Settings cell."""
        layer = self.scenario.layers[l - 1]
        return {name: self.names[(layer.activation, name, l)] for name in activations.get(layer.activation).params}

    def has_error_columns(self, l):
        """Whether the error e = ∂E/∂a of hidden layer l gets its own columns: its kind keeps it
        (residual), or the kind above writes the error it passes down there (normalisation)."""
        s = self.scenario
        if l >= len(s.layers):
            return False
        here, above = s.layers[l - 1], s.layers[l]
        return layers.of(here).excel_error_columns(here) or layers.of(above).excel_error_columns_below(above)

    # ---------------------------------------------------------------- rows

    def rows(self):
        """Yield every data row of the Trace sheet in order."""
        number = HEADER_ROWS + 1
        previous_total = None
        for step, ids in enumerate(self.sample_ids):
            ids = [int(i) for i in ids if i >= 0]
            first, total = number, number + len(ids)
            common = {"p": total, "q": previous_total, "f": first, "l": total - 1, "n": len(ids)}
            for slot, sample in enumerate(ids):
                yield Row(number, "sample", step, slot, sample, dict(common, r=number, d=sample + 2))
                number += 1
            yield Row(number, "total", step, places=dict(common, r=number))
            previous_total = number
            number += 1
        yield Row(number, "final", len(self.sample_ids), places={"r": number, "q": previous_total})

    @property
    def last_row(self):
        """Row number of the final row: the header rows, each step's samples and Σ row, then it."""
        steps = len(self.sample_ids)
        return HEADER_ROWS + int((np.asarray(self.sample_ids) >= 0).sum()) + steps + 1

    def total_row(self, step):
        """Row number of the Σ row of trace step `step` (index within this layout)."""
        if getattr(self, "_total_rows", None) is None:   # Σ rows after the samples of every step
            self._total_rows = HEADER_ROWS + np.cumsum((np.asarray(self.sample_ids) >= 0).sum(axis=1) + 1)
        return int(self._total_rows[step])


def _column_ranges(letters):
    """The cells {r} of the given columns, as ranges of adjacent columns (the arguments of ‖g‖'s SUMSQ)."""
    ranges, start, end = [], None, None
    for letter in letters:
        index = column_index_from_string(letter)
        if start is not None and index == end + 1:
            end = index
            continue
        if start is not None:
            ranges.append((start, end))
        start = end = index
    ranges.append((start, end))
    cells = [f"{get_column_letter(a)}{{r}}" if a == b else f"{get_column_letter(a)}{{r}}:{get_column_letter(b)}{{r}}"
             for a, b in ranges]
    return cells


def time_steps(scenario):
    """T, the time steps of sequence data (inputs samples × time × features); 0 without a time axis."""
    inputs = np.asarray(scenario.inputs)
    return inputs.shape[1] if inputs.ndim == 3 else 0


def timed(header, t):
    """A header at time step t: h₀⁽¹⁾(t=3)."""
    return f"{header}(t={t})"


def input_letter(scenario, i):
    """Data sheet column of the input the network sees: the raw one, or its normalised copy."""
    if scenario.normalize == "none":
        return data_letter(i)
    return data_letter(scenario.widths[0] + scenario.widths[-1] + i)


def data_letter(index):
    """Data sheet column of input/target `index` (column A holds the sample id)."""
    return get_column_letter(index + 2)


def settings_names(scenario):
    """Defined names of the hyper-parameter cells: (owner, parameter[, layer]) -> name. An activation's
    parameter is <prefix>_<layer> with the prefix its definition gives (leaky_slope, elu_alpha) or
    <activation>_<parameter>; a layer kind's settings are named by its excel face (bn_eps_2)."""
    names = {}
    for param, value in scenario.optimizer_params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # nesterov and the schedule's name shape the formulas, they are not cells
        if param == "lr":
            names[("optimizer", param)] = "learning_rate"
        elif param in ("gamma", "step_size"):
            names[("optimizer", param)] = f"schedule_{param}"
        else:
            names[("optimizer", param)] = f"opt_{param}"
    for l, layer in enumerate(scenario.layers, start=1):
        act = activations.get(layer.activation)
        for param in act.params:
            names[(layer.activation, param, l)] = f"{act.setting_names.get(param, f'{act.name}_{param}')}_{l}"
        kind = layers.of(layer)
        for param, name, _, _ in kind.excel_settings(layer, l):
            names[(kind.name, param, l)] = name
    return names


def settings_values(scenario):
    """(defined name, value, meaning) for each hyper-parameter cell."""
    entries = []
    names = settings_names(scenario)
    for param, value in scenario.optimizer_params.items():
        if ("optimizer", param) in names:
            entries.append((names[("optimizer", param)], value, f"optimizer {scenario.optimizer}: {param}"))
    for l, layer in enumerate(scenario.layers, start=1):
        for param, value in layer.activation_params.items():
            entries.append((names[(layer.activation, param, l)], value, f"layer {l} {layer.activation}: {param}"))
    for l, layer in enumerate(scenario.layers, start=1):
        kind = layers.of(layer)
        for param, _, value, label in kind.excel_settings(layer, l):
            entries.append((names[(kind.name, param, l)], value, label))
    for key in ("clip_norm", "clip_value"):
        if getattr(scenario, key) is not None:
            entries.append((key, getattr(scenario, key), f"training: gradient {key.replace('_', ' by ')}"))
    for key, value in scenario.thresholds.items():
        entries.append((f"threshold_{key}", value, f"diagnosis: {key} threshold (Diagnosis sheet)"))
    return entries


def _below(l, i):
    """Key of unit i of the layer below layer l: the input x for layer 1."""
    return ("x", 0, i) if l == 1 else ("a", l - 1, i)
