"""The matrix layout of the Trace sheet: for nets too wide for the column layout (784-32-10).

The column layout gives every parameter its own column and writes u = Σ a·W term by term; a
784-32-10 net would need 77,315 columns there. This layout stacks the steps down the sheet, each
step a block of rows a reader takes in at once:

  two header rows            group and quantity of each column of the sample rows
  one row per sample         x, t; per layer its kind's forward columns (u; a normalisation layer's
                             μ, σ², x̂ before it), f(u) (a, or h before a residual skip), a = h + a⁽ˡ⁻¹⁾;
                             ∂E/∂a, E; per layer (output first) f'(u), e = ∂E/∂a where it has cells,
                             δ, the kind's backward columns (dx̂, m1, m2)
  the Σ row                  E of the batch; a batchnorm layer's μ, σ², m1, m2 (statistics over the
                             batch, under their columns); lr, ‖g‖, clip c where the run has them
  two header rows            the parameter blocks' titles and units
  the parameter rows         per layer, side by side: θ | ∂E/∂θ | Δθ | each optimiser state, each a
                             block of (1 + rows of W) rows × units columns: the bias (β) in the first
                             row, W[i, ·] in row 1 + i (a normalisation layer's γ in row 1)
  a blank row

and after the last step the parameters after it. Formulas have a fixed length whatever the
fan-in and the batch: every formula body of the sample rows and the Σ row is the layer kind's (and
the activation's, the loss's) Excel face — the same definitions as the column layout's — given
the cells of this layout and its ranges (`ExcelLayer.span`), so the kinds write their sums over
adjacent cells: dense u = MMULT(a⁽ˡ⁻¹⁾ row, W column) + b and the error passed down
SUMPRODUCT(W row, δ row); batchnorm's μ, σ², m1, m2 SUM/SUMPRODUCT over the step's sample rows;
layernorm's over a sample's unit cells. The batch gradient ∂θ[i,j] = SUMPRODUCT(② column, δⱼ
column) over the step's sample rows (÷ n for a mean), ② the kind's factor (a⁽ˡ⁻¹⁾ᵢ, x̂ⱼ), with no
per-sample gradient cells. The optimiser, schedule and clipping formulas are their definitions'
Excel faces given cell references, and the Settings sheet's defined names drive them.

Every cell is described by a `Block` (a rectangle of one quantity: its formulas, the engine's
values, and the magnitude of what flows into it), so the writer (formulas with cached values) and
`verify` (the engine's values and the cancellation floors) read one description.
"""
import ast
from dataclasses import dataclass
import functools
import re
from typing import Callable

import numpy as np
from openpyxl.utils import get_column_letter

from tracer.maths import activations, losses, notation, optim, procedures
from tracer import layers
from tracer.errors import LimitError
from tracer.layers.base import ExcelLayer
from tracer.workbook import layout as layout_module, steps as steps_module

MAX_ROWS, MAX_COLUMNS, MAX_FORMULA = 1_048_576, layout_module.MAX_COLUMNS, 8_192
SAMPLE_HEADER_ROWS, PARAMETER_HEADER_ROWS, GAP_ROWS = 2, 2, 1


@dataclass
class Block:
    """A rectangle of cells of one quantity in one step: rows row..row+height−1, columns
    column..column+width−1 (0-based column index). `formula(i, j)` -> formula body (None: the
    cell is a constant: the engine's value); `values` (height × width) the engine's values; `scale`
    the largest magnitude flowing into the block's cells (operands, and Σ|terms| of its sums: the
    base of verify's cancellation floor)."""
    quantity: str
    row: int
    column: int
    values: np.ndarray
    formula: Callable | None
    scale: float = 0.0
    header: str = ""
    blank_first_row: bool = False   # a frozen bias: no update or state cells in row 0
    layer: int | None = None        # the layer (from 1) of the quantity; None: the data or the run
    per_unit: bool = True           # a sample-row quantity with a cell per unit (False: one for the layer)

    @property
    def height(self):
        return self.values.shape[0]

    @property
    def width(self):
        return self.values.shape[1]


@dataclass
class Family:
    """The columns of one sample-row quantity of one layer (key (quantity, layer)): `width` adjacent
    columns, a formula template per unit j in the sample rows (`sample`) or in the Σ row (`total`),
    naming cells by key as the column layout's do («key»{place}, layout.ref) and {d} (the
    sample's Data row), {n} (the step's sample count)."""
    quantity: str
    layer: int | None
    width: int
    title: str
    symbol: str
    sample: Callable | None = None
    total: Callable | None = None
    per_unit: bool = True


LETTERS = [get_column_letter(index + 1) for index in range(MAX_COLUMNS)]
_REFERENCE = re.compile(r"«([^»]*)»(?:\{([rpqfl])\})?")


def _letter(index):
    return LETTERS[index]


def _max(*arrays):
    """The largest finite magnitude among `arrays` (0 when none)."""
    best = 0.0
    with np.errstate(all="ignore"):
        for array in arrays:
            array = np.abs(np.asarray(array, dtype=float))
            finite = array[np.isfinite(array)]
            if finite.size:
                best = max(best, float(finite.max()))
    return best


def _finite(array):
    """|array| with non-finite entries as 0."""
    with np.errstate(all="ignore"):
        array = np.abs(np.asarray(array, float))
        return np.where(np.isfinite(array), array, 0.0)


def _abs_product(a, b):
    """|a| @ |b| with non-finite entries as 0: the Σ|terms| of the dot products a @ b."""
    with np.errstate(all="ignore"):
        return _finite(a) @ _finite(b)


def unsupported(scenario):
    """(key, problem) of the first layer the matrix layout cannot show, or None: recurrent layers
    (their columns unroll through time: the column layout shows them)."""
    for l, layer in enumerate(scenario.layers):
        kind = layers.of(layer)
        if kind.excel_unrolled(layer):
            return (f"layers[{l}].kind", f"the matrix layout does not show recurrent layers ({kind.name}): "
                    "use the column layout (--layout column) with shorter sequences or fewer units")
    return None


class MatrixLayout:
    """Where every quantity of every step goes in the matrix layout (see the module docstring)."""

    name = "matrix"

    def __init__(self, scenario, sample_ids, first_step=0, names=None):
        self.scenario = scenario
        self.sample_ids = sample_ids
        self.first_step = first_step
        self.names = names or layout_module.settings_names(scenario)
        problem = unsupported(scenario)
        if problem:
            raise LimitError(problem[1], scenario.source, problem[0])
        s = scenario
        self.widths = s.widths
        self.L = len(s.layers)
        self.loss = losses.LOSSES[s.loss]
        self.optimizer = optim.OPTIMIZERS[s.optimizer]
        self.counts = (np.asarray(sample_ids) >= 0).sum(axis=1).tolist() if len(sample_ids) else []
        self._keys = {}
        self._columns()
        self._rows()
        self._check()

    # ---------------------------------------------------------------- what the kinds are given

    def layer_cells(self, l):
        """Layer l's scenario entry, its kind and the ExcelLayer its excel face is given: references by
        key («key»{place}, resolved per step by `_resolve`) and the ranges of adjacent cells."""
        s = self.scenario
        layer = s.layers[l - 1]
        kind = layers.of(layer)
        params = self._activation_params(l)
        cells = ExcelLayer(l, s.widths[l], s.widths[l - 1], layout_module.ref,
                           functools.partial(lambda kind, l, parameter: self.names[(kind.name, parameter, l)], kind, l),
                           notation.unit, activation_params=params, span=_span)
        return layer, kind, cells

    def has_error_columns(self, l):
        """Whether hidden layer l's error e = ∂E/∂a gets cells: its kind keeps it (residual), or the kind
        above writes the error it passes down there (normalisation); as in the column layout."""
        s = self.scenario
        if l >= len(s.layers):
            return False
        here, above = s.layers[l - 1], s.layers[l]
        return layers.of(here).excel_error_columns(here) or layers.of(above).excel_error_columns_below(above)

    def error_from_above(self, l, j):
        """(formula template, text) of the error layer l+1 passes down to unit j of layer l, by its kind."""
        layer, kind, cells = self.layer_cells(l + 1)
        return kind.excel_error_down(layer, cells, j)

    def param_rows(self, l):
        """Rows of layer l's parameter blocks: the bias row, then the rows of W (γ: one)."""
        layer = self.scenario.layers[l - 1]
        return layers.of(layer).param_shapes(self.widths[l - 1], self.widths[l])[0][0] + 1

    # ---------------------------------------------------------------- geometry

    def _families(self):
        """Every sample-row quantity of a step, in sheet order."""
        s, widths, L = self.scenario, self.widths, self.L
        ref = layout_module.ref
        yield Family("x", 0, widths[0], "input x", "x",
                     sample=lambda i: f"Data!{layout_module.input_letter(s, i)}{{d}}")
        yield Family("t", 0, widths[-1], "target t", "t",
                     sample=lambda k: f"Data!{layout_module.data_letter(widths[0] + k)}{{d}}")
        for l in range(1, L + 1):
            yield from self._forward(l)
        K = widths[-1]
        if self.loss.records_output_error:
            yield Family("dE_da", L, K, "∂E/∂a", "∂E/∂a",
                         sample=lambda k: self.loss.excel_error(ref(("a", L, k)), ref(("t", 0, k)), K))
        loss = self.loss.excel_value([ref(("u", L, k)) for k in range(K)], [ref(("a", L, k)) for k in range(K)],
                                     [ref(("t", 0, k)) for k in range(K)])
        yield Family("loss", None, 1, "E", "E", sample=lambda j: loss)
        for l in range(L, 0, -1):
            yield from self._backward(l)

    def _forward(self, l):
        """The kind's forward columns (u; μ, σ², x̂ before it), f(u), the kind's combine columns (residual a)."""
        layer, kind, cells = self.layer_cells(l)
        n = cells.units
        yield from self._kind_families(l, kind.excel_forward(layer, cells))
        act, params = activations.get(layer.activation), cells.activation_params
        symbol = kind.activated(layer)
        if act.elementwise:
            activated = functools.partial(lambda l, j: act.excel_value(layout_module.ref(("u", l, j)), params), l)
        else:
            activated = functools.partial(lambda l, j: act.excel_value(
                [layout_module.ref(("u", l, k)) for k in range(n)], j, params), l)
        yield Family(symbol, l, n, f"{symbol} = f(u)", symbol, sample=activated)
        yield from self._kind_families(l, kind.excel_combine(layer, cells))

    def _backward(self, l):
        """f'(u), e = ∂E/∂a where it has cells, δ = ∂E/∂u, the kind's backward columns."""
        s, ref = self.scenario, layout_module.ref
        layer, kind, cells = self.layer_cells(l)
        n, L = cells.units, self.L
        act, params = activations.get(layer.activation), cells.activation_params
        activated = kind.activated(layer)
        yield Family("slope", l, n, "f'(u)", "f'",
                     sample=lambda j: act.excel_slope(ref(("u", l, j)), ref((activated, l, j)), params))
        has_error = self.has_error_columns(l)
        if has_error:
            yield Family("e", l, n, "e = ∂E/∂a", "e", sample=lambda j: self.error_from_above(l, j)[0])
        K = s.widths[-1]

        def delta(j):
            slope = ref(("slope", l, j))
            if l == L:
                return self.loss.excel_output_delta([ref(("a", L, k)) for k in range(K)], [ref(("t", 0, k)) for k in range(K)],
                                                    j, [ref(("dE_da", L, k)) for k in range(K)], slope)
            if has_error:
                return f"{slope}*{ref(('e', l, j))}"
            return f"{slope}*({self.error_from_above(l, j)[0]})"
        yield Family("delta", l, n, "δ = ∂E/∂u", "δ", sample=delta)
        yield from self._kind_families(l, kind.excel_backward(layer, cells))

    def _kind_families(self, l, declared):
        """Families of a kind's ExcelColumns declarations on layer l."""
        for columns in declared:
            width = self.widths[l] if columns.per_unit else 1
            yield Family(columns.quantity, l, width, f"{columns.symbol}: {columns.group}", columns.symbol,
                         columns.sample, columns.total, columns.per_unit)

    def _columns(self):
        """Column index of every quantity of the sample rows, and of every parameter block."""
        s, widths = self.scenario, self.widths
        at = 2
        self.sample_columns = {}          # (quantity, layer) -> first column; groups in sheet order
        self.families = []

        def take(key, width):
            nonlocal at
            self.sample_columns[key] = at
            at += width
        for family in self._families():
            take((family.quantity, family.layer), family.width)
            self.families.append(family)
        self.summary = []
        if s.optimizer_params["schedule"] != "constant":
            self.summary.append("lr")
        if s.clip_norm is not None:
            self.summary += ["grad_norm", "clip_factor"]
        for name in self.summary:
            take((name, None), 1)
        self.sample_width = at
        # parameter blocks: per layer θ, ∂E/∂θ, Δθ, the states; one blank column between blocks
        self.blocks = ["theta", "grad", "update"] + list(self.optimizer.state)
        self.parameter_columns = {}
        at = 2
        for l in range(1, self.L + 1):
            for block in self.blocks:
                self.parameter_columns[(block, l)] = at
                at += widths[l] + 1
        self.parameter_width = at - 1
        self.column_count = max(self.sample_width, self.parameter_width)
        self.parameter_rows = max(self.param_rows(l) for l in range(1, self.L + 1))

    def _rows(self):
        """First row of every step's block, and of the final parameters."""
        starts, row = [], 1
        for n in self.counts:
            starts.append(row)
            row += SAMPLE_HEADER_ROWS + n + 1 + PARAMETER_HEADER_ROWS + self.parameter_rows + GAP_ROWS
        self.starts = starts
        self.final_start = row
        self.last_row = row + PARAMETER_HEADER_ROWS + self.parameter_rows - 1

    def first_sample_row(self, step):
        return self.starts[step] + SAMPLE_HEADER_ROWS

    def total_row(self, step):
        """The Σ row of step index `step`."""
        return self.first_sample_row(step) + self.counts[step]

    def parameter_row(self, step):
        """The first parameter row (the biases) of step index `step` (len(steps): the final block)."""
        start = self.final_start if step == len(self.counts) else self.total_row(step) + 1
        return start + PARAMETER_HEADER_ROWS

    def _check(self):
        """Refuse, before anything is written, a layout beyond the sheet's rows, columns or formula length."""
        source = self.scenario.source
        if self.column_count > MAX_COLUMNS:
            raise LimitError(f"the matrix layout would need {self.column_count:,} columns, above the spreadsheet "
                             f"limit of {MAX_COLUMNS} columns: use fewer or narrower layers",
                             source, layout_module.widest_key(self.scenario))
        if self.last_row > MAX_ROWS:
            per_step = (SAMPLE_HEADER_ROWS + max(self.counts) + 1 + PARAMETER_HEADER_ROWS + self.parameter_rows
                        + GAP_ROWS)
            fitting = (MAX_ROWS - PARAMETER_HEADER_ROWS - self.parameter_rows) // per_step
            problem = f"the matrix layout would need {self.last_row:,} rows, above the spreadsheet limit of {MAX_ROWS:,}"
            if fitting < 1:
                raise LimitError(f"{problem}: one step takes {per_step:,.0f} rows; use a smaller batch",
                                 source, "training.batch")
            raise LimitError(f"{problem}: use --steps {fitting} or fewer (steps = {fitting}), "
                             "or export a slice with --window A:B", source, "steps")
        if not self.counts:
            return
        step = len(self.counts) - 1   # the largest row numbers: the longest references
        for block in self.step_blocks(step, None, first=False):
            i = block.height - 1   # a block's formulas differ by row only in their row numbers: its last row's are the longest
            for j in range(block.width):
                text = block.formula(i, j)
                if text is not None and len(text) + 1 > MAX_FORMULA:
                    raise LimitError(
                        f"the formula of {block.header} would be longer than the spreadsheet limit of "
                        f"{MAX_FORMULA} characters: use fewer units per layer",
                        source, layout_module.widest_key(self.scenario, block.layer))

    # ---------------------------------------------------------------- references

    def _key(self, text):
        """The key of a «key» reference (parsed once)."""
        key = self._keys.get(text)
        if key is None:
            key = self._keys[text] = ast.literal_eval(text)
        return key

    def _resolve(self, template, step, row=None):
        """A family's formula template with its references made cells of step index `step`: a sample
        quantity's column in the row `row` ({r} kept when None: filled per sample row), the Σ row (p)
        or the step's first/last sample row (f, l); a parameter (W, b at p) its cell of the step's θ
        block; {n} the step's sample count."""
        first, last, total = self.first_sample_row(step), self.total_row(step) - 1, self.total_row(step)
        here = "{r}" if row is None else str(row)

        def cell(match):
            key, place = self._key(match.group(1)), match.group(2)
            if key[0] in ("W", "b") and len(key) == 3 and isinstance(key[2], tuple):
                which, l, index = key
                offset = 1 + index[0] if which == "W" else 0
                return self._parameter_cell("theta", l, offset, index[-1], step)
            name, l = key[0], key[1] if len(key) > 1 else None
            letter = _letter(self.sample_columns[(name, l)] + (key[2] if len(key) > 2 else 0))
            if place is None:
                return letter
            return letter + {"r": here, "p": str(total), "f": str(first), "l": str(last)}[place]
        return _REFERENCE.sub(cell, template).replace("{n}", str(self.counts[step]))

    def _operands(self, template):
        """The (quantity, layer) of the sample-row families a template reads, and the layers whose θ it reads."""
        families, parameters = set(), set()
        for match in _REFERENCE.finditer(template):
            key = self._key(match.group(1))
            if key[0] in ("W", "b") and len(key) == 3 and isinstance(key[2], tuple):
                parameters.add(key[1])
            else:
                families.add((key[0], key[1] if len(key) > 1 else None))
        return families, parameters

    def _below(self, l):
        return ("x", 0) if l == 1 else ("a", l - 1)

    def _parameter_cell(self, block, l, row, j, step):
        """Cell of block `block` (theta, grad, ...) of layer l: row 0 the bias, 1 + i the W row i."""
        return f"{_letter(self.parameter_columns[(block, l)] + j)}{self.parameter_row(step) + row}"

    def _summary_cell(self, name, step):
        return f"${_letter(self.sample_columns[(name, None)])}${self.total_row(step)}"

    # ---------------------------------------------------------------- blocks of one step

    def step_blocks(self, step, trace, first=None):
        """The Blocks of step index `step` in sheet order (sample rows, Σ row, parameter rows).
        With `trace` None the values are zeros (the formulas alone: the limit check)."""
        if first is None:
            first = step == 0
        n = self.counts[step]
        v = _Values(trace, step, n, self)
        yield from self._sample_blocks(step, n, v)
        yield from self._total_blocks(step, n, v)
        yield from self._parameter_blocks(step, n, v, first)

    def _sample_blocks(self, step, n, v):
        """The blocks of every family (its sample rows, or its cells of the Σ row). Each block's scale is
        the largest magnitude flowing into it through the step (its operands' values and their own
        scales, θ of the layers it reads) and, for the dense sums, Σ|terms|."""
        row0, total = self.first_sample_row(step), self.total_row(step)
        data_rows = [str(int(sample) + 2) for sample in v.ids]
        flows = {}
        thetas = {l: _max(v.stacked("theta", l)) for l in range(1, self.L + 1)}
        for family in self.families:
            key, l = (family.quantity, family.layer), family.layer
            in_total = family.sample is None
            template_of = family.total if in_total else family.sample
            templates = [self._resolve(template_of(j), step, total if in_total else None) for j in range(family.width)]
            values = v.family(family, in_total)
            families, parameters = self._operands(template_of(0) + template_of(family.width - 1))
            scale = max([flows.get(k, 0.0) for k in families] + [thetas[p] for p in parameters] + [0.0])
            scale = max(scale, self._sum_terms(family, v, flows))
            flows[key] = max(scale, _max(values))
            if in_total:
                formula = (lambda templates: lambda i, j: templates[j])(templates)
                row = total
            else:
                formula = (lambda templates, first: lambda i, j: templates[j].replace("{r}", str(first + i))
                           .replace("{d}", data_rows[i]))(templates, row0)
                row = row0
            symbol = family.symbol if family.quantity not in ("x", "t") else family.quantity
            header = f"{symbol}{l}" if l else symbol
            yield Block(family.quantity, row, self.sample_columns[key], values, formula, scale, header, layer=l,
                        per_unit=family.per_unit)

    def _sum_terms(self, family, v, flows):
        """Σ|terms| of the dense sums a family's formulas hold (MMULT for u, SUMPRODUCT(W row, δ row) for the
        error passed down by a dense layer): they need not add their terms in the engine's order."""
        s, l, q = self.scenario, family.layer, family.quantity
        if l is None or l == 0:
            return 0.0
        layer = s.layers[l - 1]
        if q == "u" and layers.of(layer).weighted:
            below = v.sample(*self._below(l)) if l > 1 else v.data()[0]
            return _max(_abs_product(below, v.parameter("W", l)) + _finite(v.parameter("b", l)))
        if q in ("e", "delta") and l < self.L and layers.of(s.layers[l]).weighted:
            back = _abs_product(v.sample("delta", l + 1), v.parameter("W", l + 1).T)
            if q == "delta":
                back = back * _finite(v.sample("slope", l))
            return _max(back)
        return 0.0

    def parameter_block_range(self, block, l, step, trained_only=False):
        """The whole parameter block `block` of layer l at step index `step` (a frozen bias's row left
        out with `trained_only`): "C12:F15"."""
        first, top = self.parameter_columns[(block, l)], self.parameter_row(step)
        skip = 1 if trained_only and not self.scenario.layers[l - 1].train_bias else 0
        return (f"{_letter(first)}{top + skip}:{_letter(first + self.widths[l] - 1)}"
                f"{top + self.param_rows(l) - 1}")

    # ---------------------------------------------------------------- what the companion sheets read

    fixed_length_formulas = True   # the companion sheets write counts over units as one range formula

    def parameter_range(self, l, step, prefix="", trained_only=False):
        """Layer l's block named prefix ("" θ, "grad_" ∂E/∂θ, "update_" Δθ) at step index `step`, as a
        range of the Trace sheet (a frozen bias's row left out with `trained_only`)."""
        block = {"": "theta", "grad_": "grad", "update_": "update"}[prefix]
        return "Trace!" + self.parameter_block_range(block, l, step, trained_only)

    @staticmethod
    def range_size(span):
        """How many cells a range of `parameter_range` holds, as a formula: a block's."""
        return f"ROWS({span})*COLUMNS({span})"

    def cell(self, key):
        """The column letter of a sample-row quantity's cell `key` = (quantity, layer, unit) (the
        companion sheets read its sample rows, first_sample_row … total_row − 1, as in the column layout)."""
        return _letter(self.sample_columns[(key[0], key[1] if len(key) > 1 else None)] + (key[2] if len(key) > 2 else 0))

    def loss_scale(self, trace, step):
        """The magnitude flowing into E of the batch at step index `step` (its sample losses' blocks): what
        the sheet's E may differ from the engine's relative to (the Diagnosis sheet's |ΔE|/|E| reads it)."""
        n = self.counts[step]
        losses_of_samples = next(b for b in self._sample_blocks(step, n, _Values(trace, step, n, self)) if b.quantity == "loss")
        return max(losses_of_samples.scale, _max(losses_of_samples.values))

    def through_time(self, l):
        """No layer runs through time here (recurrent layers are refused)."""
        return False

    def _total_blocks(self, step, n, v):
        s, row = self.scenario, self.total_row(step)
        loss_column = self.sample_columns[("loss", None)]
        span = f"{_letter(loss_column)}{self.first_sample_row(step)}:{_letter(loss_column)}{row - 1}"
        yield Block("loss_total", row, loss_column, v.total("loss"),
                    lambda i, j: procedures.excel_reduce(span, s.reduction, n), _max(v.sample("loss", None)), "E (batch)")
        if "lr" in self.summary:
            yield Block("lr", row, self.sample_columns[("lr", None)], v.total("lr"),
                        lambda i, j: procedures.excel_learning_rate(s.optimizer_params["schedule"], f"$A{row}"),
                        _max(v.total("lr")), "lr")
        if s.clip_norm is not None:
            ranges = [self.parameter_block_range("grad", l, step, trained_only=True) for l in range(1, self.L + 1)]
            norm_cell = self._summary_cell("grad_norm", step)
            grads = [v.parameter(which, l, "grad") for l in range(1, self.L + 1) for which in ("W", "b")]
            yield Block("grad_norm", row, self.sample_columns[("grad_norm", None)], v.total("grad_norm"),
                        lambda i, j: procedures.excel_grad_norm(ranges), _max(*grads), "‖g‖")
            yield Block("clip_factor", row, self.sample_columns[("clip_factor", None)], v.total("clip_factor"),
                        lambda i, j: procedures.excel_clip_factor(norm_cell), _max(v.total("grad_norm"), 1.0), "clip c")

    def _gradient_factor(self, l, step):
        """(formula of ∂E/∂θ[i, j] of the batch, Σ|terms| per cell): row 0 (the bias) the reduction of δⱼ,
        row 1 + i SUMPRODUCT(② column, δⱼ column) over the step's sample rows (÷ n for a mean), ② the
        kind's factor of ∂E/∂W[i,j] = ②·δⱼ (a⁽ˡ⁻¹⁾ᵢ, x̂ⱼ)."""
        s = self.scenario
        layer, kind, cells = self.layer_cells(l)
        n = self.counts[step]
        first_row, last_row = self.first_sample_row(step), self.first_sample_row(step) + n - 1
        delta_letters = LETTERS[self.sample_columns[("delta", l)]:]
        divide = f"/{n}" if s.reduction == "mean" else ""

        def column(key):
            letter = _letter(self.sample_columns[(key[0], key[1])] + (key[2] if len(key) > 2 else 0))
            return f"{letter}{first_row}:{letter}{last_row}"

        def formula(i, j):
            d = delta_letters[j]
            if i == 0:
                return procedures.excel_reduce(f"{d}{first_row}:{d}{last_row}", s.reduction, n)
            factor = kind.excel_factor(layer, cells, i - 1, j)[0]
            return f"SUMPRODUCT({column(factor)},{d}{first_row}:{d}{last_row}){divide}"
        return formula

    def _parameter_blocks(self, step, n, v, first):
        s, row0 = self.scenario, self.parameter_row(step)
        for l in range(1, self.L + 1):
            layer = s.layers[l - 1]
            kind = layers.of(layer)
            trained_b = layer.train_bias
            theta = v.stacked("theta", l)
            w, b = kind.param_names
            if first:
                formula = None
                scale = _max(theta)
            else:
                formula = self._carried(l, step - 1, trained_b)
                scale = _max(v.stacked("theta", l, previous=True), v.stacked("update", l, previous=True))
            yield Block("theta", row0, self.parameter_columns[("theta", l)], theta, formula, scale, f"θ ({w}{l}, {b}{l})",
                        layer=l)
            delta, factor = v.sample("delta", l), v.factor(l)
            with np.errstate(all="ignore"):
                terms = np.vstack([_finite(delta).sum(axis=0)[None, :],
                                   np.einsum("sij,sj->ij", factor, _finite(delta)) if n else np.zeros(factor.shape[1:])])
            if s.reduction == "mean":
                terms = terms / max(n, 1)
            grad = v.stacked("grad", l)
            yield Block("grad", row0, self.parameter_columns[("grad", l)], grad, self._gradient_factor(l, step),
                        max(_max(terms), _max(factor, delta)), f"∂E/∂θ{l} (batch)", layer=l)
            update = v.stacked("update", l)
            states = [v.stacked(state, l) for state in self.optimizer.state]
            previous_states = [v.stacked(state, l, previous=True) for state in self.optimizer.state]
            scale = max(_max(grad, theta, update, *states, *previous_states, v.total("lr") if "lr" in self.summary else 0),
                        _max(v.total("clip_factor")) if s.clip_norm is not None else 0.0)
            yield Block("update", row0, self.parameter_columns[("update", l)], update,
                        self._optimizer_formula(step, l, trained_b, None, first), scale, f"Δθ{l}", not trained_b, layer=l)
            for state, values in zip(self.optimizer.state, states):
                yield Block(state, row0, self.parameter_columns[(state, l)], values,
                            self._optimizer_formula(step, l, trained_b, state, first, v), scale, f"{state} {l}",
                            not trained_b, layer=l)

    def _carried(self, l, previous, trained_b):
        """θ at the next step: θ − Δθ of step `previous` (a frozen bias: θ)."""
        top = self.parameter_row(previous)
        theta = LETTERS[self.parameter_columns[("theta", l)]:]
        update = LETTERS[self.parameter_columns[("update", l)]:]

        def formula(i, j):
            if i == 0 and not trained_b:
                return f"{theta[j]}{top}"
            return f"{theta[j]}{top + i}-{update[j]}{top + i}"
        return formula

    def _optimizer_formula(self, step, l, trained_b, state, first, v=None):
        """The formula of Δθ (state None) or of one optimiser state, per cell of the block: the
        optimiser's Excel form written once with placeholders for the cells, filled per cell."""
        s, hyper = self.scenario, self.scenario.optimizer_params
        names = {p: self.names[("optimizer", p)] for p in hyper if ("optimizer", p) in self.names}
        lr = self._summary_cell("lr", step) if "lr" in self.summary else names["lr"]
        factor = self._summary_cell("clip_factor", step) if s.clip_norm is not None else None
        clip_value = "clip_value" if s.clip_value is not None else None
        t = f"($A${self.total_row(step)}+1)"
        gradient = procedures.excel_clipped("{grad}", factor, clip_value)
        gradient = optim.excel_gradient(gradient, "{theta}", names, hyper)
        refs = dict(names, lr=lr, t=t, nesterov=hyper.get("nesterov", False), g=gradient,
                    **{name: "{" + name + "}" for name in self.optimizer.state})
        if state is None:
            template = self.optimizer.excel_update(refs)
        else:
            template = self.optimizer.excel_state[state](dict(refs, **{f"prev_{state}": "{previous}"}))
        blocks = ["grad", "theta"] + list(self.optimizer.state)
        letters = {name: LETTERS[self.parameter_columns[(name, l)]:self.parameter_columns[(name, l)] + self.widths[l]]
                   for name in blocks}
        top = self.parameter_row(step)
        before_top = self.parameter_row(max(step - 1, 0))
        before = v.initial(state, l) if first and state is not None else None

        def formula(i, j):
            if i == 0 and not trained_b:
                return None
            row = top + i
            cells = {name: f"{letters[name][j]}{row}" for name in blocks}
            if state is not None:
                if first:
                    value = float(before[i, j])
                    if not np.isfinite(value):
                        return "#NUM!"   # the state before a window's first step is not finite
                    cells["previous"] = repr(value) if value else "0"
                else:
                    cells["previous"] = f"{letters[state][j]}{before_top + i}"
            return template.format_map(cells)
        return formula

    def _activation_params(self, l):
        layer = self.scenario.layers[l - 1]
        return {name: self.names[(layer.activation, name, l)] for name in activations.get(layer.activation).params}

    def final_block(self, trace):
        """The parameters after the last step: θ = previous θ − previous Δθ."""
        step = len(self.counts)
        v = _Values(trace, step, 0, self)
        row0 = self.parameter_row(step)
        for l in range(1, self.L + 1):
            formula = self._carried(l, step - 1, self.scenario.layers[l - 1].train_bias)
            scale = _max(v.stacked("theta", l, previous=True), v.stacked("update", l, previous=True))
            w, b = layers.of(self.scenario.layers[l - 1]).param_names
            yield Block("theta", row0, self.parameter_columns[("theta", l)], v.stacked("theta", l), formula, scale,
                        f"θ ({w}{l}, {b}{l}) after the last step", layer=l)

    # ---------------------------------------------------------------- headers

    TITLES = {"u": "u = MMULT(a⁽ˡ⁻¹⁾, W) + b", "a": "a = f(u)", "loss": "E", "slope": "f'(u)", "delta": "δ = ∂E/∂u",
              "lr": "lr", "grad_norm": "‖g‖", "clip_factor": "clip c"}

    def sample_headers(self):
        """(group row, header row) of the sample rows: {column index: text}."""
        groups, heads = {0: "step", 1: "sample"}, {}
        for family in self.families:
            column = self.sample_columns[(family.quantity, family.layer)]
            l = family.layer
            layer = self.scenario.layers[l - 1] if l else None
            title = family.title
            if family.quantity == "u" and layer is not None and layers.of(layer).weighted:
                title = self.TITLES["u"]
            elif family.quantity == "a" and layer is not None and layers.of(layer).skips(layer):
                title = "a = h + a⁽ˡ⁻¹⁾ (residual)"
            groups[column] = title + (f" (layer {l})" if l else "")
            for j in range(family.width):
                if family.quantity in ("x", "t"):
                    heads[column + j] = notation.sub(family.quantity, j)
                elif l is None:
                    heads[column + j] = family.symbol
                elif family.per_unit:
                    heads[column + j] = notation.unit(family.symbol, l, j)
                else:
                    heads[column + j] = f"{family.symbol}{notation.layer(l)}"
        for name in self.summary:
            column = self.sample_columns[(name, None)]
            groups[column] = heads[column] = self.TITLES[name] if name != "lr" else "lr"
        heads[0], heads[1] = "t", "sample"
        return groups, heads

    def parameter_headers(self, final=False):
        """(group row, header row) of the parameter rows."""
        groups, heads = {1: "row"}, {}
        titles = {"theta": "θ used at this step" if not final else "θ after the last step",
                  "grad": "∂E/∂θ of the batch (SUMPRODUCT of ② and δ)", "update": f"Δθ ({self.scenario.optimizer})"}
        for (block, l), column in self.parameter_columns.items():
            if final and block != "theta":
                continue
            w, b = layers.of(self.scenario.layers[l - 1]).param_names
            groups[column] = (f"{titles.get(block, optim.STATE_SYMBOLS.get(block, block) + ' (' + block + ')')} · "
                              f"layer {l} ({b}, {w})")
            for j in range(self.widths[l]):
                heads[column + j] = f"[·,{j}]"
        return groups, heads


def _span(first, last, place="r"):
    """The range of adjacent cells from key `first` to key `last` (references resolved per step)."""
    return f"{layout_module.ref(first, place)}:{layout_module.ref(last, place)}"


class _Values:
    """The engine's values of one step, shaped as the blocks (zeros without a trace)."""

    def __init__(self, trace, step, n, layout):
        self.trace, self.step, self.n, self.layout = trace, step, n, layout
        self.ids = ([int(i) for i in layout.sample_ids[step] if i >= 0] if step < len(layout.sample_ids) else [])

    def data(self):
        s = self.layout.scenario
        if not self.ids:
            return np.zeros((0, s.widths[0])), np.zeros((0, s.widths[-1]))
        return s.inputs[self.ids], s.targets[self.ids]

    def family(self, family, in_total):
        """The engine's values of a family's cells: n × width (sample rows) or 1 × width (the Σ row)."""
        width = family.width
        if self.trace is None:
            return np.zeros((1 if in_total else self.n, width))
        l = family.layer
        key = (family.quantity,) if l is None else (family.quantity, l)
        units = np.arange(width)[None, :]
        if family.per_unit and l is not None:
            key = key + (units,)
        with np.errstate(all="ignore"):
            if in_total:
                values = self.trace.values(key, "total", self.step, 0, 0)
            else:
                slots = np.arange(self.n)[:, None]
                samples = np.array(self.ids, dtype=np.intp)[:, None]
                values = self.trace.values(key, "sample", self.step, slots, samples)
        return np.array(np.broadcast_to(np.asarray(values, dtype=float), (1 if in_total else self.n, width)))

    def sample(self, quantity, l):
        t, n, widths = self.trace, self.n, self.layout.widths
        if quantity == "x":
            return self.data()[0]
        width = 1 if l is None else widths[l]
        if t is None:
            return np.zeros((n, width))
        if quantity == "loss":
            return t.sample_loss[self.step, :n, None]
        if quantity == "dE_da":
            return t.output_error[self.step, :n]
        return getattr(t, quantity)[l - 1][self.step, :n]

    def factor(self, l):
        """|②| of ∂E/∂W[i,j] = ②·δⱼ per sample, n × rows of W × units (non-finite as 0): the layer kind's
        gradient factor (a⁽ˡ⁻¹⁾ᵢ, x̂ⱼ)."""
        layout = self.layout
        layer = layout.scenario.layers[l - 1]
        kind = layers.of(layer)
        rows, units = kind.param_shapes(layout.widths[l - 1], layout.widths[l])[0]
        shape = (self.n, rows, units)
        if self.trace is None or not self.n:
            return np.zeros(shape)
        key = kind.gradient_factor(layer, l, np.arange(rows)[:, None], np.arange(units)[None, :])
        slots = np.arange(self.n)[:, None, None]
        samples = np.array(self.ids, dtype=np.intp)[:, None, None]
        values = self.trace.values(key, "sample", self.step, slots, samples)
        return _finite(np.broadcast_to(np.asarray(values, dtype=float), shape))

    def total(self, quantity):
        if self.trace is None:
            return np.zeros((1, 1))
        return np.array([[getattr(self.trace, quantity)[self.step]]], dtype=float)

    def parameter(self, which, l, block="theta", previous=False):
        """W or b of layer l (block theta: the value used at the step; grad, update; a state)."""
        layout = self.layout
        layer = layout.scenario.layers[l - 1]
        shapes = layers.of(layer).param_shapes(layout.widths[l - 1], layout.widths[l])
        shape = shapes[0] if which == "W" else shapes[1]
        step = self.step - 1 if previous else self.step
        if self.trace is None or step < 0:
            return np.zeros(shape)
        t = self.trace
        if block == "theta":
            return getattr(t, which)[l - 1][step]
        if block in ("grad", "update"):
            return getattr(t, f"{block}_{which}")[l - 1][step]
        return t.state[(block, which)][l - 1][step]

    def stacked(self, block, l, previous=False):
        """A parameter block: the bias in row 0, W below it ((1 + rows of W) × units)."""
        return np.vstack([self.parameter("b", l, block, previous)[None, :], self.parameter("W", l, block, previous)])

    def initial(self, state, l):
        """The optimiser state before the first step of the trace, stacked like the blocks."""
        if self.trace is None:
            return np.zeros((self.layout.param_rows(l), self.layout.widths[l]))
        before = self.trace.initial_state
        return np.vstack([before[(state, "b")][l - 1][None, :], before[(state, "W")][l - 1]])


# -------------------------------------------------------------------- writing and verifying

def write_sheet(workbook, trace, layout, progress=None):
    """The Trace sheet of the matrix layout: its frame (widths, frozen label columns, highlights);
    returns the generator of its rows (XML, one step at a time: memory does not grow with steps)."""
    from tracer.workbook import writer
    from openpyxl.cell import WriteOnlyCell
    from tracer.workbook import xlsx
    sheet = workbook.create_sheet("Trace")
    sheet.column_dimensions["A"].width = 9
    sheet.column_dimensions["B"].width = 9
    for index in range(2, layout.column_count):
        sheet.column_dimensions[_letter(index)].width = 12
    sheet.freeze_panes = "C1"
    whole = f"C1:{_letter(max(layout.column_count - 1, 2))}{layout.last_row}"
    sheet.conditional_formatting.add(whole, writer._rule("ISERROR(C1)", fill=writer._ERROR_FILL, stop=True))
    writer._add_number_rules(sheet, whole, "C1")
    header = WriteOnlyCell(sheet)
    header.font, header.fill = writer._HEADER_FONT, writer._HEADER_FILL
    group = WriteOnlyCell(sheet)
    group.font, group.fill = writer._HEADER_FONT, writer._GROUP_FILL
    total = WriteOnlyCell(sheet)
    total.font, total.fill = writer._HEADER_FONT, writer._TOTAL_FILL
    styles = {"header": xlsx.style(header.style_id), "group": xlsx.style(group.style_id), "total": xlsx.style(total.style_id)}
    return _sheet_rows(trace, layout, styles, progress)


def _sheet_rows(trace, layout, styles, progress):
    from tracer.workbook import xlsx
    first_step = trace.first_step
    for step in range(len(layout.counts)):
        yield from _rows_of(layout, _step_cells(trace, layout, step, styles))
        if progress:
            progress(step + 1)
    final = len(layout.counts)
    cells = {}
    _header_rows(cells, layout.parameter_row(final) - PARAMETER_HEADER_ROWS, layout.parameter_headers(final=True), styles,
                 f"after step {first_step + final - 1}")
    _parameter_labels(cells, layout, final)
    for block in layout.final_block(trace):
        _block_cells(cells, block)
    yield from _rows_of(layout, cells)


def _rows_of(layout, cells):
    from tracer.workbook import xlsx
    for number in sorted(cells):
        yield xlsx.row(number, [xml for _, xml in sorted(cells[number], key=lambda c: c[0])])


def _header_rows(cells, row, headers, styles, title):
    from tracer.workbook import xlsx
    groups, heads = headers
    groups = {**groups, 0: title}
    cells.setdefault(row, []).extend((c, xlsx.value_cell(f"{_letter(c)}{row}", text, styles["group"])) for c, text in groups.items())
    cells.setdefault(row + 1, []).extend((c, xlsx.value_cell(f"{_letter(c)}{row + 1}", text, styles["header"]))
                                         for c, text in heads.items())


def _parameter_labels(cells, layout, step):
    from tracer.workbook import xlsx
    top = layout.parameter_row(step)
    for i in range(layout.parameter_rows):
        cells.setdefault(top + i, []).append((1, xlsx.value_cell(f"B{top + i}", "b" if i == 0 else f"W[{i - 1},·]")))


def _step_cells(trace, layout, step, styles):
    """{row: [(column, xml)]} of one step."""
    from tracer.workbook import xlsx
    number = trace.first_step + step
    cells = {}
    start = layout.starts[step]
    _header_rows(cells, start, layout.sample_headers(), styles, f"step {number}")
    first = layout.first_sample_row(step)
    ids = [int(i) for i in layout.sample_ids[step] if i >= 0]
    for slot, sample in enumerate(ids):
        cells.setdefault(first + slot, []).extend([(0, xlsx.value_cell(f"A{first + slot}", number)),
                                                   (1, xlsx.value_cell(f"B{first + slot}", sample))])
    total = layout.total_row(step)
    cells.setdefault(total, []).extend([(0, xlsx.value_cell(f"A{total}", number, styles["total"])),
                                        (1, xlsx.value_cell(f"B{total}", "Σ", styles["total"]))])
    _header_rows(cells, total + 1, layout.parameter_headers(), styles, f"step {number}")
    _parameter_labels(cells, layout, step)
    for block in layout.step_blocks(step, trace):
        _block_cells(cells, block)
    return cells


def _block_cells(cells, block):
    """Add a block's cells: formulas with the engine's value cached, or the engine's constants."""
    from tracer.workbook import writer, xlsx
    values = block.values.tolist()
    for i in range(block.height):
        if i == 0 and block.blank_first_row:
            continue
        number = block.row + i
        line = cells.setdefault(number, [])
        for j in range(block.width):
            column = block.column + j
            ref = f"{_letter(column)}{number}"
            value = values[i][j]
            if block.formula is None:
                line.append((column, writer.constant_cell(ref, value)))
                continue
            text = block.formula(i, j)
            if text is None:
                continue
            if text == "#NUM!":   # the optimiser state before a window's first step is not finite
                line.append((column, xlsx.value_cell(ref, "#NUM!")))
            else:
                line.append((column, xlsx.formula_cell(ref, text, value)))


def compare(report, trace, layout, sheet, judge, floor_factor, mismatch):
    """Every formula cell of the matrix layout's Trace sheet against the engine: per block, the
    cancellation floor is `floor_factor` (verify's FLOOR) × the larger of the block's largest finite
    |value| and its scale (what flows into it: operands and Σ|terms| of its sums); `judge` is
    verify's vectorised rule and `mismatch` its Mismatch (passed in: the workbook does not import
    the commands' level)."""
    blocks = [block for step in range(len(layout.counts)) for block in layout.step_blocks(step, trace)]
    blocks += list(layout.final_block(trace))
    sheet.cover(layout.last_row, layout.column_count)
    rows, columns, engine, floors = [], [], [], []
    for block in blocks:
        if block.formula is None:
            continue   # constants (the first step's parameters)
        top = 1 if block.blank_first_row else 0
        grid_rows, grid_columns = np.meshgrid(np.arange(top, block.height), np.arange(block.width), indexing="ij")
        values = np.asarray(block.values, dtype=float)[top:]
        rows.append((block.row + grid_rows).ravel())
        columns.append((block.column + grid_columns).ravel())
        engine.append(values.ravel())
        floor = floor_factor * max(_max(values), block.scale)
        floors.append(np.full(values.size, max(floor, 1e-300)))
    row, column = np.concatenate(rows), np.concatenate(columns)
    x, floor = np.concatenate(engine), np.concatenate(floors)
    y, kind = sheet.numbers[row - 1, column], sheet.kinds[row - 1, column]
    live = [b for b in blocks if b.formula is not None]
    names = np.concatenate([np.full(b.values[(1 if b.blank_first_row else 0):].size, k) for k, b in enumerate(live)])

    def describe(k):
        return f"Trace!{_letter(int(column[k]))}{int(row[k])}", live[int(names[k])].header
    for k in judge(report, "Trace", x, y, kind, floor, describe):
        where, header = describe(k)
        report.mismatches.append(mismatch(where, header, float(x[k]), sheet.value(int(row[k]), int(column[k]))))


class StepsLayout(steps_module.StepsLayout):
    """The Steps sheet on the matrix layout's Trace sheet: per step E of the batch (the Σ row), the
    norm of each layer's batch gradient block (θ's ∂E/∂W and ∂E/∂b: SUMSQ of the block) and
    log10|W[0,0]| of each layer (row 1 of its θ block)."""

    def __init__(self, trace, trace_layout):
        self.trace, self.layout = trace, trace_layout
        self.first_step = trace.first_step
        self.layers = trace.layers

    def rows(self):
        layout = self.layout
        loss = LETTERS[layout.sample_columns[("loss", None)]]
        for step in range(self.trace.steps):
            top = layout.parameter_row(step)
            row = [f"Trace!{loss}{layout.total_row(step)}"]
            for l in range(1, self.layers + 1):
                row.append(f"SQRT(SUMSQ(Trace!{layout.parameter_block_range('grad', l, step)}))")
            row += [f"LOG10(ABS(Trace!{LETTERS[layout.parameter_columns[('theta', l)]]}{top + 1}))"
                    for l in range(1, self.layers + 1)]
            yield [self.first_step + step] + [f"=IFERROR({body},NA())" for body in row]
